// Pure route planning: which routes go through a gateway, what a route looks like with some of its
// gateways withdrawn, and which kernel operation turns one state into another. No I/O here.
import { protocolName } from '../sys/rtnl';
import type {
  GroupJournalEntry,
  JournalEntry,
  KernelNexthop,
  KernelNexthopObject,
  KernelRoute,
} from './ports';

/** include/uapi/linux/rtnetlink.h: the gateway is on-link even if no prefix says so. */
const RTNH_F_ONLINK = 4;

/** A gateway's identity: the address and the interface (IPv6 link-local gateways repeat across links). */
export function gatewayKey(address: string, ifindex: number): string {
  return `${address.toLowerCase()}%${ifindex}`;
}

function nexthopKey(nh: KernelNexthop): string | null {
  return nh.gateway ? gatewayKey(nh.gateway, nh.ifindex) : null;
}

/** The gateway keys a route uses (one for a single-path route, one per nexthop for multipath). */
export function gatewaysOf(route: KernelRoute): string[] {
  if (route.nexthops && route.nexthops.length > 0)
    return route.nexthops.map(nexthopKey).filter((k): k is string => k !== null);
  return route.gateway && route.ifindex !== null ? [gatewayKey(route.gateway, route.ifindex)] : [];
}

/**
 * A route's identity in the kernel FIB: family, table, destination, TOS and metric; single-path
 * routes add their gateway (IPv4 `ip route append` allows several that differ only in gateway).
 */
export function routeIdentity(route: KernelRoute): string {
  const base = `${route.family}|${route.table}|${route.dst}|${route.tos}|${route.metric}`;
  if (route.nexthops && route.nexthops.length > 0) return `${base}|multipath`;
  return `${base}|${route.gateway ?? '-'}|${route.ifindex ?? '-'}`;
}

/** The route as it should be with `removed` gateways withdrawn; null when nothing of it remains. */
export function reducedRoute(original: KernelRoute, removed: ReadonlySet<string>): KernelRoute | null {
  if (original.nexthops && original.nexthops.length > 0) {
    const keep = original.nexthops.filter((nh) => {
      const k = nexthopKey(nh);
      return k === null || !removed.has(k);
    });
    if (keep.length === 0) return null;
    if (keep.length === original.nexthops.length) return original;
    if (keep.length === 1) {
      // The kernel reports a multipath route with one nexthop left as a single-path route.
      const nh = keep[0]!;
      // The nexthop's own flags (RTNH_F_ONLINK) become the route's flags (rtnetlink.h).
      const flags = ((original as { flags?: number }).flags ?? 0) | ((nh.flags ?? 0) & RTNH_F_ONLINK);
      return {
        ...original,
        nexthops: null,
        gateway: nh.gateway,
        ifindex: nh.ifindex,
        ifname: nh.ifname ?? null,
        flags,
      } as KernelRoute;
    }
    return { ...original, nexthops: keep };
  }
  const k = gatewaysOf(original)[0];
  return k !== undefined && removed.has(k) ? null : original;
}

export type RouteOp =
  | { op: 'add'; route: KernelRoute }
  | { op: 'replace'; route: KernelRoute }
  | { op: 'delete'; route: KernelRoute };

/** The kernel operation that turns `from` into `to` (null = absent); null when nothing changes. */
export function transition(from: KernelRoute | null, to: KernelRoute | null): RouteOp | null {
  if (from === to) return null;
  if (from && !to) return { op: 'delete', route: from };
  if (!from && to) return { op: 'add', route: to };
  if (from && to) {
    if (routeIdentity(from) === routeIdentity(to) && sameNexthops(from, to)) return null;
    return { op: 'replace', route: to };
  }
  return null;
}

function sameNexthops(a: KernelRoute, b: KernelRoute): boolean {
  const hops = (r: KernelRoute) => (r.nexthops ?? []).map((n) => `${nexthopKey(n)}/${n.weight}`).join(',');
  return hops(a) === hops(b) && a.gateway === b.gateway;
}

/** The kernel state a journal entry stands for. */
export function targetOf(entry: JournalEntry): KernelRoute | null {
  return reducedRoute(entry.original, new Set(entry.removed));
}

