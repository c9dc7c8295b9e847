// Dead gateway detection on real kernels: a client with two routers and a server, in namespaces.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLabSpec } from '../lab/topologies';
import { startFlowClient, startFlowServer, type FlowClient } from '../lab/flows';
import { nodeAsNobody } from '../fixtures/unprivileged';

const PORT = 7000;
const FAST = 'dgd:\n  slow_poll_interval: 2s\n';

function startFlow(lab: Lab, dst: string, durationMs = 20_000): FlowClient {
  return startFlowClient(lab, 'client', dst, PORT, { durationMs });
}

async function routeDump(lab: Lab, host = 'client'): Promise<string> {
  return (
    (await lab.ip(host, ['-d', 'route', 'show', 'table', 'all'])) +
    (await lab.ip(host, ['-d', '-6', 'route', 'show', 'table', 'all']))
  );
}

/** The kernel's own routes, minus what the kernel adds and removes by itself (cache, neighbours). */
async function stableRoutes(lab: Lab): Promise<string> {
  return (await routeDump(lab))
    .split('\n')
    .filter((l) => l && !/expires|cache/.test(l))
    .sort()
    .join('\n');
}

async function defaults(lab: Lab, family: 4 | 6 = 4): Promise<string[]> {
  const out = await lab.ip('client', [family === 6 ? '-6' : '-4', 'route', 'show', 'default']);
  return out
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/\s+/g, ' ').trim());
}

