// The bound on fights with other route owners. A DHCP client renewing its lease, a network manager
// reconfiguring, `ip route add` by hand or a routing daemon may put back a route (or a nexthop
// group member) that was withdrawn because its gateway is dead. Each time it is withdrawn again,
// but only `limit` times within `windowMs`: past that the owner evidently insists (a routing daemon
// re-exporting its RIB would do it forever), so the engine stops, says so once, and leaves the route
// in place until the gateway revives or detection is switched off. One place for every kind of
// object, so every owner of routes meets the same rule.
import type { Clock } from '../util/clock';

export type RewithdrawVerdict =
  /** Withdraw it again. */
  | 'withdraw'
  /** It came back once too often: stop now (report this once). */
  | 'stop'
  /** Already given up on: leave it. */
  | 'stopped';

export class RewithdrawGuard {
  private readonly times = new Map<string, number[]>();
  private readonly given = new Set<string>();

  constructor(
    private limit: number,
    private windowMs: number,
    private readonly clock: Clock,
  ) {}

  /** New limits (SIGHUP); what was given up on stays so. */
  configure(limit: number, windowMs: number): void {
    this.limit = limit;
    this.windowMs = windowMs;
  }

  /** Something put `key` back: may it be withdrawn again? */
  comeBack(key: string): RewithdrawVerdict {
    if (this.given.has(key)) return 'stopped';
    const now = this.clock.now();
    const recent = (this.times.get(key) ?? []).filter((t) => now - t < this.windowMs);
    if (recent.length >= this.limit) {
      this.given.add(key);
      this.times.delete(key);
      return 'stop';
    }
    recent.push(now);
    this.times.set(key, recent);
    return 'withdraw';
  }

  /** Re-withdrawals of `key` within the window so far. */
  count(key: string): number {
    const now = this.clock.now();
    return (this.times.get(key) ?? []).filter((t) => now - t < this.windowMs).length;
  }

  isStopped(key: string): boolean {
    return this.given.has(key);
  }

  /** The object was restored (its gateway revived, or detection went off): start afresh. */
  forget(key: string): void {
    this.times.delete(key);
    this.given.delete(key);
  }

  get limits(): { limit: number; windowMs: number } {
    return { limit: this.limit, windowMs: this.windowMs };
  }
}
