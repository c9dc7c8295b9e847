// The detection engine's ports over the real system facades (src/sys/): sock_diag for the scan,
// rtnetlink for routes, lookups and neighbour purges, one pcap handle per gateway interface for
// ARP/NDP, raw ICMP sockets for the echo that forces the kernel's own resolution.
import { EventEmitter } from 'node:events';
import { countTcpSockets, dumpTcpSockets, type TcpState } from '../sys/sockdiag';
import {
  NeighbourLink,
  type NeighbourSighting,
  EchoSocket,
  SegmentRecorder,
  SegmentSender,
  TCP_FLAG_SYN,
  WireWatch,
  type WireRetransmission,
} from '../sys/packet';
import { readActiveOpens, readRetransSegs } from '../sys/snmp';
import {
  CT_STATUS,
  conntrackCount,
  openConntrack,
  type Conntrack,
  type ConntrackEntry,
} from '../sys/conntrack';
import type { NexthopObject, Route, Rtnl } from '../sys/rtnl';
import type {
  ConntrackPorts,
  DgdPorts,
  KernelNexthopObject,
  KernelRoute,
  RecorderStatus,
  RouteChoice,
  ScannedSocket,
  Verification,
  VerifyArgs,
  WireFlowEvent,
  WireStatus,
} from './ports';
import type { FlowKey, ResendOutcome, ResumeFlow } from './ports';
import { verifyGateway } from './verify';
import type { InterfaceInfo } from './interfaces';

/** One read of an interface's neighbour table: the read (shared while it runs) and its result. */
interface MacTable {
  at: number;
  byMac: Promise<Map<string, string[]>>;
  read: Map<string, string[]> | null;
}

/** States in which a socket has unacknowledged data or a SYN/FIN to retransmit. */
const SCAN_STATES: TcpState[] = [
  'ESTABLISHED',
  'SYN-SENT',
  'SYN-RECV',
  'FIN-WAIT-1',
  'CLOSE-WAIT',
  'LAST-ACK',
  'CLOSING',
];
/**
 * What the scan dumps: the same without SYN-RECV. Half-open sockets are no evidence (./scan.ts),
 * and a SYN flood makes thousands of them: the kernel skips them before building a message.
 */
const DUMP_STATES: TcpState[] = SCAN_STATES.filter((s) => s !== 'SYN-RECV');

export class SystemPorts extends EventEmitter implements DgdPorts {
  private readonly neighbourLinks = new Map<string, Promise<NeighbourLink>>();
  private readonly echo = new Map<4 | 6, EchoSocket>();
  private names = new Map<number, string>();
  /** Each interface's MAC as last read by refreshLinks (the recorder keeps only frames from it). */
  private macs = new Map<string, string | null>();
  private links: InterfaceInfo[] = [];
  private readonly recorders = new Map<string, SegmentRecorder>();
  private sender: SegmentSender | null = null;
  private wire: WireWatch | null = null;
  private wireBudget = 0;
  private wireSynStall = 0;
  /** Per interface: the kernel's neighbour table as MAC -> addresses, and when it was read. */
  private readonly macTables = new Map<number, MacTable>();
  private closed = false;
  readonly conntrack: SystemConntrack;

  constructor(private readonly rtnl: Rtnl) {
    super();
    this.conntrack = new SystemConntrack(rtnl);
  }

  /** Learn the interfaces (and refresh them on link events): names, indexes, up or down. */
  async refreshLinks(): Promise<InterfaceInfo[]> {
    const links = await this.rtnl.listLinks();
    this.names = new Map(links.map((l) => [l.ifindex, l.ifname]));
    this.links = links.map((l) => ({ ifindex: l.ifindex, ifname: l.ifname, up: l.up }));
    this.macs = new Map(links.map((l) => [l.ifname, l.mac]));
    return this.links;
  }

  /** The interfaces as last read by refreshLinks. */
  interfaces(): InterfaceInfo[] {
    return this.links;
  }

  ifindexOf(ifname: string): number | undefined {
    for (const [i, n] of this.names) if (n === ifname) return i;
    return undefined;
  }

  ifname(ifindex: number): string {
    return this.names.get(ifindex) ?? `if${ifindex}`;
  }

