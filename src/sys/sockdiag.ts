// TCP sockets as the kernel's sock_diag reports them (NETLINK_SOCK_DIAG, inet_diag_req_v2; see
// native/sockdiag.cc). The dump runs on a libuv threadpool thread and comes back as flat rows; this
// file turns rows into objects in time-bounded slices, yielding to the event loop between slices.
// Three ways to take a dump, cheapest first: countTcpSockets (numbers per family and state, no row
// at all: what the daemon's status needs), dumpTcpSocketPages (a page of objects at a time, each
// short-lived: what `ipdeadgate sockets` uses), dumpTcpSockets (every socket as an object at once;
// at 100 000 sockets with tcp_info about 30 MB of objects, whose GC stalls the loop).
//
// The cheap scan that detection runs every 200 ms needs no tcp_info: inet_diag_msg itself carries the
// pending timer, the consecutive retransmissions of the current segment and the timer's expiry (what
// `ss -o` shows). `info: true` adds struct tcp_info (what `ss -i` shows).
import { AbortError, IpdeadgateError } from '../errors';
import { loadNative, nativeSystemError, type NativeAddon, type NativeSockDiagResult } from './native';
import type { Family } from './ipaddr';

export type TcpState =
  | 'ESTABLISHED'
  | 'SYN-SENT'
  | 'SYN-RECV'
  | 'FIN-WAIT-1'
  | 'FIN-WAIT-2'
  | 'TIME-WAIT'
  | 'CLOSE'
  | 'CLOSE-WAIT'
  | 'LAST-ACK'
  | 'LISTEN'
  | 'CLOSING';

/** The tcp_info fields detection and the tunnel use (struct tcp_info, include/uapi/linux/tcp.h). */
export interface TcpInfoFields {
  /** tcpi_retransmits: consecutive retransmissions of the current segment (timeouts, not fast retransmits). */
  retransmits: number;
  /** tcpi_backoff: how often the RTO has been doubled for the current segment. */
  backoff: number;
  /** tcpi_total_retrans: retransmitted segments over the connection's life. */
  totalRetrans: number;
  rtoMs: number;
  rttMs: number;
  rttVarMs: number;
  /** tcpi_unacked: segments sent and not yet acknowledged. */
  unacked: number;
  /** tcpi_lost: segments the sender considers lost. */
  lost: number;
  /** Milliseconds since data was last sent / an ACK received / data received. */
  lastDataSentMs: number;
  lastAckRecvMs: number;
  lastDataRecvMs: number;
  state: TcpState;
  /** tcpi_ca_state: 0 open, 1 disorder, 2 CWR, 3 recovery, 4 loss. */
  caState: number;
  /** tcpi_probes: unanswered zero-window or keepalive probes. */
  probes: number;
  /** Linux 4.1+ only; absent on older kernels. */
  bytesAcked?: number;
  bytesReceived?: number;
}

export interface TcpSocketEntry {
  family: Family;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  state: TcpState;
  /** 0 for sockets without one (TIME-WAIT, SYN-RECV request sockets). */
  inode: number;
  /** inet_diag_msg.idiag_uid: the owner, part of the route lookup key (`ip rule uidrange`). */
  uid: number;
  /** Bound interface (SO_BINDTODEVICE or a link-local scope), 0 if none. */
  ifindex: number;
  /** idiag_timer: 0 none, 1 retransmit, 2 keepalive, 3 time-wait, 4 zero-window probe. */
  timer: number;
  /** idiag_retrans: with timer 1, consecutive retransmissions of the current segment (SYNs included). */
  timerRetransmits: number;
  /** idiag_expires: milliseconds until the pending timer fires. */
  timerExpiresMs: number;
  /**
   * SO_MARK (INET_DIAG_MARK), part of the socket's route lookup key; null when the kernel did not
   * say (it tells only a caller with CAP_NET_ADMIN).
   */
  mark: number | null;
  /** Only with `info: true`, and only for sockets that have one (not TIME-WAIT or request sockets). */
  info?: TcpInfoFields;
}

