// Detection's liaison with the routing daemons configured in dgd.owners (FRR, BIRD): their routes
// are not withdrawn in the kernel (the daemon would put them back) but handed over: the daemon is
// told, through its own interface (./owners.ts), that a gateway is unusable, so it installs its
// own backup; told again when the set of its routes through dead gateways changes; told that the
// gateway is usable again on revival. Every call that changes a daemon runs inside the route
// keeper's chain, so the daemons and the kernel are changed in one order.
import type { EventLog } from '../util/eventlog';
import { emit } from './events';
import { isDead, type Gateway } from './gateway';
import { ownerOfProtocol, type OwnerStatus, type RouteOwners, type RoutingDaemon } from './owners';
import type { KernelRoute } from './ports';
import { describeRoute, gatewaysOf, routeIdentity } from './routeplan';

/** A gateway as the owner journal names it: address and interface name (ifindexes move). */
export function ownerKey(g: { address: string; ifname: string }): string {
  return `${g.address.toLowerCase()}%${g.ifname}`;
}

/** 'frr' or 'bird' when a routing daemon installs with this protocol, else null. */
export function routingDaemonOf(protocol: number | undefined): string | null {
  const o = ownerOfProtocol(protocol);
  return o === 'frr' || o === 'bird' ? o : null;
}

/** Runs a change inside the route keeper's chain. */
export type Serially = <T>(fn: () => Promise<T>) => Promise<T>;

export class OwnerLiaison {
  /** Adapter-owned routes seen through dead gateways at the last refresh (to re-tell only on change). */
  private toldSignature = '';
  /** The unprotected routes last warned of (to warn only on change). */
  private unprotectedSignature = '';
  /** Called when a found routing daemon answers for the first time: its routes are looked at again. */
  onAnswered: () => void = () => undefined;

  constructor(
    readonly owners: RouteOwners | null,
    private readonly log: EventLog,
    /** The route keeper's chain: daemons and the kernel are changed in one order. */
    private readonly serially: Serially,
    /** Detection is on and not stopping. */
    private readonly running: () => boolean,
  ) {}

  /** The routing daemon (configured in dgd.owners) that owns a route or nexthop object, or null. */
  daemonOf(r: { protocol?: number }): RoutingDaemon | null {
    return this.owners?.adapterFor(r.protocol ?? null) ?? null;
  }

  /** The routes through g that a configured routing daemon owns, per daemon. */
  private daemonRoutesVia(g: Gateway, routes: readonly KernelRoute[]): Map<RoutingDaemon, KernelRoute[]> {
    const out = new Map<RoutingDaemon, KernelRoute[]>();
    for (const r of routes) {
      const o = gatewaysOf(r).includes(g.key) ? this.daemonOf(r) : null;
      if (o) out.set(o, [...(out.get(o) ?? []), r]);
    }
    return out;
  }

  /**
   * Tell each routing daemon whose routes go through dead g (called inside the chain). g may have
   * revived while this waited its turn: each daemon is told only while g is still dead.
   */
  async handOver(g: Gateway, routes: readonly KernelRoute[], reason: string): Promise<void> {
    if (!this.owners) return;
    for (const [owner, rs] of this.daemonRoutesVia(g, routes)) {
      if (!isDead(g)) break;
      const outcome = await this.owners.markDead(owner, ownerKey(g), reason);
      emit(this.log, {
        event: 'routes_handed_over',
        gateway: g.address,
        interface: g.ifname,
        owner,
        reason,
        routes: rs.map(describeRoute),
        applied: outcome?.applied ?? [],
        kept: outcome?.kept ?? [],
        ok: outcome !== null,
      });
    }
  }

