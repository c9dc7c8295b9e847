// Fakes of the detection engine's ports: a kernel FIB with real add/replace/delete semantics, a
// verifier whose answers are set per gateway and that takes probes x interval of fake time.
import type { Clock } from '../../src/util/clock';
import type {
  ConntrackEntry,
  ConntrackPorts,
  DgdPorts,
  FlowKey,
  KernelNexthopObject,
  KernelRoute,
  RouteChoice,
  ScannedSocket,
  Verification,
  VerifyArgs,
} from '../../src/dgd/ports';
import { routeIdentity } from '../../src/dgd/routeplan';

export function route(
  dst: string,
  gateway: string,
  metric: number,
  extra: Partial<KernelRoute> = {},
): KernelRoute {
  return {
    family: dst.includes(':') ? 6 : 4,
    dst,
    table: 254,
    metric,
    tos: 0,
    gateway,
    ifindex: 2,
    ifname: 'lan0',
    nexthops: null,
    protocol: 3,
    scope: 0,
    metrics: { mtu: 1400 },
    ...extra,
  } as KernelRoute;
}

export function multipath(dst: string, gateways: [string, number][], metric: number): KernelRoute {
  return {
    family: 4,
    dst,
    table: 254,
    metric,
    tos: 0,
    gateway: null,
    ifindex: null,
    nexthops: gateways.map(([gw, weight]) => ({ gateway: gw, ifindex: 2, ifname: 'lan0', weight, flags: 0 })),
  };
}

export class FakePorts implements DgdPorts {
  routes: KernelRoute[];
  sockets: ScannedSocket[] = [];
  /** Gateways that answer ARP (by address). */
  alive = new Set<string>();
  /** MAC each gateway answers with. */
  macs = new Map<string, string>();
  ops: string[] = [];
  verifications: VerifyArgs[] = [];
  probes: string[] = [];
  failNextDelete = false;
  /** Tcp: RetransSegs as the fake kernel counts it. */
  retransSegs = 0;
  /** Number of sock_diag dumps the engine asked for, and when. */
  dumps: number[] = [];
  /** minRetransmits of each dump. */
  dumpMinRetransmits: number[] = [];
  /** When the engine counted sockets (for status). */
  counts: number[] = [];
  flushed: string[] = [];
  /** A conntrack table (FakeConntrack); absent: the engine follows nothing. */
  conntrack?: ConntrackPorts;

  constructor(
    private readonly clock: Clock,
    routes: KernelRoute[],
    private readonly onOp?: (op: string) => void,
  ) {
    this.routes = routes.map((r) => structuredClone(r));
  }

  async scanSockets(opts: { minRetransmits: number; synSent?: boolean }): Promise<ScannedSocket[]> {
    this.dumps.push(this.clock.now());
    this.dumpMinRetransmits.push(opts.minRetransmits);
    return this.sockets
      .filter(
        (s) =>
          opts.minRetransmits === 0 ||
          (s.timer === 1 && s.timerRetransmits >= opts.minRetransmits) ||
          (opts.synSent === true && s.state === 'SYN-SENT'),
      )
      .map((s) => ({ ...s }));
  }

  /** Tcp: ActiveOpens as the fake kernel counts it. */
  activeOpens = 0;

  activeOpensCounter(): number {
    return this.activeOpens;
  }

  /** A connection attempt towards dst whose SYN went out `ageMs` ago (retransmitted `retrans` times). */
  setConnecting(dst: string, port: number, ageMs: number, retrans = 0): void {
    if (!this.sockets.some((x) => x.srcPort === port)) this.activeOpens++;
    if (retrans > (this.sockets.find((x) => x.srcPort === port)?.timerRetransmits ?? 0)) this.retransSegs++;
    const s: ScannedSocket = {
      family: dst.includes(':') ? 6 : 4,
      src: dst.includes(':') ? '2001:db8:1::10' : '198.18.1.10',
      srcPort: port,
      dst,
      dstPort: 443,
      state: 'SYN-SENT',
      inode: port,
      timer: 1,
      timerRetransmits: retrans,
      timerExpiresMs: Math.max(0, 1000 * 2 ** retrans - ageMs),
    };
    this.sockets = this.sockets.filter((x) => x.srcPort !== port).concat(s);
  }

  async countSockets(): Promise<number> {
    this.counts.push(this.clock.now());
    return this.sockets.length;
  }

  retransmitCounter(): number {
    return this.retransSegs;
  }

  async flushNeighbour(ifindex: number, address: string): Promise<void> {
    this.flushed.push(`${address}%${ifindex}`);
  }

  /** Every route lookup the engine made, with the flow key it gave. */
  lookups: { dst: string; src: string | null; key: FlowKey | undefined }[] = [];
  /**
   * A kernel whose answer depends on the flow key (an ECMP hash on ports, a policy rule on a
   * mark): the gateway for this key, or undefined for the ordinary lookup below.
   */
  gatewayByKey?: (dst: string, key: FlowKey) => string | undefined;

