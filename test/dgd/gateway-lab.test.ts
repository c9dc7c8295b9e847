// Gateway hosts (docs/host-integration.md, "Gateway hosts"): the gateway a flow really uses (ECMP with an
// L4 hash, fwmark policy routing; IPv4 and IPv6). Traffic the host forwards is in
// test/dgd/gateway-forwarded.test.ts, NAT per uplink across a switch in test/dgd/gateway-nat.test.ts.
//
// Run alone:  node_modules/.bin/mocha dist/test/dgd/gateway-lab.test.js
// Each test is bounded (a few seconds of traffic, waits of at most 6 s per step) and reports the
// times it measured in its assertion messages.
import { strict as assert } from 'node:assert';
import { requireRoot, type Lab } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { startFlowServer } from '../lab/flows';
import {
  FWMARK,
  GW,
  NHID,
  SERVER_EXTRA,
  forwardLab,
  gatewayFor,
  serverExtra4,
  serverExtra6,
  sourcePortVia,
} from '../lab/gateway-topologies';
import { FAST, TCP_PORT, eventsSummary, localStream, sleep, withdrawnWithin } from '../lab/gateway-steps';

describe('gateway hosts: ECMP and policy routing attribution (lab)', function () {
  this.timeout(60_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });

  afterEach(async () => {
    await lab?.close();
    lab = undefined;
  });

  describe('problem 3: the gateway a flow really uses', () => {
    for (const family of [4, 6] as const) {
      it(`IPv${family} ECMP (L4 hash): a flow hashed to r1, r1 dies: r1's member is withdrawn, r2's untouched`, async () => {
        const l = (lab = await forwardLab({ routing: 'ecmp' }));
        const [r1, r2, from] = family === 4 ? [GW.r1_4, GW.r2_4, GW.gwUp4] : [GW.r1_6, GW.r2_6, GW.gwUp6];
        await startFlowServer(l, 'server', TCP_PORT).listening;
        // A server address whose portless lookup takes r2, and a source port whose L4 hash takes r1:
        // a daemon that looks the flow up without its ports blames r2.
        let dst: string | null = null;
        for (let i = 0; i < SERVER_EXTRA && !dst; i++) {
          const a = family === 4 ? serverExtra4(i) : serverExtra6(i);
          if ((await gatewayFor(l, 'gw', { dst: a, from })) === r2) dst = a;
        }
        assert.ok(dst, 'a server address whose portless lookup takes r2');
        const sport = await sourcePortVia(l, 'gw', { dst, from, proto: 'tcp', dport: TCP_PORT }, r1);
        const d = await LabDaemon.start(l, 'gw', FAST);
        localStream(l, 'gw', dst, sport);
        await sleep(1000);
        await l.killSilently('r1', 'lan0');
        const w = await withdrawnWithin(d, r1, 6000);
        const group = await l.ip('gw', [
          'nexthop',
          'show',
          'id',
          String(family === 4 ? NHID.group4 : NHID.group6),
        ]);
        const [m1, m2] = family === 4 ? [NHID.r1_4, NHID.r2_4] : [NHID.r1_6, NHID.r2_6];
        assert.ok(
          w,
          `r1's member was not withdrawn within 6 s; group: ${group.trim()}; daemon events: ${eventsSummary(d)}`,
        );
        assert.doesNotMatch(group, new RegExp(`group (.*/)?${m1}(/|\\s)`), group);
        assert.match(group, new RegExp(`group (.*/)?${m2}(/|\\s)`), group);
        assert.equal(d.named('routes_withdrawn').filter((e) => e.gateway === r2).length, 0, 'r2 untouched');
        await d.stop();
      });

      it(`IPv${family} fwmark policy routing: a marked flow through r1, r1 dies: r1's routes are withdrawn, r2's untouched`, async () => {
        const l = (lab = await forwardLab({ routing: 'fwmark' }));
        const [r1, r2, server] =
          family === 4 ? [GW.r1_4, GW.r2_4, GW.server4] : [GW.r1_6, GW.r2_6, GW.server6];
        await startFlowServer(l, 'server', TCP_PORT).listening;
        assert.equal(await gatewayFor(l, 'gw', { dst: server, mark: 1 }), r1);
        assert.equal(await gatewayFor(l, 'gw', { dst: server }), r2);
        const before = await l.ip('gw', [family === 4 ? '-4' : '-6', 'route', 'show', 'table', 'all']);
        // The policy table is protected as an operator with policy routing configures it: named in
        // dgd.tables beside main (the default protects main only).
        const d = await LabDaemon.start(l, 'gw', `${FAST}  tables: [main, ${FWMARK.table}]\n`);
        localStream(l, 'gw', server, 40_020, 1);
        await sleep(1000);
        await l.killSilently('r1', 'lan0');
        const w = await withdrawnWithin(d, r1, 6000);
        assert.ok(w, `r1's routes were not withdrawn within 6 s; daemon events: ${eventsSummary(d)}`);
        const after = await l.ip('gw', [family === 4 ? '-4' : '-6', 'route', 'show', 'table', 'all']);
        assert.doesNotMatch(after, new RegExp(`via ${r1} `), after);
        const viaR2 = (s: string) =>
          s
            .split('\n')
            .filter((x) => x.includes(`via ${r2} `))
            .sort();
        assert.deepEqual(viaR2(after), viaR2(before), "r2's routes untouched");
        await d.stop();
      });
    }
  });
});
