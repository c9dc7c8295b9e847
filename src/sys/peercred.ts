// SO_PEERCRED on a connected Unix socket: who is on the other end of the control socket.
import type * as net from 'node:net';
import { loadNative } from './native';

interface PeerCredNative {
  peerCred(fd: number): { pid: number; uid: number; gid: number };
}

/** The peer's uid of a connected Unix socket, or null when it cannot be learned (then: refuse). */
export function peerUidOf(socket: net.Socket): number | null {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return null;
  try {
    return (loadNative() as unknown as PeerCredNative).peerCred(fd).uid;
  } catch {
    return null;
  }
}
