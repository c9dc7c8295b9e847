// A bridged session's local TCP socket (src/tunnel/sessionlife.ts): how it is reset and prepared.
// Its bytes flow to and from its stream through ./flow.ts, or through the native relay
// (./nativebridge.ts) for a session the addon carries.
import type * as net from 'node:net';

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
