// Close-leak protection, the IY55176 lesson: TFST left its end of a routed connection in
// CLOSE_WAIT whenever the peer proxy failed to pass on "no more data", until the process ran out of
// descriptors (accept() failed, e=24). Here a session is a local TCP socket bridged to a yamux
// stream, and four independent mechanisms end it:
//  1. FIN and RST travel end to end (bridge): a local FIN becomes a stream FIN, a stream FIN a
//     local FIN (half-close works), a local error or RST a stream RST, a stream RST a local RST;
//  2. every stream's idle life after a FIN is bounded by close_timeout (MuxStream);
//  3. a watcher on the local socket (src/sys/watcher: EPOLLRDHUP/HUP/ERR via uv_poll) sees the local
//     peer's FIN or RST even while the bridge is paused by backpressure and Node reads nothing;
//  4. a reaper (TCP_INFO, src/sys/tcpinfo) finds any of our sockets that still sits in CLOSE_WAIT
//     idle past close_timeout, or outlives its session, closes it and counts it.
// And running out of descriptors (EMFILE/ENFILE on accept) pauses accepting with backoff.
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import { systemClock, type Clock, type Timer } from '../util/clock';
import type { HostPort } from './config';
import type { MuxStream } from './mux';
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
}

interface Tracked {
  socket: net.Socket;
  stream: MuxStream;
  fd: number | undefined;
  done: boolean;
  lastBytes: number;
  lastChange: number;
}

/**
 * Bridges local sockets to streams and reaps what slips through. One per node.
 */
export class CloseGuard {
  readonly stats: GuardStats = { reaped: 0, watcherResets: 0, watcherFins: 0 };
  private readonly tracked = new Set<Tracked>();
  private timer: Timer | undefined;
  private closed = false;
  private readonly clock: Clock;

  constructor(
    private readonly opts: {
      closeTimeoutMs: number;
      reapIntervalMs?: number;
      clock?: Clock;
      ports?: SocketPorts;
    },
  ) {
    this.clock = opts.clock ?? systemClock;
    this.ports = opts.ports ?? systemSocketPorts();
    this.schedule();
  }

  readonly ports: SocketPorts;

  /** Sockets currently bridged. */
  get size(): number {
    return this.tracked.size;
  }

