// The rtnetlink facade: routes, neighbours, links and addresses of this process's network
// namespace, Promise-based, with a timeout on every call and errors that carry the kernel's errno.
//
// Built on the `netlink` package (mildsunrise/node_netlink): its native part is only a socket with
// bind/sendmsg/recvmsg/poll, prebuilt for x64, so all of rtnetlink (message layout, attributes,
// RTA_MULTIPATH, multicast events) is TypeScript here, in codec.ts, routes.ts, nexthop.ts and
// channel.ts.
import { getSystemErrorMap } from 'node:util';
import { SystemError, TimeoutError } from '../../errors';
import {
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_EXCL,
  NLM_F_REPLACE,
  RTM,
  RTM_F_CLONED,
  RTNLGRP,
  decodeAddress,
  decodeLink,
  decodeNeighbour,
  encodeFamilyDump,
  encodeLinkKey,
  encodeNeighbourDump,
  encodeNeighbourKey,
  rtmName,
  u32,
} from './codec';
import {
  decodeRoute,
  encodeRoute,
  encodeRouteDump,
  encodeRouteLookup,
  validateRoute,
  type ResolvedRoute,
} from './routes';
import { invalidArg, parseCidr, parseIp, type Family } from '../ipaddr';
import {
  decodeNexthop,
  describeNexthop,
  encodeNexthop,
  encodeNexthopDump,
  encodeNexthopKey,
  validateNexthop,
} from './nexthop';
import { describeRoute } from './format';
import { NetlinkChannel, NetlinkErrno, type NetlinkMessage } from './channel';
import type {
  Address,
  Link,
  Neighbour,
  NexthopObject,
  OpenRtnlOptions,
  Route,
  FlowKey,
  RouteLookup,
  Rtnl,
  RtnlEvent,
  RtnlGroup,
  RtnlSubscription,
  SubscribeOptions,
} from './types';

const DEFAULT_TIMEOUT_MS = 5000;
const IFNAMSIZ = 16;
/** How long a neighbour FAILED event waits for the RTM_DELNEIGH that would show it was a deletion. */
const FAILED_HOLD_MS = 25;

/** What an errno means for the operation at hand; the generic ones apply to every operation. */
type Hints = Record<string, string>;
const GENERIC_HINTS: Hints = {
  EPERM: 'needs CAP_NET_ADMIN (run as root)',
  EACCES: 'needs CAP_NET_ADMIN (run as root)',
  ENODEV: 'no such network interface',
  EBADF: 'the rtnetlink socket is closed',
  ENOBUFS: 'the kernel dropped netlink messages (socket receive buffer full)',
  EMSGSIZE: 'a netlink message was larger than the receive buffer',
};
const ROUTE_HINTS: Hints = {
  EEXIST: 'the route already exists',
  ESRCH: 'no such route',
  ENOENT: 'no such route or table',
  ENETUNREACH:
    'the gateway is not on a directly connected network (add it with onlink, or a route to it first)',
  EINVAL: 'the kernel rejected the route as invalid (check gateway, interface, scope and type)',
};

function strerror(errno: number): string {
  const e = getSystemErrorMap().get(-errno);
  return e ? e[1].charAt(0).toLowerCase() + e[1].slice(1) : `errno ${errno}`;
}

/** Turn a channel failure into the project's errors, naming the operation and the object. */
function rtnlError(err: unknown, what: string, syscall: string, hints: Hints = {}): Error {
  if (err instanceof TimeoutError)
    return new TimeoutError(`ETIMEDOUT: ${what}: the kernel did not answer in time`);
  if (err instanceof NetlinkErrno) {
    const hint = hints[err.code] ?? GENERIC_HINTS[err.code] ?? strerror(err.errno);
    return new SystemError(err.code, err.errno, err.syscall || syscall, `${err.code}: ${what}: ${hint}`, {
      cause: err,
    });
  }
  return err instanceof Error ? err : new Error(String(err));
}

