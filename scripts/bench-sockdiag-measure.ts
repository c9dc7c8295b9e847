// Benchmark helper, run inside the lab namespace that holds the sockets: times `ss -tin` (output to
// /dev/null) against our dump on the same sockets, interleaved, and measures the longest event-loop
// stall during each of our operations: the whole array (with and without tcp_info), detection's
// filtered scan and the status count (what the daemon does), the paged dump (what `ipdeadgate
// sockets` does), and, as a control, the same measurement while nothing runs at all (so a stall
// the machine's other load causes is told apart from one our work causes).
// `bench-sockdiag-measure REPS MIN_SOCKETS` prints one JSON line.
//
// Stall: a 1 ms setInterval runs during the dump and the longest gap between two of its ticks (and
// from the last tick to the end) is the longest time the loop could not run a callback; the maximum
// of perf_hooks' monitorEventLoopDelay (1 ms resolution) is reported next to it.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { monitorEventLoopDelay, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { countTcpSockets, dumpTcpSocketPages, dumpTcpSockets } from '../src/sys/sockdiag';

interface Timed {
  ms: number;
  stallMs: number;
  elDelayMaxMs: number;
  /** Longest garbage-collection pause on the main thread during the dump. */
  gcMaxMs: number;
  /** Time the main thread was runnable but not running (waiting for a CPU) during the dump. */
  runqWaitMs: number;
  /**
   * Time the main thread spent on a CPU during the dump, the 1 ms probe's ticks included: the
   * most the dump's own main-thread work (JavaScript, native callbacks, GC) can have stalled it.
   */
  mainCpuMs: number;
  count: number;
}

/** The main thread's run-queue wait so far, in ms (/proc/thread-self/schedstat, field 2, ns). */
function runqWaitMs(): number {
  return Number(fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[1]) / 1e6;
}

/** The main thread's time on a CPU so far, in ms (/proc/thread-self/schedstat, field 1, ns). */
function mainCpuMs(): number {
  return Number(fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) / 1e6;
}

const gcPauses: PerformanceEntry[] = [];
new PerformanceObserver((list) => gcPauses.push(...list.getEntries())).observe({ entryTypes: ['gc'] });

/** Run `op` with the stall probes on; `op` returns how many sockets it saw. */
async function timed(op: () => Promise<number>): Promise<Timed> {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  let last = performance.now();
  let longest = 0;
  const tick = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
  }, 1);
  // Let the interval start ticking before the operation begins.
  await new Promise((r) => setTimeout(r, 5));
  last = performance.now();
  longest = 0;
  histogram.enable();
  const runq0 = runqWaitMs();
  const cpu0 = mainCpuMs();
  const started = performance.now();
  const count = await op();
  const ended = performance.now();
  const runqWait = runqWaitMs() - runq0;
  const mainCpu = mainCpuMs() - cpu0;
  longest = Math.max(longest, ended - last);
  histogram.disable();
  clearInterval(tick);
  // GC entries are delivered asynchronously: collect them after a turn of the loop.
  await new Promise((r) => setImmediate(r));
  const gcMaxMs = Math.max(
    0,
    ...gcPauses.filter((e) => e.startTime >= started && e.startTime <= ended).map((e) => e.duration),
  );
  return {
    ms: ended - started,
    stallMs: longest,
    elDelayMaxMs: histogram.max / 1e6,
    gcMaxMs,
    runqWaitMs: runqWait,
    mainCpuMs: mainCpu,
    count,
  };
}

const timedDump = (info: boolean, minRetransmits = 0): Promise<Timed> =>
  timed(async () => (await dumpTcpSockets({ info, minRetransmits })).length);
const timedCount = (): Promise<Timed> => timed(async () => (await countTcpSockets()).total);
/** What `ipdeadgate sockets` does: pages with tcp_info, each looked at and dropped. */
const timedPages = (): Promise<Timed> =>
  timed(async () => {
    let n = 0;
    for await (const page of dumpTcpSocketPages({ info: true })) n += page.length;
    return n;
  });
