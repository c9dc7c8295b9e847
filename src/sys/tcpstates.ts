// The TCP state of one of our own sockets, by file descriptor: TCP_INFO through the addon
// (src/sys/tcpinfo.ts), or, when the addon cannot load, /proc: the descriptor's socket inode
// (/proc/self/fd/N -> "socket:[INODE]") looked up in /proc/self/net/tcp and tcp6, whose `st`
// column is the kernel's state number in hex (include/net/tcp_states.h, as sock_diag reports it).
import * as fs from 'node:fs';
import { IpdeadgateError, SystemError } from '../errors';
import { tcpStateName, type TcpState } from './sockdiag';
import { tcpInfoByFd } from './tcpinfo';

export type { TcpState };

/** The /proc tables of TCP sockets in this process's network namespace. */
const PROC_NET_TCP = ['/proc/self/net/tcp', '/proc/self/net/tcp6'] as const;

function fsError(err: unknown, what: string): SystemError {
  const e = err as NodeJS.ErrnoException;
  const code = e.code ?? 'EIO';
  return new SystemError(code, -(e.errno ?? 0), e.syscall ?? 'open', `${what}: ${e.message}`, {
    cause: err,
  });
}

/** The inode of the socket behind `fd`. Throws ENOTSOCK when it is not a socket, EBADF when not open. */
export function socketInode(fd: number): string {
  if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`fd must be a file descriptor, not ${fd}`);
  let target: string;
  try {
    target = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT')
      throw new SystemError('EBADF', 9, 'readlink', `fd ${fd} is not open (no /proc/self/fd/${fd})`, {
        cause: err,
      });
    throw fsError(err, `reading /proc/self/fd/${fd}`);
  }
  const m = /^socket:\[(\d+)\]$/.exec(target);
  if (!m) throw new IpdeadgateError('ENOTSOCK', `fd ${fd} is not a socket (it is ${target})`);
  return m[1]!;
}

/**
 * The state of the socket with `inode` in the text of a /proc/net/tcp{,6} table, or undefined when
 * no line names it. Columns: sl local_address rem_address st tx_queue:rx_queue tr:tm->when
 * retrnsmt uid timeout inode ...
 */
export function parseProcNetTcp(text: string, inode: string): TcpState | undefined {
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[9] !== inode) continue;
    const n = parseInt(f[3] ?? '', 16);
    if (!Number.isInteger(n)) return undefined;
    return tcpStateName(n);
  }
  return undefined;
}

/**
 * A socket's TCP state from /proc, without the addon. Undefined when the socket is in neither
 * table (not a TCP socket, or closed meanwhile). Throws a SystemError (EBADF) or ENOTSOCK for a
 * descriptor that is not an open socket, and a SystemError when /proc cannot be read.
 */
export function procTcpState(fd: number): TcpState | undefined {
  const inode = socketInode(fd);
  let readAny = false;
  let lastErr: unknown;
  for (const file of PROC_NET_TCP) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      lastErr = err; // tcp6 is missing on a kernel without IPv6
      continue;
    }
    readAny = true;
    const state = parseProcNetTcp(text, inode);
    if (state) return state;
  }
  if (!readAny) throw fsError(lastErr, `reading ${PROC_NET_TCP.join(' and ')} (is /proc mounted?)`);
  return undefined;
}

/**
 * A socket's TCP state: TCP_INFO through the addon, /proc when the addon is missing
 * (ERR_NATIVE_MISSING). Other errors (EBADF, ENOTSOCK, ...) are thrown as they come.
 */
export function tcpStateByFd(fd: number): TcpState | undefined {
  try {
    return tcpInfoByFd(fd).state;
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_NATIVE_MISSING') throw err;
  }
  return procTcpState(fd);
}