  async scanSockets(opts: { minRetransmits: number; synSent?: boolean }): Promise<ScannedSocket[]> {
    const entries = await dumpTcpSockets({
      states: DUMP_STATES,
      info: false,
      minRetransmits: opts.minRetransmits,
    });
    if (opts.synSent && opts.minRetransmits > 0) {
      // SYN-SENT sockets still on their first SYN are not retransmitting yet: a second dump for
      // them alone (the kernel skips other states before building a message).
      const seen = new Set(entries.map((e) => e.inode));
      for (const e of await dumpTcpSockets({ states: ['SYN-SENT'], info: false }))
        if (!seen.has(e.inode)) entries.push(e);
    }
    return entries.map((e) => ({
      family: e.family,
      src: e.src,
      srcPort: e.srcPort,
      dst: e.dst,
      dstPort: e.dstPort,
      state: e.state,
      inode: e.inode,
      timer: e.timer,
      timerRetransmits: e.timerRetransmits,
      timerExpiresMs: e.timerExpiresMs,
      ifindex: e.ifindex,
      uid: e.uid,
      ...(e.mark !== null ? { mark: e.mark } : {}),
    }));
  }

  async countSockets(): Promise<number> {
    return (await countTcpSockets({ states: SCAN_STATES })).total;
  }

  retransmitCounter(): number {
    return readRetransSegs();
  }

  activeOpensCounter(): number {
    return readActiveOpens();
  }

  flushNeighbour(ifindex: number, address: string): Promise<void> {
    return this.rtnl.deleteNeighbour(ifindex, address);
  }

  async lookupRoute(dst: string, src: string | null, key: FlowKey = {}): Promise<RouteChoice> {
    const r = await this.rtnl.lookupRoute(dst, src ? { ...key, src } : key);
    return { gateway: r.gateway, ifindex: r.ifindex, ifname: r.ifname };
  }

  async listRoutes(tables: number[]): Promise<KernelRoute[]> {
    const want = new Set(tables);
    const routes = (await this.rtnl.listRoutes()).filter((r) => want.has(r.table));
    // With net.ipv4.nexthop_compat_mode=0 the kernel reports a route through a nexthop object by
    // its id alone: take the gateway or the group's paths from the objects.
    if (routes.some((r) => r.nhid !== undefined && r.gateway === null && r.nexthops === null)) {
      const objects = new Map((await this.rtnl.listNexthops()).map((n) => [n.id, n]));
      for (const r of routes) if (r.nhid !== undefined) fillFromObject(r, objects);
    }
    return routes.filter((r) => r.gateway !== null || r.nexthops !== null) as KernelRoute[];
  }

  listNexthops(): Promise<KernelNexthopObject[]> {
    return this.rtnl.listNexthops();
  }

  replaceNexthop(nh: KernelNexthopObject): Promise<void> {
    return this.rtnl.replaceNexthop(nh as NexthopObject);
  }

  addRoute(route: KernelRoute): Promise<void> {
    return this.rtnl.addRoute(route as Route);
  }

  replaceRoute(route: KernelRoute): Promise<void> {
    return this.rtnl.replaceRoute(route as Route);
  }

  deleteRoute(route: KernelRoute): Promise<void> {
    return this.rtnl.deleteRoute(route as Route);
  }

  watchFlows(ifname: string, flows: ResumeFlow[]): void {
    if (this.closed) return;
    let r = this.recorders.get(ifname);
    if (flows.length === 0) {
      // Nothing to record on it: its capture closes (a recorder is cheap to make again).
      r?.close();
      this.recorders.delete(ifname);
      return;
    }
    if (!r) {
      r = new SegmentRecorder(
        ifname,
        () => this.macs.get(ifname) ?? null,
        (err) => this.emit('error', err),
      );
      this.recorders.set(ifname, r);
    }
    r.watch(flows);
  }

  forgetFlow(ifname: string, flow: ResumeFlow): void {
    this.recorders.get(ifname)?.forget(flow);
  }

  /** Each recorder's counts (status and metrics). */
  recorderStats(): Record<string, RecorderStatus> {
    return Object.fromEntries(
      [...this.recorders].map(([i, r]) => {
        const { flows, open, opens, frames } = r.stats();
        return [i, { flows, open, opens, frames }];
      }),
    );
  }

  async resendSegment(ifname: string, flow: ResumeFlow): Promise<ResendOutcome> {
    const seg = this.recorders.get(ifname)?.segment(flow);
    if (!seg) return { sent: false, reason: 'nothing of it was recorded' };
    if (typeof seg === 'string') return { sent: false, reason: seg };
    this.sender ??= new SegmentSender();
    const now = performance.now();
    await this.sender.send(seg, now);
    return {
      sent: true,
      seq: seg.seq,
      syn: (seg.flags & TCP_FLAG_SYN) !== 0,
      bytes: seg.payloadLength,
      ageMs: Math.round(now - seg.recordedAt),
    };
  }