/** The control: nothing runs for `ms`. */
const timedIdle = (ms: number): Promise<Timed> =>
  timed(async () => {
    await new Promise((r) => setTimeout(r, ms));
    return 0;
  });

function timedSs(devNull: number): { ms: number; status: number | null } {
  const started = performance.now();
  const r = spawnSync('ss', ['-tin'], { stdio: ['ignore', devNull, 'ignore'] });
  return { ms: performance.now() - started, status: r.status };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const round = (x: number): number => Math.round(x * 100) / 100;

async function main(): Promise<void> {
  const reps = Number(process.argv[2] ?? 7);
  const minSockets = Number(process.argv[3] ?? 0);
  const devNull = fs.openSync('/dev/null', 'w');
  // Warm-up: page in ss, load the addon, let V8 compile the decoder.
  timedSs(devNull);
  await timedDump(true);
  await timedDump(false);
  await timedCount();
  await timedPages();
  const ss: number[] = [];
  const withInfo: Timed[] = [];
  const cheap: Timed[] = [];
  const scan: Timed[] = [];
  const count: Timed[] = [];
  const pages: Timed[] = [];
  const idle: Timed[] = [];
  for (let i = 0; i < reps; i++) {
    const s = timedSs(devNull);
    if (s.status !== 0) throw new Error(`ss -tin exited with ${s.status}`);
    ss.push(s.ms);
    withInfo.push(await timedDump(true));
    cheap.push(await timedDump(false));
    // Detection's scan: only sockets retransmitting now (none on this healthy host).
    scan.push(await timedDump(false, 1));
    // The daemon's count for status (every 30 s).
    count.push(await timedCount());
    pages.push(await timedPages());
    // The control lasts as long as the count did: same exposure to the machine's load.
    idle.push(await timedIdle(Math.max(20, Math.round(count.at(-1)!.ms))));
  }
  const counts = withInfo.map((t) => t.count);
  if (Math.min(...counts) < minSockets)
    throw new Error(`dump saw ${Math.min(...counts)} sockets, expected ${minSockets}`);
  if (Math.min(...count.map((t) => t.count), ...pages.map((t) => t.count)) < minSockets)
    throw new Error('the count or the paged dump saw fewer sockets than the holders opened');
  const ssMedian = median(ss);
  const infoMedian = median(withInfo.map((t) => t.ms));
  const stat = (ts: Timed[]) => ({
    ms: round(median(ts.map((t) => t.ms))),
    stall_max_ms: round(Math.max(...ts.map((t) => t.stallMs))),
    stall_median_ms: round(median(ts.map((t) => t.stallMs))),
    gc_max_ms: round(Math.max(...ts.map((t) => t.gcMaxMs))),
    runq_wait_max_ms: round(Math.max(...ts.map((t) => t.runqWaitMs))),
    main_cpu_median_ms: round(median(ts.map((t) => t.mainCpuMs))),
    raw_ms: ts.map((t) => round(t.ms)),
    raw_stall_ms: ts.map((t) => round(t.stallMs)),
    raw_runq_ms: ts.map((t) => round(t.runqWaitMs)),
    raw_main_cpu_ms: ts.map((t) => round(t.mainCpuMs)),
  });
  process.stdout.write(
    JSON.stringify({
      reps,
      sockets: median(counts),
      ss_tin_ms: round(ssMedian),
      ours_info_ms: round(infoMedian),
      ratio: round(infoMedian / ssMedian),
      ours_cheap_ms: round(median(cheap.map((t) => t.ms))),
      raw_ss_ms: ss.map(round),
      array_info: stat(withInfo),
      array_cheap: stat(cheap),
      scan: stat(scan),
      count: stat(count),
      pages: stat(pages),
      idle: stat(idle),
    }) + '\n',
  );
}

main().catch((err: unknown) => {
  process.stdout.write(JSON.stringify({ error: String((err as Error)?.stack ?? err) }) + '\n');
  process.exit(1);
});
