// A Debian machine (13 in the slow test) booted with `systemd-nspawn -b` (systemd as its init) inside a lab host's
// network namespace, for the tests of the Debian package and its units under a real init.
//
// The root file system comes from a cache outside the clone (scripts/lib/nspawn-rootfs) and is
// never written: each machine runs on an overlay (lower = the cache, upper = a per-run directory).
// `--register=no --keep-unit` keep the machine away from the host's systemd (there may be none);
// commands run inside with nsenter into the container's namespaces. close() powers the machine off
// (SIGTERM to nspawn = a clean shutdown of its systemd), kills it if that hangs, unmounts the overlay
// and removes the per-run directory. Per-run names carry the pid, so a sweep can clean up after a
// run that was killed with -9.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ExecResult } from './lab';

const WORK_PREFIX = '/tmp/idg-nspawn-';
const live = new Set<NspawnMachine>();
let exitHandler = false;

function run(cmd: string, args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, env }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 124) : 0;
      resolve({
        code,
        stdout: String(stdout),
        stderr: String(stderr) || (err && !stderr ? err.message : ''),
      });
    });
  });
}

function isMounted(dir: string): boolean {
  return fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === dir);
}

/** Unmount and remove a per-run directory (synchronous: also used from the exit handler). */
function removeWorkDir(dir: string): void {
  const merged = path.join(dir, 'merged');
  for (let i = 0; i < 3 && isMounted(merged); i++) {
    try {
      execFileSync('umount', [i === 2 ? '-l' : '-R', merged], { stdio: 'ignore' });
    } catch {
      /* retried below */
    }
  }
  if (!isMounted(merged)) fs.rmSync(dir, { recursive: true, force: true });
}

/** Remove machines left by runs that were killed (their pid is gone). */
export function sweepStaleMachines(): string[] {
  const removed: string[] = [];
  for (const name of fs.readdirSync('/tmp')) {
    const m = /^idg-nspawn-(\d+)-/.exec(name);
    if (!m || fs.existsSync(`/proc/${m[1]}`)) continue;
    const dir = path.join('/tmp', name);
    const pidFile = path.join(dir, 'nspawn.pid');
    try {
      const pid = Number(fs.readFileSync(pidFile, 'utf8'));
      if (pid > 0) process.kill(pid, 'SIGKILL');
    } catch {
      /* no pid or already gone */
    }
    removeWorkDir(dir);
    removed.push(dir);
  }
  return removed;
}

export interface BootOptions {
  /** The cached root file system (read-only lower layer). */
  rootfs: string;
  /** Network namespace to join, e.g. /run/netns/idg-123-0-client. */
  netnsPath: string;
  /** Machine (host) name, <= 64 chars. */
  name: string;
  bootTimeoutMs?: number;
}

export class NspawnMachine {
  private child: ChildProcess | null = null;
  private leader = 0;
  private closed: Promise<void> | null = null;

  private constructor(
    readonly dir: string,
    readonly name: string,
  ) {}

  /** The container's root as the host sees it (write files here to put them inside). */
  get root(): string {
    return path.join(this.dir, 'merged');
  }

  get consoleLog(): string {
    return path.join(this.dir, 'console.log');
  }

  static async boot(opts: BootOptions): Promise<NspawnMachine> {
    const dir = fs.mkdtempSync(`${WORK_PREFIX}${process.pid}-`);
    const m = new NspawnMachine(dir, opts.name);
    live.add(m);
    if (!exitHandler) {
      exitHandler = true;
      process.once('exit', () => {
        for (const x of live) x.killSync();
      });
    }
    try {
      await m.start(opts);
    } catch (err) {
      await m.close();
      throw err;
    }
    return m;
  }

