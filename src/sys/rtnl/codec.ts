// rtnetlink message encoding and decoding, in TypeScript (the native layer of the `netlink`
// package only moves bytes): the netlink header and attributes, the constants every message
// family shares, and neighbours, links and addresses (routes are in routes.ts, nexthop objects in
// nexthop.ts). Struct layouts and constants are from linux/rtnetlink.h, linux/neighbour.h,
// linux/if_link.h, linux/if_addr.h and linux/netlink.h. Netlink uses host byte order for its own
// fields; addresses are in network order.
import { endianness } from 'node:os';
import { formatIp, formatLinkAddress, type Family } from '../ipaddr';
import type { Address, Link, NeighState, Neighbour } from './types';

// ---- linux/netlink.h ------------------------------------------------------------------------

export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300; // NLM_F_ROOT | NLM_F_MATCH
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLMSG_HDRLEN = 16;

// ---- linux/rtnetlink.h: message types and multicast groups -----------------------------------

export const RTM = {
  NEWLINK: 16,
  DELLINK: 17,
  GETLINK: 18,
  NEWADDR: 20,
  DELADDR: 21,
  GETADDR: 22,
  NEWROUTE: 24,
  DELROUTE: 25,
  GETROUTE: 26,
  NEWNEIGH: 28,
  DELNEIGH: 29,
  GETNEIGH: 30,
  /** linux/nexthop.h objects (`ip nexthop`), Linux 5.3+. */
  NEWNEXTHOP: 104,
  DELNEXTHOP: 105,
  GETNEXTHOP: 106,
} as const;

export function rtmName(type: number): string {
  for (const [k, v] of Object.entries(RTM)) if (v === type) return `RTM_${k}`;
  return `RTM_${type}`;
}

/** enum rtnetlink_groups (group numbers, for NETLINK_ADD_MEMBERSHIP). */
export const RTNLGRP = { LINK: 1, NEIGH: 3, IPV4_ROUTE: 7, IPV6_ROUTE: 11, NEXTHOP: 32 } as const;

export const AF_INET = 2;
export const AF_INET6 = 10;
export const afOf = (f: Family): number => (f === 4 ? AF_INET : AF_INET6);
export const familyOfAf = (af: number): Family | null => (af === AF_INET ? 4 : af === AF_INET6 ? 6 : null);

export const RTN_UNICAST = 1;
export const RT_TABLE_UNSPEC = 0;
export const RT_TABLE_MAIN = 254;
export const RT_TABLE_LOCAL = 255;
/** RTNH_F_ONLINK: the only nexthop flag userspace may set (DEAD/LINKDOWN are rejected). */
export const RTNH_F_ONLINK = 4;
export const RTM_F_CLONED = 0x200;
export const RTM_F_LOOKUP_TABLE = 0x1000;

/** NDA_* neighbour attributes, NUD_* states (linux/neighbour.h). */
const NDA_DST = 1;
const NDA_LLADDR = 2;
const NUD_STATES: [number, NeighState][] = [
  [0x01, 'INCOMPLETE'],
  [0x02, 'REACHABLE'],
  [0x04, 'STALE'],
  [0x08, 'DELAY'],
  [0x10, 'PROBE'],
  [0x20, 'FAILED'],
  [0x40, 'NOARP'],
  [0x80, 'PERMANENT'],
];

/** IFLA_* (linux/if_link.h), IFF_* (linux/if.h), IFA_* (linux/if_addr.h). */
const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFF_UP = 0x1;
const IFF_RUNNING = 0x40;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;

// ---- host-order integers ------------------------------------------------------------------

const LE = endianness() === 'LE';
export const u16 = (b: Buffer, o: number): number => (LE ? b.readUInt16LE(o) : b.readUInt16BE(o));
export const u32 = (b: Buffer, o: number): number => (LE ? b.readUInt32LE(o) : b.readUInt32BE(o));
export const s32 = (b: Buffer, o: number): number => (LE ? b.readInt32LE(o) : b.readInt32BE(o));
export function put16(b: Buffer, v: number, o: number): void {
  if (LE) b.writeUInt16LE(v, o);
  else b.writeUInt16BE(v, o);
}
export function put32(b: Buffer, v: number, o: number): void {
  if (LE) b.writeUInt32LE(v >>> 0, o);
  else b.writeUInt32BE(v >>> 0, o);
}
export function u32Buf(v: number): Buffer {
  const b = Buffer.alloc(4);
  put32(b, v, 0);
  return b;
}

// ---- attributes (struct nlattr / struct rtattr: u16 len, u16 type, payload, 4-byte alignment) ----

export const align4 = (n: number): number => (n + 3) & ~3;

export interface RawAttr {
  type: number;
  data: Buffer;
}

export function parseAttrs(buf: Buffer): RawAttr[] {
  const out: RawAttr[] = [];
  let off = 0;
  while (off + 4 <= buf.length) {
    const len = u16(buf, off);
    const type = u16(buf, off + 2) & 0x3fff; // strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
    if (len < 4 || off + len > buf.length) break; // truncated: stop, as the kernel's nla_ok does
    out.push({ type, data: buf.subarray(off + 4, off + len) });
    off += align4(len);
  }
  return out;
}

