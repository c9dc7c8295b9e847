// The one loader of the project's own addon. The native surface is declared once here (node-pty
// style); nothing outside src/sys/ imports this file. When the addon is missing, the error lists
// every path that was tried and what to run.
import * as path from 'node:path';
import { IpdeadgateError, SystemError } from '../errors';

/** An error thrown or passed by the addon: a plain Error carrying errno `code`, `errno`, `syscall`. */
export interface NativeSystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  /** strerror() text, e.g. "Bad file descriptor". */
  description: string;
}

/** One sock_diag dump as the worker thread left it (native/sockdiag.cc). */
export interface NativeSockDiagResult {
  readonly count: number;
  /** Values per socket in `rows` (sockDiagColumns, or only its base part without tcp_info). */
  readonly columns: number;
  /** Row-major: socket i is rows[i*columns .. (i+1)*columns). */
  readonly rows: Uint32Array;
  /** Distinct addresses as text, back to back; address j is addrs[addrOffsets[j]..addrOffsets[j+1]). */
  readonly addrs: Uint8Array;
  readonly addrOffsets: Uint32Array;
  /** Dump requests the kernel answered, each one walk of its TCP tables (1 when both families came in one). */
  readonly requests: number;
}

/** An SSL_CTX for tunnel links (native/tlslink.cc; src/sys/tlslink.ts). */
export interface TlsContextOptions {
  server: boolean;
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** The one ALPN protocol spoken; a server refuses clients that offer others with no_application_protocol. */
  alpn: string;
  /** TLS 1.3 suites, most preferred first (the server's order wins). */
  ciphersuites: string;
}

/** Raw surface of build/Release/ipdeadgate_native.node. Each concern adds its members here. */
export interface NativeAddon {
  readonly abiVersion: number;

  // sock_diag (native/sockdiag.cc)
  /**
   * family 0 = IPv4 and IPv6; states = kernel bitmask (1 << TCP_*); minRetransmits > 0 keeps only
   * sockets with the retransmit timer pending and at least that many; returns a cancel function.
   */
  sockDiagDump(
    family: 0 | 4 | 6,
    states: number,
    withInfo: boolean,
    minRetransmits: number,
    callback: (err: NativeSystemError | null, result?: NativeSockDiagResult) => void,
  ): () => void;
  /**
   * The same dump, counted on the worker thread: counts[f * 16 + state] with f 0 = IPv4 (IPv4-mapped
   * included), 1 = IPv6, state = kernel TCP state number. No per-socket value reaches JavaScript.
   */
  sockDiagCount(
    family: 0 | 4 | 6,
    states: number,
    callback: (err: NativeSystemError | null, counts?: Uint32Array) => void,
  ): () => void;
  /**
   * Whether dumps take both families in one kernel walk (the compat request), after setting it when
   * given: false forces the two-request path that a kernel refusing it gets (for tests).
   */
  sockDiagOneWalk(enabled?: boolean): boolean;
  /** Column names of a dump row with tcp_info: base columns, then tcpInfoColumns. */
  readonly sockDiagColumns: readonly string[];

  // TCP_INFO / SO_ERROR by fd (native/tcpinfo.cc); both throw NativeSystemError
  tcpInfo(fd: number): Uint32Array;
  socketError(fd: number): number;
  readonly tcpInfoColumns: readonly string[];

  // socket-state watcher (native/watcher.cc)
  /** Calls back with the cumulative condition bits (watchBits) each time a new one appears. */
  watchOpen(fd: number, callback: (bits: number) => void): number;
  watchClose(id: number): void;
  watchCount(): number;
  readonly watchBits: { readonly rdhup: number; readonly hup: number; readonly err: number };

  // SO_PEERCRED of a connected Unix socket (native/peercred.cc); throws NativeSystemError
  peerCred(fd: number): { pid: number; uid: number; gid: number };

  // flock(LOCK_EX|LOCK_NB) (native/filelock.cc): false when another holds it; throws NativeSystemError
  flockExclusive(fd: number): boolean;

  // live libpcap handles (native/pcap.cc); open and send throw NativeSystemError (with pcapMessage)
  /** The callback gets (null, packets) per loop turn, or once (error) when the handle failed. */
  pcapOpen(
    ifname: string,
    filter: string,
    snaplen: number,
    bufferBytes: number,
    /** Which frames the packet socket reports: both ways, received only, or sent only. */
    direction: 'inout' | 'in' | 'out',
    callback: (
      err: NativeSystemError | null,
      packets?: { data: Buffer; wireLength: number; tsMs: number }[],
    ) => void,
  ): { id: number; linkType: number; fd: number };
  pcapSend(id: number, frame: Buffer): void;
  pcapClose(id: number): void;
  pcapCount(): number;
  pcapSetFilter(id: number, filter: string): void;
  pcapStats(id: number): { received: number; dropped: number } | null;
  readonly pcapLinkTypeEthernet: number;
  // sd_notify datagram (native/sdnotify.cc); throws NativeSystemError
  sdNotify(socketPath: string, message: string): void;

