// A gateway host's forwarded traffic, in the lab: a LAN host streams TCP through the daemon's host
// and opens a short connection every 200 ms; the daemon's host has no socket of these flows, so
// only the wire watch (src/sys/packet/wirewatch.ts) sees them retransmit. r1 dies silently: with
// defaults its routes must be withdrawn within 4 s (the benchmark measures the median), the
// forwarded flow resume, the LAN host's new connections succeed, and the restore be exact. On
// releases without the wire watch this took 25-63 s (the kernel's neighbour entry turning FAILED).
import { strict as assert } from 'node:assert';
import { requireRoot, waitFor, type Lab } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import type { DgdStatus } from '../../src/dgd/status';
import { startConnector, startFlowClient, startFlowServer, startManyFlows } from '../lab/flows';
import { GW, forwardLab, loadNft } from '../lab/gateway-topologies';
import { FAST, TCP_PORT, eventsSummary, sleep, stableRoutes, withdrawnWithin } from '../lab/gateway-steps';

describe('gateway hosts: traffic the host forwards (lab)', function () {
  this.timeout(60_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });

  afterEach(async () => {
    await lab?.close();
    lab = undefined;
  });

  // IPv4 through a stateful firewall (conntrack loaded), IPv6 through a pure router (no rule
  // needs conntrack): the capture works on both.
  for (const family of [4, 6] as const) {
    it(`IPv${family}${family === 4 ? ' (conntrack loaded)' : ' (pure router)'}: with defaults, r1's routes are withdrawn within 4 s of its death; the forwarded flow resumes; restore is exact`, async () => {
      const l = (lab = await forwardLab({ routing: 'metric', conntrack: family === 4 }));
      const server = family === 4 ? GW.server4 : GW.server6;
      const r1 = family === 4 ? GW.r1_4 : GW.r1_6;
      const r2 = family === 4 ? GW.r2_4 : GW.r2_6;
      await startFlowServer(l, 'server', TCP_PORT).listening;
      const before = await stableRoutes(l, 'gw');
      const d = await LabDaemon.start(l, 'gw', FAST);
      const flow = startFlowClient(l, 'lanhost', server, TCP_PORT, { intervalMs: 50, durationMs: 25_000 });
      const conns = startConnector(l, 'lanhost', server, TCP_PORT, { intervalMs: 200, durationMs: 20_000 });
      await waitFor(() => flow.echoes.length >= 10, 5000, 'the forwarded flow to run');
      const watch = (await d.status()).forwarded as DgdStatus['forwarded'];
      assert.equal(watch.method, 'capture', JSON.stringify(watch));
      assert.deepEqual(
        watch.interfaces.map((i) => i.interface),
        ['up0'],
      );
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
      // The forwarded segments were seen leaving again towards r1, and said so in the trigger.
      const trigger = d.events.find((e) => e.event === 'trigger' && e.gateway === r1);
      assert.ok(trigger && JSON.stringify(trigger).includes('"wire":true'), JSON.stringify(trigger));
      await l.revive('r1', 'lan0');
      await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === r1, 8000, 'routes restored');
      assert.equal(await stableRoutes(l, 'gw'), before);
      await d.stop();
    });
  }

  it('300 forwarded flows to a dead server behind a live r1: one trigger, one verdict (alive), no route moves, a few ARP requests', async () => {
    const l = (lab = await forwardLab({ routing: 'metric' }));
    await startFlowServer(l, 'server', TCP_PORT).listening;
    await loadNft(
      l,
      'r1',
      'arpcount',
      'table arp count {\n  chain in { type filter hook input priority 0; arp operation request counter; }\n}\n',
    );
    const before = await stableRoutes(l, 'gw');
    const d = await LabDaemon.start(l, 'gw', FAST);
    const flows = await startManyFlows(l, 'lanhost', GW.server4, TCP_PORT, 300, { durationMs: 30_000 });
    try {
      await sleep(500);
      const arpBefore = await arpRequests(l);
      await l.killSilently('server', 'wan0');
      await d.waitFor((e) => e.event === 'downstream_problem', 15_000, 'the downstream verdict');
      // The flows go on retransmitting with backoff; the incident stays one trigger and one verdict.
      await sleep(8000);
      const counts = Object.fromEntries(
        ['trigger', 'verdict', 'downstream_problem', 'routes_withdrawn'].map((n) => [n, d.named(n).length]),
      );
      assert.deepEqual(counts, { trigger: 1, verdict: 1, downstream_problem: 1, routes_withdrawn: 0 });
      assert.equal(d.named('verdict')[0]!.alive, true);
      assert.ok((d.named('trigger')[0]!.sockets as number) >= 3, JSON.stringify(d.named('trigger')[0]));
      // One verification's ARP requests (a few, not one per flow) and the kernel's own.
      const arp = (await arpRequests(l)) - arpBefore;
      assert.ok(arp <= 10, `${arp} ARP requests reached r1`);
      assert.equal(await stableRoutes(l, 'gw'), before);
    } finally {
      flows.kill();
      await d.stop();
    }
  });
});

async function arpRequests(lab: Lab): Promise<number> {
  const out = await lab.execOk('r1', ['nft', 'list', 'table', 'arp', 'count']);
  return Number(/packets (\d+)/.exec(out)?.[1] ?? 0);
}