function checkIfindex(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v))
    throw invalidArg(`${what} must be an interface index (integer), not ${JSON.stringify(v)}`, 'type');
  if (v < 1 || v > 0x7fffffff) throw invalidArg(`${what} must be a positive interface index, not ${v}`);
  return v;
}

function checkInt(v: unknown, what: string, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v))
    throw invalidArg(`${what} must be an integer, not ${JSON.stringify(v)}`, 'type');
  if (v < 0 || v > max) throw invalidArg(`${what} must be in 0..${max}, not ${v}`);
  return v;
}

/**
 * The flow key checked before it reaches the kernel. RTA_IP_PROTO takes only TCP, UDP and the
 * family's ICMP (rtm_getroute_parse_ip_proto, net/ipv4/netlink.c): anything else is EOPNOTSUPP.
 */
function checkFlowKey(key: FlowKey, family: Family): FlowKey {
  const out: FlowKey = {};
  if (key.proto !== undefined) {
    const icmp = family === 4 ? 1 : 58;
    if (key.proto !== 6 && key.proto !== 17 && key.proto !== icmp)
      throw invalidArg(`proto must be 6 (tcp), 17 (udp) or ${icmp} (icmp), not ${JSON.stringify(key.proto)}`);
    out.proto = key.proto;
  }
  if (key.sport !== undefined) out.sport = checkInt(key.sport, 'sport', 0xffff);
  if (key.dport !== undefined) out.dport = checkInt(key.dport, 'dport', 0xffff);
  if (key.mark !== undefined) out.mark = checkInt(key.mark, 'mark', 0xffffffff);
  if (key.uid !== undefined) out.uid = checkInt(key.uid, 'uid', 0xffffffff);
  if (key.iif !== undefined) out.iif = checkIfindex(key.iif, 'iif');
  if (key.oif !== undefined) out.oif = checkIfindex(key.oif, 'oif');
  return out;
}

function checkFamily(v: unknown): Family | undefined {
  if (v === undefined) return undefined;
  if (v !== 4 && v !== 6) throw invalidArg(`family must be 4 or 6, not ${JSON.stringify(v)}`);
  return v;
}

function checkIfname(name: unknown, what: string): string {
  if (typeof name !== 'string') throw invalidArg(`${what} must be a string, not ${typeof name}`, 'type');
  if (
    name.length === 0 ||
    Buffer.byteLength(name) >= IFNAMSIZ ||
    /[\s/:]/.test(name) ||
    name === '.' ||
    name === '..'
  )
    throw invalidArg(`${what} "${name}" is not a valid interface name`);
  return name;
}

class RtnlSocket implements Rtnl {
  private readonly channel: NetlinkChannel;
  private readonly timeoutMs: number;
  /** ifindex -> name; names of removed links are kept, so late events still name them. */
  private readonly names = new Map<number, string>();
  private readonly subscriptions = new Set<RtnlSubscription>();
  private closed = false;

