// Close-leak protection, the IY55176 lesson: TFST left its end of a routed connection in
// CLOSE_WAIT whenever the peer proxy failed to pass on "no more data", until the process ran out of
// descriptors (accept() failed, e=24). Here a session is a local TCP socket bridged to a yamux
// stream, and its whole life is one state machine (src/tunnel/sessionlife.ts) held in this table:
//  1. FIN and RST travel end to end: a local FIN becomes a stream FIN, a stream FIN a local FIN
//     (half-close works), a local error or RST a stream RST, a stream RST a local RST;
//  2. every state has a bound (dial_timeout, open_timeout, close_timeout after a FIN, ...), owned
//     by the session's state machine alone, and every exit from every state closes both ends and
//     frees the slot;
//  3. a watcher on the local socket (src/sys/watcher: EPOLLRDHUP/HUP/ERR via uv_poll) sees the local
//     peer's FIN or RST even while the bridge is paused by backpressure and Node reads nothing;
//  4. a reaper (src/tunnel/reaper.ts, TCP states from src/sys/tcpstates.ts) ends and counts any
//     session whose events were lost.
// Running out of descriptors on accept is the listeners' concern (src/tunnel/acceptbackoff.ts).
import type * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import { systemClock, type Clock } from '../util/clock';
import type { HostPort } from './config';
import type { MuxStream } from './muxstream';
import { RELAY_AFTER_BYTES } from './handover';
import { NativeRelay, type RelayEvents } from './nativebridge';
import { Reaper } from './reaper';
import {
  SessionLife,
  type SessionBounds,
  type SessionExit,
  type SessionHost,
  type SessionState,
} from './sessionlife';
import { fdOf } from '../sys/tcpinfo';
import { tcpStateByFd } from '../sys/tcpstates';
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
  /** TCP state of a socket fd, e.g. 'ESTABLISHED', 'CLOSE-WAIT' (src/sys/tcpstates.ts). */
  tcpState: (fd: number) => string | undefined;
  /** The descriptor of a Node socket. */
  fdOf: (socket: net.Socket) => number | undefined;
}

/** The real ports: src/sys's watcher and TCP state (TCP_INFO, or /proc when the addon cannot load). */
export function systemSocketPorts(): SocketPorts {
  let nativeOk = true;
  const tcpState = (fd: number): string | undefined => {
    try {
      return tcpStateByFd(fd);
    } catch {
      return undefined; // closed meanwhile, or /proc unreadable: no verdict from this look
    }
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

/** Counters of the guard, for status. */
export interface GuardStats {
  reaped: number;
  watcherResets: number;
  watcherFins: number;
  closeTimeouts: number;
  /** Sessions whose bytes moved in the addon, and stalls of their receive window. */
  relayed: number;
  relayStalls: number;
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
  /** Bridged sessions' bytes move in the addon when the link allows (default true). */
  nativeRelay?: boolean;
  /** ...once a session has moved this many bytes (default RELAY_AFTER_BYTES; 0: at its bridging). */
  relayAfterBytes?: number;
}

/**
 * The table of sessions (src/tunnel/sessionlife.ts): creates them, frees their slot when they
 * reach closed, and reaps what slips through. One per node.
 */
export class CloseGuard implements SessionHost {
  readonly stats: GuardStats = {
    reaped: 0,
    watcherResets: 0,
    watcherFins: 0,
    closeTimeouts: 0,
    relayed: 0,
    relayStalls: 0,
    exits: {},
  };
  private readonly sessions = new Set<SessionLife>();
  private readonly onDone = new WeakMap<SessionLife, () => void>();
  private readonly reaper: Reaper;
  private closed = false;
  /** The addon cannot relay here: no reload turns relaying back on. */
  private nativeMissing = false;
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
    this.reaper = new Reaper({
      clock: this.clock,
      intervalMs: opts.reapIntervalMs ?? Math.min(5000, Math.max(100, opts.closeTimeoutMs / 4)),
      sessions: () => this.sessions,
      tcpState: (sock) => {
        const fd = this.ports.fdOf(sock);
        return fd === undefined ? undefined : this.ports.tcpState(fd);
      },
      onReaped: (n) => (this.stats.reaped += n),
    });
  }

  /** Change the bounds (a reload); sessions pick them up at their next state change. */
  setBounds(b: Partial<SessionBounds>): void {
    Object.assign(this.bounds, b);
  }

  /** Change native relaying (a reload): sessions bridged from now on follow it. */
  setRelaying(on: boolean, afterBytes: number): void {
    this.opts.nativeRelay = on && !this.nativeMissing;
    this.opts.relayAfterBytes = afterBytes;
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

  /** @internal SessionHost: when a bridged session goes to the addon; undefined: never. */
  get relayAfterBytes(): number | undefined {
    return this.opts.nativeRelay === false ? undefined : (this.opts.relayAfterBytes ?? RELAY_AFTER_BYTES);
  }

  /**
   * @internal SessionHost: hand a bridged session's bytes to the addon (src/tunnel/nativebridge.ts),
   * or undefined: it stays on the JavaScript path (relaying off, a link that cannot, the addon
   * missing, or something still in flight).
   */
  nativeRelay(stream: MuxStream, socket: net.Socket, events: RelayEvents): NativeRelay | undefined {
    if (this.opts.nativeRelay === false) return undefined;
    let r: NativeRelay | undefined;
    try {
      r = NativeRelay.start(stream, socket, {
        ...events,
        stall: () => {
          this.stats.relayStalls++;
          events.stall?.();
        },
      });
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_NATIVE_MISSING') {
        this.opts.nativeRelay = false;
        this.nativeMissing = true;
      } else throw err;
    }
    if (r) this.stats.relayed++;
    return r;
  }

  /**
   * @internal SessionHost. A FIN from the peer while our side is open leaves the socket in
   * CLOSE-WAIT; an RST (or an error such as a keepalive timeout) leaves it in CLOSE. Once our own
   * FIN is out, a FIN back leads to CLOSE too, so then no verdict (a bridged session's watcher sees
   * the error there). The state comes from TCP_INFO, or /proc without the addon.
   */
  endedByReset(socket: net.Socket): boolean {
    if (socket.writableEnded) return false;
    const fd = this.ports.fdOf(socket);
    return fd !== undefined && this.ports.tcpState(fd) === 'CLOSE';
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

  /** One reaper pass now (src/tunnel/reaper.ts); returns how many sessions it ended. */
  reap(): number {
    return this.reaper.reap();
  }

  /** Stop: every session is ended (both ends reset) and the reaper stops. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.reaper.close();
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
