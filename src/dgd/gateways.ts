// The gateways detection knows, by key (address%ifindex): the only writer of the set and of each
// gateway's identity (its ifindex and key move when its interface is re-created).
import { isDead, newGateway, type Gateway } from './gateway';
import type { InterfacePresence } from './interfaces';
import { gatewayKey } from './routeplan';

export interface GatewayTableOptions {
  /** Interface name of an index, for a gateway first seen without one. */
  ifname: (ifindex: number) => string;
  presenceOf: (ifname: string) => InterfacePresence;
  /** Stop a gateway's timers (poll, active probe) before it is forgotten or replaced. */
  cancelTimers: (g: Gateway) => void;
}

export class GatewayTable {
  private readonly map = new Map<string, Gateway>();

  constructor(private readonly o: GatewayTableOptions) {}

  values(): IterableIterator<Gateway> {
    return this.map.values();
  }

  list(): Gateway[] {
    return [...this.map.values()];
  }

  get(key: string): Gateway | undefined {
    return this.map.get(key);
  }

  /** The gateway at address on ifindex, created (active) if new. */
  ensure(address: string, ifindex: number, ifname?: string): Gateway {
    const key = gatewayKey(address, ifindex);
    let g = this.map.get(key);
    if (!g) {
      const name = ifname ?? this.o.ifname(ifindex);
      g = newGateway(address, ifindex, name, this.o.presenceOf(name));
      this.map.set(key, g);
    }
    return g;
  }

  /** By address (any interface, the first found) or by address and ifindex. */
  find(address: string, ifindex?: number): Gateway | undefined {
    if (ifindex !== undefined) return this.map.get(gatewayKey(address, ifindex));
    const a = address.toLowerCase();
    for (const g of this.map.values()) if (g.address.toLowerCase() === a) return g;
    return undefined;
  }

  forget(g: Gateway): void {
    this.o.cancelTimers(g);
    if (this.map.get(g.key) === g) this.map.delete(g.key);
  }

  /** Dead gateways' keys. */
  deadKeys(): Set<string> {
    return new Set(
      this.list()
        .filter(isDead)
        .map((g) => g.key),
    );
  }

  /**
   * Gateways on `ifname` at ifindex `from` move to `to`. Where the new key is taken already, the
   * one that knows the gateway is dead stays. Returns the gateways that moved.
   */
  renumber(ifname: string, from: number, to: number): Gateway[] {
    const moved: Gateway[] = [];
    for (const g of this.list()) {
      if (g.ifname !== ifname || g.ifindex !== from) continue;
      this.map.delete(g.key);
      g.ifindex = to;
      g.key = gatewayKey(g.address, to);
      moved.push(g);
      const twin = this.map.get(g.key);
      if (twin && isDead(twin) && !isDead(g)) {
        this.o.cancelTimers(g);
        continue;
      }
      if (twin) this.o.cancelTimers(twin);
      this.map.set(g.key, g);
    }
    return moved;
  }
}