export interface DumpOptions {
  /** Default: every state but LISTEN and TIME-WAIT. */
  states?: TcpState[];
  /** Default 'all'. */
  family?: Family | 'all';
  /** Request tcp_info (INET_DIAG_INFO) per socket. Default false. */
  info?: boolean;
  /**
   * Only sockets whose retransmit timer is pending (timer 1) with at least this many consecutive
   * retransmissions (timerRetransmits), filtered on the worker thread: detection's frequent scan of
   * a host with many healthy connections then builds objects only for the suspicious ones.
   * Default 0: no filter.
   */
  minRetransmits?: number;
  signal?: AbortSignal;
}

/** Kernel TCP state numbers (include/net/tcp_states.h); index = state number. */
const STATE_BY_NUMBER: readonly (TcpState | undefined)[] = [
  undefined,
  'ESTABLISHED', // 1 TCP_ESTABLISHED
  'SYN-SENT', // 2 TCP_SYN_SENT
  'SYN-RECV', // 3 TCP_SYN_RECV (fast open child sockets)
  'FIN-WAIT-1', // 4
  'FIN-WAIT-2', // 5
  'TIME-WAIT', // 6
  'CLOSE', // 7
  'CLOSE-WAIT', // 8
  'LAST-ACK', // 9
  'LISTEN', // 10
  'CLOSING', // 11
  'SYN-RECV', // 12 TCP_NEW_SYN_RECV: a request socket, what ss also shows as SYN-RECV
];

const NUMBER_BY_STATE: Readonly<Record<TcpState, number>> = {
  ESTABLISHED: 1,
  'SYN-SENT': 2,
  'SYN-RECV': 3,
  'FIN-WAIT-1': 4,
  'FIN-WAIT-2': 5,
  'TIME-WAIT': 6,
  CLOSE: 7,
  'CLOSE-WAIT': 8,
  'LAST-ACK': 9,
  LISTEN: 10,
  CLOSING: 11,
};
const TCP_NEW_SYN_RECV = 12;

export const ALL_TCP_STATES: readonly TcpState[] = Object.keys(NUMBER_BY_STATE) as TcpState[];
export const DEFAULT_DUMP_STATES: readonly TcpState[] = ALL_TCP_STATES.filter(
  (s) => s !== 'LISTEN' && s !== 'TIME-WAIT',
);

/** The state name of a kernel TCP state number ('CLOSE' for an unknown one). */
export function tcpStateName(n: number): TcpState {
  return STATE_BY_NUMBER[n] ?? 'CLOSE';
}

/** The kernel's idiag_states bitmask for a list of states (SYN-RECV includes request sockets). */
export function tcpStateMask(states: readonly TcpState[]): number {
  let mask = 0;
  for (const s of states) {
    const n = NUMBER_BY_STATE[s];
    if (n === undefined)
      throw new TypeError(
        `unknown TCP state ${JSON.stringify(s)}; expected one of ${ALL_TCP_STATES.join(', ')}`,
      );
    mask |= 1 << n;
    if (n === NUMBER_BY_STATE['SYN-RECV']) mask |= 1 << TCP_NEW_SYN_RECV;
  }
  return mask >>> 0;
}

// Row layout (native/sockdiag.cc, native/tcp_info_row.h). Checked against the addon at first use.
const BASE_COLUMNS = [
  'family',
  'srcAddr',
  'srcPort',
  'dstAddr',
  'dstPort',
  'state',
  'inode',
  'uid',
  'ifindex',
  'timer',
  'timerRetransmits',
  'timerExpiresMs',
  'mark',
  'markKnown',
] as const;
export const TCP_INFO_COLUMNS = [
  'flags',
  'state',
  'caState',
  'retransmits',
  'probes',
  'backoff',
  'rtoUs',
  'rttUs',
  'rttVarUs',
  'unacked',
  'lost',
  'lastDataSentMs',
  'lastAckRecvMs',
  'lastDataRecvMs',
  'totalRetrans',
  'bytesAckedLo',
  'bytesAckedHi',
  'bytesReceivedLo',
  'bytesReceivedHi',
] as const;
const INFO_PRESENT = 1;
const INFO_HAS_BYTES = 2;
const U32 = 2 ** 32;

let checkedAddon: NativeAddon | undefined;

