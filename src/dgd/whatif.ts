// What would move if a gateway died now: the route keeper's own plan (./routeplan.ts
// planWithdrawal, the function a real withdrawal runs) over the tables as they are, without
// applying it. The strings are the ones a real `routes_withdrawn` event carries, so a what-if can
// be compared with what a death then does. No I/O here (src/cli/whatif.ts reads the tables).
import { parseCidr, parseIp } from '../sys/ipaddr';
import { ownerOfProtocol } from './owners';
import type { GroupJournalEntry, JournalEntry, KernelNexthopObject, KernelRoute } from './ports';
import {
  describeGroup,
  describeRoute,
  gatewayKey,
  gatewaysOf,
  planWithdrawal,
  reducedRoute,
  routeIdentity,
} from './routeplan';

export interface WhatIfInput {
  /** The gateway's address (normalized) and each interface index it is a next hop on. */
  address: string;
  ifindexes: number[];
  ifname(ifindex: number): string;
  routes: readonly KernelRoute[];
  objects: ReadonlyMap<number, KernelNexthopObject>;
  journal: readonly JournalEntry[];
  groupJournal: readonly GroupJournalEntry[];
  /** Gateway keys the daemon already holds dead. */
  deadKeys: readonly string[];
  keepLastRoute: boolean;
  /** Routing daemons configured in dgd.owners (frr, bird). */
  ownersConfigured: readonly string[];
}

export interface WhatIfRouteChange {
  route: string;
  op: 'delete' | 'replace';
  /** What it becomes (a multipath route loses the member), null when deleted. */
  to: string | null;
  /** Routes to the same destination that would carry its traffic instead (same table). */
  instead: string[];
}

export interface WhatIfPlan {
  gateway: string;
  interfaces: string[];
  /** Exactly the strings a real routes_withdrawn event would list (routes, then groups `a -> b`). */
  withdrawn: string[];
  routes: WhatIfRouteChange[];
  groups: { group: string; to: string }[];
  /** Groups every member of which would be dead: journaled, their routes withdrawn instead. */
  emptied_groups: string[];
  /** keep_last_route: the last route to a destination stays through the dead gateway. */
  kept: string[];
  /** Routes of a routing daemon configured in dgd.owners: it would be told instead. */
  handed_over: { owner: string; routes: string[] }[];
  /** Routes of a routing daemon that is not configured: withdrawn in the kernel, and it may put them back. */
  unconfigured_owner_routes: { owner: string; routes: string[] }[];
  /** Loud sentences for whoever reads it: why nothing (or not everything) would move. */
  warnings: string[];
}

