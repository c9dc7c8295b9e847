// Nothing a local user or a full disk does costs detection a route: a gateway dies while the
// metrics endpoint is held open past the daemon's fd limit, while it is hammered, and while the
// state dir has no space left. Each time the route leaves within a generous bounded wait, the
// daemon answers `status` (a 2 s request timeout), and it stays alive.
import { strict as assert } from 'node:assert';
import { execFile, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { controlRequest } from '../../src/daemon/control';
import { type Lab, REPO_ROOT, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLab } from '../lab/topologies';
import { waitDgdLabReady } from '../fixtures/neigh-lab';

const run = promisify(execFile);
const METRICS_PORT = 9741;
const CONFIG =
  'dgd:\n  slow_poll_interval: 1s\n  revive_probes: 1\n' + `metrics:\n  listen: 127.0.0.1:${METRICS_PORT}\n`;
const PRESSURE = path.join(REPO_ROOT, 'dist', 'test', 'fixtures', 'metrics-pressure.js');
const FLOW = path.join(REPO_ROOT, 'dist', 'test', 'lab', 'flow.js');

/** The client's IPv4 default routes, as `ip route` prints them. */
async function defaultVia(lab: Lab): Promise<string[]> {
  const out = await lab.ip('client', ['-4', 'route', 'show', 'default']);
  return out
    .split('\n')
    .map((l) => /via (\S+)/.exec(l)?.[1])
    .filter((x): x is string => !!x);
}

/** The last JSON line a pressure fixture printed. */
function follow(child: ChildProcess): { last: Record<string, number> } {
  const state = { last: {} as Record<string, number> };
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (c: string) => {
    buf += c;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        state.last = JSON.parse(line) as Record<string, number>;
      } catch {
        /* not a stats line */
      }
    }
  });
  return state;
}

/** A TCP flow through r1 (its retransmissions are the trigger), then r1 dies. */
async function killR1UnderFlow(lab: Lab): Promise<void> {
  const flow = lab.spawn('client', [process.execPath, FLOW, 'client', DGD.server4, '7000', '50', '60000']);
  let echoes = 0;
  flow.stdout!.on('data', (b: Buffer) => (echoes += (b.toString().match(/"seq"/g) ?? []).length));
  await waitFor(() => echoes >= 10, 10_000, 'the flow to run');
  await lab.killSilently('r1', 'lan0');
}

/** The daemon answers status within 2 s, and says r1 is dead with its route withdrawn. */
async function statusAnswers(d: LabDaemon): Promise<void> {
  const s = (await controlRequest(d.control, 'status', {}, 2000)) as {
    enabled: boolean;
    gateways: { address: string; state: string }[];
  };
  assert.equal(s.enabled, true);
  assert.equal(s.gateways.find((g) => g.address === DGD.r1_4)?.state, 'dead');
}

