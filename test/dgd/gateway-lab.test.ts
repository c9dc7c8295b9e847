// Gateway hosts (DESIGN.md, "Gateway hosts forward"): reproductions of the three problems of the
// gateway-host feature, each asserting what the feature must achieve. On a daemon without a trigger
// for forwarded traffic, without NAT care and without the flow's full lookup key, the tests marked
// [repro] fail; that is their point. The [guard] tests hold today and must keep holding.
//
// Run alone:  node_modules/.bin/mocha dist/test/dgd/gateway-lab.test.js
// Each test is bounded (a few seconds of traffic, waits of at most 6 s per step) and reports the
// times it measured in its assertion messages.
//
// GATEWAY_LAB_ACTIVE_PROBING=1 adds active probing of r1 to the [repro] tests of problem 1, which
// makes today's daemon switch in time: it checks the tests' own later stages (resume, restore).
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import { requireRoot, waitFor, type Lab } from '../lab/lab';
import { LabDaemon, type DaemonEvent } from '../lab/daemon';
import { startConnector, startFlowClient, startFlowServer } from '../lab/flows';
import {
  GW,
  NHID,
  SERVER_EXTRA,
  forwardLab,
  gatewayFor,
  multiWanLab,
  serverExtra4,
  serverExtra6,
  sourcePortVia,
  type NatMode,
} from '../lab/gateway-topologies';
import { startUdpFlow, startUdpServer } from '../lab/udpflow';
import type { ConntrackEntry } from '../../src/sys/conntrack';

