// Close-leak protection, the IY55176 lesson: TFST left its end of a routed connection in
// CLOSE_WAIT whenever the peer proxy failed to pass on "no more data", until the process ran out of
// descriptors (accept() failed, e=24). Here a session is a local TCP socket bridged to a yamux
// stream, and its whole life is one state machine (src/tunnel/sessionlife.ts) held in this table:
//  1. FIN and RST travel end to end: a local FIN becomes a stream FIN, a stream FIN a local FIN
//     (half-close works), a local error or RST a stream RST, a stream RST a local RST;
//  2. every state has a bound (dial_timeout, open_timeout, close_timeout after a FIN, ...), and
//     every exit from every state closes both ends and frees the slot;
//  3. a watcher on the local socket (src/sys/watcher: EPOLLRDHUP/HUP/ERR via uv_poll) sees the local
//     peer's FIN or RST even while the bridge is paused by backpressure and Node reads nothing;
//  4. a reaper (TCP_INFO, src/sys/tcpinfo) ends any session whose state outlived its bound, whose
//     stream is gone while its socket is not (in any TCP state), or whose socket sits in
//     CLOSE_WAIT idle past close_timeout, and counts it.
// And running out of descriptors (EMFILE/ENFILE on accept) pauses accepting with backoff.
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import { systemClock, type Clock, type Timer } from '../util/clock';
import type { HostPort } from './config';
import type { MuxStream } from './muxstream';
import {
  SessionLife,
  type SessionBounds,
  type SessionExit,
  type SessionHost,
  type SessionState,
} from './sessionlife';
import { fdOf, tcpInfoByFd } from '../sys/tcpinfo';
import { watchSocket } from '../sys/watcher';

/** The socket-state event of src/sys/watcher.ts. */
export interface SocketEvent {
  rdhup: boolean;
  hup: boolean;
  err: boolean;
  errno?: number;
}

/** The native ports the guard uses; injected so the logic is tested without them. */
export interface SocketPorts {
  /** Watch a socket's fd for EPOLLRDHUP/HUP/ERR (src/sys/watcher.ts), or undefined when unavailable. */
  watchSocket?: (fd: number, onEvent: (ev: SocketEvent) => void) => { close(): void };
  /** TCP state of a socket fd, e.g. 'ESTABLISHED', 'CLOSE-WAIT' (src/sys/tcpinfo.ts or /proc). */
  tcpState: (fd: number) => string | undefined;
  /** The descriptor of a Node socket. */
  fdOf: (socket: net.Socket) => number | undefined;
}

/** The real ports: src/sys's watcher and TCP_INFO; /proc when the native addon cannot load. */
export function systemSocketPorts(): SocketPorts {
  let nativeOk = true;
  const tcpState = (fd: number): string | undefined => {
    if (nativeOk) {
      try {
        return tcpInfoByFd(fd).state;
      } catch (err) {
        if ((err as { code?: string }).code !== 'ERR_NATIVE_MISSING') return undefined;
        nativeOk = false;
      }
    }
    return procTcpState(fd);
  };
  const fdOfSocket = (s: net.Socket): number | undefined => {
    try {
      return fdOf(s);
    } catch {
      return undefined;
    }
  };
  const watch: SocketPorts['watchSocket'] = (fd, cb) => {
    if (!nativeOk) return { close: () => undefined };
    try {
      return watchSocket(fd, cb);
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_NATIVE_MISSING') nativeOk = false;
      return { close: () => undefined };
    }
  };
  return { watchSocket: watch, tcpState, fdOf: fdOfSocket };
}

// /proc/net/tcp state codes (include/net/tcp_states.h).
const PROC_STATES: Record<string, string> = {
  '01': 'ESTABLISHED',
  '02': 'SYN-SENT',
  '03': 'SYN-RECV',
  '04': 'FIN-WAIT-1',
  '05': 'FIN-WAIT-2',
  '06': 'TIME-WAIT',
  '07': 'CLOSE',
  '08': 'CLOSE-WAIT',
  '09': 'LAST-ACK',
  '0A': 'LISTEN',
  '0B': 'CLOSING',
};

