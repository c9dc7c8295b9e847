// `ipdeadgate routes [--json]`: the routes that go through a gateway, as dead gateway detection
// sees them. Every table except local; multipath routes with their nexthops and weights.
//
// Rows are built by buildRouteRows(kernelRoutes, withdrawnRoutes): today the command passes only
// the kernel's routes (all "active"); a running daemon passes its journal of withdrawn routes too,
// which appear with state "withdrawn".
import type { Command } from 'commander';
import { openRtnl, protocolName, routeKey, tableName, type Route } from '../sys/rtnl';
import { action, printJson } from './common';

export type RouteState = 'active' | 'withdrawn';

export interface RouteNexthopRow {
  gateway: string | null;
  interface: string;
  weight: number;
}

/** One line of `routes --json` (snake_case keys, like every --json output). */
export interface RouteRow {
  family: 4 | 6;
  dst: string;
  /** main, local, default, or the table number, as iproute2 names it. */
  table: string;
  metric: number;
  gateway: string | null;
  interface: string | null;
  /** boot, static, kernel, dhcp, ..., or the number. */
  protocol: string;
  nexthops: RouteNexthopRow[] | null;
  state: RouteState;
}

const RT_TABLE_LOCAL = 255;

/** A route that sends traffic to a gateway: a `via`, or a multipath nexthop with one. */
export function hasGateway(r: Route): boolean {
  return r.gateway !== null || (r.nexthops ?? []).some((h) => h.gateway !== null);
}

function toRow(r: Route, state: RouteState, nexthops = r.nexthops): RouteRow {
  return {
    family: r.family,
    dst: r.dst,
    table: tableName(r.table),
    metric: r.metric,
    gateway: nexthops && nexthops.length ? null : r.gateway,
    interface: nexthops && nexthops.length ? null : r.ifname,
    protocol: protocolName(r.protocol),
    nexthops:
      nexthops && nexthops.length
        ? nexthops.map((h) => ({ gateway: h.gateway, interface: h.ifname, weight: h.weight }))
        : null,
    state,
  };
}

/**
 * The rows `routes` prints: the kernel's gateway routes (every table but local) as "active", then
 * each withdrawn route as "withdrawn". A withdrawn route whose destination is still in the kernel
 * (one nexthop of a multipath route withdrawn, the others left) shows only the nexthops the kernel
 * no longer has.
 */
export function buildRouteRows(kernel: Route[], withdrawn: Route[] = []): RouteRow[] {
  const shown = kernel.filter((r) => r.table !== RT_TABLE_LOCAL && hasGateway(r));
  const rows = shown.map((r) => toRow(r, 'active'));
  const live = new Map(kernel.map((r) => [routeKey(r), r]));
  for (const w of withdrawn) {
    const still = live.get(routeKey(w));
    if (still && w.nexthops) {
      const present = new Set(
        (still.nexthops ?? [{ gateway: still.gateway, ifindex: still.ifindex }]).map(
          (h) => `${h.gateway}@${h.ifindex}`,
        ),
      );
      const gone = w.nexthops.filter((h) => !present.has(`${h.gateway}@${h.ifindex}`));
      if (gone.length) rows.push(toRow(w, 'withdrawn', gone));
    } else rows.push(toRow(w, 'withdrawn'));
  }
  return rows;
}

/** An aligned text table; a multipath route takes one line per nexthop. */
export function formatRouteTable(rows: RouteRow[]): string {
  if (rows.length === 0) return 'no routes through a gateway\n';
  const header = ['DST', 'TABLE', 'METRIC', 'GATEWAY', 'INTERFACE', 'PROTOCOL', 'WEIGHT', 'STATE'];
  const lines: string[][] = [header];
  for (const r of rows) {
    const base = [r.dst, r.table, String(r.metric)];
    if (!r.nexthops) {
      lines.push([...base, r.gateway ?? '-', r.interface ?? '-', r.protocol, '', r.state]);
      continue;
    }
    r.nexthops.forEach((h, i) => {
      const lead = i === 0 ? base : ['', '', ''];
      lines.push([
        ...lead,
        h.gateway ?? '-',
        h.interface,
        i === 0 ? r.protocol : '',
        String(h.weight),
        i === 0 ? r.state : '',
      ]);
    });
  }
  const widths = header.map((_, c) => Math.max(...lines.map((l) => l[c]!.length)));
  return (
    lines
      .map((l) =>
        l
          .map((cell, c) => (c === l.length - 1 ? cell : cell.padEnd(widths[c]!)))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

export function registerRoutes(program: Command): void {
  program
    .command('routes')
    .description(
      'routes through a gateway, in every table but local: table, metric, interface, protocol, nexthops with weights',
    )
    .option('--json', 'print JSON: [{ dst, table, metric, gateway, interface, protocol, nexthops, state }]')
    .allowExcessArguments(false)
    .action(
      action(async (opts: { json?: boolean }) => {
        const rtnl = await openRtnl();
        let rows: RouteRow[];
        try {
          rows = buildRouteRows(await rtnl.listRoutes());
        } finally {
          rtnl.close();
        }
        if (opts.json) printJson(rows);
        else process.stdout.write(formatRouteTable(rows));
      }),
    );
}
