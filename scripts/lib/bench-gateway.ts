// Gateway-host benchmark, in the lab of test/lab/gateway-topologies.ts (a LAN host behind the
// daemon's host gw; r1 metric 10 and r2 metric 20 towards the server's network):
//   - forwarded: the LAN host streams TCP (a message every 50 ms) and opens a short connection
//     every 200 ms through gw, which has no socket of these flows; r1 dies silently; when are its
//     routes withdrawn, when does the stream resume, when does a new connection succeed? Defaults
//     only. --trials N per family (10), --families 4,6.
//   - deadserver: 300 forwarded flows whose server stops answering (it drops everything on their
//     port), through live r1, for 20 s: the daemon's verdicts (none may be dead), the ARP requests r1 received, the
//     daemon's CPU.
//   - localdead: 300 sockets of the daemon's own host (gw) to a server that then goes silent,
//     through live r1, for 60 s at the defaults (flow resume on): the daemon's CPU, the ARP requests
//     r1 received, the verdicts and resends. --profile DIR writes the daemon's V8 CPU profile there;
//     --perf DIR a `perf record -g` of the daemon (native and kernel time too) over the window;
//     --daemon-node-args A,B more Node/V8 options for the daemon (--trace-deopt, ...).
//   - load: iperf3 from the LAN host through gw for 10 s, the daemon with the wire watch on and
//     then off (dgd.forwarded.enabled false) in the same run: the daemon's CPU, its event loop's
//     longest stall (Node's monitorEventLoopDelay via the metrics endpoint), iperf3's throughput,
//     and the sampling the watch settled on. --conntrack N first fills gw's conntrack table with
//     N entries (100000), so the watch is measured on a gateway with a big table; --rounds N
//     alternations of on and off (2).
// Every loop is bounded; labs are torn down on exit.
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT, waitFor, type Lab } from '../../test/lab/lab';
import { LabDaemon } from '../../test/lab/daemon';
import { startConnector, startFlowClient, startFlowServer, startManyFlows } from '../../test/lab/flows';
import { GW, forwardLab, loadNft } from '../../test/lab/gateway-topologies';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const listOpt = (name: string, dflt: string): string[] => {
  const i = args.indexOf(`--${name}`);
  return (i >= 0 ? args[i + 1]! : dflt).split(',').filter(Boolean);
};
const TRIALS = opt('trials', 10);
const CONNTRACK = opt('conntrack', 100_000);
const ROUNDS = opt('rounds', 2);
const FAMILIES = listOpt('families', '4,6').map(Number) as (4 | 6)[];
const CASES = new Set(listOpt('cases', 'forwarded,deadserver,localdead,load'));
const PROFILE = (() => {
  const i = args.indexOf('--profile');
  return i >= 0 ? args[i + 1]! : null;
})();
const LOCAL_SECONDS = opt('local-seconds', 60);
/** --perf DIR: `perf record -g` of the daemon (Node with --perf-basic-prof) over localdead's window. */
const PERF = (() => {
  const i = args.indexOf('--perf');
  return i >= 0 ? args[i + 1]! : null;
})();
const PORT = 7000;
const METRICS = '127.0.0.1:9741';
const CT_OP = path.join(REPO_ROOT, 'dist', 'test', 'fixtures', 'conntrack-op.js');

const say = (s = '') => process.stdout.write(s + '\n');
const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const median = s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  return { median, worst: s[s.length - 1]! };
};
const fmt = (ms: number) => `${(ms / 1000).toFixed(3)} s`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]);
}

/** Each thread's CPU ticks (utime + stime) by name (threads of one name added up). */
function threadTicks(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
      out.set(name, (out.get(name) ?? 0) + Number(f[11]) + Number(f[12]));
    } catch {
      /* the thread ended */
    }
  }
  return out;
}

/** The daemon's CPU share (of one core) while fn runs. */
async function cpuDuring<T>(pid: number, fn: () => Promise<T>): Promise<{ cpu: number; value: T }> {
  const a = cpuTicks(pid);
  const t = performance.now();
  const value = await fn();
  return { cpu: (cpuTicks(pid) - a) / 100 / ((performance.now() - t) / 1000), value };
}

interface Forwarded {
  switched: number;
  resumed: number;
  connected: number | null;
}

