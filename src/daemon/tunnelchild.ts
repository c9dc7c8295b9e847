// The daemon's tunnel roles run in a child process (./tunnelworker.ts), as the packaged
// `ipdeadgate-tunnel@` unit runs them alone: detection and the tunnel do not share descriptors,
// memory or an event loop, so neither can starve the other. This is the daemon's side: the same
// start / status / reload / close as a TunnelNode, over the IPC channel. The child's events are
// logged and counted by the daemon; its status is pushed every second (and with every reload).
// A child that dies is started again (with a back-off); the daemon never waits on it for long.
import { fork, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { IpdeadgateError } from '../errors';
import type { TunnelConfig } from '../tunnel/config';
import type { TunnelStatus } from '../tunnel/node';
import type { EventLog, LogLevel } from '../util/eventlog';
import { tunnelExecWrapper } from './tunnelprivs';

export type ToTunnel =
  { type: 'start'; config: unknown } | { type: 'reload'; id: number; config: unknown } | { type: 'close' };

export type FromTunnel =
  | { type: 'event'; name: string; fields: Record<string, unknown>; level: LogLevel }
  | { type: 'started'; status: TunnelStatus }
  | { type: 'start_failed'; code: string; message: string }
  | { type: 'status'; status: TunnelStatus }
  | { type: 'reloaded'; id: number; changed: string[]; status: TunnelStatus }
  | { type: 'reload_failed'; id: number; message: string };

const START_TIMEOUT_MS = 30_000;
const RELOAD_TIMEOUT_MS = 30_000;
const CLOSE_TIMEOUT_MS = 5000;
const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;

export class TunnelChild {
  private child: ChildProcess | null = null;
  private latest: TunnelStatus | null = null;
  private closed = false;
  private nextId = 1;
  private readonly replies = new Map<number, (m: FromTunnel) => void>();
  private restartDelay = RESTART_MIN_MS;
  private restartTimer: NodeJS.Timeout | null = null;
  private warnedPrivileges = false;

  private constructor(
    private config: TunnelConfig,
    private readonly events: EventLog,
  ) {}

  /** Fork the child and start the tunnel in it; rejects with the child's error (a port in use). */
  static async start(config: TunnelConfig, opts: { events: EventLog }): Promise<TunnelChild> {
    const t = new TunnelChild(config, opts.events);
    await t.spawn();
    return t;
  }

  /** The latest status the child reported (at most a second old); null while it is down. */
  status(): TunnelStatus | null {
    return this.latest;
  }

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  private spawn(): Promise<void> {
    // Without detection's capabilities (./tunnelprivs.ts); the pid is node's (setpriv execs it).
    const wrapper = tunnelExecWrapper();
    if (wrapper.path === null && !this.warnedPrivileges) {
      this.warnedPrivileges = true;
      if (wrapper.reason !== 'the daemon holds no capabilities')
        this.events.event(
          'tunnel_privileges_kept',
          { reason: wrapper.reason, note: "the tunnel process runs with the daemon's capabilities" },
          'warn',
        );
    }
    const child = fork(path.join(__dirname, 'tunnelworker.js'), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'advanced',
      ...(wrapper.path !== null && {
        execPath: wrapper.path,
        execArgv: [...wrapper.args, process.execPath, ...process.execArgv],
      }),
    });
    this.child = child;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        fail(
          new IpdeadgateError('ETIMEDOUT', `the tunnel process did not start within ${START_TIMEOUT_MS} ms`),
        );
        child.kill('SIGKILL');
      }, START_TIMEOUT_MS);
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      };
      child.on('message', (m: FromTunnel) => {
        switch (m.type) {
          case 'event':
            this.events.event(m.name, m.fields, m.level);
            return;
          case 'started':
            this.latest = m.status;
            this.restartDelay = RESTART_MIN_MS;
            if (!settled) {
              settled = true;
              clearTimeout(timer);
              resolve();
            }
            return;
          case 'start_failed':
            fail(new IpdeadgateError(m.code, m.message));
            return;
          case 'status':
            this.latest = m.status;
            return;
          case 'reloaded':
          case 'reload_failed':
            this.replies.get(m.id)?.(m);
            return;
        }
      });
      child.once('error', (err) => fail(err));
      child.once('exit', (code, signal) => {
        if (this.child === child) this.child = null;
        this.latest = null;
        for (const [id, reply] of this.replies)
          reply({ type: 'reload_failed', id, message: 'the tunnel process exited' });
        this.replies.clear();
        if (!settled) {
          fail(
            new IpdeadgateError('ERR_TUNNEL', `the tunnel process exited (${signal ?? code}) while starting`),
          );
          return;
        }
        if (this.closed) return;
        this.events.event(
          'tunnel_process_exited',
          {
            pid: child.pid,
            code,
            signal,
            note: `started again in ${this.restartDelay} ms; detection is not affected`,
          },
          'error',
        );
        this.scheduleRestart();
      });
      child.send({ type: 'start', config: this.config } satisfies ToTunnel);
    });
  }

  private scheduleRestart(): void {
    if (this.closed || this.restartTimer) return;
    const delay = this.restartDelay;
    this.restartDelay = Math.min(RESTART_MAX_MS, this.restartDelay * 2);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.closed) return;
      this.spawn().then(
        () => this.events.event('tunnel_process_restarted', { pid: this.child?.pid ?? null }, 'warn'),
        () => this.scheduleRestart(),
      );
    }, delay);
  }

  /** Apply a new tunnel config in the child (TunnelNode.reload there); rejects with its reason. */
  async reload(next: TunnelConfig): Promise<string[]> {
    const child = this.child;
    if (!child || !child.connected)
      throw new IpdeadgateError(
        'ERR_TUNNEL',
        'the tunnel process is not running (it is being started again)',
      );
    const id = this.nextId++;
    const reply = await new Promise<FromTunnel>((resolve) => {
      const timer = setTimeout(
        () => resolve({ type: 'reload_failed', id, message: `no answer within ${RELOAD_TIMEOUT_MS} ms` }),
        RELOAD_TIMEOUT_MS,
      );
      this.replies.set(id, (m) => {
        clearTimeout(timer);
        this.replies.delete(id);
        resolve(m);
      });
      child.send({ type: 'reload', id, config: next } satisfies ToTunnel);
    });
    if (reply.type === 'reloaded') {
      this.config = next;
      this.latest = reply.status;
      return reply.changed;
    }
    throw new IpdeadgateError(
      'ERR_TUNNEL_RELOAD',
      reply.type === 'reload_failed' ? reply.message : 'refused',
    );
  }

  /** Close the tunnel and end the child (killed if it does not end in time). Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        resolve();
      }, CLOSE_TIMEOUT_MS);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      if (child.connected) child.send({ type: 'close' } satisfies ToTunnel);
      else child.kill('SIGTERM');
    });
  }
}