export function attr(type: number, data: Buffer): Buffer {
  const len = 4 + data.length;
  const b = Buffer.alloc(align4(len));
  put16(b, len, 0);
  put16(b, type, 2);
  data.copy(b, 4);
  return b;
}

export function nlmsg(type: number, flags: number, seq: number, port: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(NLMSG_HDRLEN);
  put32(h, NLMSG_HDRLEN + payload.length, 0);
  put16(h, type, 4);
  put16(h, flags, 6);
  put32(h, seq, 8);
  put32(h, port, 12);
  return Buffer.concat([h, payload]);
}

// ---- neighbours ---------------------------------------------------------------------------------

export function neighStateName(state: number): NeighState {
  for (const [bit, name] of NUD_STATES) if (state & bit) return name;
  return 'NONE';
}

/** Decode an RTM_NEWNEIGH/RTM_DELNEIGH payload (struct ndmsg + attributes); null for non-IP families. */
export function decodeNeighbour(data: Buffer, ifname: (ifindex: number) => string): Neighbour | null {
  if (data.length < 12) return null;
  const family = familyOfAf(data[0]!);
  if (family === null) return null;
  // struct ndmsg: u8 family, u8 pad1, u16 pad2, s32 ifindex, u16 state, u8 flags, u8 type.
  const ifindex = s32(data, 4);
  let address: string | null = null;
  let lladdr: string | null = null;
  for (const a of parseAttrs(data.subarray(12))) {
    if (a.type === NDA_DST) address = formatIp(a.data);
    else if (a.type === NDA_LLADDR && a.data.length > 0) lladdr = formatLinkAddress(a.data);
  }
  if (address === null) return null;
  return {
    family,
    ifindex,
    ifname: ifname(ifindex),
    address,
    lladdr,
    state: neighStateName(u16(data, 8)),
    flags: data[10]!,
  };
}

/** struct ndmsg + NDA_DST, for RTM_GETNEIGH / RTM_DELNEIGH of one entry. */
export function encodeNeighbourKey(ifindex: number, addr: { family: Family; bytes: Buffer }): Buffer {
  const hdr = Buffer.alloc(12);
  hdr[0] = afOf(addr.family);
  put32(hdr, ifindex, 4);
  return Buffer.concat([hdr, attr(NDA_DST, addr.bytes)]);
}

export function encodeNeighbourDump(family?: Family, ifindex?: number): Buffer {
  const hdr = Buffer.alloc(12);
  hdr[0] = family ? afOf(family) : 0;
  if (ifindex) put32(hdr, ifindex, 4);
  return hdr;
}

// ---- links and addresses ---------------------------------------------------------------------

/** Decode an RTM_NEWLINK/RTM_DELLINK payload (struct ifinfomsg + attributes). */
export function decodeLink(data: Buffer): Link | null {
  if (data.length < 16) return null;
  // struct ifinfomsg: u8 family, u8 pad, u16 type, s32 index, u32 flags, u32 change.
  const ifindex = s32(data, 4);
  const flags = u32(data, 8);
  const link: Link = {
    ifindex,
    ifname: '',
    mac: null,
    up: !!(flags & IFF_UP),
    running: !!(flags & IFF_RUNNING),
    mtu: 0,
  };
  for (const a of parseAttrs(data.subarray(16))) {
    if (a.type === IFLA_IFNAME) link.ifname = a.data.toString('utf8').replace(/\0.*$/s, '');
    else if (a.type === IFLA_ADDRESS && a.data.length > 0) link.mac = formatLinkAddress(a.data);
    else if (a.type === IFLA_MTU && a.data.length >= 4) link.mtu = u32(a.data, 0);
  }
  return link;
}

/** struct ifinfomsg selecting a link by index, or by IFLA_IFNAME when `name` is given. */
export function encodeLinkKey(ifindex: number, name?: string): Buffer {
  const hdr = Buffer.alloc(16);
  put32(hdr, ifindex, 4);
  if (name === undefined) return hdr;
  return Buffer.concat([hdr, attr(IFLA_IFNAME, Buffer.from(name + '\0'))]);
}

/** Decode an RTM_NEWADDR payload (struct ifaddrmsg + attributes). */
export function decodeAddress(data: Buffer, ifname: (ifindex: number) => string): Address | null {
  if (data.length < 8) return null;
  const family = familyOfAf(data[0]!);
  if (family === null) return null;
  // struct ifaddrmsg: u8 family, u8 prefixlen, u8 flags, u8 scope, u32 index.
  const ifindex = u32(data, 4);
  let address: Buffer | null = null;
  let local: Buffer | null = null;
  for (const a of parseAttrs(data.subarray(8))) {
    if (a.type === IFA_ADDRESS) address = a.data;
    else if (a.type === IFA_LOCAL) local = a.data;
  }
  // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
  const own = local ?? address;
  if (!own) return null;
  return {
    family,
    ifindex,
    ifname: ifname(ifindex),
    address: formatIp(own),
    prefixLength: data[1]!,
    scope: data[3]!,
  };
}

export function encodeFamilyDump(family?: Family, size = 8): Buffer {
  const hdr = Buffer.alloc(size);
  hdr[0] = family ? afOf(family) : 0;
  return hdr;
}
