// The sock_diag benchmark (scripts/bench-sockdiag runs this): in one lab namespace, a holder opens
// 1k, 10k and 100k established TCP sockets (half as many connections over loopback, both ends in the
// namespace, 8 listening ports); at each size a measuring process in the same namespace times our
// dump against `ss -tin` on the same sockets and measures the event-loop stall during our dump.
// The Lab tears the namespace and every process down on success, failure and SIGINT.
import { spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lab, REPO_ROOT } from '../test/lab/lab';

const ADDR = '198.18.0.1';
// Below the ephemeral range (1024-65000 here), so clients of one holder never take a later holder's port.
const FIRST_PORT = 200;
const PORTS = 8;
const WANTED_NOFILE = 131_072;

/**
 * The open-file limit a holder gets: raised with prlimit when allowed (CAP_SYS_RESOURCE), else the
 * hard limit. Each connection costs a holder 2 fds (both ends), so a low limit means more holders.
 */
function holderNofile(): { nofile: number; raised: boolean } {
  if (spawnSync('prlimit', [`--nofile=${WANTED_NOFILE}:${WANTED_NOFILE}`, 'true']).status === 0)
    return { nofile: WANTED_NOFILE, raised: true };
  const limits = fs.readFileSync('/proc/self/limits', 'utf8');
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(limits);
  const hard = m && m[2] !== 'unlimited' ? Number(m[2]) : 1024;
  return { nofile: hard, raised: false };
}

function parseArgs(argv: string[]): { sizes: number[]; reps: number; nice: number | null } {
  let sizes = [1_000, 10_000, 100_000];
  let reps = 7;
  let nice: number | null = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--sizes') sizes = argv[++i]!.split(',').map(Number);
    else if (argv[i] === '--reps') reps = Number(argv[++i]);
    else if (argv[i] === '--nice') nice = Number(argv[++i]);
    else
      throw new Error(
        `unknown argument ${argv[i]}; usage: bench-sockdiag [--sizes 1000,10000,100000] [--reps 7] [--nice N]`,
      );
  }
  if (sizes.some((s) => !Number.isInteger(s) || s < 2 || s > 120_000) || !(reps >= 1 && reps <= 50))
    throw new Error('sizes must be whole numbers from 2 to 120000, reps from 1 to 50');
  if (nice !== null && !(Number.isInteger(nice) && nice >= -20 && nice <= 19))
    throw new Error('--nice must be a whole number from -20 to 19');
  return { sizes, reps, nice };
}

function nextJson(child: ChildProcess, timeoutMs: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => {
      child.stdout!.off('data', onData);
      reject(new Error(`holder said nothing for ${timeoutMs} ms`));
    }, timeoutMs);
    const onData = (d: Buffer): void => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      resolve(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
    };
    child.stdout!.on('data', onData);
  });
}