  private async start(opts: BootOptions): Promise<void> {
    for (const d of ['upper', 'work', 'merged']) fs.mkdirSync(path.join(this.dir, d));
    execFileSync('mount', [
      '-t',
      'overlay',
      'overlay',
      '-o',
      `lowerdir=${opts.rootfs},upperdir=${this.dir}/upper,workdir=${this.dir}/work`,
      this.root,
    ]);
    const log = fs.openSync(this.consoleLog, 'a');
    this.child = spawn(
      'systemd-nspawn',
      [
        '--boot',
        `--directory=${this.root}`,
        `--machine=${opts.name}`,
        '--register=no',
        '--keep-unit',
        `--network-namespace-path=${opts.netnsPath}`,
        // nspawn keeps CAP_NET_ADMIN only for a private network; this one is the lab host's, and
        // the daemon inside manages its routes.
        '--capability=CAP_NET_ADMIN',
        '--console=pipe',
        '--link-journal=no',
      ],
      {
        stdio: ['ignore', log, log],
        env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', SYSTEMD_LOG_LEVEL: 'info' },
      },
    );
    fs.closeSync(log);
    fs.writeFileSync(path.join(this.dir, 'nspawn.pid'), String(this.child.pid));
    const exited = new Promise<never>((_, reject) =>
      this.child!.once('exit', (code, sig) =>
        reject(new Error(`systemd-nspawn exited (${code ?? sig}) while booting:\n${this.consoleTail()}`)),
      ),
    );
    exited.catch(() => undefined);
    const deadline = Date.now() + (opts.bootTimeoutMs ?? 60_000);
    // The container's PID 1 (systemd) is nspawn's child.
    while (!this.leader) {
      if (Date.now() > deadline) throw new Error(`the container did not start:\n${this.consoleTail()}`);
      this.leader = this.findLeader();
      if (!this.leader) await Promise.race([new Promise((r) => setTimeout(r, 100)), exited]);
    }
    // Boot finished: is-system-running --wait returns "running" (or "degraded" naming a failed unit).
    // Before PID 1 has its private socket up, systemctl cannot connect yet: try again.
    for (;;) {
      const left = Math.max(1000, deadline - Date.now());
      const r = await Promise.race([this.exec(['systemctl', 'is-system-running', '--wait'], left), exited]);
      const state = r.stdout.trim();
      if (state === 'running') return;
      // systemd 252 says "Failed to connect to bus", 257 "... to system scope bus via local transport".
      if (!state && /Failed to connect to .*bus/.test(r.stderr) && Date.now() < deadline) {
        await new Promise((res) => setTimeout(res, 200));
        continue;
      }
      const failed = await this.exec(['systemctl', '--failed', '--no-legend', '--plain']);
      throw new Error(`the container booted "${state}": ${failed.stdout}${r.stderr}`);
    }
  }

  private findLeader(): number {
    const pid = this.child?.pid;
    if (!pid) return 0;
    try {
      for (const c of fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)) {
        if (!c) continue;
        const comm = fs.readFileSync(`/proc/${c}/comm`, 'utf8').trim();
        if (comm === 'systemd' || comm === 'init') return Number(c);
      }
    } catch {
      /* not yet */
    }
    return 0;
  }

  consoleTail(lines = 30): string {
    try {
      return fs.readFileSync(this.consoleLog, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /** Run a command inside the machine (its mount, pid, net, uts, ipc and cgroup namespaces). */
  exec(argv: string[], timeoutMs = 60_000): Promise<ExecResult> {
    if (!this.leader) throw new Error('nspawn: the machine is not running');
    return run(
      'nsenter',
      ['-t', String(this.leader), '-m', '-u', '-i', '-n', '-p', '-C', '--', ...argv],
      timeoutMs,
      { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', SYSTEMD_PAGER: '', SYSTEMD_COLORS: '0' },
    );
  }

  /** Like exec, but throws with the output on a non-zero exit. */
  async execOk(argv: string[], timeoutMs = 60_000): Promise<string> {
    const r = await this.exec(argv, timeoutMs);
    if (r.code !== 0)
      throw new Error(`in the container: ${argv.join(' ')} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  /** A shell command line inside the machine. */
  sh(script: string, timeoutMs = 60_000): Promise<ExecResult> {
    return this.exec(['/bin/sh', '-c', script], timeoutMs);
  }

  /** Write a file inside the machine (through the overlay's merged directory). */
  writeFile(file: string, content: string | Buffer, mode = 0o644): void {
    const p = path.join(this.root, file);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, content, { mode });
    fs.chmodSync(p, mode);
  }

  /** Copy a host file into the machine. */
  copyIn(hostFile: string, file: string): string {
    const p = path.join(this.root, file);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.copyFileSync(hostFile, p);
    return file;
  }

  /** Power off (clean systemd shutdown), or kill after the timeout; unmount and remove. Idempotent. */
  close(timeoutMs = 30_000): Promise<void> {
    this.closed ??= (async () => {
      const child = this.child;
      if (child && child.exitCode === null && child.signalCode === null) {
        const gone = new Promise<void>((r) => child.once('exit', () => r()));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
        await gone;
        clearTimeout(t);
      }
      removeWorkDir(this.dir);
      live.delete(this);
    })();
    return this.closed;
  }

  private killSync(): void {
    try {
      this.child?.kill('SIGKILL');
    } catch {
      /* gone */
    }
    // Let the kernel reap the container's processes before the overlay is unmounted.
    try {
      execFileSync('sleep', ['0.5']);
    } catch {
      /* ignore */
    }
    removeWorkDir(this.dir);
  }
}