/** The plan for `address` on each interface it is a next hop on (each is its own gateway). */
export function planWhatIf(input: WhatIfInput): WhatIfPlan {
  const out: WhatIfPlan = {
    gateway: input.address,
    interfaces: input.ifindexes.map((i) => input.ifname(i)),
    withdrawn: [],
    routes: [],
    groups: [],
    emptied_groups: [],
    kept: [],
    handed_over: [],
    unconfigured_owner_routes: [],
    warnings: [],
  };
  const configured = new Set(input.ownersConfigured);
  const daemonOf = (r: { protocol?: number }): string | null => {
    const o = ownerOfProtocol(r.protocol ?? null);
    return o === 'frr' || o === 'bird' ? o : null;
  };
  const handedOver = (r: { protocol?: number }) => {
    const o = daemonOf(r);
    return o !== null && configured.has(o);
  };
  let routes = [...input.routes];
  let objects = new Map(input.objects);
  const journal = new Map(input.journal.map((e) => [e.key, e]));
  const groupJournal = new Map(input.groupJournal.map((e) => [e.id, e]));
  const dead = new Set(input.deadKeys);
  for (const ifindex of input.ifindexes) {
    const key = gatewayKey(input.address, ifindex);
    dead.add(key);
    const plan = planWithdrawal({
      gateway: key,
      routes,
      objects,
      journal,
      groupJournal,
      deadKeys: dead,
      keepLastRoute: input.keepLastRoute,
      keptRoutes: new Set(),
      handedOver,
      mayWithdrawAgain: () => true,
      at: new Date(0).toISOString(),
      bootId: null,
    });
    const owned = new Map<string, string[]>();
    const unconfigured = new Map<string, string[]>();
    for (const r of routes) {
      if (!gatewaysOf(r).includes(key)) continue;
      const o = daemonOf(r);
      if (!o) continue;
      const m = configured.has(o) ? owned : unconfigured;
      m.set(o, [...(m.get(o) ?? []), describeRoute(r)]);
    }
    for (const [owner, rs] of owned) out.handed_over.push({ owner, routes: rs });
    for (const [owner, rs] of unconfigured) out.unconfigured_owner_routes.push({ owner, routes: rs });
    for (const e of plan.emptied) out.emptied_groups.push(describeGroup(e.original));
    for (const p of plan.groups) {
      out.groups.push({ group: describeGroup(p.entry.original), to: describeGroup(p.to) });
    }
    const after = new Map<string, KernelRoute | null>();
    for (const p of plan.routes) after.set(routeIdentity(p.from), p.to);
    for (const p of plan.routes) {
      const instead = routes
        .filter(
          (r) =>
            r !== p.from && r.family === p.from.family && r.table === p.from.table && r.dst === p.from.dst,
        )
        .map((r) => (after.has(routeIdentity(r)) ? after.get(routeIdentity(r))! : reducedRoute(r, dead)))
        .filter((r): r is KernelRoute => r !== null)
        .sort((a, b) => a.metric - b.metric)
        .map(describeRoute);
      out.routes.push({
        route: describeRoute(p.from),
        op: p.to === null ? 'delete' : 'replace',
        to: p.to === null ? null : describeRoute(p.to),
        instead: p.to === null ? instead : [describeRoute(p.to), ...instead],
      });
    }
    for (const r of plan.kept) out.kept.push(describeRoute(r));
    // The way the real withdrawal reports them: groups first, then routes (routekeeper.ts).
    out.withdrawn.push(
      ...plan.groups.map((p) => `${describeGroup(p.entry.original)} -> ${describeGroup(p.to)}`),
      ...plan.routes.map((p) => describeRoute(p.from)),
    );
    // The next interface's plan starts from this one's result, as a second death would.
    for (const p of plan.routes) journal.set(p.entry.key, p.entry);
    for (const p of plan.groups) groupJournal.set(p.entry.id, p.entry);
    routes = routes
      .map((r) => {
        const p = plan.routes.find((q) => q.from === r);
        return p ? p.to : r;
      })
      .filter((r): r is KernelRoute => r !== null);
    objects = new Map(objects);
    for (const p of plan.groups) objects.set(p.to.id, p.to);
  }
  if (out.kept.length > 0)
    out.warnings.push(
      `NOTHING WOULD MOVE for ${out.kept.length} route(s): each is the last route to its destination and keep_last_route is on, so it stays through the dead gateway: ${out.kept.join('; ')}`,
    );
  for (const u of out.unconfigured_owner_routes)
    out.warnings.push(
      `${u.routes.length} route(s) belong to ${u.owner}, which is not configured in dgd.owners: ipdeadgate would delete them in the kernel and ${u.owner} is likely to put them back (a route fight, bounded); configure dgd.owners.${u.owner} so that ${u.owner} is told instead`,
    );
  if (out.withdrawn.length === 0 && out.handed_over.length === 0 && out.kept.length === 0)
    out.warnings.push(
      `NOTHING WOULD MOVE: no route in the managed tables goes through ${input.address}${out.interfaces.length ? '' : ' (it is no next hop of any route)'}`,
    );
  else if (out.withdrawn.length === 0 && out.handed_over.length === 0)
    out.warnings.push(
      'NOTHING WOULD MOVE: no route would change in the kernel and no routing daemon would be told',
    );
  return out;
}

/** Does the route destination ("198.18.2.0/24", "default") contain the address? */
export function prefixContains(routeDst: string, address: string): boolean {
  try {
    const ip = parseIp(address, 'address');
    if (routeDst === 'default') return true;
    const net = parseCidr(routeDst, 'route');
    if (net.family !== ip.family) return false;
    for (let bit = 0; bit < net.prefix; bit++) {
      const mask = 0x80 >> (bit % 8);
      if ((net.bytes[bit >> 3]! & mask) !== (ip.bytes[bit >> 3]! & mask)) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/**
 * Where a flow to `dst` whose route lookup chose the gateway (`key`, in `table`) would go: the most
 * specific route of that table through the gateway that holds dst, and what the plan does to it.
 */
export function whereFlowGoes(
  plan: WhatIfPlan,
  routes: readonly KernelRoute[],
  objects: ReadonlyMap<number, KernelNexthopObject>,
  key: string,
  dst: string,
  table: number,
): { route: string; to: string } {
  const through = (r: KernelRoute) =>
    gatewaysOf(r).includes(key) ||
    (r.nhid !== undefined &&
      (objects.get(r.nhid)?.group ?? []).some((m) => {
        const o = objects.get(m.id);
        return !!o?.gateway && o.ifindex !== null && gatewayKey(o.gateway, o.ifindex) === key;
      }));
  const bits = (r: KernelRoute) => (r.dst === 'default' ? 0 : Number(r.dst.split('/')[1] ?? 128));
  const c = routes
    .filter((r) => r.table === table && prefixContains(r.dst, dst) && through(r))
    .sort((a, b) => bits(b) - bits(a) || a.metric - b.metric)[0];
  if (!c)
    return { route: `${dst} table ${table}`, to: 'unchanged (no route of the managed tables through it)' };
  const route = describeRoute(c);
  const change = plan.routes.find((x) => x.route === route);
  if (change)
    return {
      route,
      to: change.instead[0] ? `by ${change.instead[0]}` : 'nowhere: no other route to it (unreachable)',
    };
  const group =
    c.nhid === undefined ? undefined : plan.groups.find((g) => g.group.startsWith(`nexthop id ${c.nhid} `));
  if (group) return { route, to: `by the group's other members (${group.to})` };
  if (plan.kept.includes(route))
    return { route, to: 'nowhere: kept through the dead gateway (keep_last_route)' };
  const owner = plan.handed_over.find((h) => h.routes.includes(route));
  if (owner) return { route, to: `wherever ${owner.owner} routes it once told` };
  return { route, to: 'unchanged' };
}