/**
 * Destination identity for keep_last_route: family, table and prefix. Each table is its own FIB
 * (policy routing picks the table first), so "the last route" is counted per table.
 */
export function destinationOf(route: KernelRoute): string {
  return `${route.family}|${route.table}|${route.dst}`;
}

/** "address%ifindex" back into its parts. */
export function splitKey(key: string): [string, number] {
  const i = key.lastIndexOf('%');
  return [key.slice(0, i), Number(key.slice(i + 1))];
}

/** The key a nexthop group is journaled and bounded under. */
export function groupKey(id: number): string {
  return `nexthop-group|${id}`;
}

/** Each member of group `nh` (by id) with the gateway key of its object; null for a gatewayless one. */
export function memberKeys(
  nh: KernelNexthopObject,
  objects: ReadonlyMap<number, KernelNexthopObject>,
): Record<string, string | null> {
  const out: Record<string, string | null> = {};
  for (const m of nh.group ?? []) {
    const o = objects.get(m.id);
    out[String(m.id)] = o?.gateway && o.ifindex !== null ? gatewayKey(o.gateway, o.ifindex) : null;
  }
  return out;
}

/**
 * The group as it should be with the entry's dead gateways taken out, weights and order kept;
 * null when no member would remain (the kernel has no empty groups).
 */
export function groupTarget(entry: GroupJournalEntry): KernelNexthopObject | null {
  const removed = new Set(entry.removed);
  const keep = (entry.original.group ?? []).filter((m) => {
    const k = entry.members[String(m.id)];
    return !k || !removed.has(k);
  });
  if (keep.length === 0) return null;
  return { ...entry.original, group: keep };
}

/** `nexthop id 10 group 1,3/2`, as `ip nexthop` prints it. */
export function describeGroup(nh: KernelNexthopObject): string {
  const members = (nh.group ?? []).map((m) => (m.weight === 1 ? `${m.id}` : `${m.id},${m.weight}`));
  return `nexthop id ${nh.id} group ${members.join('/')}`;
}

/** A route for events and messages: `dst [nhid N] via GW | nexthop via GW weight W ... table T metric M [proto P]`. */
export function describeRoute(r: KernelRoute): string {
  const via = r.nexthops
    ? r.nexthops.map((n) => `nexthop via ${n.gateway} weight ${n.weight}`).join(' ')
    : `via ${r.gateway}`;
  const nh = r.nhid === undefined ? '' : ` nhid ${r.nhid}`;
  const proto = r.protocol === undefined ? '' : ` proto ${protocolName(r.protocol)}`;
  return `${r.dst}${nh} ${via} table ${r.table} metric ${r.metric}${proto}`;
}

/** What planWithdrawal() decides from. */
export interface WithdrawalInput {
  /** The dead gateway's key. */
  gateway: string;
  routes: readonly KernelRoute[];
  objects: ReadonlyMap<number, KernelNexthopObject>;
  journal: ReadonlyMap<string, JournalEntry>;
  groupJournal: ReadonlyMap<number, GroupJournalEntry>;
  /** Every dead gateway's key (g's included): keep_last_route counts only routes that still work. */
  deadKeys: ReadonlySet<string>;
  keepLastRoute: boolean;
  /** Routes (identity) already left in place by keep_last_route. */
  keptRoutes: ReadonlySet<string>;
  /** A routing daemon configured in dgd.owners owns it: the daemon is told instead. */
  handedOver(r: { protocol?: number }): boolean;
  /** Its owner put it back through the dead gateway: may it be withdrawn again (the fight bound)? */
  mayWithdrawAgain(key: string, what: string, protocol: number | undefined): boolean;
  /** Stamps for new journal entries. */
  at: string;
  bootId: string | null;
}

/** What withdrawing a gateway's routes takes: journal entries first, then the kernel operations. */
export interface WithdrawalPlan {
  /** Groups that lose g as a member (`ip nexthop replace`, weights kept). */
  groups: { entry: GroupJournalEntry; to: KernelNexthopObject }[];
  /** Groups all of whose members are dead: journaled, left in the kernel; their routes go instead. */
  emptied: GroupJournalEntry[];
  /** Routes through g and what each becomes (null: deleted). */
  routes: { entry: JournalEntry; from: KernelRoute; to: KernelRoute | null }[];
  /** Routes left through g by keep_last_route (the last route to their destination). */
  kept: KernelRoute[];
  /** Routes and groups their owner had put back through g. */
  readded: { what: string; protocol: number | undefined }[];
}

