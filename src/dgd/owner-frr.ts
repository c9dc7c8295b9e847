// The FRR adapter's policy: from zebra's RIB, which protocols have routes through the dead
// gateways (they get the FIB filter), and which destinations would lose their last route
// (keep_last_route: they are exempted). A dead gateway that is also a BGP neighbour gets
// `neighbor ADDRESS shutdown` instead: zebra holds only BGP's best path, so filtering it leaves
// nothing, while bgpd keeps the other neighbours' paths and selects them once the session is down
// (what BGP's own hold timer would do minutes later, or BFD, if the router spoke it).
// src/sys/frr.ts does the talking.
import {
  filterCommands,
  type BgpNeighbor,
  type FrrFilter,
  type FrrFilterState,
  type FrrRoute,
} from '../sys/frr';
import type { ConvergeOptions, OwnerAdapter, OwnerOutcome } from './owners';

/** What the adapter needs from vtysh (src/sys/frr.ts's Vtysh). */
export interface FrrPort {
  ipv4Routes(): Promise<FrrRoute[]>;
  filterState(): Promise<FrrFilterState>;
  applyFilter(want: FrrFilter): Promise<FrrFilterState>;
  bgpNeighbors(): Promise<BgpNeighbor[]>;
  version(): Promise<string>;
  setBgpShutdown(asn: string, address: string, shutdown: boolean): Promise<void>;
}

/** What the adapter journals: its filter and the BGP neighbours it shut down. */
export interface FrrOwnerState extends FrrFilter {
  bgp_shutdown: { asn: string; address: string }[];
}

/** zebra's own kinds of routes: never filtered (they are not FRR's to fail over). */
const NOT_FILTERED = new Set(['connected', 'kernel', 'local', 'system', 'table']);

export class FrrOwnerAdapter implements OwnerAdapter {
  readonly owner = 'frr' as const;

  /** Found at the default paths, not configured (used once check() answers: ./owners.ts). */
  readonly auto: boolean;

  constructor(
    private readonly frr: FrrPort,
    opts: { auto?: boolean } = {},
  ) {
    this.auto = opts.auto ?? false;
  }

  check(): Promise<string> {
    return this.frr.version();
  }

  async converge(dead: string[], opts: ConvergeOptions): Promise<OwnerOutcome> {
    const problems: string[] = [];
    const d = new Set(dead);
    const prevShut = (opts.previous as Partial<FrrOwnerState> | null)?.bgp_shutdown ?? [];
    const same = (a: { asn: string; address: string }, b: { asn: string; address: string }) =>
      a.asn === b.asn && a.address === b.address;
    // BGP neighbours that are dead gateways: shut down (ours stay ours; an operator's shutdown is
    // neither repeated nor ever undone by us).
    const neighbors = await this.frr.bgpNeighbors();
    const shut = neighbors
      .filter((n) => d.has(n.address) && (!n.shutdown || prevShut.some((p) => same(p, n))))
      .map((n) => ({ asn: n.asn, address: n.address }));
    const toShut = shut.filter((n) => !neighbors.find((x) => same(x, n))!.shutdown);
    const toOpen = prevShut.filter((p) => !shut.some((n) => same(n, p)));
    const shutAddresses = new Set(shut.map((n) => n.address));

    const v4 = dead.filter((g) => !g.includes(':'));
    for (const g of dead)
      if (g.includes(':') && !shutAddresses.has(g))
        problems.push(
          `IPv6 gateway ${g}: FRR 8's zebra route-maps cannot match IPv6 nexthops, so FRR's static routes through it stay (use BFD, docs/host-integration.md)`,
        );
    const rib = (await this.frr.ipv4Routes()).filter(
      (r) => !(r.protocol === 'bgp' && viaOnly(r, d, shutAddresses)),
    );
    const now = await this.frr.filterState();
    for (const p of planProtocols(rib, v4))
      if (now.foreign[p])
        problems.push(
          `zebra filters ${p} routes with route-map ${now.foreign[p]} already; ipdeadgate left ${p} alone`,
        );
    const want = planFrrFilter(rib, v4, opts.keepLastRoute, now);
    const filterChanges = filterCommands(now, want).length > 0;
    const changed = filterChanges || toShut.length > 0 || toOpen.length > 0;
    const state: FrrOwnerState = { ...want, bgp_shutdown: shut };
    if (changed) await opts.persist(state); // journal first, then FRR
    for (const n of toShut) await this.frr.setBgpShutdown(n.asn, n.address, true);
    let after = now;
    if (filterChanges) after = await this.frr.applyFilter(want);
    for (const n of toOpen) {
      try {
        await this.frr.setBgpShutdown(n.asn, n.address, false);
      } catch (err) {
        // The neighbour (or bgpd) is gone from FRR's config since: nothing left to undo.
        if (!/not running|failed to connect|unknown|not exist/i.test((err as Error).message)) throw err;
      }
    }
    const applied = [
      ...shut.map((n) => `router bgp ${n.asn}: neighbor ${n.address} shutdown`),
      ...(after.name === null
        ? []
        : [
            `route-map ${after.name} denies nexthops via ${after.gateways.join(', ')}` +
              (after.keep.length ? ` except to ${after.keep.join(', ')} (keep_last_route)` : ''),
            ...after.protocols.map((p) => `ip protocol ${p} route-map ${after.name}`),
          ]),
    ];
    return {
      state: { gateways: after.gateways, keep: after.keep, protocols: after.protocols, bgp_shutdown: shut },
      changed,
      applied,
      kept: want.keep,
      problems,
    };
  }
}

