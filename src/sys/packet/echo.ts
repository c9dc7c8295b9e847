// ICMP and ICMPv6 echo (RFC 792, RFC 4443 4.1) on a raw socket from `raw-socket`. In dead gateway
// verification the echo only makes the kernel resolve the gateway itself; its answer is
// informational, because firewalls drop ping and ARP/NDP decides. So the API is small: echo() resolves { rttMs } or null when nothing
// came back in time.
//
// Matching: every socket gets a random identifier and a random 8-byte token at the start of each
// payload; a reply counts only if it comes from the address we pinged and carries our id, a
// pending sequence number and our token. Raw ICMP sockets see every echo reply of the host, so
// other processes' pings (and our own requests to a local address) pass by unmatched.
import { randomBytes } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { constants as osConstants, endianness } from 'node:os';
import {
  AbortError,
  IpdeadgateError,
  type SystemError,
  UsageError,
  errorMessage,
  systemError,
} from '../../errors';
import { normalizeIp, type Family } from '../ipaddr';
import { FrameError } from './framebase';
import { IPPROTO_ICMP, decodeIpv4 } from './ip';
import {
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  ICMPV6_ECHO_REPLY,
  ICMPV6_ECHO_REQUEST,
  decodeIcmpEcho,
  encodeIcmpEcho,
} from './icmp';

/** What EchoSocket needs from a raw socket; raw-socket's Socket in production, a fake in tests. */
export interface RawIcmpSocket {
  send(
    buffer: Buffer,
    offset: number,
    length: number,
    address: string,
    beforeCallback: () => void,
    afterCallback: (error: Error | null, bytes: number) => void,
  ): unknown;
  on(event: 'message', listener: (buffer: Buffer, source: string) => void): unknown;
  /** raw-socket emits 'error' without an Error object on poll failures: the argument may be undefined. */
  on(event: 'error', listener: (error?: unknown) => void): unknown;
  on(event: 'close', listener: () => void): unknown;
  setOption(level: number, option: number, value: Buffer | number, length?: number): void;
  close(): unknown;
}

export interface EchoOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /** Bytes after the 8-byte ICMP header (default 56, like ping; 0..65000). */
  payloadSize?: number;
}

export interface EchoStats {
  sent: number;
  replies: number;
  timeouts: number;
  /** Echo replies that were not ours (other processes, unknown sequence, wrong source). */
  foreign: number;
  /** Packets that could not be decoded. */
  malformed: number;
  /** Failed reads (the socket stays usable). */
  recvErrors: number;
}

const TOKEN_LEN = 8;
const DEFAULT_PAYLOAD = 56;
const MAX_PAYLOAD = 65000;

// setsockopt levels and options raw-socket does not export (linux/icmp.h, netinet/icmp6.h).
const SOL_RAW = 255;
const ICMP_FILTER = 1;
const IPPROTO_ICMPV6 = 58;
const ICMP6_FILTER = 1;

/** strerror() text (all raw-socket gives) back to the errno name, so errors say what to do. */
const STRERROR_CODES: Record<string, string> = {
  'Operation not permitted': 'EPERM',
  'Permission denied': 'EACCES',
  'Network is unreachable': 'ENETUNREACH',
  'No route to host': 'EHOSTUNREACH',
  'No such device': 'ENODEV',
  'Network is down': 'ENETDOWN',
  'Invalid argument': 'EINVAL',
  'Cannot assign requested address': 'EADDRNOTAVAIL',
  'Address family not supported by protocol': 'EAFNOSUPPORT',
  'No buffer space available': 'ENOBUFS',
  'Resource temporarily unavailable': 'EAGAIN',
  'Message too long': 'EMSGSIZE',
  'Protocol not supported': 'EPROTONOSUPPORT',
};

