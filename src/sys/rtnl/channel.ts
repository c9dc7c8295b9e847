// A netlink socket (NETLINK_ROUTE unless told otherwise; nfnetlink uses it too) with request/reply
// matching, on top of the `netlink` package's RawNetlinkSocket (its native part only does
// socket/bind/sendmsg/recvmsg/poll). Requests are matched to replies by sequence number and by our
// port id; every request has a timeout that a dump's progress refreshes; a dump keeps at most
// `maxReplies` messages (the rest are drained and counted, never kept), so a table of a million
// entries cannot exhaust the heap; a failed request rejects with the kernel's errno (struct
// nlmsgerr), not just text; close() rejects what is still pending. Messages that answer no request
// (multicast notifications) go to `onNotification`.
import { getSystemErrorName } from 'node:util';
import { RawNetlinkSocket, type ErrnoException } from 'netlink';
import { TimeoutError } from '../../errors';
import {
  NLM_F_ACK,
  NLM_F_DUMP,
  NLM_F_MULTI,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  nlmsg,
  s32,
  u16,
  u32,
} from './codec';

/** NETLINK_ROUTE (linux/netlink.h). */
export const NETLINK_ROUTE = 0;

export interface NetlinkMessage {
  type: number;
  flags: number;
  seq: number;
  port: number;
  data: Buffer;
}

/** A negative errno from the kernel (NLMSG_ERROR or an error in NLMSG_DONE), or a socket failure. */
export class NetlinkErrno extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  constructor(errno: number, syscall: string, code?: string) {
    const name = code ?? errnoName(errno);
    super(`${name} (errno ${errno})`);
    this.errno = errno;
    this.code = name;
    this.syscall = syscall;
  }
}

function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-Math.abs(errno));
  } catch {
    return `E${errno}`;
  }
}

interface Pending {
  seq: number;
  dump: boolean;
  maxReplies: number;
  replies: NetlinkMessage[];
  dropped: number;
  timer: NodeJS.Timeout;
  resolve: (r: ChannelReply) => void;
  reject: (err: Error) => void;
}

export interface ChannelReply {
  messages: NetlinkMessage[];
  /** Messages of a dump that arrived past maxReplies and were dropped. */
  dropped: number;
}

export interface RequestOptions {
  timeoutMs: number;
  /** The operation named in errors (the kernel's errno names none). */
  syscall: string;
  /** Keep at most this many reply messages; the rest are counted in `dropped`. */
  maxReplies?: number;
}

export interface ChannelOptions {
  /** The netlink protocol (NETLINK_* of linux/netlink.h); NETLINK_ROUTE by default. */
  protocol?: number;
  /** Multicast groups (RTNLGRP_*) to join. */
  groups?: number[];
  /** Keep the event loop alive while open (subscriptions); requests keep it alive through their timers. */
  ref?: boolean;
  recvBufferSize?: number;
  onNotification?: (msg: NetlinkMessage) => void;
  onError?: (err: Error) => void;
}

