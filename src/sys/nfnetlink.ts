// A NETLINK_NETFILTER socket (nfnetlink) with request/reply matching, on the `netlink` package's
// RawNetlinkSocket as the NETLINK_ROUTE channel (rtnl-socket.ts) is: the native part only does
// socket/bind/sendmsg/recvmsg/poll; headers, matching and errors are here. Every request has a
// timeout that a dump's progress refreshes; a dump keeps at most `maxReplies` messages (the rest are
// drained and counted, never kept), so a table of a million entries cannot exhaust the heap; a
// failed request rejects with the kernel's errno (struct nlmsgerr); close() rejects what is pending.
// Messages that answer no request (multicast events) go to `onNotification`.
import { RawNetlinkSocket, type ErrnoException } from 'netlink';
import { TimeoutError } from '../errors';
import {
  NLM_F_ACK,
  NLM_F_DUMP,
  NLM_F_MULTI,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  nlmsg,
  s32,
} from './rtnl-codec';
import { NetlinkErrno, parseNetlinkMessages, type NetlinkMessage } from './rtnl-socket';

/** NETLINK_NETFILTER (linux/netlink.h). */
const NETLINK_NETFILTER = 12;
/** NFNETLINK_V0 (linux/netfilter/nfnetlink.h). */
const NFNETLINK_V0 = 0;
/** struct nfgenmsg: u8 nfgen_family, u8 version, __be16 res_id (linux/netfilter/nfnetlink.h). */
export const NFGENMSG_LEN = 4;

export type { NetlinkMessage };

/** The nfnetlink message type: subsystem in the high byte, the subsystem's message in the low one. */
export const nfnlType = (subsys: number, msg: number): number => (subsys << 8) | msg;

/** struct nfgenmsg for a request: the address family it is about (0 = every family). */
export function nfgenmsg(family: number, resId = 0): Buffer {
  const b = Buffer.alloc(NFGENMSG_LEN);
  b.writeUInt8(family, 0);
  b.writeUInt8(NFNETLINK_V0, 1);
  b.writeUInt16BE(resId, 2);
  return b;
}

export interface NfnlOptions {
  /** Multicast groups (NFNLGRP_*) to join, e.g. conntrack events. */
  groups?: number[];
  /** Keep the event loop alive while open (subscriptions). */
  ref?: boolean;
  recvBufferSize?: number;
  onNotification?: (msg: NetlinkMessage) => void;
  onError?: (err: Error) => void;
}

export interface NfnlReply {
  messages: NetlinkMessage[];
  /** Messages of a dump that arrived past maxReplies and were dropped. */
  dropped: number;
}

interface Pending {
  seq: number;
  dump: boolean;
  maxReplies: number;
  replies: NetlinkMessage[];
  dropped: number;
  timer: NodeJS.Timeout;
  resolve: (r: NfnlReply) => void;
  reject: (err: Error) => void;
}

export class NfnlChannel {
  private readonly sock: RawNetlinkSocket;
  private readonly port: number;
  private readonly pending = new Map<number, Pending>();
  private seq = Math.floor(Math.random() * 0x7fffffff) + 1;
  private closed = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: NfnlOptions = {}) {
    try {
      this.sock = new RawNetlinkSocket(NETLINK_NETFILTER, {
        recvBufferSize: opts.recvBufferSize ?? 0,
        sendBufferSize: 0,
      });
    } catch (err) {
      const e = err as ErrnoException;
      throw new NetlinkErrno(errnoOf(err), e.syscall ?? 'socket', e.code);
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
   * Send one request and collect its answer: a dump's messages up to NLMSG_DONE (at most
   * maxReplies kept), or nothing for an acknowledged change. One request at a time: the kernel
   * refuses a second dump on a socket while one is in progress.
   */
  request(
    type: number,
    flags: number,
    payload: Buffer,
    opts: { timeoutMs: number; syscall: string; maxReplies?: number },
  ): Promise<NfnlReply> {
    const run = () => this.requestNow(type, flags, payload, opts);
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private requestNow(
    type: number,
    flags: number,
    payload: Buffer,
    opts: { timeoutMs: number; syscall: string; maxReplies?: number },
  ): Promise<NfnlReply> {
    const { timeoutMs, syscall } = opts;
    if (this.closed) return Promise.reject(new NetlinkErrno(9, syscall, 'EBADF'));
    const seq = this.nextSeq();
    const dump = (flags & NLM_F_DUMP) === NLM_F_DUMP;
    return new Promise<NfnlReply>((resolve, reject) => {
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
      const msgFlags = NLM_F_REQUEST | flags | (dump ? 0 : NLM_F_ACK);
      this.sock.send(nlmsg(type, msgFlags, seq, this.port, payload), { port: 0 }, (err?: ErrnoException) => {
        if (err) this.settle(seq, new NetlinkErrno(errnoOf(err), 'sendmsg', err.code));
      });
    }).catch((err: unknown) => {
      // The kernel's errno names no syscall; the caller's operation does.
      if (err instanceof NetlinkErrno && err.syscall === '')
        throw new NetlinkErrno(err.errno, syscall, err.code);
      throw err;
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
        const errno = msg.data.length >= 4 ? -s32(msg.data, 0) : 0;
        this.settle(p.seq, errno > 0 ? new NetlinkErrno(errno, '') : null);
      } else {
        if (p.replies.length < p.maxReplies) p.replies.push(msg);
        else p.dropped++;
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