function rawSocketError(err: unknown, syscall: string, what: string): SystemError {
  const text = errorMessage(err);
  const code = STRERROR_CODES[text] ?? 'EIO';
  const errno = (osConstants.errno as Record<string, number>)[code] ?? 0;
  return systemError({ code, errno, message: text }, syscall, what);
}

function familyName(family: Family): string {
  return family === 4 ? 'ICMP' : 'ICMPv6';
}

interface Pending {
  dst: string;
  sentAt: number;
  timer: NodeJS.Timeout;
  resolve: (r: { rttMs: number } | null) => void;
  reject: (e: unknown) => void;
  cleanup: () => void;
}

export class EchoSocket {
  readonly family: Family;
  readonly ifname: string | undefined;
  readonly id: number;
  readonly stats: EchoStats = { sent: 0, replies: 0, timeouts: 0, foreign: 0, malformed: 0, recvErrors: 0 };
  private readonly token: Buffer = randomBytes(TOKEN_LEN);
  private readonly pending = new Map<number, Pending>();
  private seq = Math.floor(Math.random() * 0x10000);
  private closed = false;
  private failure: Error | null = null;

  /**
   * Open a raw ICMP (family 4) or ICMPv6 (family 6) socket, bound to `ifname` when given
   * (SO_BINDTODEVICE). Needs CAP_NET_RAW: without it, a SystemError EPERM that says so.
   */
  static open(family: Family, opts: { ifname?: string } = {}): EchoSocket {
    if (family !== 4 && family !== 6)
      throw new TypeError(`EchoSocket.open: family must be 4 or 6, not ${String(family)}`);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const raw = require('raw-socket') as typeof import('raw-socket');
    let socket: RawIcmpSocket;
    try {
      socket = raw.createSocket({
        protocol: family === 4 ? raw.Protocol.ICMP : raw.Protocol.ICMPv6,
        addressFamily: family === 4 ? raw.AddressFamily.IPv4 : raw.AddressFamily.IPv6,
        bufferSize: 65535,
      });
    } catch (err) {
      throw rawSocketError(err, 'socket', `opening a raw ${familyName(family)} socket`);
    }
    const echo = new EchoSocket(family, socket, opts.ifname);
    try {
      if (opts.ifname !== undefined) {
        if (!/^[^\s/:]{1,15}$/.test(opts.ifname))
          throw new UsageError(`"${opts.ifname}" is not a valid interface name`);
        const name = Buffer.from(opts.ifname + '\0');
        try {
          socket.setOption(raw.SocketLevel.SOL_SOCKET, raw.SocketOption.SO_BINDTODEVICE, name, name.length);
        } catch (err) {
          const e = rawSocketError(
            err,
            'setsockopt',
            `binding the ${familyName(family)} socket to ${opts.ifname}`,
          );
          if (e.code === 'ENODEV')
            throw new UsageError(`no network interface named "${opts.ifname}"`, { cause: e });
          throw e;
        }
      }
      echo.installFilter();
    } catch (err) {
      echo.close();
      throw err;
    }
    return echo;
  }

  /** Wrap any raw socket (unit tests use a fake one). */
  static withSocket(family: Family, socket: RawIcmpSocket, opts: { ifname?: string } = {}): EchoSocket {
    return new EchoSocket(family, socket, opts.ifname);
  }

  private constructor(
    family: Family,
    private readonly socket: RawIcmpSocket,
    ifname: string | undefined,
  ) {
    this.family = family;
    this.ifname = ifname;
    this.id = randomBytes(2).readUInt16BE(0);
    socket.on('message', (buf, source) => this.onMessage(buf, source));
    socket.on('error', (err) => this.onSocketError(err));
    socket.on('close', () => this.onSocketClosed());
  }