  constructor(opts: OpenRtnlOptions) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.channel = new NetlinkChannel();
  }

  private async call(
    type: number,
    flags: number,
    payload: Buffer,
    what: string,
    hints?: Hints,
  ): Promise<NetlinkMessage[]> {
    try {
      return await this.channel.request(type, flags, payload, this.timeoutMs, rtmName(type));
    } catch (err) {
      throw rtnlError(err, what, rtmName(type), hints);
    }
  }

  private readonly nameOf = (ifindex: number): string => this.names.get(ifindex) ?? '';

  /** Decode with interface names, refreshing the name cache once if some index is unknown. */
  private async withNames<T>(decode: (name: (i: number) => string) => T): Promise<T> {
    let missing = false;
    const first = decode((i) => {
      const n = this.names.get(i);
      if (n === undefined) missing = true;
      return n ?? '';
    });
    if (!missing) return first;
    await this.listLinks();
    return decode(this.nameOf);
  }

  // ---- routes ----

  async listRoutes(opts: { family?: Family; table?: number } = {}): Promise<Route[]> {
    const family = checkFamily(opts.family);
    if (
      opts.table !== undefined &&
      (!Number.isInteger(opts.table) || opts.table < 1 || opts.table > 0xffffffff)
    )
      throw invalidArg(`table must be a table id from 1 to 4294967295, not ${JSON.stringify(opts.table)}`);
    const families: Family[] = family ? [family] : [4, 6];
    const msgs: NetlinkMessage[] = [];
    for (const f of families)
      msgs.push(...(await this.call(RTM.GETROUTE, NLM_F_DUMP, encodeRouteDump(f), `listing IPv${f} routes`)));
    const routes = await this.withNames((name) =>
      msgs
        .filter((m) => m.type === RTM.NEWROUTE)
        .map((m) => decodeRoute(m.data, name))
        .filter((r): r is Route => r !== null && !(r.flags & RTM_F_CLONED)),
    );
    return opts.table === undefined ? routes : routes.filter((r) => r.table === opts.table);
  }

  /** Validate a route and resolve interface names to indexes (names win: indexes change when an interface is recreated). */
  private async resolveRoute(input: Route): Promise<ResolvedRoute> {
    const route = validateRoute(input);
    const dst = parseCidr(route.dst, 'route.dst', route.family);
    const resolve = async (
      ifname: string | null | undefined,
      ifindex: number | null | undefined,
      what: string,
    ): Promise<number | null> => {
      if (ifname) {
        const link = await this.linkByName(checkIfname(ifname, `${what}.ifname`));
        if (!link)
          throw invalidArg(`unknown interface "${ifname}" (${what}.ifname of ${describeRoute(route)})`);
        return link.ifindex;
      }
      if (ifindex !== null && ifindex !== undefined) return checkIfindex(ifindex, `${what}.ifindex`);
      return null;
    };
    const ifindex = await resolve(route.ifname, route.ifindex, 'route');
    const nexthopIfindexes: number[] = [];
    for (const [i, h] of (route.nexthops ?? []).entries()) {
      const idx = await resolve(h.ifname, h.ifindex, `route.nexthops[${i}]`);
      if (idx === null) throw invalidArg(`route.nexthops[${i}] needs an interface (ifname or ifindex)`);
      nexthopIfindexes.push(idx);
    }
    return { route, dst: { bytes: dst.bytes, prefix: dst.prefix }, ifindex, nexthopIfindexes };
  }

  async addRoute(r: Route, opts: { replace?: boolean } = {}): Promise<void> {
    const rr = await this.resolveRoute(r);
    const flags = NLM_F_CREATE | (opts.replace ? NLM_F_REPLACE : NLM_F_EXCL);
    const verb = opts.replace ? 'replacing' : 'adding';
    await this.call(
      RTM.NEWROUTE,
      flags,
      encodeRoute(rr, 'new'),
      `${verb} ${describeRoute(rr.route)}`,
      ROUTE_HINTS,
    );
  }

  replaceRoute(r: Route): Promise<void> {
    return this.addRoute(r, { replace: true });
  }

  async deleteRoute(r: Route): Promise<void> {
    const rr = await this.resolveRoute(r);
    await this.call(
      RTM.DELROUTE,
      0,
      encodeRoute(rr, 'del'),
      `deleting ${describeRoute(rr.route)}`,
      ROUTE_HINTS,
    );
  }

  async lookupRoute(dst: string, opts: { src?: string } & FlowKey = {}): Promise<RouteLookup> {
    const target = parseIp(dst, 'destination');
    const key = checkFlowKey(opts, target.family);
    const src = opts.src === undefined ? undefined : parseIp(opts.src, 'source address', target.family).bytes;
    const what = `looking up the route to ${dst}`;
    const msgs = await this.call(RTM.GETROUTE, 0, encodeRouteLookup(target, key, src), what, {
      ENETUNREACH: 'no route to that network',
      EHOSTUNREACH: 'no route to that host',
      EINVAL: 'the kernel rejected the lookup (is the source address local, or, with iif, not local?)',
    });
    const reply = msgs.find((m) => m.type === RTM.NEWROUTE);
    const route = reply ? await this.withNames((name) => decodeRoute(reply.data, name)) : null;
    if (!route)
      throw new SystemError('EIO', 5, 'RTM_GETROUTE', `EIO: ${what}: the kernel answered without a route`);
    // A multipath answer is already resolved to one path; keep the gateway of that path.
    const hop = route.nexthops?.[0];
    const ifindex = route.ifindex ?? hop?.ifindex ?? 0;
    return {
      gateway: route.gateway ?? hop?.gateway ?? null,
      ifindex,
      ifname: route.ifname ?? hop?.ifname ?? this.nameOf(ifindex),
      table: route.table,
      prefsrc: route.prefsrc,
      dst,
    };
  }

  // ---- nexthop objects (linux/nexthop.h) ----

  async listNexthops(): Promise<NexthopObject[]> {
    let msgs: NetlinkMessage[];
    try {
      msgs = await this.call(RTM.GETNEXTHOP, NLM_F_DUMP, encodeNexthopDump(), 'listing nexthop objects', {
        EOPNOTSUPP: 'this kernel has no nexthop objects (Linux 5.3+)',
      });
    } catch (err) {
      // A kernel without nexthop objects has none to list.
      if (err instanceof SystemError && (err.code === 'EOPNOTSUPP' || err.code === 'EINVAL')) return [];
      throw err;
    }
    return this.withNames((name) =>
      msgs
        .filter((m) => m.type === RTM.NEWNEXTHOP)
        .map((m) => decodeNexthop(m.data, name))
        .filter((n): n is NexthopObject => n !== null),
    );
  }

  async getNexthop(id: number): Promise<NexthopObject | null> {
    const key = encodeNexthopKey(id);
    let msgs: NetlinkMessage[];
    try {
      msgs = await this.call(RTM.GETNEXTHOP, 0, key, `reading nexthop id ${id}`);
    } catch (err) {
      if (err instanceof SystemError && (err.code === 'ENOENT' || err.code === 'ESRCH')) return null;
      throw err;
    }
    const reply = msgs.find((m) => m.type === RTM.NEWNEXTHOP);
    return reply ? this.withNames((name) => decodeNexthop(reply.data, name)) : null;
  }

  async addNexthop(input: NexthopObject, opts: { replace?: boolean } = {}): Promise<void> {
    const nh = validateNexthop(input);
    let ifindex: number | null = null;
    if (!nh.group && !nh.blackhole) {
      if (nh.ifname) {
        const link = await this.linkByName(checkIfname(nh.ifname, 'nexthop.ifname'));
        if (!link)
          throw invalidArg(`unknown interface "${nh.ifname}" (nexthop.ifname of ${describeNexthop(nh)})`);
        ifindex = link.ifindex;
      } else if (nh.ifindex !== null && nh.ifindex !== undefined)
        ifindex = checkIfindex(nh.ifindex, 'nexthop.ifindex');
    }
    const flags = NLM_F_CREATE | (opts.replace ? NLM_F_REPLACE : NLM_F_EXCL);
    await this.call(
      RTM.NEWNEXTHOP,
      flags,
      encodeNexthop(nh, ifindex),
      `${opts.replace ? 'replacing' : 'adding'} ${describeNexthop(nh)}`,
      {
        EEXIST: 'a nexthop object with that id already exists',
        ENOENT: 'a group member does not exist',
        EINVAL: 'the kernel rejected the nexthop object (check gateway, interface, group members and type)',
        ENETUNREACH: 'the gateway is not on a directly connected network (add it with onlink)',
      },
    );
  }

  replaceNexthop(nh: NexthopObject): Promise<void> {
    return this.addNexthop(nh, { replace: true });
  }

  async deleteNexthop(id: number): Promise<void> {
    await this.call(RTM.DELNEXTHOP, 0, encodeNexthopKey(id), `deleting nexthop id ${id}`, {
      ENOENT: 'no such nexthop object',
    });
  }

  // ---- neighbours ----

  async listNeighbours(opts: { family?: Family; ifindex?: number } = {}): Promise<Neighbour[]> {
    const family = checkFamily(opts.family);
    const ifindex = opts.ifindex === undefined ? undefined : checkIfindex(opts.ifindex, 'ifindex');
    const msgs: NetlinkMessage[] = [];
    // One dump per family: an AF_UNSPEC dump would walk every neighbour table, bridge FDBs included.
    for (const f of family ? [family] : ([4, 6] as Family[]))
      msgs.push(
        ...(await this.call(
          RTM.GETNEIGH,
          NLM_F_DUMP,
          encodeNeighbourDump(f, ifindex),
          `listing IPv${f} neighbours`,
        )),
      );
    const all = await this.withNames((name) =>
      msgs
        .filter((m) => m.type === RTM.NEWNEIGH)
        .map((m) => decodeNeighbour(m.data, name))
        .filter((n): n is Neighbour => n !== null),
    );
    return ifindex === undefined ? all : all.filter((n) => n.ifindex === ifindex);
  }

  async deleteNeighbour(ifindex: number, address: string): Promise<void> {
    checkIfindex(ifindex, 'ifindex');
    const addr = parseIp(address, 'neighbour address');
    try {
      await this.call(
        RTM.DELNEIGH,
        0,
        encodeNeighbourKey(ifindex, addr),
        `deleting neighbour ${address} on ${this.ifLabel(ifindex)}`,
      );
    } catch (err) {
      // Already gone (aged out, flushed, or never resolved): the caller's goal is met.
      if (err instanceof SystemError && (err.code === 'ENOENT' || err.code === 'ESRCH')) return;
      throw err;
    }
  }

  async getNeighbour(ifindex: number, address: string): Promise<Neighbour | null> {
    checkIfindex(ifindex, 'ifindex');
    const addr = parseIp(address, 'neighbour address');
    let msgs: NetlinkMessage[];
    try {
      msgs = await this.call(
        RTM.GETNEIGH,
        0,
        encodeNeighbourKey(ifindex, addr),
        `reading neighbour ${address} on ${this.ifLabel(ifindex)}`,
      );
    } catch (err) {
      if (err instanceof SystemError && (err.code === 'ENOENT' || err.code === 'ESRCH')) return null;
      throw err;
    }
    const reply = msgs.find((m) => m.type === RTM.NEWNEIGH);
    return reply ? this.withNames((name) => decodeNeighbour(reply.data, name)) : null;
  }

  private ifLabel(ifindex: number): string {
    const n = this.names.get(ifindex);
    return n ? `${n} (ifindex ${ifindex})` : `ifindex ${ifindex}`;
  }

  // ---- links and addresses ----

  private remember(links: Link[]): Link[] {
    for (const l of links) this.names.set(l.ifindex, l.ifname);
    return links;
  }

  async listLinks(): Promise<Link[]> {
    const msgs = await this.call(RTM.GETLINK, NLM_F_DUMP, encodeFamilyDump(undefined, 16), 'listing links');
    return this.remember(
      msgs
        .filter((m) => m.type === RTM.NEWLINK)
        .map((m) => decodeLink(m.data))
        .filter((l): l is Link => l !== null),
    );
  }

  async linkByName(name: string): Promise<Link | null> {
    checkIfname(name, 'interface name');
    return this.getLink(encodeLinkKey(0, name), `reading link ${name}`);
  }

  async linkByIndex(ifindex: number): Promise<Link | null> {
    checkIfindex(ifindex, 'ifindex');
    return this.getLink(encodeLinkKey(ifindex), `reading link ${ifindex}`);
  }

  private async getLink(payload: Buffer, what: string): Promise<Link | null> {
    let msgs: NetlinkMessage[];
    try {
      msgs = await this.call(RTM.GETLINK, 0, payload, what);
    } catch (err) {
      if (err instanceof SystemError && err.code === 'ENODEV') return null;
      throw err;
    }
    const link = msgs.filter((m) => m.type === RTM.NEWLINK).map((m) => decodeLink(m.data))[0] ?? null;
    if (link) this.remember([link]);
    return link;
  }

  async listAddresses(opts: { family?: Family } = {}): Promise<Address[]> {
    const family = checkFamily(opts.family);
    const msgs: NetlinkMessage[] = [];
    for (const f of family ? [family] : ([4, 6] as Family[]))
      msgs.push(
        ...(await this.call(RTM.GETADDR, NLM_F_DUMP, encodeFamilyDump(f, 8), `listing IPv${f} addresses`)),
      );
    return this.withNames((name) =>
      msgs
        .filter((m) => m.type === RTM.NEWADDR)
        .map((m) => decodeAddress(m.data, name))
        .filter((a): a is Address => a !== null),
    );
  }

  // ---- events ----

  async subscribe(
    groups: RtnlGroup[],
    onEvent: (ev: RtnlEvent) => void,
    opts: SubscribeOptions = {},
  ): Promise<RtnlSubscription> {
    if (this.closed)
      throw rtnlError(
        new NetlinkErrno(9, 'subscribe', 'EBADF'),
        'subscribing to rtnetlink events',
        'subscribe',
      );
    if (!Array.isArray(groups) || groups.length === 0)
      throw invalidArg('subscribe needs at least one group', 'type');
    for (const g of groups)
      if (g !== 'neighbour' && g !== 'route' && g !== 'link' && g !== 'nexthop')
        throw invalidArg(`unknown rtnetlink group "${String(g)}" (neighbour, route, link, nexthop)`);
    if (typeof onEvent !== 'function') throw invalidArg('onEvent must be a function', 'type');
    const wanted = new Set(groups);
    // Link events are always joined: they keep the interface names of the other events current.
    const nums: number[] = [RTNLGRP.LINK];
    if (wanted.has('neighbour')) nums.push(RTNLGRP.NEIGH);
    if (wanted.has('route')) nums.push(RTNLGRP.IPV4_ROUTE, RTNLGRP.IPV6_ROUTE);
    if (wanted.has('nexthop')) nums.push(RTNLGRP.NEXTHOP);

    let closed = false;
    // Events are decoded in arrival order; a name lookup for an unknown interface must not reorder them.
    let queue: Promise<void> = Promise.resolve();
    const emit = (ev: RtnlEvent) => {
      if (closed || !wanted.has(ev.kind)) return;
      try {
        onEvent(ev);
      } catch (err) {
        if (opts.onError) opts.onError(err as Error);
        else
          queueMicrotask(() => {
            throw err;
          });
      }
    };
    // Deleting a neighbour entry (ip neigh del, our own deleteNeighbour, a flush) makes the kernel
    // announce it as RTM_NEWNEIGH in state FAILED and then RTM_DELNEIGH (neigh_delete() in
    // net/core/neighbour.c). That FAILED is not a failed resolution, and detection must not take its
    // own purge for a trigger; so a FAILED is held back briefly and dropped if the deletion follows.
    const heldFailed = new Map<string, { ev: RtnlEvent; timer: NodeJS.Timeout }>();
    const neighKey = (n: Neighbour) => `${n.family}/${n.ifindex}/${n.address}`;
    const flushHeld = (key: string) => {
      const held = heldFailed.get(key);
      if (!held) return;
      heldFailed.delete(key);
      clearTimeout(held.timer);
      emit(held.ev);
    };
    const deliver = (ev: RtnlEvent) => {
      if (ev.kind !== 'neighbour') return emit(ev);
      const key = neighKey(ev.neighbour);
      const held = heldFailed.get(key);
      if (held && ev.op === 'del') {
        heldFailed.delete(key);
        clearTimeout(held.timer);
      } else flushHeld(key);
      if (ev.op === 'new' && ev.neighbour.state === 'FAILED') {
        heldFailed.set(key, { ev, timer: setTimeout(() => flushHeld(key), FAILED_HOLD_MS) });
        return;
      }
      emit(ev);
    };
    const handle = async (msg: NetlinkMessage): Promise<void> => {
      switch (msg.type) {
        case RTM.NEWLINK:
        case RTM.DELLINK: {
          const link = decodeLink(msg.data);
          if (!link) return;
          if (link.ifname) this.names.set(link.ifindex, link.ifname);
          deliver({ kind: 'link', op: msg.type === RTM.NEWLINK ? 'new' : 'del', link });
          return;
        }
        case RTM.NEWNEIGH:
        case RTM.DELNEIGH: {
          const neighbour = await this.eventNames((name) => decodeNeighbour(msg.data, name));
          if (neighbour)
            deliver({ kind: 'neighbour', op: msg.type === RTM.NEWNEIGH ? 'new' : 'del', neighbour });
          return;
        }
        case RTM.NEWROUTE:
        case RTM.DELROUTE: {
          if (msg.data.length >= 12 && u32(msg.data, 8) & RTM_F_CLONED) return; // IPv6 exceptions (PMTU), not FIB routes
          const route = await this.eventNames((name) => decodeRoute(msg.data, name));
          if (route) deliver({ kind: 'route', op: msg.type === RTM.NEWROUTE ? 'new' : 'del', route });
          return;
        }
        case RTM.NEWNEXTHOP:
        case RTM.DELNEXTHOP: {
          const nexthop = await this.eventNames((name) => decodeNexthop(msg.data, name));
          if (nexthop) deliver({ kind: 'nexthop', op: msg.type === RTM.NEWNEXTHOP ? 'new' : 'del', nexthop });
          return;
        }
      }
    };
    let channel: NetlinkChannel;
    try {
      channel = new NetlinkChannel({
        groups: nums,
        ref: true,
        recvBufferSize: 4 << 20,
        onNotification: (msg) => {
          queue = queue.then(() => handle(msg)).catch((err: unknown) => opts.onError?.(err as Error));
        },
        onError: (err) => {
          if (!closed) opts.onError?.(rtnlError(err, 'receiving rtnetlink events', 'recvmsg'));
        },
      });
    } catch (err) {
      throw rtnlError(err, `subscribing to rtnetlink ${groups.join('/')} events`, 'setsockopt');
    }
    // The name cache must know every interface before the first event arrives.
    await this.listLinks().catch(() => undefined);
    const sub: RtnlSubscription = {
      close: () => {
        if (closed) return;
        closed = true;
        for (const h of heldFailed.values()) clearTimeout(h.timer);
        heldFailed.clear();
        channel.close();
        this.subscriptions.delete(sub);
      },
      [Symbol.dispose]: () => sub.close(),
    };
    this.subscriptions.add(sub);
    return sub;
  }

  /** Like withNames, for events: an unknown index is looked up on its own; failures leave the name empty. */
  private async eventNames<T>(decode: (name: (i: number) => string) => T): Promise<T> {
    const missing = new Set<number>();
    const first = decode((i) => {
      const n = this.names.get(i);
      if (n === undefined) missing.add(i);
      return n ?? '';
    });
    if (missing.size === 0 || this.closed) return first;
    for (const i of missing) await this.linkByIndex(i).catch(() => null);
    return decode(this.nameOf);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.subscriptions]) s.close();
    this.channel.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Open an rtnetlink socket in this process's network namespace. */
export async function openRtnl(opts: OpenRtnlOptions = {}): Promise<Rtnl> {
  if (opts.timeoutMs !== undefined && (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0))
    throw invalidArg(`timeoutMs must be a positive number of milliseconds, not ${opts.timeoutMs}`);
  try {
    return new RtnlSocket(opts);
  } catch (err) {
    throw rtnlError(err, 'opening an rtnetlink socket', 'socket');
  }
}
