// Routing by service name. Each link's peer announces the services it reaches with a hop count;
// a stream for a service goes to the live link with the fewest hops (then the lowest RTT), so a
// service reachable over two links fails over to the live one as soon as a link goes down.
// Gateway and endpoint proxies announce only their own services; relays also announce what they
// learned on their other links (split horizon: never back over the link it came from), up to
// MAX_HOPS, which keeps a loop of relays from counting to infinity.
import { MAX_HOPS } from './protocol';

/** What the router needs to know about a link. */
export interface RoutableLink {
  readonly peerServices: Record<string, number>;
  readonly rttMs: number | undefined;
  readonly up: boolean;
}

export class Router<L extends RoutableLink> {
  private readonly links = new Set<L>();

  constructor(
    private ownServices: readonly string[],
    private readonly transit: boolean,
  ) {}

  /** The services this node dials itself changed (a reload). */
  setOwnServices(names: readonly string[]): void {
    this.ownServices = [...names];
  }

  add(link: L): void {
    this.links.add(link);
  }

  remove(link: L): void {
    this.links.delete(link);
  }

  /** Whether this node dials the service itself. */
  isLocal(service: string): boolean {
    return this.ownServices.includes(service);
  }

  /** The best live link towards `service`, never `except` (the link a relayed stream came from). */
  route(service: string, except?: L): L | undefined {
    let best: L | undefined;
    let bestHops = Infinity;
    let bestRtt = Infinity;
    for (const l of this.links) {
      if (l === except || !l.up) continue;
      const hops = Object.hasOwn(l.peerServices, service) ? l.peerServices[service] : undefined;
      if (hops === undefined || hops >= MAX_HOPS) continue;
      const rtt = l.rttMs ?? Infinity;
      if (hops < bestHops || (hops === bestHops && rtt < bestRtt)) {
        best = l;
        bestHops = hops;
        bestRtt = rtt;
      }
    }
    return best;
  }

  /** What to announce to `to`: our services at 0 hops; for a relay, what it learned elsewhere, +1. */
  announceTo(to: L | undefined): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of this.ownServices) out[s] = 0;
    if (!this.transit) return out;
    for (const l of this.links) {
      if (l === to || !l.up) continue;
      for (const [s, hops] of Object.entries(l.peerServices)) {
        const h = hops + 1;
        if (h >= MAX_HOPS) continue;
        if (!Object.hasOwn(out, s) || h < out[s]!) out[s] = h;
      }
    }
    return sortKeys(out);
  }
}

function sortKeys(o: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(o).sort()) out[k] = o[k]!;
  return out;
}