/** The addon, after checking that its row layout is the one this file decodes. */
export function sockDiagAddon(): NativeAddon {
  if (checkedAddon) return checkedAddon;
  const native = loadNative();
  const expected = [...BASE_COLUMNS, ...TCP_INFO_COLUMNS].join(',');
  if (
    native.sockDiagColumns.join(',') !== expected ||
    native.tcpInfoColumns.join(',') !== TCP_INFO_COLUMNS.join(',')
  )
    throw new IpdeadgateError(
      'ERR_NATIVE_MISMATCH',
      'the native addon does not match this build of ipdeadgate (sock_diag row layout differs); rebuild it: npm run build:native',
    );
  checkedAddon = native;
  return native;
}

/**
 * Decode a tcp_info row (TCP_INFO_COLUMNS) at `at` in `row`; undefined when the kernel sent none.
 * Shared with src/sys/tcpinfo.ts (TCP_INFO by fd uses the same row).
 */
export function decodeTcpInfoRow(row: Uint32Array, at: number): TcpInfoFields | undefined {
  const flags = row[at]!;
  if (!(flags & INFO_PRESENT)) return undefined;
  // One object literal per shape (with or without the byte counters): no property added later, so
  // no hidden-class transition and no out-of-object property store per socket.
  if (flags & INFO_HAS_BYTES)
    return {
      retransmits: row[at + 3]!,
      backoff: row[at + 5]!,
      totalRetrans: row[at + 14]!,
      rtoMs: row[at + 6]! / 1000,
      rttMs: row[at + 7]! / 1000,
      rttVarMs: row[at + 8]! / 1000,
      unacked: row[at + 9]!,
      lost: row[at + 10]!,
      lastDataSentMs: row[at + 11]!,
      lastAckRecvMs: row[at + 12]!,
      lastDataRecvMs: row[at + 13]!,
      state: tcpStateName(row[at + 1]!),
      caState: row[at + 2]!,
      probes: row[at + 4]!,
      bytesAcked: row[at + 16]! * U32 + row[at + 15]!,
      bytesReceived: row[at + 18]! * U32 + row[at + 17]!,
    };
  return {
    retransmits: row[at + 3]!,
    backoff: row[at + 5]!,
    totalRetrans: row[at + 14]!,
    rtoMs: row[at + 6]! / 1000,
    rttMs: row[at + 7]! / 1000,
    rttVarMs: row[at + 8]! / 1000,
    unacked: row[at + 9]!,
    lost: row[at + 10]!,
    lastDataSentMs: row[at + 11]!,
    lastAckRecvMs: row[at + 12]!,
    lastDataRecvMs: row[at + 13]!,
    state: tcpStateName(row[at + 1]!),
    caState: row[at + 2]!,
    probes: row[at + 4]!,
  };
}

/**
 * Longest slice of main-thread decoding between two yields to the event loop. Measured at 100k
 * sockets: ~1 ms slices, ~35 ms of decoding in all (the rest of a dump runs on the worker thread).
 */
const SLICE_BUDGET_MS = 1;
/** Entries decoded between two clock reads (~50 µs of work). */
const CLOCK_EVERY = 64;

const yieldToLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function abortError(signal: AbortSignal): AbortError {
  const reason: unknown = signal.reason;
  return new AbortError(
    reason instanceof Error && reason.name !== 'AbortError'
      ? `the sock_diag dump was aborted: ${reason.message}`
      : undefined,
  );
}

const SOCK_DIAG_ADVICE = {
  ENOENT: 'this kernel has no TCP sock_diag support; load it: modprobe tcp_diag (needs inet_diag)',
  EPROTONOSUPPORT: 'this kernel has no NETLINK_SOCK_DIAG; it needs CONFIG_INET_DIAG and CONFIG_INET_TCP_DIAG',
  EINVAL: 'the kernel rejected the request; it needs CONFIG_INET_TCP_DIAG (modprobe tcp_diag)',
  EAGAIN: 'the kernel did not answer within 10 s; try again',
};

interface ValidDump {
  mask: number;
  family: 0 | 4 | 6;
  withInfo: boolean;
  minRetransmits: number;
  signal: AbortSignal | undefined;
}