  async lookupRoute(dst: string, src: string | null = null, key?: FlowKey): Promise<RouteChoice> {
    this.lookups.push({ dst, src, key });
    if (dst.startsWith('198.18.1.')) return { gateway: null, ifindex: 2, ifname: 'lan0' };
    const byKey = this.gatewayByKey?.(dst, key ?? {});
    if (byKey) return { gateway: byKey, ifindex: 2, ifname: 'lan0' };
    const fam = dst.includes(':') ? 6 : 4;
    const best = (await this.listRoutes())
      .filter((r) => r.family === fam && (r.dst === '0.0.0.0/0' || r.dst === '::/0'))
      .sort((a, b) => a.metric - b.metric)[0];
    if (!best) throw Object.assign(new Error('no route'), { code: 'ENETUNREACH' });
    const gw = best.gateway ?? best.nexthops![0]!.gateway;
    return { gateway: gw, ifindex: 2, ifname: 'lan0' };
  }

  async listRoutes(): Promise<KernelRoute[]> {
    // Routes through a nexthop object show the object's paths, as the kernel's compat mode does.
    return this.routes.map((r) => {
      const out = structuredClone(r);
      const nh = r.nhid === undefined ? undefined : this.nexthops.find((n) => n.id === r.nhid);
      if (nh?.group)
        out.nexthops = nh.group.map((m) => {
          const member = this.nexthops.find((n) => n.id === m.id)!;
          return {
            gateway: member.gateway,
            ifindex: member.ifindex!,
            ifname: 'lan0',
            weight: m.weight,
            flags: 0,
          };
        });
      return out;
    });
  }

  /** Nexthop objects (`ip nexthop`). */
  nexthops: KernelNexthopObject[] = [];

  async listNexthops(): Promise<KernelNexthopObject[]> {
    return this.nexthops.map((n) => structuredClone(n));
  }

  async replaceNexthop(nh: KernelNexthopObject): Promise<void> {
    this.record(
      `replace nexthop ${nh.id} group ${(nh.group ?? []).map((m) => `${m.id},${m.weight}`).join('/')}`,
    );
    const i = this.nexthops.findIndex((n) => n.id === nh.id);
    if (i >= 0) this.nexthops[i] = structuredClone(nh);
    else this.nexthops.push(structuredClone(nh));
  }

  private record(op: string): void {
    this.ops.push(op);
    this.onOp?.(op);
  }

  async addRoute(r: KernelRoute): Promise<void> {
    if (this.routes.some((x) => routeIdentity(x) === routeIdentity(r)))
      throw Object.assign(new Error('exists'), { code: 'EEXIST' });
    this.record(`add ${describe(r)}`);
    this.routes.push(structuredClone(r));
  }

  async replaceRoute(r: KernelRoute): Promise<void> {
    this.record(`replace ${describe(r)}`);
    const key = `${r.family}|${r.table}|${r.dst}|${r.tos}|${r.metric}`;
    const i = this.routes.findIndex((x) => `${x.family}|${x.table}|${x.dst}|${x.tos}|${x.metric}` === key);
    if (i >= 0) this.routes[i] = structuredClone(r);
    else this.routes.push(structuredClone(r));
  }

  async deleteRoute(r: KernelRoute): Promise<void> {
    if (this.failNextDelete) {
      this.failNextDelete = false;
      throw Object.assign(new Error('EPERM: not allowed'), { code: 'EPERM' });
    }
    const i = this.routes.findIndex((x) => routeIdentity(x) === routeIdentity(r));
    if (i < 0) throw Object.assign(new Error('no such route'), { code: 'ESRCH' });
    this.record(`delete ${describe(r)}`);
    this.routes.splice(i, 1);
  }

  async verify(args: VerifyArgs): Promise<Verification> {
    this.verifications.push(args);
    const started = this.clock.now();
    const alive = this.alive.has(args.gateway);
    const mac = this.macs.get(args.gateway) ?? '02:00:00:00:00:01';
    const macOk = alive && (!args.knownMac || args.knownMac === mac || args.allowMacChange);
    // A live gateway answers the first probe after 1 ms; a dead one costs every probe's wait.
    await this.clock.sleep(alive ? 1 : args.probes * args.intervalMs);
    return {
      alive: macOk,
      mac: alive ? mac : null,
      macChanged: alive && !!args.knownMac && args.knownMac !== mac,
      untrustedMac: alive && !macOk ? mac : null,
      conflicts: alive && !macOk ? [mac] : [],
      movedFrom: null,
      reason: !alive
        ? `no ARP answer to ${args.probes} probes`
        : macOk
          ? `answered ARP from ${mac}`
          : `answered ARP only from untrusted MAC ${mac}`,
      arpRttMs: alive ? 1 : null,
      echoRttMs: null,
      probesSent: alive ? 1 : args.probes,
      durationMs: this.clock.now() - started,
      startedAt: this.clock.wallNow(),
      steps: [{ at_ms: 0, step: 'purge' }],
    };
  }

  async probeOnce(
    gateway: string,
    _ifname: string,
    timeoutMs: number,
  ): Promise<{ mac: string; rttMs: number } | null> {
    this.probes.push(gateway);
    if (this.alive.has(gateway)) {
      await this.clock.sleep(1);
      return { mac: this.macs.get(gateway) ?? '02:00:00:00:00:01', rttMs: 1 };
    }
    await this.clock.sleep(timeoutMs);
    return null;
  }

