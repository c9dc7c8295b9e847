// Route messages (struct rtmsg + RTA_* attributes, linux/rtnetlink.h): RTM_NEWROUTE /
// RTM_DELROUTE / RTM_GETROUTE encoding and decoding, the checks a route passes before it reaches
// the kernel, and the raw attributes kept so a withdrawn route is put back exactly.
import { formatCidr, formatIp, invalidArg, parseCidr, parseIp, type Family } from '../ipaddr';
import {
  RTM_F_LOOKUP_TABLE,
  RTNH_F_ONLINK,
  RT_TABLE_UNSPEC,
  afOf,
  align4,
  attr,
  familyOfAf,
  parseAttrs,
  put16,
  put32,
  s32,
  u16,
  u32,
  u32Buf,
  type RawAttr,
} from './codec';
import type { FlowKey, Nexthop, Route } from './types';

/** RTA_* route attributes. */
export const RTA = {
  DST: 1,
  SRC: 2,
  IIF: 3,
  OIF: 4,
  GATEWAY: 5,
  PRIORITY: 6,
  PREFSRC: 7,
  METRICS: 8,
  MULTIPATH: 9,
  FLOW: 11,
  CACHEINFO: 12,
  TABLE: 15,
  MARK: 16,
  VIA: 18,
  NEWDST: 19,
  PREF: 20,
  ENCAP_TYPE: 21,
  ENCAP: 22,
  EXPIRES: 23,
  UID: 25,
  TTL_PROPAGATE: 26,
  IP_PROTO: 27,
  SPORT: 28,
  DPORT: 29,
  NH_ID: 30,
} as const;

/**
 * Route attributes the typed fields do not model that RTM_NEWROUTE accepts and an exact restore
 * must give back verbatim. Everything else the kernel reports is either modelled (DST, OIF,
 * GATEWAY, PRIORITY, PREFSRC, METRICS, MULTIPATH, TABLE, PREF, VIA) or read-only (CACHEINFO, ...).
 */
const PASSTHROUGH_ROUTE_ATTRS = new Set<number>([
  RTA.SRC,
  RTA.FLOW,
  RTA.NEWDST,
  RTA.ENCAP_TYPE,
  RTA.ENCAP,
  RTA.TTL_PROPAGATE,
]);
/** Per-nexthop attributes passed back verbatim (inside struct rtnexthop). */
const PASSTHROUGH_NEXTHOP_ATTRS = new Set<number>([RTA.FLOW, RTA.NEWDST, RTA.ENCAP_TYPE, RTA.ENCAP]);

/** RTAX_* metrics by name, as iproute2 names them. 16 (cc_algo) is a string: kept raw. */
export const RTAX_NAMES: Record<number, string> = {
  1: 'lock',
  2: 'mtu',
  3: 'window',
  4: 'rtt',
  5: 'rttvar',
  6: 'ssthresh',
  7: 'cwnd',
  8: 'advmss',
  9: 'reordering',
  10: 'hoplimit',
  11: 'initcwnd',
  12: 'features',
  13: 'rto_min',
  14: 'initrwnd',
  15: 'quickack',
  17: 'fastopen_no_cookie',
};
const RTAX_BY_NAME: Record<string, number> = Object.fromEntries(
  Object.entries(RTAX_NAMES).map(([k, v]) => [v, Number(k)]),
);
const RTAX_CC_ALGO = 16;

// ---- the raw part of a Route (JSON-safe) -------------------------------------------------------

/** `Route.raw` as this module writes it. Attribute payloads are hex strings. */
export interface RouteRaw {
  /** rtm_src_len (source-specific routes). */
  srcLen: number;
  /** Passed back verbatim, in order: [RTA_* type, hex payload]. */
  attrs: [number, string][];
  /** Non-numeric RTA_METRICS members (RTAX_CC_ALGO), [RTAX_* type, hex]. */
  metricsAttrs?: [number, string][];
  /** Per-nexthop verbatim attributes, keyed by nexthopKey(). */
  nexthopAttrs?: Record<string, [number, string][]>;
}

const nexthopKey = (gateway: string | null, ifindex: number): string => `${gateway ?? '-'}@${ifindex}`;

