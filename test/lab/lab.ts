// The network-namespace lab: hosts are namespaces, LANs are veth pairs (two members) or a bridge in a
// switch namespace (more members). Lab rules (README.md, "Layout"): nothing lives in the root namespace, every
// name carries a per-run prefix, addresses come from 198.18.0.0/15 and 2001:db8::/32 only, and
// teardown runs on success, failure, exit and SIGINT.
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The repository root (this file is dist/test/lab/lab.js when running). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

export interface LanMember {
  host: string;
  /** Interface name inside the host (<= 15 chars). */
  iface: string;
  /** Addresses with prefix length, e.g. "198.18.1.10/24", "2001:db8:1::10/64". */
  addrs?: string[];
}

export interface LanSpec {
  name: string;
  members: LanMember[];
  /** Force a bridge even for two members (so a member's link can go down without the other's). */
  bridge?: boolean;
}

export interface HostSpec {
  /** Enable IPv4 and IPv6 forwarding (routers). */
  router?: boolean;
  /** Extra sysctls, e.g. { 'net.ipv4.tcp_syn_retries': '6' }. */
  sysctls?: Record<string, string>;
  /** `ip` commands (argv after `ip`) run after addresses are set, e.g. ['route', 'add', 'default', 'via', ...]. */
  ip?: string[][];
}

export interface LabSpec {
  hosts: Record<string, HostSpec>;
  lans: LanSpec[];
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

const ALLOWED_V4 = /^198\.(18|19)\./;
const ALLOWED_V6 = /^2001:(0)?db8:/i;

const live = new Set<Lab>();
let counter = 0;
let handlersInstalled = false;

/** Prefix for every namespace this process creates: idg-<pid>-<n>-. */
export const NS_PREFIX = 'idg-';

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function run(cmd: string, args: string[], timeoutMs = 20_000): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({
        code,
        stdout: String(stdout),
        stderr: String(stderr) || (err && !stderr ? err.message : ''),
      });
    });
  });
}

