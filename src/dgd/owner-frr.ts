// The FRR adapter's policy: from zebra's RIB, which protocols have routes through the dead
// gateways (they get the FIB filter), and which destinations would lose their last route
// (keep_last_route: they are exempted). src/sys/frr.ts does the talking.
import { filterCommands, type FrrFilter, type FrrFilterState, type FrrRoute } from '../sys/frr';
import type { OwnerAdapter, OwnerOutcome } from './owners';

/** What the adapter needs from vtysh (src/sys/frr.ts's Vtysh). */
export interface FrrPort {
  ipv4Routes(): Promise<FrrRoute[]>;
  filterState(): Promise<FrrFilterState>;
  applyFilter(want: FrrFilter): Promise<FrrFilterState>;
}

/** zebra's own kinds of routes: never filtered (they are not FRR's to fail over). */
const NOT_FILTERED = new Set(['connected', 'kernel', 'local', 'system', 'table']);

export class FrrOwnerAdapter implements OwnerAdapter {
  readonly owner = 'frr' as const;

  constructor(private readonly frr: FrrPort) {}

  async converge(
    dead: string[],
    opts: { keepLastRoute: boolean; persist: (state: unknown) => Promise<void> },
  ): Promise<OwnerOutcome> {
    const problems: string[] = [];
    const v4 = dead.filter((g) => !g.includes(':'));
    for (const g of dead)
      if (g.includes(':'))
        problems.push(
          `IPv6 gateway ${g}: FRR 8's zebra route-maps cannot match IPv6 nexthops, so FRR's routes through it stay (use BFD, docs/host-integration.md)`,
        );
    const rib = await this.frr.ipv4Routes();
    const now = await this.frr.filterState();
    for (const p of planProtocols(rib, v4))
      if (now.foreign[p])
        problems.push(
          `zebra filters ${p} routes with route-map ${now.foreign[p]} already; ipdeadgate left ${p} alone`,
        );
    const want = planFrrFilter(rib, v4, opts.keepLastRoute, now);
    const changed = filterCommands(now, want).length > 0;
    let after = now;
    if (changed) {
      await opts.persist(want);
      after = await this.frr.applyFilter(want);
    }
    const applied =
      after.name === null
        ? []
        : [
            `route-map ${after.name} denies nexthops via ${after.gateways.join(', ')}` +
              (after.keep.length ? ` except to ${after.keep.join(', ')} (keep_last_route)` : ''),
            ...after.protocols.map((p) => `ip protocol ${p} route-map ${after.name}`),
          ];
    return {
      state: { gateways: after.gateways, keep: after.keep, protocols: after.protocols },
      changed,
      applied,
      kept: want.keep,
      problems,
    };
  }
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
