// `ipdeadgate sockets [--json] [--min-retrans N]`: TCP sockets as dead gateway detection sees them —
// state, peer, the gateway the kernel routes the peer through, and the retransmission counters that
// trigger detection (a socket whose current segment was retransmitted `retransmit_threshold` times in
// a row, behind a gateway, makes that gateway suspect).
//
// Sockets come from sock_diag dumps with tcp_info (src/sys/sockdiag.ts); the gateway from an
// rtnetlink route lookup per distinct lookup key (addresses, protocol, ports, mark, uid, bound
// interface: src/dgd/flowkey.ts), as the kernel would route that socket now (src/sys/rtnl/): with
// an ECMP L4 hash or policy rules two sockets to one destination may leave by different gateways.
//
// Output is streamed, so 100 000 sockets never sit in memory as objects at once: first the sockets
// whose retransmit timer is pending with retransmissions (a dump filtered on the worker thread, so
// few), most retransmissions first; then, without --min-retrans, every other socket a page at a
// time in the kernel's order.
import type { Command } from 'commander';
import { dumpTcpSocketPages, dumpTcpSockets, type TcpSocketEntry } from '../sys/sockdiag';
import { formatEndpoint } from '../sys/ipaddr';
import { openRtnl, type FlowKey } from '../sys/rtnl';
import { lookupCacheKey, socketFlowKey } from '../dgd/flowkey';
import { action, intOption, formatTable } from './common';

/** One line of `sockets --json` (snake_case keys, like every --json output). */
export interface SocketRow {
  family: 4 | 6;
  /** "addr:port", IPv6 as "[addr]:port". */
  src: string;
  dst: string;
  state: string;
  /** The first hop the kernel routes dst through; null for a directly connected (or local) peer. */
  gateway: string | null;
  interface: string | null;
  /** Consecutive retransmissions of the current segment (SYNs included): what detection counts. */
  retransmits: number;
  total_retrans: number;
  rto_ms: number | null;
  rtt_ms: number | null;
  backoff: number | null;
  /** Segments sent and not yet acknowledged. */
  unacked: number | null;
  /** Milliseconds since the last ACK from the peer. */
  last_ack_ms: number | null;
  /** Pending timer: retransmit, keepalive, time-wait, zero-window-probe, or null. */
  timer: string | null;
  timer_expires_ms: number | null;
  uid: number;
  inode: number;
  /** Why the gateway is unknown, when the route lookup failed (e.g. no route any more). */
  route_error: string | null;
}

export interface RouteChoice {
  gateway: string | null;
  ifname: string | null;
}

/** Route lookup used by buildSocketRows: (dst, src or null, the socket's lookup key). */
export type RouteLookupFn = (dst: string, src: string | null, key: FlowKey) => Promise<RouteChoice>;

const TIMER_NAMES: readonly (string | null)[] = [
  null,
  'retransmit',
  'keepalive',
  'time-wait',
  'zero-window-probe',
];

/** Consecutive retransmissions of the socket's current segment. */
export function consecutiveRetransmits(e: TcpSocketEntry): number {
  return e.info?.retransmits ?? (e.timer === 1 ? e.timerRetransmits : 0);
}

const UNSPECIFIED = new Set(['0.0.0.0', '::']);

/**
 * Rows for `sockets`: sockets with at least `minRetrans` consecutive retransmissions, each with
 * its route; one lookup per distinct lookup key. Most retransmissions first.
 */