function validateDumpOptions(opts: DumpOptions): ValidDump {
  const states = opts.states ?? DEFAULT_DUMP_STATES;
  if (!Array.isArray(states)) throw new TypeError('states must be an array of TCP state names');
  const mask = tcpStateMask(states);
  const familyOpt = opts.family ?? 'all';
  if (familyOpt !== 4 && familyOpt !== 6 && familyOpt !== 'all')
    throw new TypeError(`family must be 4, 6 or 'all', not ${JSON.stringify(familyOpt)}`);
  const withInfo = opts.info ?? false;
  if (typeof withInfo !== 'boolean') throw new TypeError('info must be a boolean');
  const minRetransmits = opts.minRetransmits ?? 0;
  if (!Number.isInteger(minRetransmits) || minRetransmits < 0 || minRetransmits > 255)
    throw new RangeError(`minRetransmits must be a whole number from 0 to 255, not ${minRetransmits}`);
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal);
  return { mask, family: familyOpt === 'all' ? 0 : familyOpt, withInfo, minRetransmits, signal };
}

/** Run one native call that takes a callback and returns a cancel function, with abort support. */
function nativeCall<T>(
  signal: AbortSignal | undefined,
  start: (callback: (err: unknown, result?: T) => void) => () => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let onAbort: (() => void) | undefined;
    const cancel = start((err, result) => {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      if (err) reject(nativeSystemError(err, 'dumping TCP sockets with sock_diag', SOCK_DIAG_ADVICE));
      else resolve(result!);
    });
    if (signal) {
      onAbort = () => {
        cancel();
        reject(abortError(signal));
      };
      signal.addEventListener('abort', onAbort, { once: true });
    }
  });
}

function runDump(v: ValidDump): Promise<NativeSockDiagResult> {
  const native = sockDiagAddon();
  return nativeCall<NativeSockDiagResult>(v.signal, (cb) =>
    native.sockDiagDump(v.family, v.mask, v.withInfo, v.minRetransmits, cb),
  );
}

/** Dump TCP sockets of this network namespace. Never blocks the event loop for long. */
export async function dumpTcpSockets(opts: DumpOptions = {}): Promise<TcpSocketEntry[]> {
  const v = validateDumpOptions(opts);
  if (v.mask === 0) return [];
  const raw = await runDump(v);
  return decodeDump(raw, v.withInfo, v.signal);
}

/** Sockets per page of dumpTcpSocketPages unless asked otherwise. */
export const DEFAULT_PAGE_SIZE = 1024;

/**
 * The same dump, handed over a page at a time: the kernel's answer stays in the flat rows the
 * worker thread left (about 120 bytes per socket with tcp_info, outside the JavaScript heap) and
 * only one page of objects exists at a time, so a consumer that keeps what it needs and drops the
 * rest makes short-lived garbage only (young-generation scavenges), never the ~30 MB of live
 * objects a 100 000-socket array is. Between pages the generator yields to the event loop once its
 * slice of main-thread time is used up.
 */
export async function* dumpTcpSocketPages(
  opts: DumpOptions & { pageSize?: number } = {},
): AsyncGenerator<TcpSocketEntry[], void, undefined> {
  const pageSize = opts.pageSize ?? DEFAULT_PAGE_SIZE;
  if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 1_000_000)
    throw new RangeError(`pageSize must be a whole number from 1 to 1000000, not ${pageSize}`);
  const v = validateDumpOptions(opts);
  if (v.mask === 0) return;
  const raw = await runDump(v);
  const decode = entryDecoder(raw, v.withInfo);
  let sliceStart = performance.now();
  for (let first = 0; first < raw.count; first += pageSize) {
    if (performance.now() - sliceStart > SLICE_BUDGET_MS) {
      await yieldToLoop();
      if (v.signal?.aborted) throw abortError(v.signal);
      sliceStart = performance.now();
    }
    const end = Math.min(raw.count, first + pageSize);
    const page = new Array<TcpSocketEntry>(end - first);
    for (let i = first; i < end; i++) page[i - first] = decode(i);
    yield page;
  }
}

/** Sockets per family and state, as countTcpSockets reports them. */
export interface TcpSocketCounts {
  total: number;
  byFamily: { 4: number; 6: number };
  /** Only states with at least one socket; SYN-RECV includes request sockets. */
  byState: Partial<Record<TcpState, number>>;
}

/** Columns of a family in the native counts (kCountStates in native/sockdiag.cc). */
const COUNT_STATES = 16;

