// The detection engine's view of the system. Adapters over src/sys/ implement these in the daemon;
// unit tests implement them with fakes, so every decision is tested without a kernel or a clock.
import type { VerifyRequest, VerifyResult } from './verify';
import type { Family } from '../sys/ipaddr';
import type { FlowKey } from '../sys/rtnl';
import type { WireInterfaceStatus, WireRetransmission } from '../sys/packet';
import type { ConntrackEntry } from '../sys/conntrack';

export type { FlowKey, ConntrackEntry };

/** A nexthop of a multipath route (RTA_MULTIPATH), as src/sys/rtnl/ reports it. */
export interface KernelNexthop {
  gateway: string | null;
  ifindex: number;
  ifname?: string | null;
  weight: number;
  flags?: number;
}

/**
 * A kernel route, as src/sys/rtnl/ reports it. The engine reads only these fields; every other
 * field the facade puts on the object (protocol, scope, metrics, raw attributes...) is carried
 * through untouched so a withdrawn route is put back exactly.
 */
export interface KernelRoute {
  family: Family;
  dst: string;
  table: number;
  metric: number;
  tos: number;
  gateway: string | null;
  ifindex: number | null;
  ifname?: string | null;
  nexthops: KernelNexthop[] | null;
  /**
   * RTPROT_* of the route: who installed it (2 kernel, 3 boot, 4 static, 9 ra, 11 zebra, 12 bird,
   * 16 dhcp, ...). Events name the owner of a route put back through a dead gateway with it.
   */
  protocol?: number;
  /**
   * The route goes through nexthop object `nhid` (RTA_NH_ID). Its gateway / nexthops above are the
   * object's (reported by the kernel or filled in by the adapter): a single object's route is
   * withdrawn and restored like any route, a group is changed instead of its routes.
   */
  nhid?: number;
}

/**
 * A nexthop object as src/sys/rtnl/ reports it (`ip nexthop`). The engine reads these fields;
 * the rest (scope, flags, raw attributes) is carried through so a group is put back exactly.
 */
export interface KernelNexthopObject {
  id: number;
  family: Family | null;
  /** RTPROT_* of whoever installed the object: 11 zebra (FRR), 12 bird, 4 static, ... */
  protocol: number;
  gateway: string | null;
  ifindex: number | null;
  ifname?: string | null;
  blackhole: boolean;
  fdb: boolean;
  group: { id: number; weight: number }[] | null;
  groupType: 'mpath' | 'resilient' | null;
}

/** What one cheap sock_diag scan reports per TCP socket (no tcp_info needed). */
export interface ScannedSocket {
  family: Family;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  state: string;
  inode: number;
  /** inet_diag_msg.idiag_timer: 1 = retransmit timer pending. */
  timer: number;
  /** inet_diag_msg.idiag_retrans: consecutive retransmissions of the current segment. */
  timerRetransmits: number;
  /** inet_diag_msg.idiag_expires: milliseconds until the timer fires (the next retransmission). */
  timerExpiresMs: number;
  /** Bound interface (SO_BINDTODEVICE), 0 or absent if none. */
  ifindex?: number;
  /** The owner's uid (inet_diag_msg.idiag_uid); absent if unknown. */
  uid?: number;
  /** SO_MARK (INET_DIAG_MARK); absent if the kernel did not say. */
  mark?: number;
}

export interface RouteChoice {
  gateway: string | null;
  ifindex: number;
  ifname: string;
}

/**
 * A TCP segment seen leaving again towards a next hop (src/sys/packet/wirewatch.ts): the trigger
 * for traffic the host forwards, which has no local socket to scan.
 */
export type WireFlowEvent = Omit<WireRetransmission, 'ifname' | 'mac' | 'tsMs'> & {
  ifindex: number;
  /** The addresses the kernel's neighbour table maps the frame's destination MAC to on ifindex. */
  nextHops: string[];
};

/** What the wire watch reports per interface (`status`). */
export type WireStatus = WireInterfaceStatus;

/** The outcome of one verification (src/dgd/verify.ts), without the names the engine already has. */
export type Verification = Omit<VerifyResult, 'gateway' | 'interface'>;