export async function buildSocketRows(
  entries: TcpSocketEntry[],
  lookup: RouteLookupFn,
  minRetrans = 0,
): Promise<SocketRow[]> {
  const chosen = entries.filter((e) => consecutiveRetransmits(e) >= minRetrans);
  // One lookup at a time: an rtnetlink socket serves one request (and its link dump) at a time.
  const routes = new Map<string, RouteChoice | Error>();
  const srcOf = (e: TcpSocketEntry): string | null => (UNSPECIFIED.has(e.src) ? null : e.src);
  const keyOf = (e: TcpSocketEntry): string => lookupCacheKey(e.dst, srcOf(e), socketFlowKey(e));
  for (const e of chosen) {
    const key = keyOf(e);
    if (routes.has(key)) continue;
    try {
      routes.set(key, await lookup(e.dst, srcOf(e), socketFlowKey(e)));
    } catch (err) {
      routes.set(key, err instanceof Error ? err : new Error(String(err)));
    }
  }
  const rows = chosen.map((e): SocketRow => {
    const route = routes.get(keyOf(e))!;
    const info = e.info;
    return {
      family: e.family,
      src: formatEndpoint(e.src, e.srcPort),
      dst: formatEndpoint(e.dst, e.dstPort),
      state: e.state,
      gateway: route instanceof Error ? null : route.gateway,
      interface: route instanceof Error ? null : route.ifname,
      retransmits: consecutiveRetransmits(e),
      total_retrans: info?.totalRetrans ?? 0,
      rto_ms: info ? info.rtoMs : null,
      rtt_ms: info ? info.rttMs : null,
      backoff: info ? info.backoff : null,
      unacked: info ? info.unacked : null,
      last_ack_ms: info ? info.lastAckRecvMs : null,
      // idiag_timer 0 is "no timer pending": no name and no expiry (not "timer-0(nullms)").
      timer: e.timer === 0 ? null : (TIMER_NAMES[e.timer] ?? `timer-${e.timer}`),
      timer_expires_ms: e.timer === 0 ? null : e.timerExpiresMs,
      uid: e.uid,
      inode: e.inode,
      route_error: route instanceof Error ? route.message : null,
    };
  });
  return rows.sort((a, b) => b.retransmits - a.retransmits || b.total_retrans - a.total_retrans);
}

const TABLE_HEADER = [
  'STATE',
  'SRC',
  'DST',
  'GATEWAY',
  'IFACE',
  'RETRANS',
  'TOTAL',
  'RTO_MS',
  'RTT_MS',
  'TIMER',
];

function tableCells(r: SocketRow): string[] {
  const num = (n: number | null): string => (n === null ? '-' : String(Math.round(n * 1000) / 1000));
  return [
    r.state,
    r.src,
    r.dst,
    r.gateway ?? (r.route_error ? '?' : '-'),
    r.interface ?? '-',
    String(r.retransmits),
    String(r.total_retrans),
    num(r.rto_ms),
    num(r.rtt_ms),
    r.timer ? (r.timer_expires_ms === null ? r.timer : `${r.timer}(${r.timer_expires_ms}ms)`) : '-',
  ];
}

/** An aligned text table. */
export function formatSocketTable(rows: SocketRow[]): string {
  if (rows.length === 0) return 'no TCP sockets\n';
  return formatTable([TABLE_HEADER, ...rows.map(tableCells)]);
}

/**
 * Writes rows as they come, as text (a table whose column widths are fixed by the first batch;
 * a longer value later only pushes its own line) or as one JSON array, the same text
 * printJson would give for all rows at once.
 */
export class SocketRowWriter {
  private widths: number[] | null = null;
  private rows = 0;

  constructor(
    private readonly json: boolean,
    private readonly write: (text: string) => void,
  ) {}

  batch(rows: SocketRow[]): void {
    if (rows.length === 0) return;
    if (this.json) {
      const items = rows.map((r) => JSON.stringify(r, null, 2).replace(/^/gm, '  '));
      this.write((this.rows === 0 ? '[\n' : ',\n') + items.join(',\n'));
    } else {
      const cells = rows.map(tableCells);
      if (!this.widths) {
        this.widths = TABLE_HEADER.map((h, c) => Math.max(h.length, ...cells.map((r) => r[c]!.length)));
        this.write(this.line(TABLE_HEADER));
      }
      this.write(cells.map((r) => this.line(r)).join(''));
    }
    this.rows += rows.length;
  }