async function trialForwarded(family: 4 | 6): Promise<Forwarded> {
  const lab = await forwardLab({ routing: 'metric' });
  try {
    const server = family === 4 ? GW.server4 : GW.server6;
    const r1 = family === 4 ? GW.r1_4 : GW.r1_6;
    await startFlowServer(lab, 'server', PORT).listening;
    const d = await LabDaemon.start(lab, 'gw', null);
    const flow = startFlowClient(lab, 'lanhost', server, PORT, { intervalMs: 50, durationMs: 30_000 });
    const conns = startConnector(lab, 'lanhost', server, PORT, { intervalMs: 200, durationMs: 25_000 });
    await waitFor(() => flow.echoes.length >= 20, 5000, 'the forwarded flow');
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const w = await d.waitFor((e) => e.event === 'routes_withdrawn' && e.gateway === r1, 20_000, 'withdrawn');
    const tw = Date.parse(w.time);
    const resumed = (await waitFor(() => flow.echoes.find((e) => e.t > tw), 20_000, 'the flow to resume'))!;
    const conn = await waitFor(
      () => conns.attempts.find((a) => a.ok && a.started > tw),
      5000,
      'a new connection',
    )
      .then((a) => a!.started - t0)
      .catch(() => null);
    await d.stop();
    // --trace: the daemon's events of a trial slower than the target, timed from the death.
    if (args.includes('--trace') && tw - t0 > 3000)
      for (const e of d.events)
        if (e.event !== 'verify_step')
          say(
            `      ${((Date.parse(e.time) - t0) / 1000).toFixed(3)} s ${e.event} ${JSON.stringify(e).slice(0, 200)}`,
          );
    return { switched: tw - t0, resumed: resumed.t - t0, connected: conn };
  } finally {
    await lab.close();
  }
}

async function deadServer(): Promise<string[]> {
  const lab = await forwardLab({ routing: 'metric' });
  try {
    await startFlowServer(lab, 'server', PORT).listening;
    await countArpAtR1(lab);
    const d = await LabDaemon.start(lab, 'gw', null);
    const flows = await startManyFlows(lab, 'lanhost', GW.server4, PORT, 300, { durationMs: 40_000 });
    await sleep(1000);
    // The server stops answering; r1 stays alive.
    const arpBefore = await arpRequests(lab);
    await silenceServer(lab);
    const { cpu } = await cpuDuring(d.child.pid!, () => sleep(20_000));
    const arp = (await arpRequests(lab)) - arpBefore;
    flows.kill();
    const dead = d.events.filter((e) => e.event === 'verdict' && e.alive === false).length;
    const alive = d.events.filter((e) => e.event === 'verdict' && e.alive === true).length;
    const triggers = d.events.filter((e) => e.event === 'trigger').length;
    const downstream = d.events.filter((e) => e.event === 'downstream_problem').length;
    await d.stop();
    return [
      `| dead server, 300 forwarded flows, 20 s: verdicts dead / alive | ${dead} / ${alive} | | 0 dead |`,
      `| dead server: triggers / downstream_problem events | ${triggers} / ${downstream} | | |`,
      `| dead server: ARP requests r1 received in 20 s | ${arp} | | bounded |`,
      `| dead server: daemon CPU | ${(cpu * 100).toFixed(2)}% of a core | | < 10% |`,
    ];
  } finally {
    await lab.close();
  }
}