/** Bytes from what JSON made of a Buffer: hex string, byte array, or {type:'Buffer',data:[...]}. */
function bytesFromJson(v: unknown, what: string): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (typeof v === 'string' && /^([0-9a-f]{2})*$/i.test(v)) return Buffer.from(v, 'hex');
  if (Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0 && x <= 255))
    return Buffer.from(v as number[]);
  if (v && typeof v === 'object' && (v as { type?: unknown }).type === 'Buffer')
    return bytesFromJson((v as { data?: unknown }).data, what);
  throw invalidArg(`${what} is not hex or a byte array`, 'type');
}

function attrListFromJson(v: unknown, what: string): RawAttr[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalidArg(`${what} must be an array of [type, hex] pairs`, 'type');
  return v.map((item, i) => {
    if (!Array.isArray(item) || item.length !== 2 || !Number.isInteger(item[0]))
      throw invalidArg(`${what}[${i}] must be a [type, hex] pair`, 'type');
    return { type: item[0] as number, data: bytesFromJson(item[1], `${what}[${i}]`) };
  });
}

interface ParsedRaw {
  srcLen: number;
  attrs: RawAttr[];
  metricsAttrs: RawAttr[];
  nexthopAttrs: Map<string, RawAttr[]>;
}

/** Read Route.raw back, whether it is the object decodeRoute made or what JSON.parse gave. */
export function parseRouteRaw(raw: unknown): ParsedRaw {
  const out: ParsedRaw = { srcLen: 0, attrs: [], metricsAttrs: [], nexthopAttrs: new Map() };
  if (raw === undefined || raw === null) return out;
  if (typeof raw !== 'object') throw invalidArg('route.raw must be an object (or null)', 'type');
  const r = raw as Record<string, unknown>;
  if (r.srcLen !== undefined) {
    if (!Number.isInteger(r.srcLen) || (r.srcLen as number) < 0 || (r.srcLen as number) > 128)
      throw invalidArg('route.raw.srcLen must be a prefix length');
    out.srcLen = r.srcLen as number;
  }
  out.attrs = attrListFromJson(r.attrs, 'route.raw.attrs').filter(
    (a) => PASSTHROUGH_ROUTE_ATTRS.has(a.type) || a.type === RTA.NH_ID,
  );
  out.metricsAttrs = attrListFromJson(r.metricsAttrs, 'route.raw.metricsAttrs');
  if (r.nexthopAttrs && typeof r.nexthopAttrs === 'object')
    for (const [k, v] of Object.entries(r.nexthopAttrs as Record<string, unknown>))
      out.nexthopAttrs.set(k, attrListFromJson(v, `route.raw.nexthopAttrs.${k}`));
  return out;
}

const toJsonAttrs = (attrs: RawAttr[]): [number, string][] =>
  attrs.map((a) => [a.type, a.data.toString('hex')]);

// ---- routes ------------------------------------------------------------------------------------

/** Decode an RTM_NEWROUTE/RTM_DELROUTE payload (struct rtmsg + attributes); null for other families. */
export function decodeRoute(data: Buffer, ifname: (ifindex: number) => string): Route | null {
  if (data.length < 12) return null;
  const family = familyOfAf(data[0]!);
  if (family === null) return null;
  const dstLen = data[1]!;
  const route: Route = {
    family,
    dst: '',
    table: data[4]!,
    metric: 0,
    protocol: data[5]!,
    scope: data[6]!,
    type: data[7]!,
    flags: u32(data, 8),
    tos: data[3]!,
    gateway: null,
    ifindex: null,
    ifname: null,
    prefsrc: null,
    nexthops: null,
    metrics: {},
    raw: null,
  };
  const raw: RouteRaw = { srcLen: data[2]!, attrs: [] };
  let dst: Buffer | null = null;
  for (const a of parseAttrs(data.subarray(12))) {
    switch (a.type) {
      case RTA.DST:
        dst = a.data;
        break;
      case RTA.OIF:
        route.ifindex = u32(a.data, 0);
        break;
      case RTA.GATEWAY:
        route.gateway = formatIp(a.data);
        break;
      case RTA.VIA:
        route.gateway = decodeVia(a.data);
        break;
      case RTA.PRIORITY:
        route.metric = u32(a.data, 0);
        break;
      case RTA.PREFSRC:
        route.prefsrc = formatIp(a.data);
        break;
      case RTA.TABLE:
        route.table = u32(a.data, 0);
        break;
      case RTA.PREF:
        route.pref = a.data[0]!;
        break;
      case RTA.CACHEINFO: {
        // struct rta_cacheinfo: rta_expires (clock_t, USER_HZ = 100) at offset 8.
        const expires = a.data.length >= 12 ? s32(a.data, 8) : 0;
        if (expires > 0) route.expires = Math.round(expires / 100);
        break;
      }
      case RTA.METRICS:
        for (const m of parseAttrs(a.data)) {
          const name = RTAX_NAMES[m.type];
          if (name && m.data.length >= 4) route.metrics[name] = u32(m.data, 0);
          else (raw.metricsAttrs ??= []).push([m.type, m.data.toString('hex')]);
        }
        break;
      case RTA.MULTIPATH:
        route.nexthops = decodeMultipath(a.data, ifname, raw);
        break;
      case RTA.NH_ID:
        // With nexthop_compat_mode (the default) the kernel also reports the object's gateway or
        // multipath; decoded above for reading, never sent back (the object is the route's path).
        route.nhid = u32(a.data, 0);
        break;
      default:
        if (PASSTHROUGH_ROUTE_ATTRS.has(a.type)) raw.attrs.push([a.type, a.data.toString('hex')]);
    }
  }
  route.dst = formatCidr(family, dst, dstLen);
  if (route.ifindex !== null) route.ifname = ifname(route.ifindex);
  route.raw = raw;
  return route;
}

