// The typed surface of the rtnetlink facade (index.ts). Everything above src/sys/ programs
// against these types, so detection logic runs against fakes as well as the kernel.
import type { Family } from '../ipaddr';

/** One path of a multipath route (struct rtnexthop, linux/rtnetlink.h). */
export interface Nexthop {
  /** Gateway address; an IPv6 gateway of an IPv4 route (RTA_VIA) is allowed. null: a device route. */
  gateway: string | null;
  ifindex: number;
  ifname: string;
  /** 1..256, as `ip route` shows it (rtnh_hops + 1). */
  weight: number;
  /** RTNH_F_* (linux/rtnetlink.h): 1 dead, 2 pervasive, 4 onlink, 16 linkdown, ... */
  flags: number;
}

/**
 * A route as the kernel reports it (RTM_NEWROUTE). JSON-serialisable: the journal writes it to
 * disk, and a Route parsed back from that JSON can be added again exactly.
 */
export interface Route {
  family: Family;
  /** CIDR; "0.0.0.0/0" / "::/0" for the default route. */
  dst: string;
  table: number;
  /** RTA_PRIORITY, 0 if absent. */
  metric: number;
  /** RTPROT_*: 2 kernel, 3 boot, 4 static, 9 ra, 16 dhcp, ... */
  protocol: number;
  /** RT_SCOPE_*: 0 universe, 200 site, 253 link, 254 host, 255 nowhere. */
  scope: number;
  /** RTN_*: 1 unicast, 2 local, 3 broadcast, 6 blackhole, 7 unreachable, ... */
  type: number;
  /** rtm_flags: RTNH_F_* of a single-path route (4 onlink, 16 linkdown) and RTM_F_*. */
  flags: number;
  tos: number;
  gateway: string | null;
  ifindex: number | null;
  ifname: string | null;
  prefsrc: string | null;
  /**
   * RTA_MULTIPATH, else null. For a route through a nexthop object (nhid) these are what the kernel
   * reports of the object (nexthop_compat_mode), or what the facade's caller filled in from it.
   */
  nexthops: Nexthop[] | null;
  /**
   * RTA_NH_ID: the route goes through nexthop object `nhid` (`ip route add ... nhid N`), and the
   * kernel takes its gateway, interface and multipath from that object. Absent otherwise.
   */
  nhid?: number;
  /** RTAX_* by name: mtu, advmss, hoplimit, lock, window, rtt, ... (numeric metrics only). */
  metrics: Record<string, number>;
  /** IPv6 RTA_PREF (ICMPV6_ROUTER_PREF_*: 0 medium, 1 high, 3 low). */
  pref?: number;
  /** Seconds until the kernel expires the route (IPv6 routes learned from RAs, or added with expires). */
  expires?: number;
  /**
   * What the typed fields do not model but an exact restore needs: the source prefix length and
   * the attributes passed back verbatim (RTA_SRC, RTA_ENCAP, RTA_FLOW, RTA_NH_ID, ...), as hex.
   * See RouteRaw; routes built by hand may leave it null.
   */
  raw: unknown;
}

/** One member of a nexthop group (struct nexthop_grp, linux/nexthop.h). */
export interface NexthopGroupMember {
  /** The member nexthop object's id. */
  id: number;
  /** 1..65536, as `ip nexthop` shows it (the kernel stores weight - 1). */
  weight: number;
}

/**
 * A nexthop object (RTM_NEWNEXTHOP, linux/nexthop.h): `ip nexthop add id 1 via GW dev IF`, a group
 * `ip nexthop add id 10 group 1,3/2`, a blackhole, or a bridge FDB nexthop. Routes name one by id
 * (Route.nhid). JSON-serialisable, like Route: the journal keeps groups as they were.
 */