  /**
   * Join a local socket and a stream until both are over. `onDone` runs once, when the local
   * socket has closed and the stream is finished or destroyed. With `answer` (an opener waiting
   * for the far end's OK), local data flows at once (no round trip) but the stream's bytes reach
   * the local socket only after the answer; a refusal resets both.
   */
  bridge(local: net.Socket, stream: MuxStream, onDone: () => void, answer?: Promise<void>): void {
    const t: Tracked = {
      socket: local,
      stream,
      fd: this.ports.fdOf(local),
      done: false,
      lastBytes: 0,
      lastChange: this.clock.now(),
    };
    this.tracked.add(t);
    let watch: { close(): void } | undefined;
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      t.done = true;
      watch?.close();
      this.tracked.delete(t);
      onDone();
    };
    const resetLocal = (): void => {
      if (!local.destroyed) local.resetAndDestroy();
    };
    // A local peer that vanishes without FIN or RST (powered off, cable cut) is found by TCP
    // keepalive instead of holding its descriptor forever.
    local.setKeepAlive(true, 60_000);
    local.setNoDelay(true);
    local.pipe(stream); // local FIN -> stream.end() -> yamux FIN
    // TLS hands a link's bytes to JavaScript one 16 KiB record at a time, each in its own callback:
    // the pieces bound for this socket are gathered until the loop's check phase and leave in one
    // writev, instead of a write system call per record.
    let localCorked = false;
    const uncorkLocal = (): void => {
      localCorked = false;
      local.uncork();
    };
    const corkLocal = (): void => {
      if (localCorked) return;
      localCorked = true;
      local.cork();
      setImmediate(uncorkLocal);
    };
    const streamToLocal = (): void => {
      stream.on('data', corkLocal); // before pipe's own listener, so the first piece is corked too
      stream.pipe(local); // yamux FIN -> local.end() -> TCP FIN
    };
    if (answer)
      answer.then(
        () => {
          if (!stream.destroyed) streamToLocal();
        },
        (err: Error) => {
          stream.reset(err);
          resetLocal();
        },
      );
    else streamToLocal();
    local.on('error', () => {
      // ECONNRESET, EPIPE...: the stream is reset so the far end's socket is reset too.
      stream.reset(new IpdeadgateError('ECONNRESET', 'the local peer reset the connection'));
      resetLocal();
    });
    stream.on('error', () => resetLocal()); // RST, close_timeout, link death: reset the local socket
    const maybeFinish = (): void => {
      if (local.destroyed && stream.destroyed) finish();
    };
    stream.on('close', () => {
      // Destroyed before a clean end both ways: nothing more will come; do not leave the socket.
      if (!stream.finished || !stream.remoteEnded) resetLocal();
      maybeFinish();
    });
    local.on('close', (hadError: boolean) => {
      // A clean close (the local FIN read, ours sent) races the stream's own FIN, which pipe()
      // has already asked for with stream.end(): let it go out. Anything else resets the stream.
      if (!stream.destroyed && (hadError || !local.readableEnded))
        stream.reset(new IpdeadgateError('ECONNRESET', 'the local socket closed'));
      maybeFinish();
    });
    if (t.fd !== undefined && this.ports.watchSocket) {
      watch = this.ports.watchSocket(t.fd, (ev) => {
        if (ev.err) {
          // The local peer reset the connection: seen even if Node is not reading (backpressure).
          this.stats.watcherResets++;
          stream.reset(new IpdeadgateError('ECONNRESET', 'the local peer reset the connection'));
          resetLocal();
        } else if (ev.rdhup || ev.hup) {
          // The local peer's FIN is queued behind data we have not read yet: the bridge keeps
          // delivering in order, and the stream's idle life is bounded from now on.
          this.stats.watcherFins++;
          stream.armCloseTimer();
        }
      });
    }
  }

  private schedule(): void {
    const every = this.opts.reapIntervalMs ?? Math.min(5000, Math.max(100, this.opts.closeTimeoutMs / 4));
    this.timer = this.clock.setTimeout(() => {
      if (this.closed) return;
      this.reap();
      this.schedule();
    }, every);
  }

  /** One reaper pass; returns how many sockets it closed. */
  reap(): number {
    const now = this.clock.now();
    let n = 0;
    for (const t of [...this.tracked]) {
      if (t.socket.destroyed) {
        // The socket is gone but its stream lingers (a FIN that never came): bound it too.
        if (t.stream.destroyed) this.tracked.delete(t);
        else if (now - t.lastChange >= this.opts.closeTimeoutMs) {
          t.stream.reset(
            new IpdeadgateError(
              'ERR_TUNNEL_CLOSE_TIMEOUT',
              'the local socket closed and the stream never finished',
            ),
          );
          n++;
        }
        continue;
      }
      const bytes = t.socket.bytesRead + t.socket.bytesWritten;
      if (bytes !== t.lastBytes) {
        t.lastBytes = bytes;
        t.lastChange = now;
      }
      if (t.done) {
        t.socket.resetAndDestroy();
        this.tracked.delete(t);
        n++;
        continue;
      }
      const fd = this.ports.fdOf(t.socket) ?? t.fd;
      if (fd === undefined) continue;
      const state = this.ports.tcpState(fd);
      if (
        state &&
        state.replace('_', '-').toUpperCase() === 'CLOSE-WAIT' &&
        now - t.lastChange >= this.opts.closeTimeoutMs
      ) {
        t.socket.resetAndDestroy();
        this.tracked.delete(t);
        n++;
      }
    }
    this.stats.reaped += n;
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer?.cancel();
    for (const t of this.tracked) t.socket.resetAndDestroy();
    this.tracked.clear();
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