function decodeVia(data: Buffer): string {
  // struct rtvia: __kernel_sa_family_t rtvia_family (u16), rtvia_addr[].
  return formatIp(data.subarray(2));
}

function decodeMultipath(data: Buffer, ifname: (i: number) => string, raw: RouteRaw): Nexthop[] {
  const hops: Nexthop[] = [];
  let off = 0;
  // struct rtnexthop: u16 rtnh_len, u8 rtnh_flags, u8 rtnh_hops, s32 rtnh_ifindex, then attributes.
  while (off + 8 <= data.length) {
    const len = u16(data, off);
    if (len < 8 || off + len > data.length) break;
    const ifindex = s32(data, off + 4);
    const hop: Nexthop = {
      gateway: null,
      ifindex,
      ifname: ifname(ifindex),
      weight: data[off + 3]! + 1,
      flags: data[off + 2]!,
    };
    const extra: RawAttr[] = [];
    for (const a of parseAttrs(data.subarray(off + 8, off + len))) {
      if (a.type === RTA.GATEWAY) hop.gateway = formatIp(a.data);
      else if (a.type === RTA.VIA) hop.gateway = decodeVia(a.data);
      else if (PASSTHROUGH_NEXTHOP_ATTRS.has(a.type)) extra.push(a);
    }
    if (extra.length) (raw.nexthopAttrs ??= {})[nexthopKey(hop.gateway, ifindex)] = toJsonAttrs(extra);
    hops.push(hop);
    off += align4(len);
  }
  return hops;
}

/** A Route checked and with its interface names resolved to indexes (by resolveRoute in client.ts). */
export interface ResolvedRoute {
  route: Route;
  dst: { bytes: Buffer; prefix: number };
  ifindex: number | null;
  nexthopIfindexes: number[];
}

function u32Field(v: unknown, what: string, min = 0, max = 0xffffffff): number {
  if (typeof v !== 'number' || !Number.isInteger(v))
    throw invalidArg(`${what} must be an integer, not ${JSON.stringify(v)}`, 'type');
  if (v < min || v > max) throw invalidArg(`${what} must be from ${min} to ${max}, not ${v}`);
  return v;
}