  /**
   * Watch TCP segments leaving on these interfaces (the trigger for forwarded traffic), within
   * `budget` frames a second each, SYNs unanswered after `synStallMs` included; emits
   * 'wire_retransmission' (WireFlowEvent) with the frame's MAC turned into addresses by the
   * kernel's neighbour table, 'wire_frame' (ifname, LivePacket) for each segment read (the flight
   * recorder keeps their headers), 'wire_closed' (ifname, Error) when an interface went down (the next
   * call opens it again), and 'error'.
   */
  watchWire(ifnames: string[], budget: number, synStallMs: number): void {
    if (this.closed) return;
    if (this.wire && (budget !== this.wireBudget || synStallMs !== this.wireSynStall)) {
      this.wire.close();
      this.wire = null;
    }
    if (!this.wire) {
      if (ifnames.length === 0) return;
      this.wireBudget = budget;
      this.wireSynStall = synStallMs;
      const wire = new WireWatch({ budget, synStallMs });
      wire.on('retransmission', (r: WireRetransmission) => void this.attribute(r));
      wire.on('frame', (ifname: string, p: unknown) => this.emit('wire_frame', ifname, p));
      wire.on('error', (_ifname: string, err: Error) => this.emit('error', err));
      wire.on('closed', (ifname: string, err: Error) => this.emit('wire_closed', ifname, err));
      this.wire = wire;
    }
    this.wire.setInterfaces(ifnames);
  }

  wireStatus(): WireStatus[] {
    return this.wire?.status() ?? [];
  }

  private async attribute(r: WireRetransmission): Promise<void> {
    const ifindex = this.ifindexOf(r.ifname);
    if (ifindex === undefined) return;
    let nextHops: string[];
    try {
      nextHops = (await this.macTable(ifindex, r.mac)).get(r.mac) ?? [];
    } catch (err) {
      this.emit('error', err as Error);
      return;
    }
    if (nextHops.length === 0 || this.closed) return;
    const { ifname: _ifname, mac: _mac, tsMs: _tsMs, ...flow } = r;
    const ev: WireFlowEvent = { ...flow, ifindex, nextHops };
    this.emit('wire_retransmission', ev);
  }

  /**
   * The kernel's neighbour table of an interface as MAC -> addresses: the kernel's own mapping, so
   * a frame's MAC names the next hop the kernel chose. Read at most once a second per interface
   * (again after 100 ms for a MAC the last read did not have); retransmissions of many flows at once
   * share one read.
   */
  private macTable(ifindex: number, mac: string): Promise<Map<string, string[]>> {
    const now = performance.now();
    const t = this.macTables.get(ifindex);
    const age = t ? now - t.at : Infinity;
    if (t && (age <= 100 || (age <= 1000 && (!t.read || t.read.has(mac))))) return t.byMac;
    const entry: MacTable = {
      at: now,
      read: null,
      byMac: this.rtnl.listNeighbours({ ifindex }).then((list) => {
        const m = new Map<string, string[]>();
        for (const n of list) {
          if (!n.lladdr || n.state === 'FAILED' || n.state === 'INCOMPLETE') continue;
          m.set(n.lladdr, [...(m.get(n.lladdr) ?? []), n.address]);
        }
        entry.read = m;
        return m;
      }),
    };
    // A failed read is not kept: the next retransmission reads again.
    entry.byMac.catch(() => {
      if (this.macTables.get(ifindex) === entry) this.macTables.delete(ifindex);
    });
    this.macTables.set(ifindex, entry);
    return entry.byMac;
  }

  /**
   * The pcap handle of an interface, opened once and kept (it also reports sightings). When its
   * interface goes down or away the handle closes itself ('link_closed'); the next call opens a
   * new one ('link_opened'), so a capture is back as soon as the interface is.
   */
  link(ifname: string): Promise<NeighbourLink> {
    let p = this.neighbourLinks.get(ifname);
    if (!p) {
      const opening = NeighbourLink.open(ifname).then((link) => {
        link.on('sighting', (s: NeighbourSighting) => this.emit('sighting', s, ifname));
        link.on('error', (err: Error) => this.emit('error', err));
        link.once('down', (err: Error) => this.emit('link_closed', ifname, err));
        link.once('closed', () => {
          if (this.neighbourLinks.get(ifname) === opening) this.neighbourLinks.delete(ifname);
        });
        if (this.closed) link.close();
        else this.emit('link_opened', ifname);
        return link;
      });
      opening.catch(() => {
        if (this.neighbourLinks.get(ifname) === opening) this.neighbourLinks.delete(ifname);
      });
      this.neighbourLinks.set(ifname, opening);
      p = opening;
    }
    return p;
  }