/** Every dead nexthop of the route is a neighbour being shut down (bgpd withdraws it itself). */
function viaOnly(r: FrrRoute, dead: ReadonlySet<string>, shut: ReadonlySet<string>): boolean {
  const deadHops = r.nexthops.filter((n) => n.ip !== null && dead.has(n.ip));
  return deadHops.length > 0 && deadHops.every((n) => shut.has(n.ip!));
}

function nexthopVia(r: FrrRoute, dead: ReadonlySet<string>): boolean {
  return r.nexthops.some((n) => n.ip !== null && dead.has(n.ip));
}

/** FRR protocols with a route through a dead gateway. */
export function planProtocols(rib: FrrRoute[], dead: string[]): string[] {
  const d = new Set(dead);
  return [
    ...new Set(rib.filter((r) => !NOT_FILTERED.has(r.protocol) && nexthopVia(r, d)).map((r) => r.protocol)),
  ].sort();
}

/**
 * The filter for `dead`: the protocols with routes through them (minus those another route-map
 * already filters), and with keep_last_route the destinations that have no route but through dead
 * gateways (a connected or kernel route, another distance, another ECMP member are alternatives).
 */
export function planFrrFilter(
  rib: FrrRoute[],
  dead: string[],
  keepLast: boolean,
  now: FrrFilterState,
): FrrFilter {
  if (dead.length === 0) return { gateways: [], keep: [], protocols: [] };
  const d = new Set(dead);
  const protocols = planProtocols(rib, dead).filter((p) => !now.foreign[p]);
  if (protocols.length === 0) return { gateways: [], keep: [], protocols: [] };
  const keep: string[] = [];
  if (keepLast) {
    const prefixes = new Set(
      rib.filter((r) => protocols.includes(r.protocol) && nexthopVia(r, d)).map((r) => r.prefix),
    );
    for (const prefix of prefixes) {
      const alternative = rib.some(
        (r) =>
          r.prefix === prefix &&
          r.nexthops.some((n) => n.ip === null || !d.has(n.ip)) &&
          r.nexthops.length > 0,
      );
      if (!alternative) keep.push(prefix);
    }
  }
  return { gateways: [...dead].sort(), keep: keep.sort(), protocols };
}
