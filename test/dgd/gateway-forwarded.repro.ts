// Reproductions, not part of the suite (it runs only dist/test/**/*.test.js and *.slow.js): what a
// gateway host must achieve for traffic it forwards, asserted as the feature's goals
// (docs/host-integration.md, "Gateway hosts").
//   - Forwarded traffic only: a LAN host's flows through the daemon's host, no local socket; with
//     defaults, r1's routes must be withdrawn within 4 s of its silent death (IPv4, IPv6), the
//     forwarded flow resume, the LAN host's new connections succeed, and the restore be exact.
// They fail until the trigger for forwarded traffic lands; then they move back into
// test/dgd/gateway-lab.test.ts. (NAT per uplink after a switch is in test/dgd/gateway-nat.test.ts.)
//
// Run:  npx tsc -p tsconfig.json && node_modules/.bin/mocha dist/test/dgd/gateway-forwarded.repro.js
//
// GATEWAY_LAB_ACTIVE_PROBING=1 adds active probing of r1 to the forwarded-traffic tests, which
// makes today's daemon switch in time: it checks the tests' own later stages (resume, restore).
import { strict as assert } from 'node:assert';
import { requireRoot, waitFor, type Lab } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { startConnector, startFlowClient, startFlowServer } from '../lab/flows';
import { GW, forwardLab } from '../lab/gateway-topologies';
import { FAST, TCP_PORT, activeR1, eventsSummary, stableRoutes, withdrawnWithin } from '../lab/gateway-steps';

describe('gateway hosts: forwarded traffic (reproductions, lab)', function () {
  this.timeout(60_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });

  afterEach(async () => {
    await lab?.close();
    lab = undefined;
  });

  describe('problem 1: traffic the host forwards', () => {
    for (const family of [4, 6] as const) {
      it(`[repro] IPv${family}: with defaults, r1's routes are withdrawn within 4 s of its death; the forwarded flow resumes; restore is exact`, async () => {
        const l = (lab = await forwardLab({ routing: 'metric' }));
        const server = family === 4 ? GW.server4 : GW.server6;
        const r1 = family === 4 ? GW.r1_4 : GW.r1_6;
        const r2 = family === 4 ? GW.r2_4 : GW.r2_6;
        await startFlowServer(l, 'server', TCP_PORT).listening;
        const before = await stableRoutes(l, 'gw');
        const d = await LabDaemon.start(
          l,
          'gw',
          process.env.GATEWAY_LAB_ACTIVE_PROBING ? activeR1(r1) : FAST,
        );
        const flow = startFlowClient(l, 'lanhost', server, TCP_PORT, { intervalMs: 50, durationMs: 25_000 });
        const conns = startConnector(l, 'lanhost', server, TCP_PORT, { intervalMs: 200, durationMs: 20_000 });
        await waitFor(() => flow.echoes.length >= 10, 5000, 'the forwarded flow to run');
        const t0 = Date.now();
        await l.killSilently('r1', 'lan0');
        const w = await withdrawnWithin(d, r1, 6000);
        const ms = w ? Date.parse(w.time) - t0 : null;
        assert.ok(
          ms !== null && ms <= 4000,
          `r1 (${r1}) withdrawn ${ms === null ? 'not within 6 s' : `after ${ms} ms`} of its death ` +
            `(wanted <= 4000 ms); daemon events: ${eventsSummary(d)}`,
        );
        const tw = Date.parse(w!.time);
        const routes = await l.ip('gw', [
          family === 4 ? '-4' : '-6',
          'route',
          'show',
          family === 4 ? GW.serverNet4 : GW.serverNet6,
        ]);
        assert.doesNotMatch(routes, new RegExp(`via ${r1} `), routes);
        assert.match(routes, new RegExp(`via ${r2} `), routes);
        await waitFor(() => flow.echoes.some((e) => e.t > tw), 3000, 'the forwarded flow to resume');
        await waitFor(
          () => conns.attempts.some((a) => a.ok && a.started > tw),
          3000,
          "L's short connections to succeed again",
        );
        await l.revive('r1', 'lan0');
        await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === r1, 8000, 'routes restored');
        assert.equal(await stableRoutes(l, 'gw'), before);
        await d.stop();
      });
    }
  });
});