async function runOk(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`lab: ${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

function checkAddr(addr: string): void {
  const ip = addr.split('/')[0]!;
  if (!ALLOWED_V4.test(ip) && !ALLOWED_V6.test(ip))
    throw new Error(`lab: ${addr} is outside 198.18.0.0/15 and 2001:db8::/32 (lab rules)`);
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => {
    for (const lab of live) lab.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const lab of live) lab.destroySync();
      process.exit(130);
    });
  }
}

export class Lab {
  readonly prefix: string;
  private readonly namespaces: string[] = [];
  private readonly children = new Set<ChildProcess>();
  private readonly tempFiles = new Set<string>();
  private closed = false;

  private constructor(readonly spec: LabSpec) {
    this.prefix = `${NS_PREFIX}${process.pid}-${counter++}-`;
  }

  /** Build the topology; on any failure everything created so far is torn down. */
  static async create(spec: LabSpec): Promise<Lab> {
    if (!isRoot()) throw new Error('lab: building network namespaces needs root');
    installHandlers();
    const lab = new Lab(spec);
    live.add(lab);
    try {
      await lab.build();
    } catch (err) {
      await lab.close();
      throw err;
    }
    return lab;
  }

  /** The namespace name of a host. */
  ns(host: string): string {
    if (!(host in this.spec.hosts) && !host.startsWith('sw-')) throw new Error(`lab: no host ${host}`);
    return this.prefix + host;
  }

  private async addNs(name: string): Promise<void> {
    await runOk('ip', ['netns', 'add', name]);
    this.namespaces.push(name);
    await runOk('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  }

  private async build(): Promise<void> {
    for (const lan of this.spec.lans)
      for (const m of lan.members) for (const a of m.addrs ?? []) checkAddr(a);
    for (const [host, hs] of Object.entries(this.spec.hosts)) {
      const ns = this.ns(host);
      await this.addNs(ns);
      const sysctls: Record<string, string> = {
        // Addresses usable at once: no duplicate address detection in the lab.
        'net.ipv6.conf.all.accept_dad': '0',
        'net.ipv6.conf.default.accept_dad': '0',
        // Routers and hosts here route asymmetrically on purpose; strict rp_filter would drop it.
        'net.ipv4.conf.all.rp_filter': '0',
        'net.ipv4.conf.default.rp_filter': '0',
        ...(hs.router ? { 'net.ipv4.ip_forward': '1', 'net.ipv6.conf.all.forwarding': '1' } : {}),
        ...hs.sysctls,
      };
      for (const [k, v] of Object.entries(sysctls))
        await runOk('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `${k}=${v}`]);
    }
    for (const lan of this.spec.lans) {
      if (lan.members.length === 2 && !lan.bridge) {
        const [a, b] = lan.members as [LanMember, LanMember];
        await runOk('ip', [
          '-n',
          this.ns(a.host),
          'link',
          'add',
          a.iface,
          'type',
          'veth',
          'peer',
          'name',
          b.iface,
          'netns',
          this.ns(b.host),
        ]);
      } else {
        const sw = this.prefix + 'sw-' + lan.name;
        await this.addNs(sw);
        await runOk('ip', [
          '-n',
          sw,
          'link',
          'add',
          'br0',
          'type',
          'bridge',
          'stp_state',
          '0',
          'forward_delay',
          '0',
        ]);
        await runOk('ip', ['-n', sw, 'link', 'set', 'br0', 'up']);
        for (const m of lan.members) {
          const port = `p-${m.host}`.slice(0, 15);
          await runOk('ip', [
            '-n',
            sw,
            'link',
            'add',
            port,
            'type',
            'veth',
            'peer',
            'name',
            m.iface,
            'netns',
            this.ns(m.host),
          ]);
          await runOk('ip', ['-n', sw, 'link', 'set', port, 'master', 'br0', 'up']);
        }
      }
      for (const m of lan.members) {
        const ns = this.ns(m.host);
        await runOk('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `net.ipv6.conf.${m.iface}.accept_dad=0`]);
        for (const a of m.addrs ?? []) {
          const args = ['-n', ns, 'addr', 'add', a, 'dev', m.iface];
          if (a.includes(':')) args.push('nodad');
          await runOk('ip', args);
        }
        await runOk('ip', ['-n', ns, 'link', 'set', m.iface, 'up']);
      }
    }
    for (const [host, hs] of Object.entries(this.spec.hosts))
      for (const cmd of hs.ip ?? []) await runOk('ip', ['-n', this.ns(host), ...cmd]);
  }

  /** Run a command in a host's namespace; never throws for a non-zero exit. */
  exec(host: string, argv: string[], timeoutMs = 20_000): Promise<ExecResult> {
    return run('ip', ['netns', 'exec', this.ns(host), ...argv], timeoutMs);
  }

  /** Run a command in a host's namespace; throws with its stderr on a non-zero exit. */
  execOk(host: string, argv: string[], timeoutMs = 20_000): Promise<string> {
    return runOk('ip', ['netns', 'exec', this.ns(host), ...argv], timeoutMs);
  }

  /**
   * Run a compiled node script (path relative to the repository root, e.g.
   * "dist/test/fixtures/x.js") inside a host's namespace; returns its exit code and output.
   */
  node(host: string, script: string, args: string[] = [], timeoutMs = 30_000): Promise<ExecResult> {
    return this.exec(host, [process.execPath, path.resolve(REPO_ROOT, script), ...args], timeoutMs);
  }

  /** Run ./bin/ipdeadgate inside a host's namespace. */
  cli(host: string, args: string[], timeoutMs = 30_000): Promise<ExecResult> {
    return this.exec(host, [process.execPath, path.join(REPO_ROOT, 'bin', 'ipdeadgate'), ...args], timeoutMs);
  }

  /** Start ./bin/ipdeadgate (e.g. the daemon) inside a host's namespace; killed at close(). */
  spawnCli(host: string, args: string[], opts: SpawnOptions = {}, nodeArgs: string[] = []): ChildProcess {
    return this.spawn(
      host,
      [process.execPath, ...nodeArgs, path.join(REPO_ROOT, 'bin', 'ipdeadgate'), ...args],
      opts,
    );
  }

  /** `ip -n HOST ...` */
  ip(host: string, args: string[]): Promise<string> {
    return runOk('ip', ['-n', this.ns(host), ...args]);
  }

  /** Start a long-running process in a host's namespace; it is killed at close(). */
  spawn(host: string, argv: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns(host), ...argv], { stdio: 'pipe', ...opts });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** A file path that close() removes. */
  tempPath(name: string): string {
    const p = `/tmp/${this.prefix}${name}`;
    this.tempFiles.add(p);
    return p;
  }

  /**
   * Kill a router silently: it drops everything in and out of `iface` (its LAN side), while the
   * link stays up for everyone else, as with a dead router behind a switch.
   */
  async killSilently(host: string, iface: string): Promise<void> {
    const rules =
      `table netdev idgdead_${iface} {\n` +
      `  chain in { type filter hook ingress device "${iface}" priority -500; policy drop; }\n` +
      `  chain out { type filter hook egress device "${iface}" priority -500; policy drop; }\n}\n`;
    const file = this.tempPath(`nft-${host}-${iface}`);
    fs.writeFileSync(file, rules);
    await this.execOk(host, ['nft', '-f', file]);
  }

  /** Undo killSilently. */
  async revive(host: string, iface: string): Promise<void> {
    await this.execOk(host, ['nft', 'delete', 'table', 'netdev', `idgdead_${iface}`]);
  }

  /** Make a host drop ICMP echo requests (a firewall that blocks ping) while staying alive. */
  async blockPing(host: string): Promise<void> {
    const file = this.tempPath(`nft-noping-${host}`);
    fs.writeFileSync(
      file,
      'table inet idgnoping {\n  chain in { type filter hook input priority 0; policy accept;\n' +
        '    icmp type echo-request drop\n    icmpv6 type echo-request drop\n  }\n}\n',
    );
    await this.execOk(host, ['nft', '-f', file]);
  }

  /** Tear everything down: processes, namespaces, temp files. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const child of this.children) child.kill('SIGKILL');
    for (const ns of [...this.namespaces].reverse()) {
      const pids = (await run('ip', ['netns', 'pids', ns])).stdout.split(/\s+/).filter(Boolean);
      for (const pid of pids) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      await run('ip', ['netns', 'del', ns]);
    }
    for (const f of this.tempFiles) fs.rmSync(f, { force: true, recursive: true });
    live.delete(this);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Synchronous teardown for process exit and signals. */
  destroySync(): void {
    if (this.closed) return;
    this.closed = true;
    for (const child of this.children) child.kill('SIGKILL');
    for (const ns of [...this.namespaces].reverse()) {
      try {
        const pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' })
          .split(/\s+/)
          .filter(Boolean);
        for (const pid of pids) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        /* best effort at exit */
      }
    }
    for (const f of this.tempFiles) fs.rmSync(f, { force: true, recursive: true });
    live.delete(this);
  }
}

/** Tear down every lab this process built (mocha root hook). */
export async function closeAllLabs(): Promise<void> {
  for (const lab of [...live]) await lab.close();
}

/**
 * Remove namespaces left by earlier runs whose process is gone (a run killed with -9 cannot clean
 * up after itself). Only names with our prefix and a dead owner pid are touched.
 */
export function sweepStaleNamespaces(): string[] {
  let out = '';
  try {
    out = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const line of out.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = /^idg-(\d+)-/.exec(name);
    if (!m) continue;
    if (fs.existsSync(`/proc/${m[1]}`)) continue;
    try {
      const pids = execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8' })
        .split(/\s+/)
        .filter(Boolean);
      for (const pid of pids) process.kill(Number(pid), 'SIGKILL');
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
      removed.push(name);
    } catch {
      /* leave it to the next sweep */
    }
  }
  return removed;
}

/**
 * For privileged tests: returns true when the test can run. Without root it skips with a title that
 * says why — except under CI=true, where a privileged test that would skip fails instead.
 */
export function requireRoot(ctx: Mocha.Context): void {
  if (isRoot()) return;
  if (process.env.CI === 'true')
    throw new Error('privileged test cannot run: not root (CI=true makes this a failure)');
  ctx.test!.title += ' (skipped: needs root for network namespaces)';
  ctx.skip();
}

/** Wait until fn() returns a truthy value, polling every stepMs, at most timeoutMs. */
export async function waitFor<T>(
  fn: () => Promise<T> | T,
  timeoutMs: number,
  what: string,
  stepMs = 25,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