/** What the engine asks a verification for (src/dgd/verify.ts), minus the abort signal. */
export type VerifyArgs = Omit<
  VerifyRequest,
  'signal' | 'knownMac' | 'allowMacChange' | 'macPinned' | 'untilDeadline'
> & {
  knownMac: string | null;
  allowMacChange: boolean;
  macPinned?: boolean;
  untilDeadline?: boolean;
};

export interface ResumeFlow {
  family: 4 | 6;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  /** The rest of the flow's route lookup key (./flowkey.ts). */
  key?: FlowKey;
}

export type ResendOutcome =
  { sent: true; seq: number; syn: boolean; bytes: number; ageMs: number } | { sent: false; reason: string };

/** What resuming stuck flows needs from the system (./resume.ts; src/dgd/systemports.ts; fakes in tests). */
export interface ResumePorts {
  lookupRoute(dst: string, src: string | null, key?: FlowKey): Promise<RouteChoice>;
  /** The sockets retransmitting now (the detection scan's dump, minRetransmits 1). */
  scanSockets(): Promise<ScannedSocket[]>;
  /**
   * Record the segments these flows send on this interface (replaces the interface's set; an empty
   * set closes its capture). Called after every scan: also what reopens a capture that went down.
   */
  watchFlows(ifname: string, flows: ResumeFlow[]): void;
  /** Forget what was recorded of a flow: its socket moved on. */
  forgetFlow(ifname: string, flow: ResumeFlow): void;
  /** Send the flow's recorded segment again, through the routes as they are now. */
  resendSegment(ifname: string, flow: ResumeFlow): Promise<ResendOutcome>;
}

/** What conntrack following needs from the system (./conntrackfollow.ts; src/dgd/systemports.ts; fakes in tests). */
export interface ConntrackPorts {
  /**
   * Entries in this namespace's conntrack table, or null when conntrack is not loaded (then there
   * is nothing to follow, and nothing is asked of the kernel).
   */
  conntrackCount(): number | null;
  /** This host's addresses of global scope, by interface (the addresses source NAT can bind to). */
  addresses(): Promise<{ ifindex: number; address: string }[]>;
  /**
   * Entries with source NAT whose reply goes to `address` (bound to it), filtered by the kernel
   * where it can; at most `limit`, the rest counted in `dropped`.
   */
  natEntries(address: string, limit: number): Promise<{ entries: ConntrackEntry[]; dropped: number }>;
  /** Delete that very entry (original tuple, zone, id); false when it is gone already. */
  deleteEntry(entry: ConntrackEntry): Promise<boolean>;
}