const TCP_PORT = 7000;
const UDP_PORT = 7001;
const FAST = 'dgd:\n  slow_poll_interval: 1s\n';
const activeR1 = (gw: string) =>
  `dgd:\n  slow_poll_interval: 1s\n  active:\n    - { gateway: ${gw}, interval: 100ms, misses: 3 }\n`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The routes and nexthops the daemon may touch (the kernel's own, link-local and local ones left out). */
async function stableRoutes(lab: Lab, host: string): Promise<string> {
  const out =
    (await lab.ip(host, ['-d', '-4', 'route', 'show', 'table', 'all'])) +
    (await lab.ip(host, ['-d', '-6', 'route', 'show', 'table', 'all'])) +
    (await lab.ip(host, ['nexthop', 'show']));
  return out
    .split('\n')
    .filter((l) => l && !/expires|cache|proto kernel|table local|fe80::/.test(l))
    .sort()
    .join('\n');
}

/** The routes_withdrawn event for `gateway`, or null when none came within timeoutMs. */
async function withdrawnWithin(
  d: LabDaemon,
  gateway: string,
  timeoutMs: number,
): Promise<DaemonEvent | null> {
  return d
    .waitFor(
      (e) => e.event === 'routes_withdrawn' && e.gateway === gateway,
      timeoutMs,
      `${gateway} withdrawn`,
    )
    .catch(() => null);
}

function eventsSummary(d: LabDaemon): string {
  return d.events
    .filter((e) => e.event !== 'daemon_started')
    .map((e) => `${e.event}${typeof e.gateway === 'string' ? `(${e.gateway})` : ''}`)
    .slice(-12)
    .join(' ');
}

/** A local TCP stream from `host` with a fixed source port (and SO_MARK), bounded: 60 lines in 6 s. */
function localStream(lab: Lab, host: string, dst: string, sport: number, mark?: number): ChildProcess {
  const addr = dst.includes(':') ? `TCP6:[${dst}]:${TCP_PORT}` : `TCP4:${dst}:${TCP_PORT}`;
  // SO_MARK is option 36 at SOL_SOCKET (1) (asm-generic/socket.h).
  const opts = `sourceport=${sport},reuseaddr${mark !== undefined ? `,setsockopt-int=1:36:${mark}` : ''}`;
  return lab.spawn(host, [
    'bash',
    '-c',
    `for i in $(seq 60); do echo "$i-xxxxxxxxxxxxxxxx"; sleep 0.1; done | timeout 10 socat -u - ${addr},${opts}`,
  ]);
}

describe('gateway hosts: forwarded traffic, NAT per uplink, ECMP and policy routing (lab)', function () {
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

  describe('problem 2: NAT per uplink after a switch', () => {
    // The switch is made fast by active probing of r1 here, so these tests measure what NAT does
    // after it, apart from detection (problem 1's business).
    async function multiWan(nat: NatMode, sport: number): Promise<string[]> {
      const l = (lab = await multiWanLab({ nat }));
      await startUdpServer(l, 'server', UDP_PORT);
      await startFlowServer(l, 'server', TCP_PORT).listening;
      const d = await LabDaemon.start(l, 'gw', activeR1(GW.isp1_4));
      await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing to start');
      const udp = startUdpFlow(l, 'lanhost', GW.server4, UDP_PORT, sport, {
        intervalMs: 100,
        durationMs: 25_000,
      });
      await waitFor(() => udp.answers.length >= 5, 5000, 'the UDP flow to be answered through e0');
      await l.killSilently('r1', 'lan0');
      const w = await d.waitFor((e) => e.event === 'routes_withdrawn', 5000, 'the switch to e1');
      const tSwitch = Date.parse(w.time);
      const tcp = startFlowClient(l, 'lanhost', GW.server4, TCP_PORT, { durationMs: 2000 });
      await sleep(3000);
      const afterSwitch = udp.answers.find((a) => a.t > tSwitch);
      const tcpOk = tcp.echoes.length > 0;
      await l.revive('r1', 'lan0');
      const r = await d.waitFor((e) => e.event === 'routes_restored', 8000, 'the restore to e0');
      const tRestore = Date.parse(r.time);
      await sleep(5000);
      const afterRestore = udp.answers.find((a) => a.t > tRestore);
      await d.stop();
      const problems: string[] = [];
      if (!afterSwitch || afterSwitch.t - tSwitch > 3000)
        problems.push(
          `UDP flow (one port) ${afterSwitch ? `answered ${afterSwitch.t - tSwitch} ms` : 'got 0 answers in the 3 s'} after the switch (wanted <= 3000 ms)`,
        );
      if (!afterRestore || afterRestore.t - tRestore > 5000)
        problems.push(
          `UDP flow ${afterRestore ? `answered ${afterRestore.t - tRestore} ms` : 'got 0 answers in the 5 s'} after the restore (wanted <= 5000 ms)`,
        );
      if (!tcpOk) problems.push('a new TCP connection after the switch got no echo within 2 s');
      return problems;
    }

    it('[repro] snat to each uplink: a one-port UDP flow answers within 3 s of the switch and 5 s of the restore', async () => {
      const problems = await multiWan('snat', 40_010);
      assert.deepEqual(problems, []);
    });

    it('[guard] masquerade: a one-port UDP flow answers within 3 s of the switch and 5 s of the restore', async () => {
      const problems = await multiWan('masquerade', 40_011);
      assert.deepEqual(problems, []);
    });

    it('[guard] a host without NAT loses no conntrack entry in a switch', async () => {
      const l = (lab = await forwardLab({ routing: 'metric' }));
      await startFlowServer(l, 'server', TCP_PORT).listening;
      await startUdpServer(l, 'server', UDP_PORT);
      const d = await LabDaemon.start(l, 'gw', activeR1(GW.r1_4));
      await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing to start');
      const tcp = startFlowClient(l, 'lanhost', GW.server4, TCP_PORT, { durationMs: 15_000 });
      const udp = startUdpFlow(l, 'lanhost', GW.server4, UDP_PORT, 40_012, { durationMs: 15_000 });
      await waitFor(() => tcp.echoes.length >= 5 && udp.answers.length >= 5, 5000, 'both flows');
      const dump = async (): Promise<ConntrackEntry[]> => {
        const r = await l.node('gw', 'dist/test/fixtures/conntrack-op.js', [
          JSON.stringify([{ op: 'dump' }]),
        ]);
        const [res] = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
          value: { entries: ConntrackEntry[] };
        }[];
        return res!.value.entries.filter((e) => e.orig.src === GW.lanhost4 && e.orig.protocol !== 1);
      };
      const before = await dump();
      assert.equal(before.length, 2, JSON.stringify(before));
      await l.killSilently('r1', 'lan0');
      await d.waitFor((e) => e.event === 'routes_withdrawn', 5000, 'the switch');
      await sleep(1000);
      const after = await dump();
      assert.deepEqual(
        after.map((e) => e.id).sort(),
        before.map((e) => e.id).sort(),
        'the same entries, none deleted and re-created',
      );
      await d.stop();
    });
  });

  describe('problem 3: the gateway a flow really uses', () => {
    for (const family of [4, 6] as const) {
      it(`[repro] IPv${family} ECMP (L4 hash): a flow hashed to r1, r1 dies: r1's member is withdrawn, r2's untouched`, async () => {
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

      it(`[repro] IPv${family} fwmark policy routing: a marked flow through r1, r1 dies: r1's routes are withdrawn, r2's untouched`, async () => {
        const l = (lab = await forwardLab({ routing: 'fwmark' }));
        const [r1, r2, server] =
          family === 4 ? [GW.r1_4, GW.r2_4, GW.server4] : [GW.r1_6, GW.r2_6, GW.server6];
        await startFlowServer(l, 'server', TCP_PORT).listening;
        assert.equal(await gatewayFor(l, 'gw', { dst: server, mark: 1 }), r1);
        assert.equal(await gatewayFor(l, 'gw', { dst: server }), r2);
        const before = await l.ip('gw', [family === 4 ? '-4' : '-6', 'route', 'show', 'table', 'all']);
        const d = await LabDaemon.start(l, 'gw', FAST);
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
