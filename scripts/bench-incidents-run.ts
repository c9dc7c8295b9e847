// The incidents benchmark (scripts/bench-incidents runs this): N incident records written by the
// daemon's own recorder (src/daemon/incidents.ts) into a temporary state directory, then
// `ipdeadgate incidents` (the list, from the index alone) and `incidents ID` timed, both in this
// process (read + format) and as the whole command in a new node process, the way an operator
// runs it. The directory is removed at the end, also on failure.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IncidentRecorder } from '../src/daemon/incidents';
import { IncidentStore, readIncident, readIncidentIndex } from '../src/daemon/incidentstore';
import { formatIncident, formatIncidentList } from '../src/cli/incidents';

const CLI = path.join(__dirname, '..', '..', 'bin', 'ipdeadgate');

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** One failover as the engine reports it, with a few samples, routes, polls and a capture. */
function failover(rec: IncidentRecorder, clock: { t: number }, i: number): void {
  const gw = `198.18.${1 + (i % 200)}.1`;
  const ev = (dt: number, name: string, f: Record<string, unknown>) => {
    clock.t += dt;
    rec.onEvent(name, { gateway: gw, interface: 'up0', ...f });
  };
  const sample = (p: number) => ({
    src: `198.18.10.10:${40000 + p}`,
    dst: '198.18.2.10:443',
    state: 'ESTABLISHED',
    retransmits: 3,
  });
  ev(0, 'trigger', { reason: 'aggregate', sockets: 12, samples: [sample(1), sample(2), sample(3)] });
  for (const [at, step] of [
    [0, 'purge'],
    [1, 'arp_probes'],
    [250, 'arp_probe'],
    [500, 'arp_probe'],
    [750, 'deadline'],
  ] as const)
    rec.onEvent('verify_step', { gateway: gw, interface: 'up0', at_ms: at, step, detail: `who-has ${gw}` });
  ev(750, 'verdict', {
    alive: false,
    speculative: false,
    mac: null,
    arp_rtt_ms: null,
    echo_rtt_ms: null,
    probes_sent: 3,
    duration_ms: 750,
  });
  ev(1, 'state', { from: 'suspect', to: 'dead', phase: 'dead', reason: 'no ARP reply' });
  const routes = Array.from(
    { length: 6 },
    (_, k) => `198.18.${100 + k}.0/24 via ${gw} table 254 metric 10 proto boot`,
  );
  ev(10, 'routes_withdrawn', {
    reason: 'dead',
    routes: ['nexthop id 10 group 1/2 -> nexthop id 10 group 2', ...routes],
  });
  ev(3, 'flows_resent', {
    flows: 12,
    resent: 12,
    detail: Array.from({ length: 12 }, (_, k) => ({ ...sample(k), resent: true })),
  });
  ev(60, 'conntrack_followed', {
    after: 'withdrawal',
    interfaces: ['up0'],
    examined: 400,
    deleted: 12,
    kept: 388,
    truncated: false,
    ms: 4,
  });
  ev(3000, 'capture_written', {
    file: `/var/lib/ipdeadgate/captures/x_${gw}.pcap`,
    dead_at: '',
    packets: 300,
    bytes: 40000,
    removed_files: [],
  });
  ev(0, 'capture_segments', {
    file: 'x',
    segments: 250,
    flows: [sample(1).src],
    first_via_new_gateway: { ts_ms: clock.t - 2990, flow: 'a > b', mac: '02:00:00:00:00:02' },
  });
  for (let p = 0; p < 30; p++) ev(2000, 'poll', { answers: 0, needed: 2 });
  ev(2000, 'routes_restored', { reason: 'revived', routes: [...routes, 'nexthop id 10 group 1/2'] });
  ev(1, 'state', { from: 'dead', to: 'active', phase: 'active', reason: 'answered' });
  clock.t += 600_000;
}

