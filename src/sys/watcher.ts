// Socket-state watcher: an event when the peer of a socket sends FIN (rdhup) or the socket hangs up
// (hup) or fails (err, e.g. an RST) — without reading from it, so no data is consumed, and while its
// Node stream is paused by backpressure. The tunnel uses it so that no local socket sits in
// CLOSE_WAIT unnoticed, holding a descriptor after its session is over. Native side: native/watcher.cc
// (edge-triggered epoll of the socket, one uv_poll_t per environment on its own loop).
import { nativeSystemError } from './native';
import { sockDiagAddon } from './sockdiag';

export interface SocketStateEvent {
  /** The peer sent FIN (EPOLLRDHUP): nothing more will arrive after the data already queued. */
  rdhup: boolean;
  /** Both directions are shut down or the connection is gone (EPOLLHUP). */
  hup: boolean;
  /** The socket has a pending error (EPOLLERR), e.g. ECONNRESET after an RST, ETIMEDOUT. */
  err: boolean;
  /** The pending error, only with `consumeError: true` (reading it clears it; see WatchOptions). */
  errno?: number;
}

export interface WatchOptions {
  /**
   * On `err`, read the pending error with SO_ERROR into `errno`. Off by default: reading clears it in
   * the kernel, so Node's own next read would see a plain EOF instead of ECONNRESET, and a tunnel
   * would forward a FIN where the peer sent an RST. `err: true` alone already says "not a clean FIN".
   */
  consumeError?: boolean;
}

export interface SocketWatcher {
  /** Stop watching; idempotent, safe from inside the callback. Does not close the socket. */
  close(): void;
  [Symbol.dispose](): void;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Watch a socket fd (e.g. fdOf(netSocket)). `onEvent` runs each time a new condition appears, with
 * every condition seen so far set; each condition is reported once, and after hup or err nothing more
 * is reported. The watcher holds no reference on the socket (closing the socket is never delayed by
 * it) and does not keep the process alive. Close it when the session ends.
 * Throws a SystemError: EBADF (fd not open), ENOTSOCK (not a socket), EEXIST (already watched).
 */
export function watchSocket(
  fd: number,
  onEvent: (ev: SocketStateEvent) => void,
  opts: WatchOptions = {},
): SocketWatcher {
  if (typeof fd !== 'number' || !Number.isInteger(fd))
    throw new TypeError(
      `fd must be an integer file descriptor, not ${typeof fd === 'number' ? fd : typeof fd}`,
    );
  if (typeof onEvent !== 'function') throw new TypeError('onEvent must be a function');
  const native = sockDiagAddon();
  const bits = native.watchBits;
  const consumeError = opts.consumeError ?? false;
  let closed = false;
  let id = 0;
  try {
    id = native.watchOpen(fd, (mask: number) => {
      if (closed) return;
      const ev: SocketStateEvent = {
        rdhup: (mask & bits.rdhup) !== 0,
        hup: (mask & bits.hup) !== 0,
        err: (mask & bits.err) !== 0,
      };
      if (ev.err && consumeError) {
        try {
          ev.errno = native.socketError(fd);
        } catch {
          // the fd was closed in the meantime: no errno to report
        }
      }
      onEvent(ev);
    });
  } catch (err) {
    throw nativeSystemError(err, `watching fd ${fd}`, {
      EBADF: 'the descriptor is not open; pass the fd of an open socket (see fdOf)',
      ENOTSOCK: 'the descriptor is not a socket',
      EEXIST: 'this socket already has a watcher; close that one first',
    });
  }
  const close = (): void => {
    if (closed) return;
    closed = true;
    native.watchClose(id);
  };
  return {
    close,
    [Symbol.dispose]: close,
    [Symbol.asyncDispose]: async () => close(),
  };
}

/** Watchers open in this environment (tests and metrics). */
export function openWatcherCount(): number {
  return sockDiagAddon().watchCount();
}