/** Check every field of a Route (from our own decoder, a journal file, or built by hand). */
export function validateRoute(r: unknown): Route {
  if (!r || typeof r !== 'object') throw invalidArg('route must be an object', 'type');
  const route = r as Route;
  if (route.family !== 4 && route.family !== 6)
    throw invalidArg(`route.family must be 4 or 6, not ${JSON.stringify(route.family)}`);
  parseCidr(route.dst, 'route.dst', route.family);
  u32Field(route.table, 'route.table', 1);
  u32Field(route.metric, 'route.metric');
  u32Field(route.protocol, 'route.protocol', 0, 255);
  u32Field(route.scope, 'route.scope', 0, 255);
  u32Field(route.type, 'route.type', 0, 255);
  u32Field(route.flags, 'route.flags');
  u32Field(route.tos, 'route.tos', 0, 255);
  if (route.gateway !== null && route.gateway !== undefined) parseIp(route.gateway, 'route.gateway');
  if (route.prefsrc !== null && route.prefsrc !== undefined)
    parseIp(route.prefsrc, 'route.prefsrc', route.family);
  if (route.ifindex !== null && route.ifindex !== undefined)
    u32Field(route.ifindex, 'route.ifindex', 1, 0x7fffffff);
  if (route.ifname !== null && route.ifname !== undefined && typeof route.ifname !== 'string')
    throw invalidArg('route.ifname must be a string or null', 'type');
  if (route.nexthops !== null && route.nexthops !== undefined) {
    if (!Array.isArray(route.nexthops) || route.nexthops.length === 0)
      throw invalidArg('route.nexthops must be a non-empty array or null', 'type');
    route.nexthops.forEach((h, i) => {
      if (!h || typeof h !== 'object') throw invalidArg(`route.nexthops[${i}] must be an object`, 'type');
      if (h.gateway !== null) parseIp(h.gateway, `route.nexthops[${i}].gateway`);
      u32Field(h.weight, `route.nexthops[${i}].weight`, 1, 256);
      u32Field(h.flags, `route.nexthops[${i}].flags`, 0, 255);
    });
  }
  if (route.metrics !== undefined && route.metrics !== null) {
    if (typeof route.metrics !== 'object') throw invalidArg('route.metrics must be an object', 'type');
    for (const [k, v] of Object.entries(route.metrics)) {
      if (!(k in RTAX_BY_NAME)) throw invalidArg(`route.metrics.${k} is not a known route metric (RTAX_*)`);
      u32Field(v, `route.metrics.${k}`);
    }
  }
  if (route.nhid !== undefined && route.nhid !== null) u32Field(route.nhid, 'route.nhid', 1);
  if (route.pref !== undefined) u32Field(route.pref, 'route.pref', 0, 3);
  if (route.expires !== undefined) u32Field(route.expires, 'route.expires');
  parseRouteRaw(route.raw);
  return route;
}

function gatewayAttr(routeFamily: Family, gateway: string): Buffer {
  const { family, bytes } = parseIp(gateway, 'gateway');
  if (family === routeFamily) return attr(RTA.GATEWAY, bytes);
  // An IPv6 gateway of an IPv4 route (RFC 5549): struct rtvia { u16 family; u8 addr[]; }.
  const via = Buffer.alloc(2 + bytes.length);
  put16(via, afOf(family), 0);
  bytes.copy(via, 2);
  return attr(RTA.VIA, via);
}

/**
 * Encode a struct rtmsg + attributes for RTM_NEWROUTE / RTM_DELROUTE. For a delete the metrics,
 * preference and expiry are left out: the kernel matches on the rest.
 */
export function encodeRoute(rr: ResolvedRoute, purpose: 'new' | 'del'): Buffer {
  const r = rr.route;
  const raw = parseRouteRaw(r.raw);
  const hdr = Buffer.alloc(12);
  hdr[0] = afOf(r.family);
  hdr[1] = rr.dst.prefix;
  hdr[2] = raw.srcLen;
  hdr[3] = r.tos;
  hdr[4] = r.table < 256 ? r.table : RT_TABLE_UNSPEC; // the real id travels in RTA_TABLE
  hdr[5] = r.protocol;
  hdr[6] = r.scope;
  hdr[7] = r.type;
  put32(hdr, r.flags & RTNH_F_ONLINK, 8);
  const parts: Buffer[] = [hdr, attr(RTA.TABLE, u32Buf(r.table))];
  if (rr.dst.prefix > 0) parts.push(attr(RTA.DST, rr.dst.bytes));
  if (r.metric > 0) parts.push(attr(RTA.PRIORITY, u32Buf(r.metric)));
  if (r.prefsrc) parts.push(attr(RTA.PREFSRC, parseIp(r.prefsrc, 'prefsrc', r.family).bytes));
  // A route using a nexthop object (RTA_NH_ID) must not also carry gateway/oif/multipath: the
  // kernel takes them from the object. (Journals written before Route.nhid kept RTA_NH_ID raw.)
  const legacyNhId = raw.attrs.find((a) => a.type === RTA.NH_ID);
  if (r.nhid !== undefined && r.nhid !== null) parts.push(attr(RTA.NH_ID, u32Buf(r.nhid)));
  else if (legacyNhId) parts.push(attr(RTA.NH_ID, legacyNhId.data));
  const usesNhObject = (r.nhid !== undefined && r.nhid !== null) || legacyNhId !== undefined;
  if (!usesNhObject) {
    if (r.nexthops && r.nexthops.length > 0) {
      parts.push(attr(RTA.MULTIPATH, encodeMultipath(r.family, r.nexthops, rr.nexthopIfindexes, raw)));
    } else {
      if (r.gateway) parts.push(gatewayAttr(r.family, r.gateway));
      if (rr.ifindex !== null) parts.push(attr(RTA.OIF, u32Buf(rr.ifindex)));
    }
  }
  if (purpose === 'new') {
    const metrics: Buffer[] = [];
    for (const [name, value] of Object.entries(r.metrics ?? {})) {
      const type = RTAX_BY_NAME[name];
      if (type !== undefined) metrics.push(attr(type, u32Buf(value)));
    }
    for (const m of raw.metricsAttrs) if (m.type === RTAX_CC_ALGO) metrics.push(attr(m.type, m.data));
    if (metrics.length) parts.push(attr(RTA.METRICS, Buffer.concat(metrics)));
    if (r.family === 6 && r.pref !== undefined) parts.push(attr(RTA.PREF, Buffer.from([r.pref])));
    if (r.family === 6 && r.expires !== undefined && r.expires > 0)
      parts.push(attr(RTA.EXPIRES, u32Buf(r.expires)));
  }
  for (const a of raw.attrs) if (a.type !== RTA.NH_ID) parts.push(attr(a.type, a.data));
  return Buffer.concat(parts);
}

