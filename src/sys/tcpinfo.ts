// TCP_INFO and SO_ERROR of one of our own sockets, by file descriptor (the tunnel's links and local
// sockets). Synchronous getsockopt: a copy out of the kernel, no waiting.
import type * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import { nativeSystemError } from './native';
import { decodeTcpInfoRow, sockDiagAddon, type TcpInfoFields } from './sockdiag';

const FD_ADVICE = {
  EBADF: 'the descriptor is not open; pass the fd of an open TCP socket (see fdOf)',
  ENOTSOCK: 'the descriptor is not a socket; pass the fd of a TCP socket',
  EOPNOTSUPP: 'the socket is not a TCP socket',
  ENOTSUP: 'the socket is not a TCP socket', // libuv's name for EOPNOTSUPP (same errno on Linux)
  ENOPROTOOPT: 'the socket is not a TCP socket',
};

function checkFd(fd: number): void {
  if (typeof fd !== 'number' || !Number.isInteger(fd))
    throw new TypeError(
      `fd must be an integer file descriptor, not ${typeof fd === 'number' ? fd : typeof fd}`,
    );
  // Negative and huge numbers are left to the kernel, which answers EBADF like for a closed fd.
  if (fd > 0x7fffffff) throw new RangeError(`fd ${fd} is out of range`);
}

/** tcp_info of a TCP socket (getsockopt TCP_INFO). Throws a SystemError (EBADF, ENOTSOCK, ...). */
export function tcpInfoByFd(fd: number): TcpInfoFields {
  checkFd(fd);
  let row: Uint32Array;
  try {
    row = sockDiagAddon().tcpInfo(fd);
  } catch (err) {
    throw nativeSystemError(err, `reading TCP_INFO of fd ${fd}`, FD_ADVICE);
  }
  const info = decodeTcpInfoRow(row, 0);
  if (!info) throw new IpdeadgateError('ERR_NO_TCP_INFO', `the kernel returned no TCP_INFO for fd ${fd}`);
  return info;
}

/**
 * The socket's pending error (getsockopt SO_ERROR): 0, or an errno such as ECONNREFUSED (111).
 * Reading it clears it in the kernel: whoever reads it next (Node's own read or connect) sees 0.
 */
export function socketErrorByFd(fd: number): number {
  checkFd(fd);
  try {
    return sockDiagAddon().socketError(fd);
  } catch (err) {
    throw nativeSystemError(err, `reading SO_ERROR of fd ${fd}`, FD_ADVICE);
  }
}

/** The file descriptor under a net.Socket (its libuv handle's fd). */
export function fdOf(socket: net.Socket): number {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0) {
    const why = !handle
      ? 'it has no handle (destroyed, or not connected yet)'
      : 'its handle has no file descriptor yet (the connect has not started)';
    throw new IpdeadgateError('ERR_NO_FD', `cannot get the file descriptor of this socket: ${why}`);
  }
  return fd;
}