async function main(): Promise<void> {
  const n = arg('--incidents', 1000);
  const runs = arg('--runs', 15);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-bench-incidents-'));
  try {
    const clock = { t: Date.parse('2026-01-01T00:00:00Z') };
    const store = new IncidentStore(dir);
    const rec = new IncidentRecorder(store, null, () => clock.t);
    await rec.load();
    let t = performance.now();
    for (let i = 0; i < n; i++) failover(rec, clock, i);
    await rec.close();
    const writeMs = performance.now() - t;
    const index = path.join(dir, 'incidents', 'index.json');
    const files = fs.readdirSync(path.join(dir, 'incidents')).length - 1;
    const recordBytes = fs.statSync(path.join(dir, 'incidents', '00000001.json')).size;

    const inproc: number[] = [];
    const inprocShow: number[] = [];
    for (let i = 0; i < runs; i++) {
      t = performance.now();
      formatIncidentList((await readIncidentIndex(dir)).reverse());
      inproc.push(performance.now() - t);
      t = performance.now();
      formatIncident(await readIncident(dir, Math.ceil(n / 2)));
      inprocShow.push(performance.now() - t);
    }
    // Interleaved (one run of each command per round), so a burst of load on the shared machine
    // falls on all of them alike.
    const commands: Record<string, string[]> = {
      list: ['incidents', '--state-dir', dir],
      listJson: ['incidents', '--json', '--state-dir', dir],
      show: ['incidents', String(Math.ceil(n / 2)), '--state-dir', dir],
      version: ['--version'],
      nodeOnly: [],
    };
    const times: Record<string, number[]> = {};
    // CPU time (user + system, from GNU time) as well as wall time: on a machine shared with other
    // work, wall time is mostly waiting for a core; CPU time is what the command itself costs.
    const cpu: Record<string, number[]> = {};
    const timeBin = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : null;
    for (let i = 0; i < runs; i++)
      for (const [k, args] of Object.entries(commands)) {
        const argv = k === 'nodeOnly' ? ['-e', '0'] : [CLI, ...args];
        const t0 = performance.now();
        if (timeBin) {
          const r = spawnSync(timeBin, ['-f', '%U %S', process.execPath, ...argv], { encoding: 'utf8' });
          const [u, sy] = r.stderr.trim().split('\n').pop()!.split(' ').map(Number);
          (cpu[k] ??= []).push(((u ?? 0) + (sy ?? 0)) * 1000);
        } else execFileSync(process.execPath, argv, { stdio: ['ignore', 'ignore', 'inherit'] });
        (times[k] ??= []).push(performance.now() - t0);
      }
    const list = times.list!;
    const listJson = times.listJson!;
    const show = times.show!;
    const version = times.version!;
    const row = (what: string, xs: number[], k?: string) =>
      `| ${what} | ${median(xs).toFixed(1)} | ${Math.max(...xs).toFixed(1)} | ${k && cpu[k] ? median(cpu[k]).toFixed(0) : ''} |`;
    console.log(
      `${n} incidents: ${files} record files, index ${(fs.statSync(index).size / 1024).toFixed(0)} KiB, one record ${(recordBytes / 1024).toFixed(1)} KiB; written in ${writeMs.toFixed(0)} ms (one batch)`,
    );
    console.log(
      `node ${process.version}, ${os.cpus().length} cores, load ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}, ${runs} runs each\n`,
    );
    console.log('| what | median ms | max ms | median CPU ms (user+sys) |');
    console.log('|---|---:|---:|---:|');
    console.log(row('list: read the index + format (in-process)', inproc));
    console.log(row('one record: read + format (in-process)', inprocShow));
    console.log(row('`ipdeadgate incidents` (whole command, new node process)', list, 'list'));
    console.log(row('`ipdeadgate incidents --json`', listJson, 'listJson'));
    console.log(row(`\`ipdeadgate incidents ${Math.ceil(n / 2)}\``, show, 'show'));
    console.log(
      row('`ipdeadgate --version` (node start + the whole CLI loaded, for scale)', version, 'version'),
    );
    console.log(row('`node -e 0` (node start alone, for scale)', times.nodeOnly!, 'nodeOnly'));
  } finally {
    if (process.env.KEEP_DIR) console.log('kept', dir);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