  ifname(): string {
    return 'lan0';
  }

  /** A socket with `retrans` consecutive retransmissions towards dst, the next one due in `expiresMs`. */
  setRetransmitting(
    dst: string,
    retrans: number,
    port = 40000,
    expiresMs = 200,
    extra: Pick<ScannedSocket, 'mark' | 'uid' | 'ifindex'> = {},
  ): void {
    const prev = this.sockets.find((x) => x.srcPort === port)?.timerRetransmits ?? 0;
    if (retrans > prev) this.retransSegs += retrans - prev;
    const s: ScannedSocket = {
      family: dst.includes(':') ? 6 : 4,
      src: dst.includes(':') ? '2001:db8:1::10' : '198.18.1.10',
      srcPort: port,
      dst,
      dstPort: 443,
      state: 'ESTABLISHED',
      inode: port,
      timer: retrans > 0 ? 1 : 0,
      timerRetransmits: retrans,
      timerExpiresMs: expiresMs,
      ...extra,
    };
    this.sockets = this.sockets.filter((x) => x.srcPort !== port).concat(s);
  }
}

export function describe(r: KernelRoute): string {
  const via = r.nexthops ? r.nexthops.map((n) => `${n.gateway}*${n.weight}`).join('+') : r.gateway;
  return `${r.dst} via ${via} metric ${r.metric}`;
}

/** A single nexthop object via `gateway` on lan0 (ifindex 2), owned by `protocol`. */
export function nexthopObject(id: number, gateway: string, protocol = 0): KernelNexthopObject {
  return {
    id,
    family: gateway.includes(':') ? 6 : 4,
    protocol,
    gateway,
    ifindex: 2,
    ifname: 'lan0',
    blackhole: false,
    fdb: false,
    group: null,
    groupType: null,
  };
}

/** A group of nexthop objects with weights: [[id, weight], ...]. */
export function nexthopGroup(id: number, members: [number, number][], protocol = 0): KernelNexthopObject {
  return {
    id,
    family: null,
    protocol,
    gateway: null,
    ifindex: null,
    ifname: null,
    blackhole: false,
    fdb: false,
    group: members.map(([m, weight]) => ({ id: m, weight })),
    groupType: 'mpath',
  };
}

/**
 * A conntrack table for ../../src/dgd/conntrackfollow.ts: entries, the host's addresses, and what
 * was asked of it. natEntries filters as the kernel does (SRC_NAT set, reply to the address).
 */
export class FakeConntrack implements ConntrackPorts {
  entries: ConntrackEntry[] = [];
  /** null: conntrack is not loaded. */
  count: number | null = 0;
  addrs: { ifindex: number; address: string }[] = [];
  dumps: string[] = [];
  deleted: string[] = [];
  /** Entries (by original source port) that vanish just before their delete: ENOENT. */
  vanishing = new Set<number>();

  constructor(private readonly onOp?: (op: string) => void) {}

  conntrackCount(): number | null {
    return this.count === null ? null : Math.max(this.count, this.entries.length);
  }

  async addresses(): Promise<{ ifindex: number; address: string }[]> {
    return this.addrs.map((a) => ({ ...a }));
  }

  async natEntries(address: string, limit: number): Promise<{ entries: ConntrackEntry[]; dropped: number }> {
    this.dumps.push(address);
    const all = this.entries.filter((e) => e.flags.includes('SRC_NAT') && e.reply.dst === address);
    return {
      entries: all.slice(0, limit).map((e) => structuredClone(e)),
      dropped: Math.max(0, all.length - limit),
    };
  }

  async deleteEntry(e: ConntrackEntry): Promise<boolean> {
    const i = this.entries.findIndex((x) => x.id === e.id);
    if (i < 0 || this.vanishing.has(e.orig.sport ?? -1)) return false;
    this.entries.splice(i, 1);
    const op = `ct delete ${e.orig.src}:${e.orig.sport} -> ${e.reply.dst}`;
    this.deleted.push(op);
    this.onOp?.(op);
    return true;
  }
}

let ctId = 1;

/**
 * A UDP entry from src:sport to dst:dport, translated to `nat` (no NAT when it is the source), as
 * ctnetlink reports it.
 */
export function ctEntry(
  src: string,
  sport: number,
  dst: string,
  dport: number,
  nat = src,
  mark = 0,
): ConntrackEntry {
  const natted = nat !== src;
  return {
    family: src.includes(':') ? 6 : 4,
    orig: { src, dst, protocol: 17, sport, dport },
    reply: { src: dst, dst: nat, protocol: 17, sport: dport, dport: sport },
    status: natted ? 0x19a : 0xa,
    flags: natted
      ? ['SEEN_REPLY', 'CONFIRMED', 'SRC_NAT', 'SRC_NAT_DONE', 'DST_NAT_DONE']
      : ['SEEN_REPLY', 'CONFIRMED'],
    mark,
    zone: 0,
    id: ctId++,
  };
}