/**
 * Count TCP sockets per family and state without building a row or an object per socket: the
 * worker thread walks the kernel's dump and hands back 32 numbers. What `status` needs on a host
 * with 100 000 connections, for the cost of the kernel's walk alone.
 */
export async function countTcpSockets(
  opts: Pick<DumpOptions, 'states' | 'family' | 'signal'> = {},
): Promise<TcpSocketCounts> {
  const v = validateDumpOptions({ ...opts, info: false, minRetransmits: 0 });
  const out: TcpSocketCounts = { total: 0, byFamily: { 4: 0, 6: 0 }, byState: {} };
  if (v.mask === 0) return out;
  const native = sockDiagAddon();
  const counts = await nativeCall<Uint32Array>(v.signal, (cb) => native.sockDiagCount(v.family, v.mask, cb));
  for (let f = 0; f < 2; f++) {
    for (let state = 0; state < COUNT_STATES; state++) {
      const n = counts[f * COUNT_STATES + state] ?? 0;
      if (n === 0) continue;
      const name = tcpStateName(state);
      out.byState[name] = (out.byState[name] ?? 0) + n;
      out.byFamily[f === 0 ? 4 : 6] += n;
      out.total += n;
    }
  }
  return out;
}

/** A function decoding entry i of a native dump (addresses decoded once each, cached). */
function entryDecoder(raw: NativeSockDiagResult, withInfo: boolean): (i: number) => TcpSocketEntry {
  const { columns, rows } = raw;
  const text = Buffer.from(raw.addrs.buffer, raw.addrs.byteOffset, raw.addrs.byteLength);
  const offsets = raw.addrOffsets;
  const addrCache: (string | undefined)[] = new Array<string | undefined>(Math.max(0, offsets.length - 1));
  const addr = (i: number): string =>
    (addrCache[i] ??= text.toString('latin1', offsets[i]!, offsets[i + 1]!));
  return (i: number): TcpSocketEntry => {
    const at = i * columns;
    const info = withInfo ? decodeTcpInfoRow(rows, at + BASE_COLUMNS.length) : undefined;
    // Two literal shapes rather than adding `info` afterwards (see decodeTcpInfoRow).
    return info
      ? {
          family: rows[at] === 6 ? 6 : 4,
          src: addr(rows[at + 1]!),
          srcPort: rows[at + 2]!,
          dst: addr(rows[at + 3]!),
          dstPort: rows[at + 4]!,
          state: tcpStateName(rows[at + 5]!),
          inode: rows[at + 6]!,
          uid: rows[at + 7]!,
          ifindex: rows[at + 8]!,
          timer: rows[at + 9]!,
          timerRetransmits: rows[at + 10]!,
          timerExpiresMs: rows[at + 11]!,
          mark: rows[at + 13] ? rows[at + 12]! : null,
          info,
        }
      : {
          family: rows[at] === 6 ? 6 : 4,
          src: addr(rows[at + 1]!),
          srcPort: rows[at + 2]!,
          dst: addr(rows[at + 3]!),
          dstPort: rows[at + 4]!,
          state: tcpStateName(rows[at + 5]!),
          inode: rows[at + 6]!,
          uid: rows[at + 7]!,
          ifindex: rows[at + 8]!,
          timer: rows[at + 9]!,
          timerRetransmits: rows[at + 10]!,
          timerExpiresMs: rows[at + 11]!,
          mark: rows[at + 13] ? rows[at + 12]! : null,
        };
  };
}

async function decodeDump(
  raw: NativeSockDiagResult,
  withInfo: boolean,
  signal?: AbortSignal,
): Promise<TcpSocketEntry[]> {
  const { count } = raw;
  const decode = entryDecoder(raw, withInfo);
  const out: TcpSocketEntry[] = new Array<TcpSocketEntry>(count);
  let sliceStart = performance.now();
  for (let i = 0; i < count; i++) {
    if ((i & (CLOCK_EVERY - 1)) === CLOCK_EVERY - 1 && performance.now() - sliceStart > SLICE_BUDGET_MS) {
      await yieldToLoop();
      if (signal?.aborted) throw abortError(signal);
      sliceStart = performance.now();
    }
    out[i] = decode(i);
  }
  return out;
}