export interface NexthopObject {
  id: number;
  /** nh_family: 4 or 6 for a gateway nexthop; null (AF_UNSPEC) for groups and blackholes. */
  family: Family | null;
  /**
   * nh_protocol (RTPROT_*): who installed it: 3 boot (`ip nexthop` without proto), 4 static,
   * 11 zebra (FRR), 12 bird, 16 dhcp, ... Routing daemons own what they install.
   */
  protocol: number;
  /** nh_scope (reported only). */
  scope: number;
  /** nh_flags: RTNH_F_* (4 onlink, 1 dead and 16 linkdown as reported). */
  flags: number;
  gateway: string | null;
  ifindex: number | null;
  ifname: string | null;
  /** NHA_BLACKHOLE. */
  blackhole: boolean;
  /** NHA_FDB: a bridge/VXLAN FDB nexthop, never used by routes. */
  fdb: boolean;
  /** NHA_GROUP: the members with their weights, in kernel order; null for a single nexthop. */
  group: NexthopGroupMember[] | null;
  /** NHA_GROUP_TYPE: 'mpath' (hash-threshold, the default) or 'resilient'; null for a single nexthop. */
  groupType: 'mpath' | 'resilient' | null;
  /**
   * What an exact re-creation needs beyond the typed fields, as [NHA_* type, hex] pairs passed back
   * verbatim: NHA_ENCAP_TYPE, NHA_ENCAP, and a resilient group's settable NHA_RES_GROUP members.
   */
  raw: [number, string][] | null;
}

export type NeighState =
  'INCOMPLETE' | 'REACHABLE' | 'STALE' | 'DELAY' | 'PROBE' | 'FAILED' | 'NOARP' | 'PERMANENT' | 'NONE';

export interface Neighbour {
  family: Family;
  ifindex: number;
  ifname: string;
  address: string;
  /** aa:bb:cc:dd:ee:ff, or null while unresolved. */
  lladdr: string | null;
  state: NeighState;
  /** NTF_* (linux/neighbour.h): 0x80 router, 0x08 proxy, ... */
  flags: number;
}

export interface Link {
  ifindex: number;
  ifname: string;
  mac: string | null;
  /** IFF_UP: administratively up. */
  up: boolean;
  /** IFF_RUNNING: operationally up (carrier). */
  running: boolean;
  mtu: number;
}

export interface Address {
  family: Family;
  ifindex: number;
  ifname: string;
  address: string;
  prefixLength: number;
  scope: number;
}

/**
 * The rest of the kernel's lookup key for one flow (struct flowi4/flowi6, include/net/flow.h), as
 * RTM_GETROUTE takes it (include/uapi/linux/rtnetlink.h): ECMP with an L4 hash
 * (fib_multipath_hash_policy=1) picks a path by protocol and ports, and `ip rule` selects a table by
 * fwmark, uidrange, ipproto, sport, dport, iif and oif. A lookup without them answers for a
 * different flow. Every field is optional; absent fields are left out of the request.
 */
export interface FlowKey {
  /** RTA_IP_PROTO (u8): IPPROTO_TCP (6), IPPROTO_UDP (17), or ICMP/ICMPv6 of the family. */
  proto?: number;
  /** RTA_SPORT (__be16): the flow's source port. */
  sport?: number;
  /** RTA_DPORT (__be16): the flow's destination port. */
  dport?: number;
  /** RTA_MARK (u32): the socket's or packet's fwmark. */
  mark?: number;
  /**
   * RTA_UID (u32): the socket owner's uid. Without it the kernel looks up as the caller (root)
   * for an output lookup, so a `uidrange` rule would not match another user's socket.
   */
  uid?: number;
  /** RTA_IIF (u32): the interface a forwarded packet came in on (an input lookup; needs a source). */
  iif?: number;
  /** RTA_OIF (u32): the interface the socket is bound to (SO_BINDTODEVICE). */
  oif?: number;
}

/** What the kernel would do with a packet to `dst` (RTM_GETROUTE, RTM_F_LOOKUP_TABLE). */
export interface RouteLookup {
  gateway: string | null;
  ifindex: number;
  ifname: string;
  table: number;
  prefsrc: string | null;
  dst: string;
}

