// The fight guard: a route withdrawn through a dead gateway that keeps coming back (a routing
// daemon, a DHCP client or a network manager puts it back after each withdrawal) is withdrawn again
// at most `limit` times within `window`; at the next return the daemon stops acting on that route,
// says so once (one event naming the route and its owner) and shows it in status, instead of
// looping. Hand-written: a sliding window per route key is a dozen lines, and the verdict has to be
// this project's (stop once, report once, forget on revival or `off`).
//
// One guard for every place that re-withdraws (plain kernel routes, routes through nexthop objects,
// nexthop groups): each asks `onReturn(key, ...)` before acting and `forgetGateway()` when the
// gateway revives.
import type { Clock } from '../util/clock';

export interface FightGuardOptions {
  /** Re-withdrawals allowed within the window; the next return stops the fight. */
  limit: number;
  windowMs: number;
}

/** A route the daemon has stopped fighting over. */
export interface Fight {
  /** The route's identity (routeplan.routeIdentity or a nexthop object's "nh:ID"). */
  key: string;
  /** The route as a human reads it ("198.18.2.0/24 via 198.18.1.1 table 254 metric 20"). */
  route: string;
  /** Who puts it back, from its protocol (zebra, bird, dhcp, static, ...). */
  owner: string;
  /** The dead gateway (key "address%ifindex") it goes through. */
  gateway: string;
  /** Times it came back, the stopping return included. */
  returns: number;
  /** When the daemon stopped withdrawing it (ISO time). */
  stopped_at: string;
}

export type FightVerdict =
  | { act: true; returns: number }
  | { act: false; fight: Fight; /** true the first time: emit the one event now */ first: boolean };

interface Track {
  returns: number[];
  fight: Fight | null;
  gateway: string;
}

export class FightGuard {
  private readonly tracks = new Map<string, Track>();

  constructor(
    private opts: FightGuardOptions,
    private readonly clock: Clock,
  ) {}

  setOptions(opts: FightGuardOptions): void {
    this.opts = opts;
  }

  /**
   * A withdrawn route is back in the kernel. act: withdraw it again; otherwise leave it (the fight
   * is stopped; `first` is true exactly once per fight).
   */
  onReturn(key: string, info: { route: string; owner: string; gateway: string }): FightVerdict {
    const now = this.clock.now();
    let t = this.tracks.get(key);
    if (!t) {
      t = { returns: [], fight: null, gateway: info.gateway };
      this.tracks.set(key, t);
    }
    if (t.fight) return { act: false, fight: t.fight, first: false };
    t.returns = t.returns.filter((at) => now - at < this.opts.windowMs);
    t.returns.push(now);
    if (t.returns.length <= this.opts.limit) return { act: true, returns: t.returns.length };
    t.fight = {
      key,
      route: info.route,
      owner: info.owner,
      gateway: info.gateway,
      returns: t.returns.length,
      stopped_at: new Date(this.clock.wallNow()).toISOString(),
    };
    return { act: false, fight: t.fight, first: true };
  }

  /** Is the daemon staying out of this route? */
  stopped(key: string): boolean {
    return this.tracks.get(key)?.fight != null;
  }

  /** The gateway revived (its routes are restored): its fights and counts are over. */
  forgetGateway(gateway: string): Fight[] {
    const ended: Fight[] = [];
    for (const [k, t] of this.tracks)
      if (t.gateway === gateway) {
        if (t.fight) ended.push(t.fight);
        this.tracks.delete(k);
      }
    return ended;
  }

  /** `ipdeadgate off`, SIGTERM: everything is restored, nothing is being fought. */
  clear(): void {
    this.tracks.clear();
  }

  /** The stopped fights, for status. */
  fights(): Fight[] {
    return [...this.tracks.values()].flatMap((t) => (t.fight ? [t.fight] : []));
  }
}