  /**
   * Let only echo replies reach the socket: fewer wake-ups on a busy host. The filters are bit
   * masks of *blocked* types: ICMP_FILTER (linux/icmp.h, a u32 for types 0..31) and ICMP6_FILTER
   * (RFC 3542 3.2, eight u32 in host order). A failure is harmless (we filter in onMessage too).
   */
  private installFilter(): void {
    try {
      if (this.family === 4) {
        const b = Buffer.alloc(4);
        const mask = ~(1 << ICMP_ECHO_REPLY) >>> 0;
        if (endianness() === 'LE') b.writeUInt32LE(mask);
        else b.writeUInt32BE(mask);
        this.socket.setOption(SOL_RAW, ICMP_FILTER, b, 4);
      } else {
        const b = Buffer.alloc(32, 0xff);
        const word = ICMPV6_ECHO_REPLY >> 5;
        const bit = ICMPV6_ECHO_REPLY & 31;
        const mask = ~(1 << bit) >>> 0;
        if (endianness() === 'LE') b.writeUInt32LE(mask, word * 4);
        else b.writeUInt32BE(mask, word * 4);
        this.socket.setOption(IPPROTO_ICMPV6, ICMP6_FILTER, b, 32);
      }
    } catch {
      /* filtering in onMessage is enough */
    }
  }

  /** Echoes in flight. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Send one echo request to `dst` and wait up to timeoutMs for its reply: { rttMs } or null.
   * Rejects with a SystemError when sending fails (e.g. ENETUNREACH), AbortError on abort.
   */
  echo(dst: string, opts: EchoOptions): Promise<{ rttMs: number } | null> {
    const payloadSize = opts.payloadSize ?? DEFAULT_PAYLOAD;
    if (!Number.isInteger(payloadSize) || payloadSize < 0 || payloadSize > MAX_PAYLOAD)
      return Promise.reject(
        new RangeError(
          `echo: payloadSize must be a whole number from 0 to ${MAX_PAYLOAD}, not ${payloadSize}`,
        ),
      );
    if (!(opts.timeoutMs >= 0) || !Number.isFinite(opts.timeoutMs))
      return Promise.reject(
        new RangeError(`echo: timeoutMs must be a number of milliseconds >= 0, not ${opts.timeoutMs}`),
      );
    const bare = dst.split('%')[0]!;
    if (this.family === 4 ? !isIPv4(dst) : !isIPv6(bare))
      return Promise.reject(new TypeError(`echo: "${dst}" is not an IPv${this.family} address`));
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed)
      return Promise.reject(
        new IpdeadgateError('ERR_CLOSED', `the ${familyName(this.family)} echo socket is closed`),
      );
    if (opts.signal?.aborted) return Promise.reject(new AbortError(`echo to ${dst} was aborted`));
    if (this.pending.size >= 0x10000)
      return Promise.reject(new IpdeadgateError('ERR_BUSY', 'too many echoes in flight on one socket'));

    let seq: number;
    do seq = this.seq = (this.seq + 1) & 0xffff;
    while (this.pending.has(seq));
    const payload = Buffer.alloc(payloadSize);
    this.token.copy(payload, 0, 0, Math.min(TOKEN_LEN, payloadSize));
    const msg = encodeIcmpEcho({
      type: this.family === 4 ? ICMP_ECHO_REQUEST : ICMPV6_ECHO_REQUEST,
      id: this.id,
      seq,
      payload,
    });
    // A link-local destination needs its zone; the socket's interface is the one we mean.
    let address = dst;
    if (this.family === 6 && !dst.includes('%') && this.ifname && /^fe[89ab]/i.test(bare))
      address = `${dst}%${this.ifname}`;

