// A bridged session's local TCP socket on the JavaScript path (src/tunnel/sessionlife.ts): how it
// is reset, prepared, and fed from its stream. The native relay (./nativebridge.ts) replaces the
// last of these for a session the addon carries.
import type * as net from 'node:net';
import type { MuxStream } from './muxstream';

/**
 * Reset a socket (RST to its peer) and close its descriptor, whatever its state. Node's
 * resetAndDestroy() alone is not enough: on a socket still connecting it waits for 'connect' (a
 * service that never accepts never sends one), and on a socket whose write side was already shut
 * (our FIN sent: libuv's uv_tcp_close_reset() answers EINVAL for a handle shutting down) Node
 * reports the error and drops the handle without closing it, leaking the descriptor (seen in the
 * churn test). Those two are closed with destroy(); the kernel still sends an RST if unread data
 * is left in the socket.
 */
export function resetSocket(s: net.Socket): void {
  if (s.destroyed) return;
  if (s.connecting || s.writableEnded) s.destroy();
  else s.resetAndDestroy();
}

/** Keepalive finds a local peer that vanished without FIN or RST; no Nagle delay on a relay. */
export function prepareSocket(s: net.Socket): void {
  if (s.destroyed) return;
  s.setKeepAlive(true, 60_000);
  s.setNoDelay(true);
}

/**
 * stream -> socket. TLS hands a link's bytes to JavaScript one 16 KiB record at a time, each in its
 * own callback: the pieces bound for this socket are gathered until the loop's check phase and
 * leave in one writev, instead of a write system call per record.
 */
export function streamToSocket(stream: MuxStream, local: net.Socket): () => void {
  let corked = false;
  const uncork = (): void => {
    if (!corked) return;
    corked = false;
    local.uncork();
  };
  const onData = (): void => {
    if (corked) return;
    corked = true;
    local.cork();
    setImmediate(uncork);
  };
  stream.on('data', onData); // before pipe's own listener, so the first piece is corked too
  stream.pipe(local); // yamux FIN -> local.end() -> TCP FIN
  return () => {
    stream.off('data', onData);
    stream.unpipe(local);
    uncork();
  };
}