describe('dead gateway detection in the lab', function () {
  this.timeout(90_000);
  let lab: Lab;

  before(function () {
    requireRoot(this);
  });

  beforeEach(async () => {
    lab = await Lab.create(dgdLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    await lab.blockPing('r1'); // r1 drops ping like a firewall, always: ping must never decide
  });

  afterEach(async () => {
    await lab?.close();
  });

  for (const family of [4, 6] as const) {
    it(`IPv${family}: an established flow and new connections fail over when r1 dies silently; revival restores exactly`, async () => {
      const server = family === 4 ? DGD.server4 : DGD.server6;
      const before = await stableRoutes(lab);
      const d = await LabDaemon.start(lab, 'client', FAST);
      const flow = startFlow(lab, server, 30_000);
      await waitFor(() => flow.echoes.length >= 10, 5000, 'the flow to run');
      const t0 = Date.now();
      await lab.killSilently('r1', 'lan0');
      const withdrawn = await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
      const switchedMs = Date.parse(withdrawn.time) - t0;
      assert.ok(switchedMs < 5000, `routes switched after ${switchedMs} ms`);
      const r1 = family === 4 ? DGD.r1_4 : DGD.r1_6;
      const r2 = family === 4 ? DGD.r2_4 : DGD.r2_6;
      const left = await defaults(lab, family);
      assert.equal(left.length, 1, left.join(' | '));
      assert.match(left[0]!, new RegExp(`via ${r2}`));
      // The established flow resumes through r2.
      await waitFor(
        () => flow.echoes.some((e) => e.t > Date.parse(withdrawn.time)),
        15_000,
        'the flow to resume',
      );
      // A new connection goes through r2 at once.
      const fresh = startFlow(lab, server, 2000);
      await waitFor(() => fresh.echoes.length > 0, 5000, 'a new connection to work');
      const st = await d.status();
      assert.equal(st.gateways.find((g) => g.address === r1)!.state, 'dead');
      // Revival: slow polling finds r1 answering ARP again and restores its routes exactly.
      await lab.revive('r1', 'lan0');
      await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === r1, 15_000, 'routes restored');
      assert.equal(await stableRoutes(lab), before);
      // r1 dies again a few seconds after its revival, the flow back on it: a new incident, with its
      // own trigger and a speculative verification again (the first death's incident used to cover
      // the next 10 s and leave it to a full verification after the threshold).
      await waitFor(() => flow.echoes.some((e) => e.t > Date.now() - 200), 5000, 'the flow through r1');
      const n = d.events.length;
      await lab.killSilently('r1', 'lan0');
      await d.waitFor(
        (e) => e.event === 'routes_withdrawn' && d.events.indexOf(e) >= n,
        15_000,
        'routes withdrawn again',
      );
      const again = d.events.slice(n).map((e) => e.event);
      assert.ok(again.includes('speculative_verify'), `second death: ${again.join(' ')}`);
      assert.ok(again.includes('trigger'), `second death: ${again.join(' ')}`);
      await lab.revive('r1', 'lan0');
      await d.waitFor(
        (e) => e.event === 'routes_restored' && d.events.indexOf(e) >= n,
        15_000,
        'routes restored again',
      );
      assert.equal(await stableRoutes(lab), before);
      assert.equal(await d.stop(), 0);
    });
  }

  it('a ping-blocking live gateway with a dead server behind it is never marked dead', async () => {
    const before = await stableRoutes(lab);
    const d = await LabDaemon.start(lab, 'client', FAST);
    const flow = startFlow(lab, DGD.server4);
    await waitFor(() => flow.echoes.length >= 10, 5000, 'the flow to run');
    await lab.killSilently('server', 'wan0');
    const down = await d.waitFor((e) => e.event === 'downstream_problem', 15_000, 'the downstream verdict');
    assert.equal(down.gateway, DGD.r1_4);
    const verdict = d.events.find(
      (e) => e.event === 'verdict' && e.gateway === DGD.r1_4 && e.alive === true,
    )!;
    assert.equal(verdict.echo_rtt_ms, null, 'r1 drops ping, and is alive all the same');
    await new Promise((r) => setTimeout(r, 3000)); // more retransmissions: still nothing moves
    assert.equal(d.named('routes_withdrawn').length, 0);
    assert.equal(await stableRoutes(lab), before);
    assert.equal((await d.status()).gateways.find((g) => g.address === DGD.r1_4)!.state, 'active');
    await d.stop();
  });

  it('UDP-only traffic fails over only with active probing', async () => {
    // Without active probing: UDP never triggers the TCP scan, and within this window the kernel's
    // neighbour entry for r1 stays REACHABLE (15-45 s), so nothing is detected.
    const udp = (seconds: number) =>
      lab.spawn('client', [
        'bash',
        '-c',
        `for i in $(seq ${seconds * 10}); do echo x; sleep 0.1; done | socat -u - UDP:${DGD.server4}:9999`,
      ]);
    let d = await LabDaemon.start(lab, 'client', FAST);
    udp(8);
    await new Promise((r) => setTimeout(r, 500));
    await lab.killSilently('r1', 'lan0');
    await new Promise((r) => setTimeout(r, 5000));
    assert.equal(d.named('routes_withdrawn').length, 0, 'no trigger sees UDP');
    await d.stop();
    await lab.revive('r1', 'lan0');
    // With active probing every 100 ms, dead after 3 misses: no traffic needed at all.
    d = await LabDaemon.start(
      lab,
      'client',
      `dgd:\n  slow_poll_interval: 2s\n  active:\n    - { gateway: ${DGD.r1_4}, interval: 100ms, misses: 3 }\n`,
    );
    await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing to start');
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const w = await d.waitFor(
      (e) => e.event === 'routes_withdrawn',
      5000,
      'routes withdrawn by active probing',
    );
    assert.ok(Date.parse(w.time) - t0 < 2000, `switched after ${Date.parse(w.time) - t0} ms`);
    assert.deepEqual(
      (await defaults(lab)).map((l) => l.split(' ')[2]),
      [DGD.r2_4],
    );
    await d.stop();
  });

  it('multipath: only the dead nexthop is removed, and it is put back with its weight', async () => {
    await lab.ip('client', [
      'route',
      'add',
      '198.18.9.0/24',
      'metric',
      '50',
      'nexthop',
      'via',
      DGD.r1_4,
      'weight',
      '1',
      'nexthop',
      'via',
      DGD.r2_4,
      'weight',
      '3',
    ]);
    const before = await stableRoutes(lab);
    const d = await LabDaemon.start(lab, 'client', FAST);
    const flow = startFlow(lab, DGD.server4);
    await waitFor(() => flow.echoes.length >= 5, 5000, 'the flow to run');
    await lab.killSilently('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
    const mp = await lab.ip('client', ['route', 'show', '198.18.9.0/24']);
    assert.match(mp, /via 198\.18\.1\.2/);
    assert.doesNotMatch(mp, /198\.18\.1\.1/);
    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored', 15_000, 'routes restored');
    assert.equal(await stableRoutes(lab), before);
    await d.stop();
  });

  it('off restores every withdrawn route and stops all triggers; on resumes; the switch persists across restarts', async () => {
    const before = await stableRoutes(lab);
    let d = await LabDaemon.start(lab, 'client', FAST);
    await lab.killSilently('r1', 'lan0');
    startFlow(lab, DGD.server4);
    await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
    const off = await d.cli(['off']);
    assert.equal(off.code, 0, off.stderr);
    assert.equal(await stableRoutes(lab), before, 'off restores');
    assert.equal((await d.status()).enabled, false);
    // While off, a dead r1 and a retransmitting flow change nothing.
    startFlow(lab, DGD.server4, 4000);
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await stableRoutes(lab), before);
    // Off persists across a restart.
    await d.stop();
    d = await LabDaemon.restart(d, FAST);
    assert.equal((await d.status()).enabled, false);
    const on = await d.cli(['on']);
    assert.equal(on.code, 0, on.stderr);
    startFlow(lab, DGD.server4);
    await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn after on');
    await d.stop();
  });

  it('SIGTERM restores every withdrawn route and exits 0', async () => {
    const before = await stableRoutes(lab);
    const d = await LabDaemon.start(lab, 'client', FAST);
    await lab.killSilently('r1', 'lan0');
    startFlow(lab, DGD.server4);
    await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
    assert.notEqual(await stableRoutes(lab), before);
    assert.equal(await d.signal('SIGTERM'), 0);
    assert.equal(await stableRoutes(lab), before);
  });

  it('kill -9, then a restart: the journal is reconciled and nothing withdrawn is forgotten', async () => {
    const before = await stableRoutes(lab);
    let d = await LabDaemon.start(lab, 'client', FAST);
    await lab.killSilently('r1', 'lan0');
    startFlow(lab, DGD.server4);
    await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
    d.child.kill('SIGKILL');
    await waitFor(() => d.child.exitCode !== null || d.child.signalCode !== null, 5000, 'the daemon to die');
    const journal = JSON.parse(fs.readFileSync(path.join(d.stateDir, 'withdrawn-routes.json'), 'utf8')) as {
      entries: unknown[];
    };
    assert.equal(journal.entries.length, 1);
    d = await LabDaemon.restart(d, FAST);
    const st = await d.status();
    assert.equal(st.gateways.find((g) => g.address === DGD.r1_4)!.state, 'dead');
    await lab.revive('r1', 'lan0');
    await d.waitFor(
      (e) => e.event === 'routes_restored' && e.gateway === DGD.r1_4,
      15_000,
      'routes restored after restart',
    );
    assert.equal(await stableRoutes(lab), before);
    await d.stop();
  });

  it('SIGHUP: a good config is taken, a bad one refused and the old one kept', async () => {
    const d = await LabDaemon.start(lab, 'client', FAST);
    const cfg = lab.tempPath('client-config.yaml');
    fs.writeFileSync(
      cfg,
      `dgd:\n  slow_poll_interval: 2s\n  active:\n    - { gateway: ${DGD.r1_4}, interval: 200ms, misses: 3 }\n`,
    );
    await d.signal('SIGHUP');
    await d.waitFor((e) => e.event === 'config_reloaded', 5000, 'the reload');
    await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing from the new config');
    fs.writeFileSync(cfg, 'dgd:\n  slow_poll_interval: soon\n');
    await d.signal('SIGHUP');
    const refused = await d.waitFor((e) => e.event === 'config_refused', 5000, 'the refusal');
    assert.match(
      String(refused.error),
      /client-config\.yaml:2: dgd\.slow_poll_interval: "soon" is not a duration/,
    );
    // The old config still acts: active probing declares r1 dead without any traffic.
    await lab.killSilently('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_withdrawn', 5000, 'withdrawal under the kept config');
    await d.stop();
  });

  it('a non-root client is refused by the control socket: by its mode, and by SO_PEERCRED', async () => {
    const d = await LabDaemon.start(lab, 'client', FAST);
    const asNobody = () => lab.exec('client', nodeAsNobody('bin/ipdeadgate', 'off', '--control', d.control));
    assert.equal(fs.statSync(d.control).mode & 0o777, 0o600);
    let r = await asNobody();
    assert.equal(r.code, 1);
    assert.match(r.stderr, /permission denied on .*: the control socket is root-only/);
    assert.doesNotMatch(r.stderr, /at .*\.js:\d+/, 'no stack trace');
    // Even if someone loosens the file's mode, the daemon checks the peer's uid itself.
    fs.chmodSync(d.control, 0o666);
    r = await asNobody();
    assert.equal(r.code, 1);
    assert.match(r.stderr, /root-only \(your uid is 65534\)/);
    assert.equal((await d.status()).enabled, true, 'the refused "off" did nothing');
    await d.stop();
  });

  it('the last route to a destination is kept (keep_last_route)', async () => {
    await lab.ip('client', ['route', 'del', 'default', 'via', DGD.r2_4]);
    const d = await LabDaemon.start(lab, 'client', FAST);
    await lab.killSilently('r1', 'lan0');
    startFlow(lab, DGD.server4);
    await d.waitFor((e) => e.event === 'route_kept', 15_000, 'the kept-route event');
    assert.deepEqual((await defaults(lab)).length, 1);
    const g = (await d.status()).gateways.find((x) => x.address === DGD.r1_4)!;
    assert.equal(g.state, 'dead');
    assert.equal(g.routes[0]!.state, 'kept');
    await d.stop();
  });

  it('a bad config exits 2 naming file, line and key, and changes nothing', async () => {
    const before = await stableRoutes(lab);
    const cfg = lab.tempPath('bad.yaml');
    fs.writeFileSync(cfg, 'dgd:\n  retransmit_threshold: 3\n  verify_probes: many\n');
    const r = await lab.cli('client', [
      'daemon',
      '--config',
      cfg,
      '--control',
      lab.tempPath('bad.sock'),
      '--state-dir',
      lab.tempPath('bad-state'),
    ]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /bad\.yaml:3: dgd\.verify_probes: /);
    assert.equal(await stableRoutes(lab), before);
  });
});