  // the tunnel link's TLS (native/tlslink.cc): an OpenSSL TLS 1.3 session with batched I/O
  tlsContext(o: TlsContextOptions): number;
  tlsContextFree(id: number): void;
  /** Duplicates `fd`; the callback gets (kind, arg, length) with kind one of tlsEvents. */
  tlsOpen(
    ctx: number,
    fd: number,
    server: boolean,
    rekeyRecords: number,
    callback: (kind: number, arg: unknown, length: number) => void,
  ): number;
  /** Encrypted bytes the kernel did not take yet: 0 when all went, else the drain event follows. */
  tlsWrite(id: number, buffers: Buffer[]): number;
  tlsRead(id: number, on: boolean): void;
  /** close_notify and FIN after what is queued; returns the bytes still queued (then the drain event). */
  tlsEnd(id: number): number;
  tlsClose(id: number): void;
  tlsStats(id: number):
    | {
        txRecords: number;
        rxRecords: number;
        keyUpdatesSent: number;
        keyUpdatesReceived: number;
        queued: number;
        /** The output buffer's allocation (the bounded-memory tests). */
        outCapacity: number;
        /** Bytes the kernel took so far. */
        sent: number;
      }
    | undefined;
  tlsCount(): number;
  readonly tlsEvents: {
    readonly secure: number;
    readonly data: number;
    readonly end: number;
    readonly drain: number;
    readonly error: number;
  };
  /** Split the link's plaintext into yamux frames for native relays; false once any went up. */
  tlsTrackFrames(id: number): boolean;

  // the native relay of bridged tunnel sessions (native/relay.cc; src/tunnel/nativebridge.ts)
  /** A relay on a dup() of `fd` for `stream` of TLS link `link`; 0 when the link cannot take it now. */
  relayOpen(
    link: number,
    stream: number,
    fd: number,
    o: {
      recvWindow: number;
      recvTarget: number;
      maxWindow: number;
      sendWindow: number;
      frameSize: number;
      rttMs: number;
      toSocket?: Buffer;
      toPeer?: Buffer;
    },
  ): number;
  /** The one function that gets every relay's events (per environment). */
  relayDispatch(fn: (relay: number, kind: number, errno: number) => void): void;
  /** Whether the stream can be relayed now (the link tracks frames; none of the stream's is half-way up). */
  relayCanOpen(link: number, stream: number): boolean;
  relayHalfClose(id: number): void;
  relayClose(id: number, reset: boolean): void;
  relayStats(id: number):
    | {
        bytesIn: number;
        bytesOut: number;
        queued: number;
        recvWindow: number;
        recvTarget: number;
        sendWindow: number;
      }
    | undefined;
  /** Bytes moved both ways, or -1 when the relay is closed. */
  relayBytes(id: number): number;
  relayCount(): number;
  readonly relayEvents: {
    readonly localEof: number;
    readonly peerFin: number;
    readonly finSent: number;
    readonly localError: number;
    readonly peerReset: number;
    readonly windowError: number;
    readonly dataAfterFin: number;
    readonly stall: number;
  };
}

let cached: NativeAddon | undefined;

export function loadNative(): NativeAddon {
  if (cached) return cached;
  const root = path.resolve(__dirname, '..', '..', '..');
  const candidates = [
    path.join(root, 'build', 'Release', 'ipdeadgate_native.node'),
    path.join(root, 'build', 'Debug', 'ipdeadgate_native.node'),
  ];
  const failures: string[] = [];
  for (const file of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      cached = require(file) as NativeAddon;
      return cached;
    } catch (err) {
      failures.push(`  ${file}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  throw new IpdeadgateError(
    'ERR_NATIVE_MISSING',
    `the ipdeadgate native addon is not built; tried:\n${failures.join('\n')}\nrun scripts/setup (or: npx node-gyp rebuild)`,
  );
}

/** Advice per errno code, appended to messages of errors that come from the addon. */
export type ErrnoAdvice = Partial<Record<string, string>>;

/**
 * Turn an error from the addon into a SystemError whose message says what failed and what to do:
 * `EBADF: TCP_INFO on fd 12 failed (getsockopt: Bad file descriptor); <advice>`. Anything that is not
 * a native system error is returned unchanged.
 */
export function nativeSystemError(err: unknown, what: string, advice: ErrnoAdvice = {}): unknown {
  const e = err as Partial<NativeSystemError> | null;
  if (!e || typeof e !== 'object' || typeof e.code !== 'string' || typeof e.errno !== 'number') return err;
  const hint = advice[e.code] ?? DEFAULT_ADVICE[e.code];
  const syscall = typeof e.syscall === 'string' ? e.syscall : 'unknown';
  const description = typeof e.description === 'string' ? e.description : (e.message ?? '');
  return new SystemError(
    e.code,
    e.errno,
    syscall,
    `${e.code}: ${what} failed (${syscall}: ${description})${hint ? `; ${hint}` : ''}`,
    { cause: err },
  );
}

const DEFAULT_ADVICE: ErrnoAdvice = {
  EPERM: 'not permitted; run as root (needs CAP_NET_ADMIN)',
  EACCES: 'not permitted; run as root (needs CAP_NET_ADMIN)',
  EMFILE: 'this process has too many open files; raise its limit (ulimit -n) or close some',
  ENFILE: 'the system has too many open files; raise fs.file-max or close some',
  ENOMEM: 'the kernel is out of memory',
  ENOBUFS: 'the kernel is out of socket buffer memory; try again',
};
