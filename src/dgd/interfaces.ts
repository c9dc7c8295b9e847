// Interfaces come and go under detection: links go down and up, an interface is deleted and
// re-created with the same name and a new ifindex, a reboot hands out ifindexes in another order.
// An ifindex is only a name for an interface while that interface lives; the interface *name* is
// what the operator configured and what survives. So journal entries and gateways are tied to
// names, and their ifindexes are rewritten to whatever index the name has now. Pure functions here;
// the engine applies them.
import type { JournalEntry, KernelRoute } from './ports';
import { gatewayKey, routeIdentity } from './routeplan';

/** What the engine knows of one interface of the namespace (from rtnetlink link messages). */
export interface InterfaceInfo {
  ifindex: number;
  ifname: string;
  /** IFF_UP: administratively up. */
  up: boolean;
}

/** Where a gateway's interface is: 'absent' = no interface of that name in the namespace. */
export type InterfacePresence = 'up' | 'down' | 'absent';

/** The interfaces (name and the ifindex it had when journaled) a route's gateways are on. */
export function routeInterfaces(route: KernelRoute): { ifname: string | null; ifindex: number }[] {
  if (route.nexthops && route.nexthops.length > 0)
    return route.nexthops.map((nh) => ({ ifname: nh.ifname ?? null, ifindex: nh.ifindex }));
  return route.ifindex !== null ? [{ ifname: route.ifname ?? null, ifindex: route.ifindex }] : [];
}

/** True when every interface of the entry has a name (a journal entry without one cannot be placed). */
export function entryHasNames(entry: JournalEntry): boolean {
  return routeInterfaces(entry.original).every((i) => typeof i.ifname === 'string' && i.ifname !== '');
}

/** The route with interface `ifname`'s index `from` rewritten to `to` (single path and nexthops). */
export function remapRoute(route: KernelRoute, ifname: string, from: number, to: number): KernelRoute {
  const hit = (n: string | null | undefined, i: number | null) => i === from && (n ?? null) === ifname;
  return {
    ...route,
    ifindex: hit(route.ifname, route.ifindex) ? to : route.ifindex,
    nexthops: route.nexthops
      ? route.nexthops.map((nh) => (hit(nh.ifname, nh.ifindex) ? { ...nh, ifindex: to } : nh))
      : null,
  };
}

/** A gateway key "address%ifindex" moved from ifindex `from` to `to`; others unchanged. */
export function remapGatewayKey(key: string, from: number, to: number): string {
  const cut = key.lastIndexOf('%');
  const address = key.slice(0, cut);
  return Number(key.slice(cut + 1)) === from ? gatewayKey(address, to) : key;
}

/** The journal entry with `ifname` moved from ifindex `from` to `to` (its key follows the route). */
export function remapEntry(entry: JournalEntry, ifname: string, from: number, to: number): JournalEntry {
  // Only an entry that was journaled with that name at that index moves (an entry from another
  // boot may have had the same index on another interface).
  if (!routeInterfaces(entry.original).some((i) => i.ifname === ifname && i.ifindex === from)) return entry;
  const original = remapRoute(entry.original, ifname, from, to);
  return {
    ...entry,
    key: routeIdentity(original),
    original,
    removed: entry.removed.map((k) => remapGatewayKey(k, from, to)),
  };
}