  /**
   * Routes of a configured routing daemon through dead gateways: tell it again (it converges;
   * idempotent) when that set changed — the daemon restarted, someone undid what it was told, or it
   * learned new routes through the dead gateway — so it is not asked on every route event.
   */
  async retell(dead: readonly Gateway[], routes: readonly KernelRoute[]): Promise<void> {
    if (!this.owners) return;
    const owned: [Gateway, RoutingDaemon, string][] = [];
    for (const g of dead)
      for (const [o, rs] of this.daemonRoutesVia(g, routes))
        for (const r of rs) owned.push([g, o, `${g.key} ${o} ${routeIdentity(r)}`]);
    const sig = owned
      .map(([, , k]) => k)
      .sort()
      .join('\n');
    if (sig === this.toldSignature) return;
    this.toldSignature = sig;
    const told = new Set<string>();
    const owners = this.owners;
    for (const [g, o] of owned) {
      if (told.has(`${g.key} ${o}`)) continue;
      told.add(`${g.key} ${o}`);
      // Queued behind a restore, the gateway may have revived meanwhile: tell only a dead one.
      await this.serially(async () => {
        if (isDead(g) && this.running())
          await owners.markDead(o, ownerKey(g), 'routes through a dead gateway');
      });
    }
  }

  /** g revived: every daemon told of it is told it is usable again (inside the chain). */
  async markAlive(g: Gateway, reason: string): Promise<void> {
    await this.owners?.markAlive(ownerKey(g), reason);
  }

  /** Off, SIGTERM: every daemon is put back as it was (inside the chain). */
  async restoreAll(reason: string): Promise<void> {
    await this.owners?.restoreAll(reason);
  }

  /** Still dead at a slow poll: a daemon that could not be told (restarting, unreachable) is told now. */
  async retryFailed(reason: string): Promise<void> {
    const owners = this.owners;
    if (owners) await this.serially(() => owners.retryFailed(reason));
  }

  /** At start: the owner journal (dead gateways per daemon), and a cheap question to each daemon. */
  async load(): Promise<Map<RoutingDaemon, string[]>> {
    const held = (await this.owners?.load()) ?? new Map<RoutingDaemon, string[]>();
    await this.owners?.checkAll();
    return held;
  }

  /**
   * After a restart: routing daemons told before are told again; their gateways are dead (the
   * journal event), found by address and interface name (its ifindex may differ after a reboot).
   */
  async reconcile(
    held: Map<RoutingDaemon, string[]>,
    markDead: (address: string, ifname: string) => boolean,
  ): Promise<void> {
    const owners = this.owners;
    if (!owners || held.size === 0) return;
    await this.serially(async () => {
      await owners.reconcile();
      for (const keys of held.values())
        for (const key of keys) {
          const i = key.lastIndexOf('%');
          const address = key.slice(0, i);
          const ifname = key.slice(i + 1);
          if (markDead(address, ifname)) continue;
          emit(
            this.log,
            {
              event: 'error',
              during: 'owner journal reconcile',
              gateway: address,
              error: `interface ${ifname} is absent; the routing daemon keeps the gateway as dead until ipdeadgate off`,
            },
            'warn',
          );
        }
    });
  }

  /**
   * On every read of the managed tables (the first at start): routes of a routing daemon that
   * cannot be told (found but not answering, or failing) are unprotected. A warning names them,
   * why and what to set, once per change; a found daemon is asked again in the background, and
   * once it answers its routes are handed to it from then on.
   */
  watchUnprotected(routes: readonly KernelRoute[]): void {
    const owners = this.owners;
    if (!owners) return;
    const left = owners.unprotected(routes);
    const sig = [...left]
      .map(([o, rs]) => `${o} ${rs.map(routeIdentity).sort().join(',')}`)
      .sort()
      .join('\n');
    if (sig !== this.unprotectedSignature) {
      this.unprotectedSignature = sig;
      const st = owners.status(routes, describeRoute);
      for (const [owner, rs] of left) {
        const o = st.find((x) => x.owner === owner);
        emit(
          this.log,
          {
            event: 'routes_unprotected',
            owner,
            routes: rs.map(describeRoute),
            error: o?.last_error ?? null,
            hint: o?.hint ?? null,
          },
          'warn',
        );
      }
    }
    if (left.size === 0) return;
    void owners
      .recheck(left.keys())
      .then((answered) => {
        if (answered.length > 0 && this.running()) this.onAnswered();
      })
      .catch((err: unknown) =>
        emit(this.log, { event: 'error', during: 'asking a routing daemon', error: String(err) }, 'warn'),
      );
  }

  status(routes: readonly KernelRoute[] = []): OwnerStatus[] {
    return this.owners?.status(routes, describeRoute) ?? [];
  }
}