/** 300 of the daemon host's own sockets retransmitting to a silent server behind live r1. */
async function localDead(): Promise<string[]> {
  const lab = await forwardLab({ routing: 'metric' });
  try {
    await startFlowServer(lab, 'server', PORT).listening;
    await countArpAtR1(lab);
    const nodeArgs = [
      ...(PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE}`] : []),
      // --perf-basic-prof also turns on V8's log, written to the working directory otherwise.
      ...(PERF ? ['--perf-basic-prof', '--no-logfile-per-isolate', '--logfile=/dev/null'] : []),
      ...listOpt('daemon-node-args', ''),
    ];
    const d = await LabDaemon.start(lab, 'gw', null, [], [], nodeArgs);
    const flows = await startManyFlows(lab, 'gw', GW.server4, PORT, 300, {
      durationMs: (LOCAL_SECONDS + 20) * 1000,
    });
    await sleep(1000);
    const arpBefore = await arpRequests(lab);
    await silenceServer(lab);
    const dumps = async (): Promise<number> => {
      const st = (await d.status()) as {
        last_scan?: { dumps?: number };
        dgd?: { last_scan?: { dumps?: number } };
      };
      return st.last_scan?.dumps ?? st.dgd?.last_scan?.dumps ?? NaN;
    };
    const dumpsBefore = await dumps();
    const threadsBefore = threadTicks(d.child.pid!);
    const perf = PERF ? startPerf(d.child.pid!, PERF) : null;
    const { cpu } = await cpuDuring(d.child.pid!, () => sleep(LOCAL_SECONDS * 1000));
    await perf?.stop();
    const threadsAfter = threadTicks(d.child.pid!);
    const perThread = [...threadsAfter]
      .map(([name, t]) => [name, (t - (threadsBefore.get(name) ?? 0)) / 100 / LOCAL_SECONDS] as const)
      .filter(([, c]) => c > 0.0005)
      .sort((a, b) => b[1] - a[1])
      .map(([name, c]) => `${name} ${(c * 100).toFixed(2)}%`);
    say(
      `  localdead: CPU per thread: ${perThread.join(', ')}; sock_diag scans: ${(await dumps()) - dumpsBefore}`,
    );
    const arp = (await arpRequests(lab)) - arpBefore;
    flows.kill();
    const count = (name: string, f: (e: Record<string, unknown>) => boolean = () => true) =>
      d.events.filter((e) => e.event === name && f(e)).length;
    const verifications = count('verdict');
    const dead = count('verdict', (e) => e.alive === false);
    const resent = count('flows_resent');
    await d.stop();
    if (PERF) keepPerfMap(d.child.pid!, PERF);
    return [
      `| dead server, 300 local sockets, ${LOCAL_SECONDS} s: verdicts dead / verifications / flows_resent | ${dead} / ${verifications} / ${resent} | | 0 dead |`,
      `| dead server, 300 local sockets: ARP requests r1 received in ${LOCAL_SECONDS} s | ${arp} | | <= 15 |`,
      `| dead server, 300 local sockets: daemon CPU | ${(cpu * 100).toFixed(2)}% of a core | | < 5% |`,
    ];
  } finally {
    await lab.close();
  }
}

/**
 * `perf record -g` of pid (its threads too) into DIR/perf.data until stop(); the daemon's
 * /tmp/perf-PID.map (from --perf-basic-prof) names its JavaScript frames for `perf report`.
 */
function startPerf(pid: number, dir: string): { stop: () => Promise<void> } {
  mkdirSync(dir, { recursive: true });
  const child = spawn(
    'perf',
    ['record', '-g', '-F', '997', '-p', String(pid), '-o', path.join(dir, 'perf.data')],
    {
      stdio: 'ignore',
    },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    stop: async () => {
      child.kill('SIGINT');
      await Promise.race([exited, sleep(10_000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/**
 * The daemon's JavaScript symbol map (/tmp/perf-PID.map, written until it exits) moves next to
 * perf.data, so nothing is left in /tmp; perf reads it from /tmp, hence the hint.
 */
function keepPerfMap(pid: number, dir: string): void {
  const map = `/tmp/perf-${pid}.map`;
  try {
    copyFileSync(map, path.join(dir, path.basename(map)));
    rmSync(map);
    say(
      `  perf: ${dir}/perf.data; to name JavaScript frames: cp ${dir}/${path.basename(map)} /tmp/ && perf report -i ${dir}/perf.data`,
    );
  } catch (err) {
    say(`  perf: no ${map} (${(err as Error).message})`);
  }
}

/** An nft counter in r1 of the ARP requests it receives (read by arpRequests). */
async function countArpAtR1(lab: Lab): Promise<void> {
  await loadNft(
    lab,
    'r1',
    'arpcount',
    'table arp count {\n  chain in { type filter hook input priority 0; arp operation request counter; }\n}\n',
  );
}

/** The server stops answering PORT (its packets dropped on input); the routers stay alive. */
async function silenceServer(lab: Lab): Promise<void> {
  await loadNft(
    lab,
    'server',
    'dead',
    `table inet dead {\n  chain in { type filter hook input priority 0; tcp dport ${PORT} drop; }\n}\n`,
  );
}

async function arpRequests(lab: Lab): Promise<number> {
  const out = await lab.execOk('r1', ['nft', 'list', 'table', 'arp', 'count']);
  return Number(/packets (\d+)/.exec(out)?.[1] ?? 0);
}

async function metric(lab: Lab, name: string): Promise<number | null> {
  const r = await lab.exec('gw', ['curl', '-s', `http://${METRICS}/metrics`]);
  const m = new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(r.stdout);
  return m ? Number(m[1]) : null;
}

interface LoadResult {
  cpu: number;
  stallMs: number | null;
  gbps: number;
  sampling: string;
}

async function loadRun(lab: Lab, watch: boolean): Promise<LoadResult> {
  const config =
    `metrics:\n  listen: ${METRICS}\n` + (watch ? '' : 'dgd:\n  forwarded:\n    enabled: false\n');
  const d = await LabDaemon.start(lab, 'gw', config);
  try {
    await sleep(6000); // the wire watch opens with the daemon's first link pass
    await metric(lab, 'ipdeadgate_nodejs_eventloop_lag_max_seconds'); // resets the histogram
    const { cpu, value } = await cpuDuring(d.child.pid!, async () => {
      const r = await lab.exec('lanhost', ['iperf3', '-c', GW.server4, '-t', '10', '-P', '4', '-J'], 30_000);
      return JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } };
    });
    const stall = await metric(lab, 'ipdeadgate_nodejs_eventloop_lag_max_seconds');
    const st = (await d.status()).forwarded as {
      interfaces: { sampling: number; frames: number; kernel_dropped: number; retransmissions: number }[];
    };
    const w = st.interfaces[0];
    return {
      cpu,
      stallMs: stall === null ? null : stall * 1000,
      gbps: value.end.sum_received.bits_per_second / 1e9,
      sampling: w
        ? `1 in ${w.sampling}, ${w.frames} frames read, ${w.kernel_dropped} dropped by the kernel, ${w.retransmissions} sent again`
        : 'off',
    };
  } finally {
    await d.stop();
  }
}