function encodeMultipath(family: Family, hops: Nexthop[], ifindexes: number[], raw: ParsedRaw): Buffer {
  const out: Buffer[] = [];
  hops.forEach((h, i) => {
    const ifindex = ifindexes[i] ?? h.ifindex;
    const attrs: Buffer[] = [];
    if (h.gateway) attrs.push(gatewayAttr(family, h.gateway));
    for (const a of raw.nexthopAttrs.get(nexthopKey(h.gateway, h.ifindex)) ?? [])
      attrs.push(attr(a.type, a.data));
    const body = Buffer.concat(attrs);
    const rtnh = Buffer.alloc(8);
    put16(rtnh, 8 + body.length, 0);
    rtnh[2] = h.flags & RTNH_F_ONLINK;
    rtnh[3] = h.weight - 1;
    put32(rtnh, ifindex, 4);
    out.push(rtnh, body);
  });
  return Buffer.concat(out);
}

/**
 * RTM_GETROUTE request for one flow, answered from the FIB with the table id filled in. The key's
 * attributes are those inet_rtm_getroute (net/ipv4/route.c) and inet6_rtm_getroute
 * (net/ipv6/route.c) read into the flow they look up: RTA_IP_PROTO is a u8, RTA_SPORT and
 * RTA_DPORT are big-endian u16, the others host-order u32 (include/uapi/linux/rtnetlink.h).
 */
export function encodeRouteLookup(
  dst: { family: Family; bytes: Buffer },
  key: FlowKey = {},
  src?: Buffer,
): Buffer {
  const hdr = Buffer.alloc(12);
  hdr[0] = afOf(dst.family);
  hdr[1] = dst.bytes.length * 8;
  hdr[2] = src ? src.length * 8 : 0;
  put32(hdr, RTM_F_LOOKUP_TABLE, 8);
  const parts = [hdr, attr(RTA.DST, dst.bytes)];
  if (src) parts.push(attr(RTA.SRC, src));
  if (key.iif !== undefined) parts.push(attr(RTA.IIF, u32Buf(key.iif)));
  if (key.oif !== undefined) parts.push(attr(RTA.OIF, u32Buf(key.oif)));
  if (key.mark !== undefined) parts.push(attr(RTA.MARK, u32Buf(key.mark)));
  if (key.uid !== undefined) parts.push(attr(RTA.UID, u32Buf(key.uid)));
  if (key.proto !== undefined) parts.push(attr(RTA.IP_PROTO, Buffer.from([key.proto])));
  if (key.sport !== undefined) parts.push(attr(RTA.SPORT, be16(key.sport)));
  if (key.dport !== undefined) parts.push(attr(RTA.DPORT, be16(key.dport)));
  return Buffer.concat(parts);
}

function be16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v, 0);
  return b;
}

/** struct rtmsg for a dump of one family (AF_UNSPEC: all). */
export function encodeRouteDump(family?: Family): Buffer {
  const hdr = Buffer.alloc(12);
  hdr[0] = family ? afOf(family) : 0;
  return hdr;
}