export function parseNetlinkMessages(buf: Buffer): NetlinkMessage[] {
  const out: NetlinkMessage[] = [];
  let off = 0;
  // struct nlmsghdr: u32 len, u16 type, u16 flags, u32 seq, u32 pid; messages 4-byte aligned.
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = u32(buf, off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) break;
    out.push({
      type: u16(buf, off + 4),
      flags: u16(buf, off + 6),
      seq: u32(buf, off + 8),
      port: u32(buf, off + 12),
      data: buf.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += (len + 3) & ~3;
  }
  return out;
}

export class NetlinkChannel {
  private readonly sock: RawNetlinkSocket;
  private readonly port: number;
  private readonly pending = new Map<number, Pending>();
  private seq = Math.floor(Math.random() * 0x7fffffff) + 1;
  private closed = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: ChannelOptions = {}) {
    try {
      this.sock = new RawNetlinkSocket(opts.protocol ?? NETLINK_ROUTE, {
        recvBufferSize: opts.recvBufferSize ?? 0,
        sendBufferSize: 0,
      });
    } catch (err) {
      throw new NetlinkErrno(
        errnoOf(err),
        (err as ErrnoException).syscall ?? 'socket',
        (err as ErrnoException).code,
      );
    }
    this.port = this.sock.address().port;
    this.sock.on('message', (buf: Buffer) => this.receive(buf));
    this.sock.on('truncatedMessage', () => this.fail(new NetlinkErrno(90, 'recvmsg', 'EMSGSIZE')));
    this.sock.on('error', (err: ErrnoException) =>
      this.fail(new NetlinkErrno(errnoOf(err), err.syscall ?? 'recvmsg', err.code)),
    );
    try {
      for (const g of opts.groups ?? []) this.sock.addMembership(g);
    } catch (err) {
      this.sock.close();
      throw new NetlinkErrno(errnoOf(err), 'setsockopt', (err as ErrnoException).code);
    }
    if (!opts.ref) this.sock.unref();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Send one request and collect its answer: the reply messages of a dump (up to NLMSG_DONE) or of
   * a GET (up to the ACK), or none for an acknowledged change.
   */
  request(
    type: number,
    flags: number,
    payload: Buffer,
    timeoutMs: number,
    syscall: string,
  ): Promise<NetlinkMessage[]> {
    return this.requestReply(type, flags, payload, { timeoutMs, syscall }).then((r) => r.messages);
  }

  /** As request(), with a cap on the messages kept and the count of those dropped past it. */
  requestReply(type: number, flags: number, payload: Buffer, opts: RequestOptions): Promise<ChannelReply> {
    // One request at a time on this socket: the kernel refuses a second dump while one is in
    // progress (EBUSY), and requests take microseconds, so queueing them costs nothing.
    const run = () => this.requestNow(type, flags, payload, opts);
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private requestNow(
    type: number,
    flags: number,
    payload: Buffer,
    opts: RequestOptions,
  ): Promise<ChannelReply> {
    const { timeoutMs, syscall } = opts;
    if (this.closed) return Promise.reject(new NetlinkErrno(9, syscall, 'EBADF'));
    const seq = this.nextSeq();
    const dump = (flags & NLM_F_DUMP) === NLM_F_DUMP;
    return new Promise<ChannelReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new TimeoutError(`${syscall}: no answer from the kernel within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(seq, {
        seq,
        dump,
        maxReplies: opts.maxReplies ?? Number.MAX_SAFE_INTEGER,
        replies: [],
        dropped: 0,
        timer,
        resolve,
        reject,
      });
      // Dumps end with NLMSG_DONE; everything else is acknowledged (NLM_F_ACK), success or failure.
      const msgFlags = NLM_F_REQUEST | flags | (dump ? 0 : NLM_F_ACK);
      this.sock.send(nlmsg(type, msgFlags, seq, this.port, payload), { port: 0 }, (err?: ErrnoException) => {
        if (!err) return;
        this.settle(seq, new NetlinkErrno(errnoOf(err), 'sendmsg', err.code));
      });
    });
  }

  private nextSeq(): number {
    do this.seq = this.seq >= 0xfffffff0 ? 1 : this.seq + 1;
    while (this.pending.has(this.seq));
    return this.seq;
  }

  private receive(buf: Buffer): void {
    for (const msg of parseNetlinkMessages(buf)) {
      const p = msg.port === this.port || msg.port === 0 ? this.pending.get(msg.seq) : undefined;
      if (!p || msg.seq === 0) {
        if (!this.closed) this.opts.onNotification?.(msg);
        continue;
      }
      if (msg.type === NLMSG_ERROR) {
        // struct nlmsgerr: s32 error (negative errno, 0 = ACK), then the request's header.
        const errno = msg.data.length >= 4 ? -s32(msg.data, 0) : 5;
        this.settle(p.seq, errno === 0 ? null : new NetlinkErrno(errno, ''));
      } else if (msg.type === NLMSG_DONE) {
        // A dump that failed part-way reports the error as an s32 in NLMSG_DONE.
        const errno = msg.data.length >= 4 ? -s32(msg.data, 0) : 0;
        this.settle(p.seq, errno > 0 ? new NetlinkErrno(errno, '') : null);
      } else {
        if (p.replies.length < p.maxReplies) p.replies.push(msg);
        else p.dropped++;
        // The timeout is for a kernel that stops answering, not for a long dump that keeps coming.
        p.timer.refresh();
        if (p.dump && !(msg.flags & NLM_F_MULTI)) this.settle(p.seq, null);
      }
    }
  }

  private settle(seq: number, err: Error | null): void {
    const p = this.pending.get(seq);
    if (!p) return;
    this.pending.delete(seq);
    clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve({ messages: p.replies, dropped: p.dropped });
  }

  /** A socket-level failure: every pending request fails with it; subscribers hear about it. */
  private fail(err: NetlinkErrno): void {
    for (const seq of [...this.pending.keys()]) this.settle(seq, err);
    if (!this.closed) this.opts.onError?.(err);
  }

  /** Idempotent. Pending requests reject with EBADF. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const seq of [...this.pending.keys()]) this.settle(seq, new NetlinkErrno(9, 'close', 'EBADF'));
    try {
      this.sock.close();
    } catch {
      /* already closed by the native side */
    }
  }
}

function errnoOf(err: unknown): number {
  const n = (err as { errno?: unknown })?.errno;
  return typeof n === 'number' ? Math.abs(n) : 5; /* EIO */
}