  end(): void {
    if (this.json) this.write(this.rows === 0 ? '[]\n' : '\n]\n');
    else if (this.rows === 0) this.write('no TCP sockets\n');
  }

  private line(cells: string[]): string {
    const w = this.widths!;
    return (
      cells
        .map((cell, c) => (c === cells.length - 1 ? cell : cell.padEnd(w[c]!)))
        .join('  ')
        .trimEnd() + '\n'
    );
  }
}

/** Sockets printed in the first pass are skipped in the second; a socket is its ends and inode. */
const socketKey = (e: TcpSocketEntry): string => `${e.src}|${e.srcPort}|${e.dst}|${e.dstPort}|${e.inode}`;

/**
 * Stream the rows of `sockets`: first the retransmitting sockets (timer pending, at least
 * max(1, minRetrans) retransmissions; filtered on the worker thread) sorted, then with minRetrans
 * 0 every other socket a page at a time. `first` / `pages` are the two dumps (injectable for tests).
 */
export async function streamSocketRows(
  minRetrans: number,
  lookup: RouteLookupFn,
  writer: SocketRowWriter,
  dumps: {
    first: (minRetransmits: number) => Promise<TcpSocketEntry[]>;
    pages: () => AsyncIterable<TcpSocketEntry[]>;
  } = {
    first: (minRetransmits) => dumpTcpSockets({ info: true, minRetransmits }),
    pages: () => dumpTcpSocketPages({ info: true }),
  },
): Promise<void> {
  // One route per distinct lookup key for the whole run.
  const routes = new Map<string, Promise<RouteChoice>>();
  const cached: RouteLookupFn = (dst, src, flowKey) => {
    const key = lookupCacheKey(dst, src, flowKey);
    let r = routes.get(key);
    if (!r) {
      if (routes.size >= 65_536) routes.clear();
      r = lookup(dst, src, flowKey);
      routes.set(key, r);
    }
    return r;
  };
  const retransmitting = await dumps.first(Math.max(1, minRetrans));
  const printed = new Set(retransmitting.map(socketKey));
  const firstRows = await buildSocketRows(retransmitting, cached, minRetrans);
  if (minRetrans > 0) {
    writer.batch(firstRows);
    return;
  }
  let pending: SocketRow[] | null = firstRows;
  for await (const page of dumps.pages()) {
    const rest = page.filter((e) => !printed.has(socketKey(e)));
    const rows = await buildSocketRows(rest, cached, 0);
    // The table's widths come from the retransmitting sockets and the first page together.
    if (pending) {
      writer.batch([...pending, ...rows]);
      pending = null;
    } else writer.batch(rows);
  }
  if (pending) writer.batch(pending);
}

export function registerSockets(program: Command): void {
  program
    .command('sockets')
    .description(
      'TCP sockets as dead gateway detection sees them: state, peer, the gateway the kernel routes ' +
        'the peer through (none for a directly connected peer), and retransmission counters; ' +
        'retransmitting sockets first (most retransmissions first), then the rest as the kernel lists them',
    )
    .option(
      '--json',
      'print JSON: [{ src, dst, state, gateway, interface, retransmits, total_retrans, rto_ms, rtt_ms, ... }]',
    )
    .option(
      '--min-retrans <n>',
      'only sockets whose current segment was retransmitted at least N times in a row',
      '0',
    )
    .allowExcessArguments(false)
    .action(
      action(async (opts: { json?: boolean; minRetrans: string }) => {
        const minRetrans = intOption('--min-retrans', opts.minRetrans, 0, 255);
        const rtnl = await openRtnl();
        const writer = new SocketRowWriter(opts.json === true, (t) => void process.stdout.write(t));
        try {
          await streamSocketRows(
            minRetrans,
            async (dst, src, key) => {
              const r = await rtnl.lookupRoute(dst, src ? { ...key, src } : key);
              return { gateway: r.gateway, ifname: r.ifname };
            },
            writer,
          );
        } finally {
          rtnl.close();
        }
        writer.end();
      }),
    );
}