export type RtnlEvent =
  | { kind: 'neighbour'; op: 'new' | 'del'; neighbour: Neighbour }
  | { kind: 'route'; op: 'new' | 'del'; route: Route }
  | { kind: 'link'; op: 'new' | 'del'; link: Link }
  /**
   * RTNLGRP_NEXTHOP. When a nexthop object is deleted the kernel removes every route using it
   * without an RTM_DELROUTE of its own, and a group replaced in place changes its routes without an
   * RTM_NEWROUTE: whoever tracks routes re-reads them on these events too.
   */
  | { kind: 'nexthop'; op: 'new' | 'del'; nexthop: NexthopObject };

export type RtnlGroup = 'neighbour' | 'route' | 'link' | 'nexthop';

export interface RtnlSubscription {
  close(): void;
  [Symbol.dispose](): void;
}

export interface SubscribeOptions {
  /**
   * Called when the subscription socket fails, e.g. ENOBUFS: the kernel dropped notifications
   * because we read too slowly, so the caller should re-read the state it tracks. Without it such
   * errors are ignored and the subscription goes on.
   */
  onError?: (err: Error) => void;
}

export interface Rtnl {
  listRoutes(opts?: { family?: Family; table?: number }): Promise<Route[]>;
  /** NLM_F_CREATE|NLM_F_EXCL, or NLM_F_CREATE|NLM_F_REPLACE with `replace`. */
  addRoute(r: Route, opts?: { replace?: boolean }): Promise<void>;
  replaceRoute(r: Route): Promise<void>;
  /** Deletes exactly that route (dst, table, metric, tos, type, protocol, scope, gateway/nexthops). */
  deleteRoute(r: Route): Promise<void>;
  /** Which gateway and interface the kernel would use for `dst`. */
  lookupRoute(dst: string, opts?: { src?: string } & FlowKey): Promise<RouteLookup>;
  /** Every nexthop object (RTM_GETNEXTHOP dump), both families and groups. */
  listNexthops(): Promise<NexthopObject[]>;
  /** One nexthop object by id; null when there is none. */
  getNexthop(id: number): Promise<NexthopObject | null>;
  /** NLM_F_CREATE|NLM_F_EXCL, or NLM_F_CREATE|NLM_F_REPLACE with `replace` (`ip nexthop replace`). */
  addNexthop(nh: NexthopObject, opts?: { replace?: boolean }): Promise<void>;
  replaceNexthop(nh: NexthopObject): Promise<void>;
  /** Deletes the object by id; the kernel also removes every route using it. */
  deleteNexthop(id: number): Promise<void>;
  listNeighbours(opts?: { family?: Family; ifindex?: number }): Promise<Neighbour[]>;
  /** ENOENT/ESRCH means already gone: resolves. */
  deleteNeighbour(ifindex: number, address: string): Promise<void>;
  getNeighbour(ifindex: number, address: string): Promise<Neighbour | null>;
  listLinks(): Promise<Link[]>;
  linkByName(name: string): Promise<Link | null>;
  linkByIndex(ifindex: number): Promise<Link | null>;
  listAddresses(opts?: { family?: Family }): Promise<Address[]>;
  /**
   * Multicast subscription on its own socket: RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE/IPV6_ROUTE, RTNLGRP_LINK,
   * RTNLGRP_NEXTHOP.
   * A neighbour event in state FAILED means resolution failed: the kernel also reports a deleted
   * entry (ip neigh del, deleteNeighbour) as FAILED just before its 'del'; that FAILED is suppressed
   * here (held 25 ms), so a purge shows up as 'del' only. Cloned IPv6 routes (PMTU exceptions) are
   * not reported. The subscription is in place when the promise resolves.
   */
  subscribe(
    groups: RtnlGroup[],
    onEvent: (ev: RtnlEvent) => void,
    opts?: SubscribeOptions,
  ): Promise<RtnlSubscription>;
  /** Idempotent; pending requests reject. */
  close(): void;
  [Symbol.dispose](): void;
}

export interface OpenRtnlOptions {
  /** Per-request timeout in milliseconds (default 5000). */
  timeoutMs?: number;
}