/**
 * Plan the withdrawal of every route through a dead gateway. Nexthop groups first: a group through
 * it loses that member; its routes follow the group. A group whose every member is dead cannot be
 * emptied (the kernel has no empty groups): its routes are withdrawn instead, and come back when a
 * member revives. Then each route through it, single-path deleted, multipath reduced; routes of a
 * routing daemon in dgd.owners are left to the daemon; keep_last_route keeps the last route to a
 * destination.
 */
export function planWithdrawal(input: WithdrawalInput): WithdrawalPlan {
  const g = input.gateway;
  const plan: WithdrawalPlan = { groups: [], emptied: [], routes: [], kept: [], readded: [] };
  const emptied = new Set<number>();
  for (const nh of input.objects.values()) {
    if (!nh.group || input.handedOver(nh)) continue;
    const members = memberKeys(nh, input.objects);
    if (!Object.values(members).includes(g)) continue;
    const existing = input.groupJournal.get(nh.id);
    let entry: GroupJournalEntry;
    if (existing?.removed.includes(g)) {
      // The group has g again: its owner put the member back.
      if (!input.mayWithdrawAgain(groupKey(nh.id), describeGroup(nh), nh.protocol)) continue;
      plan.readded.push({ what: describeGroup(nh), protocol: nh.protocol });
      entry = { ...existing, original: nh, members };
    } else if (existing) {
      entry = {
        ...existing,
        members: { ...existing.members, ...members },
        removed: [...existing.removed, g],
      };
    } else {
      entry = { id: nh.id, original: nh, members, removed: [g], at: input.at, boot_id: input.bootId };
    }
    const to = groupTarget(entry);
    if (to === null) {
      emptied.add(nh.id);
      plan.emptied.push(entry);
      continue;
    }
    plan.groups.push({ entry, to });
  }
  const candidates: WithdrawalPlan['routes'] = [];
  for (const r of input.routes) {
    if (!gatewaysOf(r).includes(g) || input.handedOver(r)) continue;
    if (r.nhid !== undefined && input.objects.get(r.nhid)?.group && !emptied.has(r.nhid)) continue;
    const id = routeIdentity(r);
    // A route we changed earlier shows up reduced: its journal entry holds the original.
    const existing = [...input.journal.values()].find((e) => routeIdentity(targetOf(e) ?? e.original) === id);
    let entry: JournalEntry;
    if (existing?.removed.includes(g)) {
      // Back through a dead gateway: someone (DHCP, a network manager, ip route add) put it back.
      // Journaled once: the entry now holds what its owner last installed.
      if (input.keptRoutes.has(id)) continue;
      if (!input.mayWithdrawAgain(id, describeRoute(r), r.protocol)) continue;
      plan.readded.push({ what: describeRoute(r), protocol: r.protocol });
      entry = { ...existing, original: r };
    } else if (existing) {
      entry = { ...existing, removed: [...existing.removed, g] };
    } else {
      entry = { key: id, original: r, removed: [g], at: input.at, boot_id: input.bootId };
    }
    const to = r.nhid !== undefined && emptied.has(r.nhid) ? null : targetOf(entry);
    candidates.push({ entry, from: r, to });
  }
  // keep_last_route: never take away the last route to a destination.
  plan.routes = candidates.filter((p) => {
    if (p.to !== null || !input.keepLastRoute) return true;
    const dest = destinationOf(p.from);
    const others = input.routes.filter((r) => {
      if (destinationOf(r) !== dest || r === p.from) return false;
      const planned = candidates.find((q) => q.from === r);
      if (planned && planned.to === null) return false;
      return reducedRoute(r, input.deadKeys) !== null || gatewaysOf(r).length === 0;
    });
    if (others.length > 0) return true;
    plan.kept.push(p.from);
    return false;
  });
  return plan;
}