async function load(): Promise<string[]> {
  const lab = await forwardLab({ routing: 'metric' });
  try {
    const srv = lab.spawn('server', ['iperf3', '-s', '-B', GW.server4]);
    void srv;
    await sleep(500);
    let filled = '';
    if (CONNTRACK > 0) {
      const r = await lab.execOk(
        'gw',
        [process.execPath, CT_OP, JSON.stringify([{ op: 'fill', args: [CONNTRACK] }])],
        120_000,
      );
      const v = (JSON.parse(r) as { ok: boolean; value: { created: number; ms: number } }[])[0]!;
      filled = `, ${v.value.created} conntrack entries in gw`;
    }
    // On and off alternately, ROUNDS times each: the machine's load drifts during a run.
    const rounds: [LoadResult, LoadResult][] = [];
    for (let i = 0; i < ROUNDS; i++) rounds.push([await loadRun(lab, true), await loadRun(lab, false)]);
    const row = (name: string, f: (r: LoadResult) => string) =>
      `| load${filled}: ${name} | ${rounds.map((r) => f(r[0])).join(', ')} | ${rounds.map((r) => f(r[1])).join(', ')} |`;
    return [
      '',
      `| iperf3 -P 4, 10 s, through gw (${ROUNDS} rounds, alternating) | wire watch on | wire watch off |`,
      '| --- | --- | --- |',
      row('daemon CPU, % of a core', (r) => (r.cpu * 100).toFixed(2)),
      row('longest event-loop stall, ms', (r) => (r.stallMs === null ? 'n/a' : r.stallMs.toFixed(1))),
      row('throughput, Gbit/s', (r) => r.gbps.toFixed(2)),
      row('sampling at the end', (r) => r.sampling),
    ];
  } finally {
    await lab.close();
  }
}

async function main(): Promise<void> {
  say(
    `bench-gateway: ${TRIALS} trials, families ${FAMILIES.join(',')}, cases ${[...CASES].join(',')}, ` +
      `${new Date().toISOString()}, node ${process.version}, load ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`,
  );
  const rows: string[] = [];
  for (const family of CASES.has('forwarded') ? FAMILIES : []) {
    const xs: Forwarded[] = [];
    for (let i = 0; i < TRIALS; i++) {
      const x = await trialForwarded(family);
      xs.push(x);
      say(
        `  forwarded IPv${family} trial ${i + 1}: withdrawn ${fmt(x.switched)}, stream resumed ${fmt(x.resumed)}, ` +
          `new connection ${x.connected === null ? 'none within 5 s' : fmt(x.connected)}`,
      );
    }
    const s = stats(xs.map((x) => x.switched));
    const r = stats(xs.map((x) => x.resumed));
    const c = xs.filter((x) => x.connected !== null).map((x) => x.connected!);
    rows.push(
      `| forwarded only, IPv${family}: routes withdrawn | ${fmt(s.median)} | ${fmt(s.worst)} | <= 3 s median, <= 4 s worst |`,
    );
    rows.push(`| forwarded only, IPv${family}: stream resumed | ${fmt(r.median)} | ${fmt(r.worst)} | |`);
    if (c.length > 0) {
      const cs = stats(c);
      rows.push(
        `| forwarded only, IPv${family}: first new connection after the switch | ${fmt(cs.median)} | ${fmt(cs.worst)} | ${c.length} of ${xs.length} trials |`,
      );
    }
  }
  if (CASES.has('deadserver')) rows.push(...(await deadServer()));
  if (CASES.has('localdead')) rows.push(...(await localDead()));
  const tail = CASES.has('load') ? await load() : [];
  say('');
  say('| case | median | worst | target |');
  say('| --- | --- | --- | --- |');
  for (const r of rows) say(r);
  for (const r of tail) say(r);
  say(`load at the end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench-gateway failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