export interface DgdPorts {
  /**
   * One cheap scan of TCP sockets that can retransmit (established, SYN-SENT, closing states);
   * with minRetransmits > 0, only sockets whose retransmit timer is pending with at least that many
   * retransmissions (filtered before any object is made for the others). With synSent, every
   * SYN-SENT socket besides (a second dump filtered by state): connection attempts whose SYN has had
   * no answer yet, for the aggregate trigger.
   */
  scanSockets(opts: { minRetransmits: number; synSent?: boolean }): Promise<ScannedSocket[]>;
  /**
   * How many TCP sockets the scan's states hold (for status), counted on the worker thread from
   * the kernel's dump without an object per socket.
   */
  countSockets(): Promise<number>;
  /**
   * The namespace's count of retransmitted TCP segments (Tcp: RetransSegs in /proc/net/snmp,
   * IPv4 and IPv6 alike). Reading it costs microseconds, a sock_diag dump tens of milliseconds
   * (the kernel walks its whole established hash), so dumps run only when this moves.
   */
  retransmitCounter(): number;
  /** Tcp: ActiveOpens (connect() calls that sent a SYN): moves while connections are attempted. */
  activeOpensCounter(): number;
  /** Delete a neighbour entry (no error if it is already gone). */
  flushNeighbour(ifindex: number, address: string): Promise<void>;
  /**
   * Which gateway and interface the kernel would use for a flow to dst (from src), looked up by the
   * flow's whole key (./flowkey.ts): without it an ECMP hash or a policy rule may answer for
   * another flow.
   */
  lookupRoute(dst: string, src: string | null, key?: FlowKey): Promise<RouteChoice>;
  /** Every route of the given tables (numbers), both families. */
  listRoutes(tables: number[]): Promise<KernelRoute[]>;
  /** Every nexthop object (`ip nexthop`); empty on kernels without them. */
  listNexthops(): Promise<KernelNexthopObject[]>;
  /** `ip nexthop replace`: a group with other members, or back as it was. */
  replaceNexthop(nh: KernelNexthopObject): Promise<void>;
  addRoute(route: KernelRoute): Promise<void>;
  replaceRoute(route: KernelRoute): Promise<void>;
  deleteRoute(route: KernelRoute): Promise<void>;
  /** Purge the neighbour entry and re-resolve by ARP/NDP; ARP/NDP decides. */
  verify(args: VerifyArgs): Promise<Verification>;
  /** One ARP request / neighbour solicitation without purging (active probing); null = no answer in time. */
  probeOnce(
    gateway: string,
    ifname: string,
    timeoutMs: number,
  ): Promise<{ mac: string; rttMs: number } | null>;
  /** Interface name of an index, for display. */
  ifname(ifindex: number): string;
  /** Record retransmitting flows' segments on an interface (./resume.ts); absent: flows are not resumed. */
  watchFlows?: ResumePorts['watchFlows'];
  forgetFlow?: ResumePorts['forgetFlow'];
  /** Send a flow's latest recorded segment again through the current routes (./resume.ts). */
  resendSegment?: ResumePorts['resendSegment'];
  /** The conntrack table (./conntrackfollow.ts); absent: entries never follow the routes. */
  conntrack?: ConntrackPorts;
  /** The wire watch per interface (the forwarded-traffic trigger); absent or empty: not watching. */
  wireStatus?(): WireStatus[];
  /** Flow resume's recorder per interface that has one now (one exists only while it has flows). */
  recorderStats?(): Record<string, RecorderStatus>;
}

/** One interface's flow-resume recorder, as status and metrics show it. */
export interface RecorderStatus {
  /** Flows it records now. */
  flows: number;
  /** Its capture (a packet socket) is open. */
  open: boolean;
  /** Captures it opened (its filter changed, or it came back after its interface went down). */
  opens: number;
  /** Frames it read. */
  frames: number;
}

/** Where withdrawn routes and the on/off switch are kept across restarts. */
export interface DgdStore {
  loadJournal(): Promise<JournalEntry[]>;
  /** Nexthop groups with members withdrawn (kept in the same journal file). */
  loadGroupJournal(): Promise<GroupJournalEntry[]>;
  saveJournal(entries: JournalEntry[], groups?: GroupJournalEntry[]): Promise<void>;
  loadEnabled(): Promise<boolean | null>;
  saveEnabled(enabled: boolean): Promise<void>;
  /** The gateways' known MACs ("address%ifname" -> MAC), kept across restarts; absent: not kept. */
  loadMacs?(): Promise<Record<string, string>>;
  saveMacs?(macs: Record<string, string>): Promise<void>;
}

/**
 * One route the engine has changed: the original as it was in the kernel, and the gateways
 * (keys "address%ifindex") whose nexthops are withdrawn from it. A single-path route with its
 * gateway removed is deleted; a multipath route keeps its other nexthops.
 */
export interface JournalEntry {
  key: string;
  /** The route as it was, with its interface names (ifname, nexthops[].ifname): names decide where it goes back. */
  original: KernelRoute;
  removed: string[];
  at: string;
  /**
   * The boot it was withdrawn in (/proc/sys/kernel/random/boot_id); absent in journals written
   * before boot ids were recorded. Informational: ifindexes are never trusted across restarts.
   */
  boot_id?: string | null;
}

/**
 * One nexthop group the engine has changed (`ip nexthop replace id N group ...` without the dead
 * members): the group as it was, each member's gateway key, and the gateway keys withdrawn from it.
 * The routes using the group are not touched; they follow the group.
 */
export interface GroupJournalEntry {
  id: number;
  original: KernelNexthopObject;
  /** Member object id -> gateway key ("address%ifindex"), as they were when the group was changed. */
  members: Record<string, string | null>;
  removed: string[];
  at: string;
  /** The boot the group was changed in (/proc/sys/kernel/random/boot_id); nexthop objects die with it. */
  boot_id?: string | null;
}
