// `ipdeadgate routes [--json]`: the routes that go through a gateway, as dead gateway detection
// sees them. Every table except local; multipath routes with their nexthops and weights.
//
// Rows are built by buildRouteRows(kernelRoutes, withdrawnRoutes): the kernel's routes are
// "active"; the routes a running daemon has withdrawn (its journal, asked for over the control
// socket) are "withdrawn". Without a daemon the command shows the kernel's routes only.
import type { Command } from 'commander';
import { controlRequest } from '../daemon/control';
import { openRtnl, protocolName, routeKey, tableName, type Route } from '../sys/rtnl';
import { DEFAULT_CONTROL, action, printJson, formatTable } from './common';

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
  return formatTable(lines);
}

function isRouteLike(v: unknown): v is Route {
  const r = v as Partial<Route> | null;
  return (
    !!r &&
    typeof r === 'object' &&
    (r.family === 4 || r.family === 6) &&
    typeof r.dst === 'string' &&
    typeof r.table === 'number' &&
    typeof r.metric === 'number'
  );
}

/**
 * The routes the daemon on `controlPath` has withdrawn; [] when no daemon runs there. Any other
 * failure is reported on stderr, and the kernel's routes are shown alone.
 */
export async function withdrawnFromDaemon(controlPath: string): Promise<Route[]> {
  try {
    const result = await controlRequest(controlPath, 'withdrawn', {}, 3000);
    return Array.isArray(result) ? result.filter(isRouteLike) : [];
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') return [];
    process.stderr.write(
      `ipdeadgate: warning: ${(err as Error).message}; showing the kernel's routes only\n`,
    );
    return [];
  }
}

export function registerRoutes(program: Command): void {
  program
    .command('routes')
    .description(
      'routes through a gateway, in every table but local: table, metric, interface, protocol, nexthops ' +
        'with weights; with a daemon running, also the routes it has withdrawn',
    )
    .option('--json', 'print JSON: [{ dst, table, metric, gateway, interface, protocol, nexthops, state }]')
    .option(
      '--control <path>',
      'control socket of the daemon, asked for its withdrawn routes',
      DEFAULT_CONTROL,
    )
    .allowExcessArguments(false)
    .action(
      action(async (opts: { json?: boolean; control: string }) => {
        const rtnl = await openRtnl();
        let kernel: Route[];
        try {
          kernel = await rtnl.listRoutes();
        } finally {
          rtnl.close();
        }
        const rows = buildRouteRows(kernel, await withdrawnFromDaemon(opts.control));
        if (opts.json) printJson(rows);
        else process.stdout.write(formatRouteTable(rows));
      }),
    );
}
