// scripts/bench-tunnel: the tunnel against OpenSSH -L, stunnel4, socat and a direct connection over the same
// path, in a lab of two namespaces (a: client side, b: server side) on one veth pair.
import { execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { controlRequest } from '../src/daemon/control';
import { Lab, REPO_ROOT, waitFor } from '../test/lab/lab';
import { makePki } from '../test/fixtures/tunnel-pki';

const A = '198.18.5.1';
const B = '198.18.5.2';
const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const SECONDS = opt('--seconds', 5);
const SESSIONS = opt('--sessions', 10_000);
/**
 * The packaged unit's descriptor limit (LimitNOFILE=65536) for the proxies, where this process may
 * raise its own that far (a sandbox without CAP_SYS_RESOURCE may not: then the shell's, said below).
 */
const HARD_NOFILE = Number(
  /Max open files\s+\S+\s+(\S+)/.exec(fs.readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? 0,
);
const UNIT_NOFILE = HARD_NOFILE >= 65536 ? ['prlimit', '--nofile=65536:65536', '--'] : [];
/** Throughput rounds (each measures every path once, in turn, so the ratios come from one round). */
const ROUNDS = opt('--rounds', 1);
/** Only throughput: no session-open latency, no idle sessions. */
const THROUGHPUT_ONLY = args.includes('--throughput-only');
/** Extra node flags for both proxies (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"), for profiling. */
/** Only these paths (comma-separated name prefixes, e.g. "ssh,tunnel"); default all. */
const PATHS = (args.includes('--paths') ? String(args[args.indexOf('--paths') + 1]) : '')
  .split(',')
  .filter(Boolean);
const PROXY_NODE_ARGS = (process.env.BENCH_TUNNEL_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
/**
 * Another built checkout (e.g. a worktree of main): its proxies run a second tunnel (path
 * "tunnel (baseline)") measured in the same rounds, so that a change is compared in one run.
 */
const BASELINE = args.includes('--baseline')
  ? path.resolve(String(args[args.indexOf('--baseline') + 1]))
  : '';

const log = (s: string): void => void process.stderr.write(`bench-tunnel: ${s}\n`);

/** SIGTERM (a --cpu-prof profile is written then), and its exit awaited, 5 s at most. */
const stopProxy = (c: ChildProcess): Promise<void> =>
  new Promise<void>((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    const t = setTimeout(resolve, 5000);
    c.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    c.kill('SIGTERM');
  });

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** CPU seconds used so far by these processes (all threads, and children they have reaped), from /proc/PID/stat. */
function cpuSeconds(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      // proc(5): the fields after the ")" closing comm start at field 3; utime, stime, cutime, cstime are 14-17.
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    } catch {
      // gone: its time is lost (only short-lived helpers)
    }
  }
  return ticks / CLOCK_TICKS;
}

/** All descendants of a process (/proc/PID/task/TID/children). */
function descendants(pid: number): number[] {
  const out: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    let text = '';
    try {
      text = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8');
    } catch {
      continue;
    }
    for (const c of text.trim().split(/\s+/).filter(Boolean).map(Number)) out.push(c, ...descendants(c));
  }
  return out;
}