/** A socket's TCP state from /proc: fd -> socket inode -> /proc/net/tcp{,6} line. */
export function procTcpState(fd: number): string | undefined {
  let inode: string;
  try {
    const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`));
    if (!m) return undefined;
    inode = m[1]!;
  } catch {
    return undefined;
  }
  for (const file of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f[9] === inode) return PROC_STATES[f[3] ?? ''] ?? f[3];
    }
  }
  return undefined;
}

/** Counters of the guard, for status. */
export interface GuardStats {
  reaped: number;
  watcherResets: number;
  watcherFins: number;
  closeTimeouts: number;
  /** Sessions ended, by why. */
  exits: Partial<Record<SessionExit, number>>;
}

export interface GuardOptions {
  closeTimeoutMs: number;
  /** dialing's bound (default 15 s). */
  dialTimeoutMs?: number;
  /** opening's bound (default 30 s). */
  openTimeoutMs?: number;
  reapIntervalMs?: number;
  clock?: Clock;
  ports?: SocketPorts;
  /** Called once per session when it reaches closed. */
  onEnded?: (s: SessionLife, exit: SessionExit) => void;
}

/**
 * The table of sessions (src/tunnel/sessionlife.ts): creates them, frees their slot when they
 * reach closed, and reaps what slips through. One per node.
 */
export class CloseGuard implements SessionHost {
  readonly stats: GuardStats = { reaped: 0, watcherResets: 0, watcherFins: 0, closeTimeouts: 0, exits: {} };
  private readonly sessions = new Set<SessionLife>();
  private readonly onDone = new WeakMap<SessionLife, () => void>();
  private timer: Timer | undefined;
  private closed = false;
  readonly clock: Clock;
  readonly bounds: SessionBounds;
  readonly ports: SocketPorts;

  constructor(private readonly opts: GuardOptions) {
    this.clock = opts.clock ?? systemClock;
    this.ports = opts.ports ?? systemSocketPorts();
    this.bounds = {
      closeTimeoutMs: opts.closeTimeoutMs,
      dialMs: opts.dialTimeoutMs ?? 15_000,
      openMs: opts.openTimeoutMs ?? 30_000,
    };
    this.schedule();
  }

  /** Change the bounds (a reload); sessions pick them up at their next state change. */
  setBounds(b: Partial<SessionBounds>): void {
    Object.assign(this.bounds, b);
  }

  /** Sessions not yet closed: the slots in use. */
  get size(): number {
    return this.sessions.size;
  }

  /** Sessions by state, for status. */
  byState(): Partial<Record<SessionState, number>> {
    const out: Partial<Record<SessionState, number>> = {};
    for (const s of this.sessions) out[s.state] = (out[s.state] ?? 0) + 1;
    return out;
  }

  private add(s: SessionLife, onDone?: () => void): SessionLife {
    this.sessions.add(s);
    if (onDone) this.onDone.set(s, onDone);
    return s;
  }

  /** A local client accepted on a forward, with the stream opened for it; `answer` settles with the far end's. */
  forward(local: net.Socket, stream: MuxStream, answer: Promise<void>, onDone?: () => void): SessionLife {
    const s = this.add(new SessionLife('forward', stream, this, 'opening'), onDone);
    if (this.closed) return this.stopped(s);
    s.startForward(local, answer);
    return s;
  }

  /** A stream asking for a service this node dials: dial `target`; `refuse` answers a failed dial. */
  service(
    stream: MuxStream,
    target: HostPort,
    answerOk: Buffer,
    refuse: (stream: MuxStream, reason: string) => void,
    connect: (t: HostPort) => net.Socket,
    onDone?: () => void,
  ): SessionLife {
    const s = this.add(new SessionLife('service', stream, this, 'dialing'), onDone);
    s.answerOk = answerOk;
    s.refuse = refuse;
    if (this.closed) return this.stopped(s);
    s.startService(target, connect);
    return s;
  }

  /** A relayed session: `up` from a peer, `down` opened to the next hop. */
  relay(
    up: MuxStream,
    down: MuxStream,
    answer: Promise<{ status: number; reason: string }>,
    encodeAnswer: (status: number, reason: string) => Buffer,
    onDone?: () => void,
  ): SessionLife {
    const s = this.add(new SessionLife('relay', up, this, 'opening'), onDone);
    s.answerOk = encodeAnswer(0, '');
    s.refuse = (st, reason, status) => {
      st.on('error', () => undefined);
      st.resume();
      st.end(encodeAnswer(status ?? 0, reason));
    };
    if (this.closed) return this.stopped(s);
    s.startRelay(down, answer);
    return s;
  }

  /**
   * Join a connected local socket and a stream until both are over. `onDone` runs once, when the
   * session is closed. With `answer` (an opener waiting for the far end's OK), local data flows at
   * once (no round trip) but the stream's bytes reach the local socket only after the answer; a
   * refusal resets both.
   */
  bridge(local: net.Socket, stream: MuxStream, onDone: () => void, answer?: Promise<void>): SessionLife {
    const s = this.add(new SessionLife('forward', stream, this, 'opening'), onDone);
    if (this.closed) return this.stopped(s);
    s.startBridged(local, answer);
    return s;
  }

  private stopped(s: SessionLife): SessionLife {
    s.dispatch({
      type: 'stop',
      exit: 'stopped',
      error: new IpdeadgateError('ERR_TUNNEL_STOPPED', 'stopping'),
    });
    return s;
  }

  /** @internal SessionHost */
  watch(socket: net.Socket, onEvent: (ev: SocketEvent) => void): { close(): void } {
    const fd = this.ports.fdOf(socket);
    if (fd === undefined || !this.ports.watchSocket) return { close: () => undefined };
    return this.ports.watchSocket(fd, (ev) => {
      if (ev.err) this.stats.watcherResets++;
      else if (ev.rdhup || ev.hup) this.stats.watcherFins++;
      onEvent(ev);
    });
  }

  /** @internal SessionHost: the session is closed; its slot is free. */
  ended(s: SessionLife, exit: SessionExit): void {
    if (!this.sessions.delete(s)) return;
    this.stats.exits[exit] = (this.stats.exits[exit] ?? 0) + 1;
    this.stats.closeTimeouts += s.closeTimeouts;
    this.opts.onEnded?.(s, exit);
    const done = this.onDone.get(s);
    this.onDone.delete(s);
    done?.();
  }

  private schedule(): void {
    const every = this.opts.reapIntervalMs ?? Math.min(5000, Math.max(100, this.opts.closeTimeoutMs / 4));
    this.timer = this.clock.setTimeout(() => {
      if (this.closed) return;
      this.reap();
      this.schedule();
    }, every);
  }

  /**
   * One reaper pass; returns how many sessions it ended. It ends any session whose state outlived
   * its bound, whose stream is gone while its socket is not (in any TCP state), whose socket is
   * gone while its stream lingers, or whose socket sits in CLOSE_WAIT idle past close_timeout.
   */
  reap(): number {
    const now = this.clock.now();
    let n = 0;
    const tcpState = (sock: net.Socket): string | undefined => {
      const fd = this.ports.fdOf(sock);
      return fd === undefined ? undefined : this.ports.tcpState(fd);
    };
    for (const s of [...this.sessions]) {
      const why = s.reapReason(now, tcpState);
      if (!why) continue;
      n++;
      if (s.state === 'closing') s.forceClosed();
      else
        s.dispatch({
          type: 'stop',
          exit: 'reaped',
          error: new IpdeadgateError('ERR_TUNNEL_REAPED', `reaped: ${why}`),
        });
    }
    this.stats.reaped += n;
    return n;
  }

  /** Stop: every session is ended (both ends reset) and the reaper stops. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer?.cancel();
    for (const s of [...this.sessions]) {
      s.dispatch({
        type: 'stop',
        exit: 'stopped',
        error: new IpdeadgateError('ERR_TUNNEL_STOPPED', 'the node is stopping'),
      });
      if (s.state === 'closing') s.forceClosed();
    }
  }
}

/**
 * A listening server that survives EMFILE/ENFILE. libuv already survives most of them (it closes a
 * reserve descriptor, accepts and closes the pending connections, and reports nothing); when an
 * EMFILE/ENFILE does reach the server as an 'error' (no reserve descriptor, or listening again
 * fails), accepting is paused: the server stops listening and
 * listens again after a backoff (100 ms doubling to 5 s), so a process out of descriptors slows
 * down instead of spinning or crashing, and recovers when descriptors are freed.
 */
export class AcceptBackoff {
  errors = 0;
  private delay = 100;
  private timer: Timer | undefined;
  private closed = false;
  private paused = false;

  constructor(
    private readonly server: net.Server,
    private readonly address: HostPort,
    private readonly clock: Clock = systemClock,
  ) {
    server.on('error', (err: NodeJS.ErrnoException) => this.onError(err));
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onErr = (err: Error): void =>
        reject(
          new IpdeadgateError(
            'ERR_TUNNEL_LISTEN',
            `cannot listen on ${this.address.host}:${this.address.port}: ${err.message}`,
          ),
        );
      this.server.once('error', onErr);
      this.server.listen(this.address.port, this.address.host, 1024, () => {
        this.server.off('error', onErr);
        resolve();
      });
    });
  }

  /** A connection was accepted: the descriptor shortage, if any, is over. */
  accepted(): void {
    this.delay = 100;
  }

  private onError(err: NodeJS.ErrnoException): void {
    if (this.closed || this.paused) return;
    if (err.code !== 'EMFILE' && err.code !== 'ENFILE') return; // listen errors are reported by listen()
    this.errors++;
    this.paused = true;
    this.server.close();
    const again = (): void => {
      if (this.closed) return;
      // Listening again may itself fail with EMFILE: that error comes back here and backs off more.
      this.paused = false;
      this.server.listen(this.address.port, this.address.host, 1024);
    };
    this.timer = this.clock.setTimeout(again, this.delay);
    this.delay = Math.min(this.delay * 2, 5000);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer?.cancel();
    this.server.close();
  }
}