describe('detection under local pressure and a full disk (lab)', function () {
  this.timeout(180_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });
  afterEach(async () => {
    await lab?.close();
    lab = undefined;
  });

  async function labWithServer(): Promise<Lab> {
    lab = await dgdLab();
    await waitDgdLabReady(lab);
    lab.spawn('server', [process.execPath, FLOW, 'server', '7000']);
    return lab;
  }

  it('1 100 held metrics connections under an fd limit of 1 024: the route still leaves', async () => {
    const lab = await labWithServer();
    const d = await LabDaemon.start(lab, 'client', CONFIG, [], ['prlimit', '--nofile=1024:1024', '--']);
    await d.waitFor((e) => e.event === 'metrics_listening', 10_000, 'the metrics endpoint');
    // The holder has room for its own descriptors; the daemon has 1 024.
    const holder = lab.spawn('client', [
      'prlimit',
      '--nofile=4096:4096',
      '--',
      process.execPath,
      PRESSURE,
      'hold',
      String(METRICS_PORT),
      '1100',
      '120000',
    ]);
    const held = follow(holder);
    // Every connection was accepted once (the server closes those beyond its cap; they come back).
    await waitFor(() => (held.last.open ?? 0) + (held.last.closed ?? 0) >= 1100, 30_000, '1 100 connections');
    await killR1UnderFlow(lab);
    await d.waitFor((e) => e.event === 'routes_withdrawn' && e.gateway === DGD.r1_4, 30_000, 'r1 withdrawn');
    assert.deepEqual(await defaultVia(lab), [DGD.r2_4]);
    await statusAnswers(d);
    assert.equal(d.exitCode, null);
    assert.equal(
      d.events.filter((e) => e.event === 'error' && e.during === 'verification').length,
      0,
      'no verification failed to run',
    );
    holder.kill('SIGTERM');
    assert.equal(await d.stop(), 0);
  });

  for (const mode of ['hammer', 'pipeline'] as const)
    it(`16 keep-alive clients ${mode === 'hammer' ? 'hammering' : 'pipelining'} GET /metrics: the route still leaves`, async () => {
      const lab = await labWithServer();
      const d = await LabDaemon.start(lab, 'client', CONFIG);
      await d.waitFor((e) => e.event === 'metrics_listening', 10_000, 'the metrics endpoint');
      const hammer = lab.spawn('client', [
        process.execPath,
        PRESSURE,
        mode,
        String(METRICS_PORT),
        '16',
        '120000',
      ]);
      const hits = follow(hammer);
      await waitFor(() => (hits.last.responses ?? 0) >= 200, 30_000, 'the hammering to run');
      const killedAt = performance.now();
      await killR1UnderFlow(lab);
      const withdrawn = await d.waitFor(
        (e) => e.event === 'routes_withdrawn' && e.gateway === DGD.r1_4,
        30_000,
        'r1 withdrawn',
      );
      // Informational (the machine is shared): the figure belongs to the report, not an assertion.
      console.log(`      (${mode}: withdrawn ${Math.round(withdrawn.seenAt - killedAt)} ms after the kill)`);
      assert.deepEqual(await defaultVia(lab), [DGD.r2_4]);
      await statusAnswers(d);
      const before = hits.last.responses ?? 0;
      await waitFor(() => (hits.last.responses ?? 0) > before, 10_000, 'metrics still served');
      hammer.kill('SIGTERM');
      assert.equal(await d.stop(), 0);
    });

  it('a full state dir during a death: withdrawn, alive, the error names the state dir, restored later', async () => {
    const lab = await labWithServer();
    // The state dir is a small tmpfs seen only by the daemon (a private mount namespace of its own;
    // nothing is mounted where the root namespace sees it).
    // LabDaemon's state dir for the client (the same path it computes).
    const stateDir = lab.tempPath('client-state');
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const d = await LabDaemon.start(
      lab,
      'client',
      CONFIG,
      [],
      [
        'unshare',
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        'mount -t tmpfs -o size=256k,mode=0700 idg-state "$0" && exec "$@"',
        stateDir,
      ],
    );
    assert.equal(d.stateDir, stateDir);
    const pid = d.child.pid!;
    const inDaemonMounts = (script: string) =>
      run('nsenter', ['-t', String(pid), '-m', '--', 'sh', '-c', script], { timeout: 10_000 });
    // The mount is the daemon's alone.
    assert.equal(fs.readdirSync(d.stateDir).length, 0);
    const fill = `cat /dev/zero > '${d.stateDir}/fill' 2>/dev/null; true`;
    await inDaemonMounts(fill);
    assert.match((await inDaemonMounts(`df -k '${d.stateDir}' | tail -1`)).stdout, /\s0\s+100%/);

    await killR1UnderFlow(lab);
    await d.waitFor((e) => e.event === 'routes_withdrawn' && e.gateway === DGD.r1_4, 30_000, 'r1 withdrawn');
    assert.deepEqual(await defaultVia(lab), [DGD.r2_4]);
    const failed = await d.waitFor((e) => e.event === 'state_write_failed', 5000, 'the write failure');
    assert.equal(failed.state_dir, d.stateDir);
    assert.match(String(failed.error), /ENOSPC/);
    await statusAnswers(d);
    assert.equal(d.exitCode, null);
    const status = (await controlRequest(d.control, 'status', {}, 2000)) as {
      state_writes: { failures: number; pending: string[] };
    };
    assert.ok(status.state_writes.failures >= 1);
    assert.ok(status.state_writes.pending.includes(path.join(d.stateDir, 'withdrawn-routes.json')));

    // Space again: the journal lands, with no temp file left from the failures.
    await inDaemonMounts(`rm -f '${d.stateDir}/fill'`);
    await d.waitFor((e) => e.event === 'state_write_recovered', 10_000, 'the journal to land');
    const files = (await inDaemonMounts(`ls -A '${d.stateDir}'`)).stdout.split('\n').filter(Boolean);
    assert.deepEqual(
      files.filter((f) => f.endsWith('.tmp')),
      [],
    );
    assert.ok(files.includes('withdrawn-routes.json'));

    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === DGD.r1_4, 30_000, 'r1 restored');
    await waitFor(async () => (await defaultVia(lab)).includes(DGD.r1_4), 5000, 'the route via r1 back');

    // SIGTERM on a full disk, with r1 dead again and its route withdrawn: the process ends and the
    // route is back (restored from memory; the journal could not be written).
    await inDaemonMounts(fill);
    const from = d.events.length;
    await lab.killSilently('r1', 'lan0');
    await d.waitFor(
      (e) => d.events.indexOf(e) >= from && e.event === 'routes_withdrawn' && e.gateway === DGD.r1_4,
      30_000,
      'r1 withdrawn again',
    );
    assert.deepEqual(await defaultVia(lab), [DGD.r2_4]);
    const code = await d.signal('SIGTERM', 15_000);
    assert.ok(code === 0 || code === 1, `exit ${code}`);
    assert.ok((await defaultVia(lab)).includes(DGD.r1_4), 'the route via r1 restored at stop');
  });
});