async function main(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-bench-tunnel-'));
  const pki = makePki(['a', 'b'], { b: ['iperf', 'echo', 'hold'] }, tmp);
  let createdRunSshd = false;
  const lab = await Lab.create({
    hosts: { a: {}, b: {} },
    lans: [
      {
        name: 'ab',
        members: [
          { host: 'a', iface: 'eth0', addrs: [`${A}/24`] },
          { host: 'b', iface: 'eth0', addrs: [`${B}/24`] },
        ],
      },
    ],
  });
  const kids: ChildProcess[] = [];
  const proxies: ChildProcess[] = [];
  const bg = (host: string, argv: string[]): ChildProcess => {
    const c = lab.spawn(host, argv);
    c.stdout?.resume();
    c.stderr?.resume();
    kids.push(c);
    return c;
  };
  const listening = (host: string, port: number): Promise<unknown> =>
    waitFor(
      async () => (await lab.exec(host, ['ss', '-Hltn', `sport = :${port}`])).stdout.trim() !== '',
      10_000,
      `${host} listening on ${port}`,
      50,
    );
  try {
    const helper = path.join(REPO_ROOT, 'dist', 'scripts', 'bench-tunnel-conns.js');
    // Servers on b.
    bg('b', ['iperf3', '-s', '-B', B, '-p', '5201']);
    bg('b', [process.execPath, helper, 'echo-server', B, '7001']);
    bg('b', [process.execPath, helper, 'hold-server', B, '7002']);
    // socat on a: a plain user-space TCP relay.
    const socat = bg('a', ['socat', `TCP-LISTEN:6000,bind=${A},reuseaddr,fork`, `TCP:${B}:5201`]);
    // OpenSSH: sshd on b, ssh -L on a, throw-away keys.
    if (!fs.existsSync('/run/sshd')) {
      fs.mkdirSync('/run/sshd', { mode: 0o755 });
      createdRunSshd = true;
    }
    const k = (n: string): string => path.join(tmp, n);
    for (const n of ['hostkey', 'userkey'])
      await lab.execOk('a', ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', k(n)]);
    fs.copyFileSync(k('userkey.pub'), k('authorized_keys'));
    fs.writeFileSync(
      k('sshd_config'),
      [
        `ListenAddress ${B}`,
        'Port 22',
        `HostKey ${k('hostkey')}`,
        `PidFile ${k('sshd.pid')}`,
        `AuthorizedKeysFile ${k('authorized_keys')}`,
        'StrictModes no',
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'AllowTcpForwarding yes',
        '',
      ].join('\n'),
    );
    const sshd = bg('b', ['/usr/sbin/sshd', '-D', '-e', '-f', k('sshd_config')]);
    await listening('b', 22);
    const sshArgs = (port: number, extra: string[]): string[] => [
      'ssh',
      '-N',
      ...extra,
      '-L',
      `${A}:${port}:${B}:5201`,
      '-i',
      k('userkey'),
      '-o',
      'StrictHostKeyChecking=no',
      '-o',
      'UserKnownHostsFile=/dev/null',
      '-o',
      'BatchMode=yes',
      '-o',
      'ExitOnForwardFailure=yes',
      `root@${B}`,
    ];
    // OpenSSH's default cipher choice (ChaCha20-Poly1305 first), and the cipher our links prefer.
    const ssh = bg('a', sshArgs(7000, []));
    const sshGcm = bg('a', sshArgs(7100, ['-c', 'aes128-gcm@openssh.com']));
    // stunnel4: a TLS relay in C (OpenSSL), set up like our link: TLS 1.3 only, AES-128-GCM, both
    // sides presenting a certificate from the same test CA and verifying the other's chain.
    const stunnelConf = (name: string, lines: string[]): string => {
      const f = k(`stunnel-${name}.conf`);
      fs.writeFileSync(
        f,
        [
          'foreground = yes',
          'pid =',
          `[bench]`,
          ...lines,
          `cert = ${pki.nodes[name]!.cert}`,
          `key = ${pki.nodes[name]!.key}`,
          `CAfile = ${pki.ca}`,
          'verifyChain = yes',
          'requireCert = yes',
          'sslVersionMin = TLSv1.3',
          'sslVersionMax = TLSv1.3',
          'ciphersuites = TLS_AES_128_GCM_SHA256',
          '',
        ].join('\n'),
      );
      return f;
    };
    const stunnelB = bg('b', ['stunnel4', stunnelConf('b', [`accept = ${B}:9500`, `connect = ${B}:5201`])]);
    const stunnelA = bg('a', [
      'stunnel4',
      stunnelConf('a', ['client = yes', `accept = ${A}:7200`, `connect = ${B}:9500`]),
    ]);
    // Our tunnel: a on a dials b; forwards on a, services on b.
    const knowsPeerCap =
      BASELINE !== '' &&
      fs.existsSync(path.join(BASELINE, 'src/tunnel/config.ts')) &&
      fs.readFileSync(path.join(BASELINE, 'src/tunnel/config.ts'), 'utf8').includes('peer_max_sessions');
    const cfgFile = (name: string, lines: string[], suffix = ''): string => {
      fs.copyFileSync(pki.nodes[name]!.cert, k(`${name}.pem`));
      fs.copyFileSync(pki.nodes[name]!.key, k(`${name}.key`));
      fs.copyFileSync(pki.ca, k('ca.pem'));
      const f = k(`${name}${suffix}.yaml`);
      fs.writeFileSync(
        f,
        [
          'tunnel:',
          ...lines,
          `  name: ${name}`,
          `  tls: { ca: ca.pem, cert: ${name}.pem, key: ${name}.key }`,
          '  max_sessions: 30000',
          // One peer opens all the idle sessions: its own cap (default 5 000) would refuse half of
          // them, and the refused attempts' garbage would count as per-session memory. A baseline
          // checkout older than the key gets the file without it.
          ...(suffix === '' || knowsPeerCap ? ['  peer_max_sessions: 30000'] : []),
          '',
        ].join('\n'),
      );
      return f;
    };
    const bCfg = cfgFile('b', [
      '  role: endpoint-proxy',
      `  listen: ${B}:9401`,
      '  services:',
      `    iperf: ${B}:5201`,
      `    echo: ${B}:7001`,
      `    hold: ${B}:7002`,
    ]);
    const aCfg = cfgFile('a', [
      '  role: gateway-proxy',
      '  links:',
      `    - { connect: ${B}:9401 }`,
      '  forwards:',
      `    - { listen: ${A}:8000, service: iperf }`,
      `    - { listen: ${A}:8001, service: echo }`,
      `    - { listen: ${A}:8002, service: hold }`,
    ]);
    const bin = path.join(REPO_ROOT, 'bin', 'ipdeadgate');
    // The proxies get the packaged unit's descriptor limit (LimitNOFILE=65536), not the shell's: the
    // idle-session measure opens SESSIONS sessions (one descriptor each at each proxy; a session
    // the native relay carries holds two).
    /** One tunnel proxy of a build (its bin/ipdeadgate) on `host`, with its config and control socket. */
    const proxy = (host: string, cli: string, cfg: string, sock: string): ChildProcess =>
      bg(host, [
        ...UNIT_NOFILE,
        process.execPath,
        ...PROXY_NODE_ARGS,
        cli,
        'tunnel',
        '--config',
        cfg,
        '--control',
        k(sock),
      ]);
    /** The dialing proxy behind control socket `sock` has its link up. */
    const linkUp = (sock: string, what: string): Promise<unknown> =>
      waitFor(
        async () => {
          const s = (await controlRequest(k(sock), 'status').catch(() => undefined)) as
            { tunnel: { links: { state: string }[] } } | undefined;
          return s?.tunnel.links[0]?.state === 'up';
        },
        15_000,
        what,
        100,
      );
    let tb = proxy('b', bin, bCfg, 'b.sock');
    let ta = proxy('a', bin, aCfg, 'a.sock');
    proxies.push(ta, tb);
    // The baseline checkout's proxies: the same setup on other ports, its own link.
    const baseline: ChildProcess[] = [];
    if (BASELINE) {
      const bin0 = path.join(BASELINE, 'bin', 'ipdeadgate');
      const cfg = (name: string, lines: string[]): string => cfgFile(name, lines, '-baseline');
      const b0 = cfg('b', [
        '  role: endpoint-proxy',
        `  listen: ${B}:9402`,
        '  services:',
        `    iperf: ${B}:5201`,
      ]);
      const a0 = cfg('a', [
        '  role: gateway-proxy',
        '  links:',
        `    - { connect: ${B}:9402 }`,
        '  forwards:',
        `    - { listen: ${A}:8100, service: iperf }`,
      ]);
      const tb0 = proxy('b', bin0, b0, 'b0.sock');
      const ta0 = proxy('a', bin0, a0, 'a0.sock');
      baseline.push(ta0, tb0);
      proxies.push(ta0, tb0);
      await linkUp('a0.sock', 'the baseline tunnel link');
      log(
        `baseline: ${BASELINE} (${execFileSync('git', ['-C', BASELINE, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim()})`,
      );
    }
    const tunnelUp = (): Promise<unknown> => linkUp('a.sock', 'the tunnel link');
    await tunnelUp();
    await Promise.all([
      listening('a', 6000),
      listening('a', 7000),
      listening('a', 7100),
      listening('a', 7200),
      listening('b', 9500),
      listening('a', 8000),
      listening('b', 5201),
    ]);

    const ping = await lab.execOk('a', ['ping', '-c', '10', '-i', '0.2', '-q', B]);
    const rtt = Number(/= [\d.]+\/([\d.]+)\//.exec(ping)?.[1] ?? NaN);
    log(`RTT a -> b: ${rtt} ms`);

    const paths = (
      [
        ['direct', B, 5201],
        ['socat', A, 6000],
        ['ssh -L', A, 7000],
        ['ssh -L (AES-GCM)', A, 7100],
        ['stunnel4', A, 7200],
        ['tunnel (TLS)', A, 8000],
        ...(BASELINE ? [['tunnel (baseline)', A, 8100]] : []),
      ] as [string, string, number][]
    ).filter(([name]) => !PATHS.length || PATHS.some((p) => name.startsWith(p)));
    // The processes that relay each path, for their CPU time per GB (a measure that other work on
    // a shared machine disturbs far less than throughput): sshd's per-connection children and
    // socat's forked children count too (socat's are reaped, so they are in its cutime/cstime).
    const relayPids: Record<string, () => number[]> = {
      socat: () => [socat.pid!],
      // sshd forks per connection: the two forwards' processes cannot be told apart cheaply, and the
      // idle one costs nothing, so both count.
      'ssh -L': () => [ssh.pid!, ...descendants(sshd.pid!)],
      'ssh -L (AES-GCM)': () => [sshGcm.pid!, ...descendants(sshd.pid!)],
      // stunnel4: one process per side, a thread per connection (its stat counts every thread).
      stunnel4: () => [stunnelA.pid!, stunnelB.pid!],
      'tunnel (TLS)': () => [ta.pid!, tb.pid!],
      'tunnel (baseline)': () => baseline.map((c) => c.pid!),
    };
    // gbps[round][path][streams], cpuPerGB[round][path][streams] (CPU seconds of the relays per GB received)
    const gbps: Record<string, Record<number, number>>[] = [];
    const cpuPerGB: Record<string, Record<number, number>>[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const g: Record<string, Record<number, number>> = {};
      const c: Record<string, Record<number, number>> = {};
      gbps.push(g);
      cpuPerGB.push(c);
      for (const streams of [1, 8]) {
        for (const [name, host, port] of paths) {
          const pids = relayPids[name]?.() ?? [];
          const cpu0 = cpuSeconds(pids);
          const r = await lab.exec(
            'a',
            ['iperf3', '-c', host, '-p', String(port), '-t', String(SECONDS), '-P', String(streams), '-J'],
            (SECONDS + 20) * 1000,
          );
          await new Promise((res) => setTimeout(res, 500)); // socat's children exit and are reaped
          const cpu = cpuSeconds(pids) - cpu0;
          let bps = NaN;
          let bytes = NaN;
          try {
            const sum = (
              JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number; bytes: number } } }
            ).end.sum_received;
            bps = sum.bits_per_second;
            bytes = sum.bytes;
          } catch {
            log(`iperf3 ${name} -P ${streams} failed: ${r.stderr.trim() || r.stdout.slice(0, 200)}`);
          }
          (g[name] ??= {})[streams] = bps / 1e9;
          if (pids.length) (c[name] ??= {})[streams] = cpu / (bytes / 1e9);
          const cpuText = pids.length ? `, relays ${(cpu / (bytes / 1e9)).toFixed(2)} CPU s/GB` : '';
          log(
            `round ${round + 1}: ${name.padEnd(13)} -P ${streams}: ${(bps / 1e9).toFixed(2)} Gbit/s${cpuText}`,
          );
        }
      }
    }

    const f = (x: number | undefined): string => (x === undefined || Number.isNaN(x) ? 'n/a' : x.toFixed(2));
    const range = (xs: (number | undefined)[]): string => {
      const ok = xs.filter((x): x is number => x !== undefined && !Number.isNaN(x));
      if (!ok.length) return 'n/a';
      const lo = Math.min(...ok);
      const hi = Math.max(...ok);
      return ok.length === 1 || lo.toFixed(2) === hi.toFixed(2)
        ? lo.toFixed(2)
        : `${lo.toFixed(2)} – ${hi.toFixed(2)}`;
    };
    const ratio = (a: number | undefined, b: number | undefined): number | undefined =>
      a && b ? a / b : undefined;
    const T = 'tunnel (TLS)';
    const G = 'ssh -L (AES-GCM)';
    const S = 'stunnel4';
    const ratioLine = (g: Record<string, Record<number, number>>): string =>
      `tunnel / ssh -L ${f(ratio(g[T]?.[1], g['ssh -L']?.[1]))} (1 stream), ${f(ratio(g[T]?.[8], g['ssh -L']?.[8]))} (8 streams); ` +
      `tunnel / ssh -L (AES-GCM) ${f(ratio(g[T]?.[1], g[G]?.[1]))}, ${f(ratio(g[T]?.[8], g[G]?.[8]))}; ` +
      `tunnel / stunnel4 ${f(ratio(g[T]?.[1], g[S]?.[1]))}, ${f(ratio(g[T]?.[8], g[S]?.[8]))}; ` +
      `tunnel / socat ${f(ratio(g[T]?.[1], g.socat?.[1]))}, ${f(ratio(g[T]?.[8], g.socat?.[8]))}; ` +
      `tunnel / direct ${f(ratio(g[T]?.[1], g.direct?.[1]))}, ${f(ratio(g[T]?.[8], g.direct?.[8]))}` +
      (BASELINE
        ? `; tunnel / baseline ${f(ratio(g[T]?.[1], g['tunnel (baseline)']?.[1]))}, ${f(ratio(g[T]?.[8], g['tunnel (baseline)']?.[8]))}`
        : '');
    const lines = [
      `Measured ${new Date().toISOString().slice(0, 10)} on ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), Node ${process.version}, iperf3 -t ${SECONDS}, ${ROUNDS} round(s), lab veth pair (RTT ${rtt} ms).`,
      '',
      '| path | 1 stream Gbit/s | 8 streams Gbit/s |',
      '| --- | ---: | ---: |',
      ...paths.map(
        ([n]) => `| ${n} | ${range(gbps.map((g) => g[n]?.[1]))} | ${range(gbps.map((g) => g[n]?.[8]))} |`,
      ),
      '',
      ...gbps.map((g, i) => `Round ${i + 1} ratios: ${ratioLine(g)}.`),
      `Ratio tunnel / ssh -L over the rounds: ${range(gbps.map((g) => ratio(g[T]?.[1], g['ssh -L']?.[1])))} (1 stream), ${range(gbps.map((g) => ratio(g[T]?.[8], g['ssh -L']?.[8])))} (8 streams); ` +
        `tunnel / ssh -L (AES-GCM): ${range(gbps.map((g) => ratio(g[T]?.[1], g[G]?.[1])))}, ${range(gbps.map((g) => ratio(g[T]?.[8], g[G]?.[8])))}; ` +
        `tunnel / stunnel4: ${range(gbps.map((g) => ratio(g[T]?.[1], g[S]?.[1])))}, ${range(gbps.map((g) => ratio(g[T]?.[8], g[S]?.[8])))}.`,
      '',
      'CPU seconds of the relaying processes per GB received (all their threads; ssh -L: ssh and sshd; stunnel4: both sides):',
      '',
      '| path | 1 stream | 8 streams |',
      '| --- | ---: | ---: |',
      ...paths
        .filter(([n]) => relayPids[n])
        .map(
          ([n]) =>
            `| ${n} | ${range(cpuPerGB.map((c) => c[n]?.[1]))} | ${range(cpuPerGB.map((c) => c[n]?.[8]))} |`,
        ),
    ];
    if (THROUGHPUT_ONLY) {
      process.stdout.write(lines.join('\n') + '\n');
      return;
    }

    if (paths.some(([n]) => n === 'tunnel (TLS)')) {
      // The session measures run on fresh proxies: a throughput run leaves a proxy's heap grown by
      // what its path allocated (far more on the JavaScript path than on the native relay), and
      // the idle sessions' RSS growth would absorb that differently from one build to another.
      await Promise.all([ta, tb].map(stopProxy));
      tb = proxy('b', bin, bCfg, 'b.sock');
      ta = proxy('a', bin, aCfg, 'a.sock');
      proxies.push(ta, tb);
      await tunnelUp();
      await listening('a', 8001);
    }
    const lat = async (host: string, port: number): Promise<{ median_ms: number; p90_ms: number }> =>
      JSON.parse(
        (
          await lab.execOk('a', [process.execPath, helper, 'latency', host, String(port), '300'], 60_000)
        ).trim(),
      ) as { median_ms: number; p90_ms: number };
    const latDirect = await lat(B, 7001);
    const latTunnel = await lat(A, 8001);
    log(
      `session open + 1 byte round trip: direct ${latDirect.median_ms.toFixed(3)} ms, tunnel ${latTunnel.median_ms.toFixed(3)} ms (median of 300)`,
    );

    const rss = (pid: number): number =>
      Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
    // Warm up (JIT, pools), then measure RSS before and with SESSIONS idle sessions open.
    await lab
      .execOk('a', [process.execPath, helper, 'latency', A, '8002', '200'], 60_000)
      .catch(() => undefined);
    await new Promise((r) => setTimeout(r, 2000));
    const before = { a: rss(ta.pid!), b: rss(tb.pid!) };
    const holder = lab.spawn('a', [process.execPath, helper, 'hold', A, '8002', String(SESSIONS), '30']);
    kids.push(holder);
    let holdOut = '';
    holder.stdout?.on('data', (c: Buffer) => (holdOut += c.toString()));
    holder.stderr?.resume();
    await waitFor(() => /"ready"/.test(holdOut), 120_000, `${SESSIONS} sessions`, 100);
    const ready = JSON.parse(holdOut.split('\n')[0]!) as { ready: number; failed: number };
    await new Promise((r) => setTimeout(r, 3000));
    const during = { a: rss(ta.pid!), b: rss(tb.pid!) };
    const st = (await controlRequest(k('a.sock'), 'status')) as { tunnel: { sessions: { count: number } } };
    const perA = ((during.a - before.a) / ready.ready).toFixed(1);
    const perB = ((during.b - before.b) / ready.ready).toFixed(1);
    log(
      `${ready.ready} idle sessions (${ready.failed} failed, ${st.tunnel.sessions.count} in status): RSS a ${before.a} -> ${during.a} KiB (${perA} KiB/session), b ${before.b} -> ${during.b} KiB (${perB} KiB/session)`,
    );
    holder.kill('SIGKILL');

    lines.push(
      '',
      `Session open (connect, 1 byte, its echo; median of 300): direct ${latDirect.median_ms.toFixed(3)} ms, through the tunnel ${latTunnel.median_ms.toFixed(3)} ms (p90 ${latTunnel.p90_ms.toFixed(3)} ms).`,
      '',
      `Idle sessions: ${ready.ready} open (${ready.failed} failed): RSS of the dialing proxy ${before.a} -> ${during.a} KiB (${perA} KiB per session), of the accepting proxy ${before.b} -> ${during.b} KiB (${perB} KiB per session).` +
        (UNIT_NOFILE.length
          ? ''
          : ` The proxies ran with this shell's descriptor limit (${HARD_NOFILE}; raising it needs CAP_SYS_RESOURCE), not the packaged unit's 65536: an idle session holds one descriptor at each proxy (a relayed one two), so size --sessions below 80 % of it.`),
    );
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    // The proxies stop with SIGTERM first, so a --cpu-prof profile is written; bounded wait.
    await Promise.all(proxies.map(stopProxy));
    for (const c of kids) c.kill('SIGKILL');
    await lab.close();
    pki.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
    if (createdRunSshd) fs.rmSync('/run/sshd', { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`bench-tunnel: ${err.message}\n`);
    process.exit(1);
  },
);