    return new Promise((resolve, reject) => {
      const signal = opts.signal;
      const onAbort = () => this.settle(seq, (p) => p.reject(new AbortError(`echo to ${dst} was aborted`)));
      const entry: Pending = {
        dst: normalizeIp(dst),
        sentAt: performance.now(),
        timer: setTimeout(() => {
          this.stats.timeouts++;
          this.settle(seq, (p) => p.resolve(null));
        }, opts.timeoutMs),
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener('abort', onAbort),
      };
      this.pending.set(seq, entry);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.socket.send(
        msg,
        0,
        msg.length,
        address,
        () => {
          // Taken right before sendto(2): the RTT excludes time spent queued behind other sends.
          entry.sentAt = performance.now();
        },
        (err) => {
          if (err) {
            this.settle(seq, (p) =>
              p.reject(rawSocketError(err, 'sendto', `sending an ${familyName(this.family)} echo to ${dst}`)),
            );
            return;
          }
          this.stats.sent++;
        },
      );
    });
  }

  /** Idempotent. Echoes in flight reject with ERR_CLOSED. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.failAll(new IpdeadgateError('ERR_CLOSED', `the ${familyName(this.family)} echo socket was closed`));
    try {
      this.socket.close();
    } catch {
      /* already closed by raw-socket after an error */
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  private settle(seq: number, fn: (p: Pending) => void): void {
    const p = this.pending.get(seq);
    if (!p) return;
    this.pending.delete(seq);
    clearTimeout(p.timer);
    p.cleanup();
    fn(p);
  }

  private failAll(err: Error): void {
    for (const seq of [...this.pending.keys()]) this.settle(seq, (p) => p.reject(err));
  }

  private onMessage(buf: Buffer, source: string): void {
    const at = performance.now();
    let echo;
    try {
      let offset = 0;
      let end = buf.length;
      if (this.family === 4) {
        // Raw IPv4 sockets deliver the IP header too; IPv6 raw sockets never do (RFC 3542 3).
        const ip = decodeIpv4(buf, 0);
        if (ip.value.protocol !== IPPROTO_ICMP) return;
        offset = ip.payloadOffset;
        end = Math.min(buf.length, ip.value.totalLength || buf.length);
      }
      if (end - offset >= 1) {
        const type = buf[offset];
        if (type !== (this.family === 4 ? ICMP_ECHO_REPLY : ICMPV6_ECHO_REPLY)) return; // requests, errors, NDP
      }
      echo = decodeIcmpEcho(buf, offset, end);
    } catch (err) {
      if (err instanceof FrameError) this.stats.malformed++;
      return;
    }
    const p = echo.id === this.id ? this.pending.get(echo.seq) : undefined;
    const tokenLen = Math.min(TOKEN_LEN, echo.payload.length);
    let src: string;
    try {
      src = normalizeIp(source);
    } catch {
      src = source;
    }
    if (!p || src !== p.dst || !echo.payload.subarray(0, tokenLen).equals(this.token.subarray(0, tokenLen))) {
      this.stats.foreign++;
      return;
    }
    this.stats.replies++;
    this.settle(echo.seq, (q) => q.resolve({ rttMs: Math.max(0, at - q.sentAt) }));
  }

  /**
   * raw-socket emits 'error' in two ways. A failed recvfrom(2) comes with its Error and leaves the
   * socket open: counted, the next packet may be fine. A poll failure comes *without* an Error
   * object (the addon drops it) and raw-socket closes the socket: make an Error that says what
   * happened and fail every echo in flight with it.
   */
  private onSocketError(err?: unknown): void {
    if (err instanceof Error && err.message && !/^-?\d+$/.test(err.message)) {
      this.stats.recvErrors++;
      return;
    }
    const what = `the raw ${familyName(this.family)} socket${this.ifname ? ` on ${this.ifname}` : ''} failed`;
    const status = err instanceof Error ? ` (libuv status ${err.message})` : '';
    const e = new IpdeadgateError(
      'ERR_RAW_SOCKET',
      `${what}: its poller reported an error${status} and it was closed`,
    );
    this.failure = e;
    this.failAll(e);
  }

  private onSocketClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.failAll(
      this.failure ??
        new IpdeadgateError('ERR_CLOSED', `the ${familyName(this.family)} echo socket was closed`),
    );
  }
}
