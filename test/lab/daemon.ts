// Run `ipdeadgate daemon` inside a lab host and follow its event lines (JSON on stdout).
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { unprivilegedRoot } from '../fixtures/unprivileged';
import { type Lab } from './lab';

export interface DaemonEvent {
  time: string;
  level: string;
  event: string;
  /** performance.now() of this process when the line arrived. */
  seenAt: number;
  [k: string]: unknown;
}

/** The CLI in a lab host, under `wrap` (a command that execs its arguments) when given. */
function spawnWrapped(
  lab: Lab,
  host: string,
  wrap: string[],
  args: string[],
  nodeArgs: string[] = [],
): ChildProcess {
  if (wrap.length === 0) return lab.spawnCli(host, args, {}, nodeArgs);
  // A wrapper may run the daemon as another user, who cannot reach a clone in root's 0700 home:
  // the world-readable copy of the built tree serves both cases.
  const cli = path.join(unprivilegedRoot(), 'bin', 'ipdeadgate');
  return lab.spawn(host, [...wrap, process.execPath, ...nodeArgs, cli, ...args]);
}

export class LabDaemon {
  readonly events: DaemonEvent[] = [];
  readonly stderr: string[] = [];
  private waiters: { pred: (e: DaemonEvent) => boolean; resolve: (e: DaemonEvent) => void }[] = [];
  exitCode: number | null = null;
  /** A command line the daemon runs under (another mount namespace, another user); kept by restart. */
  wrap: string[] = [];
  private exited: Promise<number | null>;

  constructor(
    readonly lab: Lab,
    readonly host: string,
    readonly child: ChildProcess,
    readonly control: string,
    readonly stateDir: string,
  ) {
    let buf = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let ev: DaemonEvent;
        try {
          ev = { ...(JSON.parse(line) as DaemonEvent), seenAt: performance.now() };
        } catch {
          continue;
        }
        this.events.push(ev);
        this.waiters = this.waiters.filter((w) => {
          if (!w.pred(ev)) return true;
          w.resolve(ev);
          return false;
        });
      }
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (c: string) => this.stderr.push(c));
    this.exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        this.exitCode = code;
        resolve(code);
      }),
    );
  }

  /** Start the daemon in `host` with a YAML config; resolves once it reports dgd_started. */
  static async start(
    lab: Lab,
    host: string,
    yaml: string | null,
    extraArgs: string[] = [],
    wrap: string[] = [],
    /** Node's own options before the script (--cpu-prof for a benchmark's profile). */
    nodeArgs: string[] = [],
  ): Promise<LabDaemon> {
    const control = lab.tempPath(`${host}-ctl.sock`);
    const stateDir = lab.tempPath(`${host}-state`);
    const args = ['daemon', '--control', control, '--state-dir', stateDir, ...extraArgs];
    if (yaml !== null) {
      const cfg = lab.tempPath(`${host}-config.yaml`);
      fs.writeFileSync(cfg, yaml);
      args.push('--config', cfg);
    }
    const d = new LabDaemon(lab, host, spawnWrapped(lab, host, wrap, args, nodeArgs), control, stateDir);
    d.wrap = wrap;
    await d.waitFor((e) => e.event === 'daemon_started', 15_000, 'the daemon to start');
    return d;
  }

  /** Restart with the same control socket and state dir (after a kill -9, say). */
  static async restart(prev: LabDaemon, yaml: string | null): Promise<LabDaemon> {
    const args = ['daemon', '--control', prev.control, '--state-dir', prev.stateDir];
    if (yaml !== null) {
      const cfg = prev.lab.tempPath(`${prev.host}-config.yaml`);
      fs.writeFileSync(cfg, yaml);
      args.push('--config', cfg);
    }
    const d = new LabDaemon(
      prev.lab,
      prev.host,
      spawnWrapped(prev.lab, prev.host, prev.wrap, args),
      prev.control,
      prev.stateDir,
    );
    d.wrap = prev.wrap;
    await d.waitFor((e) => e.event === 'daemon_started', 15_000, 'the daemon to restart');
    return d;
  }

  /** The first event (already seen or coming) that matches, within timeoutMs. */
  waitFor(pred: (e: DaemonEvent) => boolean, timeoutMs: number, what: string): Promise<DaemonEvent> {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(
          new Error(
            `timed out after ${timeoutMs} ms waiting for ${what}; exit ${this.exitCode}; events: ${this.events
              .map((e) => e.event)
              .slice(-30)
              .join(' ')}; errors: ${[
              ...new Set(
                this.events
                  .filter((e) => e.level !== 'info')
                  .map((e) => `${String(e.during)}: ${String(e.error)}`),
              ),
            ]
              .slice(0, 5)
              .join(' | ')}; stderr: ${this.stderr.join('').slice(-2000)}`,
          ),
        );
      }, timeoutMs);
      const done = (e: DaemonEvent) => {
        clearTimeout(timer);
        resolve(e);
      };
      this.waiters.push({ pred, resolve: done });
      void this.exited.then((code) => {
        if (this.waiters.some((w) => w.resolve === done)) {
          clearTimeout(timer);
          reject(
            new Error(
              `the daemon exited (${code}) while waiting for ${what}; stderr: ${this.stderr.join('').slice(-2000)}`,
            ),
          );
        }
      });
    });
  }

  /** Events named `name` seen so far. */
  named(name: string): DaemonEvent[] {
    return this.events.filter((e) => e.event === name);
  }

  /** Run the CLI against this daemon's control socket. */
  cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return this.lab.cli(this.host, [...args, '--control', this.control]);
  }

  async status(): Promise<
    {
      enabled: boolean;
      gateways: { address: string; state: string; routes: { state: string }[] }[];
    } & Record<string, unknown>
  > {
    const r = await this.cli(['status', '--json']);
    if (r.code !== 0) throw new Error(`status failed (${r.code}): ${r.stderr}`);
    return JSON.parse(r.stdout) as never;
  }

  /** Send a signal and wait for the exit code (bounded). */
  async signal(sig: NodeJS.Signals, timeoutMs = 10_000): Promise<number | null> {
    // `ip netns exec` execs the node process, so the child's pid is the daemon's.
    this.child.kill(sig);
    if (sig === 'SIGHUP') return null;
    return Promise.race([
      this.exited,
      new Promise<number | null>((_, rej) =>
        setTimeout(() => rej(new Error(`daemon did not exit on ${sig}`)), timeoutMs),
      ),
    ]);
  }

  async stop(): Promise<number | null> {
    if (this.exitCode !== null || this.child.exitCode !== null) return this.exitCode ?? this.child.exitCode;
    return this.signal('SIGTERM');
  }
}