async function main(): Promise<void> {
  const { sizes, reps, nice } = parseArgs(process.argv.slice(2));
  const loadStart = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const lab = await Lab.create({
    hosts: {
      h: {
        sysctls: {
          'net.ipv4.ip_local_port_range': '1024 65000',
          'net.core.somaxconn': '8192',
          'net.ipv4.tcp_max_syn_backlog': '8192',
        },
      },
    },
    lans: [{ name: 'x', members: [{ host: 'h', iface: 'eth0', addrs: [`${ADDR}/24`] }] }],
  });
  try {
    const { nofile, raised } = holderNofile();
    const perHolder = Math.min(50_000, Math.floor((nofile - 128) / 2));
    process.stderr.write(
      `bench: RLIMIT_NOFILE ${nofile}${raised ? ' (raised)' : ' (the hard limit; raising it needs CAP_SYS_RESOURCE)'}, ` +
        `up to ${perHolder} connections per holder process\n`,
    );
    const holders: { child: ChildProcess; connections: number }[] = [];
    const startHolder = async (): Promise<void> => {
      const i = holders.length;
      const child = lab.spawn('h', [
        'prlimit',
        `--nofile=${nofile}:${nofile}`,
        process.execPath,
        path.join(REPO_ROOT, 'dist/scripts/bench-sockdiag-hold.js'),
        ADDR,
        String(FIRST_PORT + i * PORTS),
        String(PORTS),
      ]);
      child.stderr!.on('data', (d: Buffer) => process.stderr.write(`holder ${i}: ${d}`));
      const hello = await nextJson(child, 10_000);
      if (!hello.listening) throw new Error(`holder ${i}: ${JSON.stringify(hello)}`);
      holders.push({ child, connections: 0 });
    };
    const results: Record<string, unknown>[] = [];
    for (const size of sizes) {
      const startedGrow = performance.now();
      let left = Math.ceil(size / 2) - holders.reduce((n, h) => n + h.connections, 0);
      for (let i = 0; left > 0; i++) {
        if (i === holders.length) await startHolder();
        const h = holders[i]!;
        const target = Math.min(perHolder, h.connections + left);
        if (target === h.connections) continue;
        h.child.stdin!.write(`grow ${target}\n`);
        const grown = await nextJson(h.child, 300_000);
        if (grown.error) throw new Error(`holder ${i}: ${String(grown.error)}`);
        left -= (grown.connections as number) - h.connections;
        h.connections = grown.connections as number;
      }
      const sockets = 2 * holders.reduce((n, h) => n + h.connections, 0);
      process.stderr.write(
        `bench: ${sockets} established sockets in ${holders.length} holder process(es), opened in ` +
          `${Math.round(performance.now() - startedGrow)} ms\n`,
      );
      // --nice N runs the measuring process (the daemon's stand-in) at that niceness: with N < 0 the
      // machine's other load cannot preempt it, so what stalls it is its own work.
      const measure = [
        process.execPath,
        path.join(REPO_ROOT, 'dist/scripts/bench-sockdiag-measure.js'),
        String(reps),
        String(sockets),
      ];
      const m = await lab.exec(
        'h',
        nice === null ? measure : ['nice', '-n', String(nice), ...measure],
        600_000,
      );
      if (process.env.BENCH_SOCKDIAG_DEBUG === '1') process.stderr.write(m.stdout + m.stderr);
      const line = m.stdout.trim().split('\n').pop() ?? '';
      const r = JSON.parse(line || '{}') as Record<string, unknown>;
      if (m.code !== 0 || r.error)
        throw new Error(`measure failed (${m.code}): ${String(r.error ?? m.stderr)}`);
      results.push(r);
      process.stderr.write(`bench: ${JSON.stringify(r)}\n`);
    }
    const load = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    type Stat = {
      ms: number;
      stall_max_ms: number;
      stall_median_ms: number;
      gc_max_ms: number;
      runq_wait_max_ms: number;
      main_cpu_median_ms: number;
    };
    const st = (r: Record<string, unknown>, k: string): Stat => r[k] as Stat;
    const speed = [
      '| sockets | `ss -tin` | ours, tcp_info (array) | ratio | ours, no tcp_info (array) | paged, tcp_info (`sockets`) | status count | detection scan |',
      '|' + ' --- |'.repeat(8),
      ...results.map(
        (r) =>
          `| ${String(r.sockets)} | ${String(r.ss_tin_ms)} ms | ${String(r.ours_info_ms)} ms | ${String(r.ratio)}x | ` +
          `${String(r.ours_cheap_ms)} ms | ${st(r, 'pages').ms} ms | ${st(r, 'count').ms} ms | ${st(r, 'scan').ms} ms |`,
      ),
    ];
    const cell = (s: Stat): string =>
      `${s.stall_max_ms} (${s.stall_median_ms}) ms; GC ${s.gc_max_ms}; runq ${s.runq_wait_max_ms}; main CPU ${s.main_cpu_median_ms}`;
    const stalls = [
      '| sockets | nothing running (control) | status count | detection scan | paged, tcp_info | array, tcp_info | array, no tcp_info |',
      '|' + ' --- |'.repeat(7),
      ...results.map(
        (r) =>
          `| ${String(r.sockets)} | ${cell(st(r, 'idle'))} | ${cell(st(r, 'count'))} | ${cell(st(r, 'scan'))} | ` +
          `${cell(st(r, 'pages'))} | ${cell(st(r, 'array_info'))} | ${cell(st(r, 'array_cheap'))} |`,
      ),
    ];
    process.stdout.write(
      [...speed, '', ...stalls].join('\n') +
        `\n\nTimes are medians of ${reps} repetitions. Stall cells: longest event-loop stall over the ` +
        `repetitions (median in brackets); longest GC pause; longest time the main thread was runnable ` +
        `without a CPU (run-queue wait); median time the main thread was on a CPU during the operation ` +
        `(its own work, the 1 ms probe included). Load average at the start: ${loadStart}; at the end: ${load}.` +
        `${nice === null ? '' : ` Measuring process at nice ${nice}.`}\n`,
    );
  } finally {
    await lab.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench-sockdiag: ${(err as Error)?.message ?? String(err)}\n`);
  process.exitCode = 1;
});