  /**
   * Open both ICMP sockets now (and load raw-socket with them): verification must not need a new
   * descriptor or module at the moment a gateway dies, when the descriptors may have run out.
   * A family that cannot open is retried at its first use, as before.
   */
  openEchoSockets(): void {
    for (const family of [4, 6] as const)
      try {
        this.echoSocket(family);
      } catch (err) {
        this.emit('error', err as Error);
      }
  }

  private echoSocket(family: 4 | 6): EchoSocket {
    let s = this.echo.get(family);
    if (!s) {
      s = EchoSocket.open(family);
      this.echo.set(family, s);
    }
    return s;
  }

  async verify(args: VerifyArgs): Promise<Verification> {
    const link = await this.link(args.ifname);
    const family = args.gateway.includes(':') ? 6 : 4;
    return verifyGateway(
      {
        purgeNeighbour: (ifindex, ip) => this.rtnl.deleteNeighbour(ifindex, ip),
        resolve: (_ifname, ip, opts) => link.resolve(ip, opts),
        neighbour: (ifindex, ip) => this.rtnl.getNeighbour(ifindex, ip),
        echo: (_family, ip, opts) => this.echoSocket(family).echo(ip, { timeoutMs: opts.timeoutMs }),
      },
      args,
    );
  }

  async probeOnce(
    gateway: string,
    ifname: string,
    timeoutMs: number,
  ): Promise<{ mac: string; rttMs: number } | null> {
    const link = await this.link(ifname);
    const r = await link.resolve(gateway, { probes: 1, intervalMs: timeoutMs });
    return r ? { mac: r.mac, rttMs: r.rttMs } : null;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.neighbourLinks.values()) {
      try {
        (await p).close();
      } catch {
        /* it never opened */
      }
    }
    this.neighbourLinks.clear();
    for (const s of this.echo.values()) s.close();
    this.echo.clear();
    for (const r of this.recorders.values()) r.close();
    this.recorders.clear();
    this.sender?.close();
    this.sender = null;
    this.wire?.close();
    this.wire = null;
    this.conntrack.close();
  }
}

/** A route through nexthop object r.nhid, given the paths of that object (a gateway or a group's). */
function fillFromObject(r: Route, objects: Map<number, NexthopObject>): void {
  if (r.gateway !== null || r.nexthops !== null) return;
  const nh = objects.get(r.nhid!);
  if (!nh) return;
  if (nh.group) {
    const hops = nh.group
      .map((m) => ({ member: objects.get(m.id), weight: m.weight }))
      .filter((m) => m.member && m.member.ifindex !== null)
      .map(({ member, weight }) => ({
        gateway: member!.gateway,
        ifindex: member!.ifindex!,
        ifname: member!.ifname ?? '',
        weight: Math.min(256, weight),
        flags: member!.flags,
      }));
    if (hops.length > 0) r.nexthops = hops;
  } else if (nh.ifindex !== null) {
    r.gateway = nh.gateway;
    r.ifindex = nh.ifindex;
    r.ifname = nh.ifname;
  }
}

/**
 * The conntrack table for ../dgd/conntrackfollow.ts: one ctnetlink socket, opened at the first
 * dump (never while conntrack is not loaded, since a ctnetlink request would load the modules).
 */
class SystemConntrack implements ConntrackPorts {
  private ct: Conntrack | null = null;

  constructor(private readonly rtnl: Rtnl) {}

  conntrackCount(): number | null {
    return conntrackCount();
  }

  async addresses(): Promise<{ ifindex: number; address: string }[]> {
    return (await this.rtnl.listAddresses()).map((a) => ({ ifindex: a.ifindex, address: a.address }));
  }

  async natEntries(address: string, limit: number): Promise<{ entries: ConntrackEntry[]; dropped: number }> {
    this.ct ??= openConntrack();
    const srcNat = { value: CT_STATUS.SRC_NAT, mask: CT_STATUS.SRC_NAT };
    const d = await this.ct.dump({ replyDst: address, status: srcNat, limit });
    return { entries: d.entries, dropped: d.dropped };
  }

  async deleteEntry(e: ConntrackEntry): Promise<boolean> {
    this.ct ??= openConntrack();
    try {
      await this.ct.delete({ orig: e.orig, zone: e.zone, id: e.id });
      return true;
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return false;
      throw err;
    }
  }

  close(): void {
    this.ct?.close();
    this.ct = null;
  }
}
