// The engine's state on real kernels (the unit side is in enginestate.test.ts): off and on with
// active probing, a dual-stack gateway dying and coming back 20 times while routes churn, and a
// route put back by its owner through a dead gateway (IPv4 and IPv6), whose flows must not wait
// for the kernel to fail the neighbour entry.
import { strict as assert } from 'node:assert';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLabSpec } from '../lab/topologies';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../lab/lab';
import { startFlowClient, startFlowServer } from '../lab/flows';

const PORT = 7000;

async function defaults(lab: Lab, family: 4 | 6): Promise<string[]> {
  const out = await lab.ip('client', [family === 6 ? '-6' : '-4', 'route', 'show', 'default']);
  return out
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/\s+/g, ' ').trim().split(' ')[2]!)
    .sort();
}

describe('dead gateway detection: the engine state in the lab', function () {
  this.timeout(300_000);
  let lab: Lab;
  let daemon: LabDaemon | null = null;

  before(function () {
    requireRoot(this);
  });

  beforeEach(async () => {
    lab = await Lab.create(dgdLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    await lab.blockPing('r1');
  });

  afterEach(async () => {
    await daemon?.stop().catch(() => undefined);
    daemon = null;
    await lab?.close();
  });

  /** Wait for r1 dead in both families after event `from`, then alive again after each death. */
  async function cycle(d: LabDaemon, what: string, alive: () => Promise<void>): Promise<void> {
    const deaths: number[] = [];
    const from = d.events.length;
    await lab.killSilently('r1', 'lan0');
    for (const gw of [DGD.r1_4, DGD.r1_6]) {
      const e = await d.waitFor(
        (x) => x.event === 'state' && x.to === 'dead' && x.gateway === gw && d.events.indexOf(x) >= from,
        15_000,
        `${what}: ${gw} dead`,
      );
      deaths.push(d.events.indexOf(e));
    }
    await alive();
    // Events of one round may still be arriving when the next begins: "active" counts only after
    // this round's death.
    for (const [i, gw] of [DGD.r1_4, DGD.r1_6].entries())
      await d.waitFor(
        (x) =>
          x.event === 'state' && x.to === 'active' && x.gateway === gw && d.events.indexOf(x) > deaths[i]!,
        15_000,
        `${what}: ${gw} alive`,
      );
  }

  it('off then on keeps active probing: r1 dies with no traffic at all and is found', async () => {
    const d = (daemon = await LabDaemon.start(
      lab,
      'client',
      'dgd:\n  slow_poll_interval: 2s\n  active:\n' +
        `    - { gateway: ${DGD.r1_4}, interval: 100ms, misses: 3 }\n` +
        `    - { gateway: "${DGD.r1_6}", interval: 100ms, misses: 3 }\n`,
    ));
    await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing to start');
    assert.equal((await d.cli(['off'])).code, 0);
    assert.equal((await d.cli(['on'])).code, 0);
    await new Promise((r) => setTimeout(r, 500));
    await cycle(d, 'after off and on', () => lab.revive('r1', 'lan0'));
    assert.ok(
      d.named('trigger').every((e) => e.reason === 'active_probe'),
      'only active probing could find it: there is no traffic',
    );
    assert.equal(await d.stop(), 0);
  });

  it('20 dual-stack deaths and revivals while routes churn: no revival leaves a route of the living r1 out', async () => {
    const d = (daemon = await LabDaemon.start(
      lab,
      'client',
      'dgd:\n  slow_poll_interval: 1s\n  flap_limit: 1000\n  rewithdraw_limit: 1000\n',
    ));
    // Another route through r1 added and removed every 20 ms in each family, as an owner of routes
    // would (each a route event, a refresh 50 ms later; while r1 is dead each addition is withdrawn
    // again), and a flow per family that finds each death; bounded in count and time.
    const churn = lab.spawn('client', [
      'bash',
      '-c',
      'for i in $(seq 5000); do ' +
        `ip route add 198.18.77.0/24 via ${DGD.r1_4}; ip -6 route add 2001:db8:77::/64 via ${DGD.r1_6}; ` +
        'sleep 0.02; ip route del 198.18.77.0/24; ip -6 route del 2001:db8:77::/64; sleep 0.02; done 2>/dev/null',
    ]);
    const flows = [DGD.server4, DGD.server6].map((dst) =>
      startFlowClient(lab, 'client', dst, PORT, { durationMs: 240_000 }),
    );
    await waitFor(() => flows.every((f) => f.echoes.length >= 5), 5000, 'the flows to run');
    const lost: string[] = [];
    for (let round = 0; round < 20; round++) {
      await cycle(d, `round ${round}`, () => lab.revive('r1', 'lan0'));
      // Whatever raced the revival has run by now (a refresh comes 50 ms after a route event).
      await new Promise((r) => setTimeout(r, 300));
      if (!(await defaults(lab, 4)).includes(DGD.r1_4)) lost.push(`round ${round}: IPv4 default via r1`);
      if (!(await defaults(lab, 6)).includes(DGD.r1_6)) lost.push(`round ${round}: IPv6 default via r1`);
    }
    churn.kill('SIGTERM');
    assert.deepEqual(lost, [], 'every revival put back every route of the living r1');
    const st = await d.status();
    for (const gw of [DGD.r1_4, DGD.r1_6])
      assert.equal(st.gateways.find((g) => g.address === gw)?.state, 'active');
    assert.equal(
      (st.withdrawn_routes as unknown[]).length,
      0,
      'nothing left withdrawn while its gateway lives',
    );
    assert.equal(await d.stop(), 0);
  });

  for (const family of [4, 6] as const) {
    it(`IPv${family}: a route put back through a dead gateway: its flows go on through r2 before the kernel fails the neighbour entry (3 s)`, async () => {
      const [r1, r2, server, dflt] =
        family === 4
          ? [DGD.r1_4, DGD.r2_4, DGD.server4, 'default']
          : [DGD.r1_6, DGD.r2_6, DGD.server6, '::/0'];
      const d = (daemon = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 1h\n'));
      // A segment every 10 ms: some are sent in the few tens of milliseconds the route is back.
      const flow = startFlowClient(lab, 'client', server, PORT, { intervalMs: 10, durationMs: 60_000 });
      await waitFor(() => flow.echoes.length >= 20, 5000, 'the flow to run');
      await lab.killSilently('r1', 'lan0');
      const first = await d.waitFor(
        (e) => e.event === 'routes_withdrawn' && e.gateway === r1,
        15_000,
        'routes withdrawn',
      );
      await waitFor(
        () => flow.echoes.some((e) => e.t > Date.parse(first.time)),
        10_000,
        'the flow to resume through r2',
      );
      await new Promise((r) => setTimeout(r, 500));
      assert.deepEqual(await defaults(lab, family), [r2]);
      // Its owner puts the route back (a DHCP renewal, networkctl reconfigure).
      const n = d.events.length;
      const lastSeq = flow.echoes.at(-1)!.seq;
      const t0 = Date.now();
      await lab.ip('client', [
        family === 6 ? '-6' : '-4',
        'route',
        'add',
        dflt,
        'via',
        r1,
        'dev',
        'lan0',
        'metric',
        '100',
        'proto',
        'dhcp',
      ]);
      await d.waitFor(
        (e) =>
          e.event === 'routes_withdrawn' &&
          e.reason === 'route added via a dead gateway' &&
          d.events.indexOf(e) >= n,
        5000,
        'the route withdrawn again',
      );
      await d.waitFor(
        (e) => e.event === 'neighbour_flushed' && e.gateway === r1 && d.events.indexOf(e) >= n,
        5000,
        "the dead gateway's neighbour entry flushed again",
      );
      // Segments sent while the route was back waited in r1's INCOMPLETE entry. Freed by the flush,
      // they are retransmitted through r2 at the flow's next timer; left there, they would wait
      // until the kernel fails the entry, 3 s after the first of them.
      const sentAfter = lastSeq + 20; // sent at least 200 ms after the re-add, the route long gone
      await waitFor(
        () => flow.echoes.some((e) => e.seq > sentAfter),
        2500,
        'the flow to go on through r2 before the neighbour entry fails',
      );
      const echoes = flow.echoes.filter((e) => e.t >= t0);
      let stall = 0;
      for (let i = 1; i < echoes.length; i++) stall = Math.max(stall, echoes[i]!.t - echoes[i - 1]!.t);
      // For the report only (timing belongs to the benchmarks): the longest gap between echoes.
      console.log(`      IPv${family}: longest gap between echoes after the re-add: ${stall} ms`);
      assert.deepEqual(await defaults(lab, family), [r2]);
      assert.equal(await d.stop(), 0);
    });
  }

  it('3 000 half-open sockets from spoofed SYNs, their SYN-ACKs retransmitted through r1: no trigger, no verification', async () => {
    const flood = path.join(REPO_ROOT, 'test', 'fixtures', 'synflood.py');
    // Every SYN leaves a request socket (no cookies, a deep queue); r1 drops the SYN-ACKs.
    for (const kv of [
      'net.ipv4.tcp_syncookies=0',
      'net.ipv4.tcp_max_syn_backlog=8192',
      'net.core.somaxconn=8192',
    ])
      await lab.execOk('client', ['sysctl', '-qw', kv]);
    await lab.ip('r1', ['route', 'add', 'blackhole', '198.19.0.0/16']);
    const listener = lab.spawn('client', ['python3', flood, 'listen', '8080', '60']);
    await new Promise<void>((resolve, reject) => {
      listener.stdout!.once('data', () => resolve());
      listener.once('exit', (code) => reject(new Error(`the listener exited (${code})`)));
    });
    const d = (daemon = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2s\n'));
    const cpu = () => {
      const f = fs.readFileSync(`/proc/${d.child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      return (Number(f[11]) + Number(f[12])) * 10; // utime + stime, clock ticks of 10 ms
    };
    const cpu0 = cpu();
    const sent = await lab.exec('r1', ['python3', flood, 'send', DGD.client4, '8080', '3000']);
    assert.equal(sent.code, 0, sent.stderr);
    const halfOpen = (await lab.execOk('client', ['ss', '-Htn', 'state', 'syn-recv']))
      .split('\n')
      .filter(Boolean);
    assert.ok(halfOpen.length >= 2500, `half-open sockets: ${halfOpen.length}`);
    // SYN-ACKs are retransmitted after 1, 3 and 7 s: the third crosses retransmit_threshold.
    await new Promise((r) => setTimeout(r, 9000));
    const used = cpu() - cpu0;
    console.log(`      ${halfOpen.length} half-open sockets: the daemon used ${used} ms of CPU in 9 s`);
    assert.deepEqual(
      d.events
        .filter((e) => ['trigger', 'speculative_verify', 'verdict'].includes(e.event))
        .map((e) => e.event),
      [],
    );
    const st = await d.status();
    assert.equal(st.gateways.find((g) => g.address === DGD.r1_4)?.state, 'active');
    assert.equal((st.last_scan as { retransmitting: number }).retransmitting, 0, 'none of them is scanned');
    assert.equal(await d.stop(), 0);
  });

  it('a forged router advertisement: the kernel takes its default route (proto ra), detection tracks no gateway for it', async () => {
    const d = (daemon = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2s\n'));
    // A station on the LAN (here r2's namespace; any would do) announces itself as a router.
    await lab.execOk('client', ['sysctl', '-qw', 'net.ipv6.conf.lan0.accept_ra=2']);
    const ra = path.join(REPO_ROOT, 'test', 'fixtures', 'forged-ra.py');
    const sent = await lab.exec('r2', ['python3', ra, 'lan0', '5']);
    assert.equal(sent.code, 0, sent.stderr);
    let raRoute = '';
    await waitFor(
      async () => (raRoute = (await lab.ip('client', ['-6', 'route', 'show', 'proto', 'ra'])).trim()) !== '',
      5000,
      'the kernel to take the advertised route',
    );
    const router = /via (fe80::\S+)/.exec(raRoute)?.[1];
    assert.ok(router, raRoute);
    await new Promise((r) => setTimeout(r, 500)); // a route refresh comes 50 ms after its event
    const st = await d.status();
    assert.deepEqual(
      st.gateways.map((g) => g.address).filter((a) => a.startsWith('fe80:')),
      [],
      `no tracked gateway for ${raRoute}`,
    );
    assert.equal(d.named('gateway_appeared').filter((e) => e.gateway === router).length, 0);
    assert.equal(await d.stop(), 0);
  });

  it('r1 dies seconds after a server outage behind it: verified early (speculatively), its trigger logged', async () => {
    const d = (daemon = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2s\n'));
    const flow = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 60_000 });
    await waitFor(() => flow.echoes.length >= 10, 5000, 'the flow to run');
    // The server goes away for a moment: a downstream problem, r1 answers.
    await lab.killSilently('server', 'wan0');
    await d.waitFor((e) => e.event === 'downstream_problem', 15_000, 'the downstream verdict');
    await lab.revive('server', 'wan0');
    const back = flow.echoes.length;
    await waitFor(() => flow.echoes.length > back + 5, 15_000, 'the flow back after the outage');
    // Well within the incident's 10 s, r1 dies.
    const n = d.events.length;
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const withdrawn = await d.waitFor(
      (e) => e.event === 'routes_withdrawn' && d.events.indexOf(e) >= n,
      15_000,
      'routes withdrawn',
    );
    const after = d.events.slice(n, d.events.indexOf(withdrawn));
    // For the report only (timing belongs to the benchmarks).
    console.log(`      withdrawn ${Date.parse(withdrawn.time) - t0} ms after r1's death`);
    assert.ok(
      after.some((e) => e.event === 'verdict' && e.speculative === true && e.alive === false),
      `the death was found by a speculative verification: ${after.map((e) => e.event).join(' ')}`,
    );
    assert.ok(
      after.some((e) => e.event === 'trigger' && e.gateway === DGD.r1_4),
      `and its trigger logged at info: ${after.map((e) => e.event).join(' ')}`,
    );
    assert.equal(await d.stop(), 0);
  });
});
