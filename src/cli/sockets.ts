// `ipdeadgate sockets [--json] [--min-retrans N]`: TCP sockets as dead gateway detection sees them —
// state, peer, the gateway the kernel routes the peer through, and the retransmission counters that
// trigger detection (a socket whose current segment was retransmitted `retransmit_threshold` times in
// a row, behind a gateway, makes that gateway suspect).
//
// Sockets come from one sock_diag dump with tcp_info (src/sys/sockdiag.ts); the gateway from an
// rtnetlink route lookup per distinct (destination, source, bound interface), as the kernel would
// route it now (src/sys/rtnl.ts).
import type { Command } from 'commander';
import { dumpTcpSockets, type TcpSocketEntry } from '../sys/sockdiag';
import { openRtnl } from '../sys/rtnl';
import { action, intOption, printJson, formatTable } from './common';

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

/** Route lookup used by buildSocketRows: (dst, src or null, bound ifindex or 0). */
export type RouteLookupFn = (dst: string, src: string | null, ifindex: number) => Promise<RouteChoice>;

const TIMER_NAMES: readonly (string | null)[] = [
  null,
  'retransmit',
  'keepalive',
  'time-wait',
  'zero-window-probe',
];

export function endpoint(family: 4 | 6, addr: string, port: number): string {
  return family === 6 ? `[${addr}]:${port}` : `${addr}:${port}`;
}

/** Consecutive retransmissions of the socket's current segment. */
export function consecutiveRetransmits(e: TcpSocketEntry): number {
  return e.info?.retransmits ?? (e.timer === 1 ? e.timerRetransmits : 0);
}

const UNSPECIFIED = new Set(['0.0.0.0', '::']);

/**
 * Rows for `sockets`: sockets with at least `minRetrans` consecutive retransmissions, each with
 * its route; one lookup per distinct (dst, src, ifindex). Most retransmissions first.
 */
export async function buildSocketRows(
  entries: TcpSocketEntry[],
  lookup: RouteLookupFn,
  minRetrans = 0,
): Promise<SocketRow[]> {
  const chosen = entries.filter((e) => consecutiveRetransmits(e) >= minRetrans);
  // One lookup at a time: an rtnetlink socket serves one request (and its link dump) at a time.
  const routes = new Map<string, RouteChoice | Error>();
  const keyOf = (e: TcpSocketEntry): string => `${e.dst}|${UNSPECIFIED.has(e.src) ? '' : e.src}|${e.ifindex}`;
  for (const e of chosen) {
    const key = keyOf(e);
    if (routes.has(key)) continue;
    try {
      routes.set(key, await lookup(e.dst, UNSPECIFIED.has(e.src) ? null : e.src, e.ifindex));
    } catch (err) {
      routes.set(key, err instanceof Error ? err : new Error(String(err)));
    }
  }
  const rows = chosen.map((e): SocketRow => {
    const route = routes.get(keyOf(e))!;
    const info = e.info;
    return {
      family: e.family,
      src: endpoint(e.family, e.src, e.srcPort),
      dst: endpoint(e.family, e.dst, e.dstPort),
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

/** An aligned text table. */
export function formatSocketTable(rows: SocketRow[]): string {
  if (rows.length === 0) return 'no TCP sockets\n';
  const header = ['STATE', 'SRC', 'DST', 'GATEWAY', 'IFACE', 'RETRANS', 'TOTAL', 'RTO_MS', 'RTT_MS', 'TIMER'];
  const num = (n: number | null): string => (n === null ? '-' : String(Math.round(n * 1000) / 1000));
  const lines = [
    header,
    ...rows.map((r) => [
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
    ]),
  ];
  return formatTable(lines);
}

export function registerSockets(program: Command): void {
  program
    .command('sockets')
    .description(
      'TCP sockets as dead gateway detection sees them: state, peer, the gateway the kernel routes ' +
        'the peer through (none for a directly connected peer), and retransmission counters',
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
        const entries = await dumpTcpSockets({ info: true });
        const rtnl = await openRtnl();
        let rows: SocketRow[];
        try {
          rows = await buildSocketRows(
            entries,
            async (dst, src, ifindex) => {
              const r = await rtnl.lookupRoute(dst, {
                ...(src ? { src } : {}),
                ...(ifindex ? { oif: ifindex } : {}),
              });
              return { gateway: r.gateway, ifname: r.ifname };
            },
            minRetrans,
          );
        } finally {
          rtnl.close();
        }
        if (opts.json) printJson(rows);
        else process.stdout.write(formatSocketTable(rows));
      }),
    );
}
