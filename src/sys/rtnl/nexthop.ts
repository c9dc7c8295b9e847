// Nexthop objects (`ip nexthop`): RTM_NEWNEXTHOP / RTM_DELNEXTHOP / RTM_GETNEXTHOP encoding and
// decoding. Layouts and constants from include/uapi/linux/nexthop.h (struct nhmsg, struct
// nexthop_grp, NHA_*, NEXTHOP_GRP_TYPE_*, NHA_RES_GROUP_*) and include/uapi/linux/rtnetlink.h
// (RTM_*NEXTHOP = 104..106, RTNLGRP_NEXTHOP = 32). FRR (7.3+) and systemd-networkd install their
// routes through such objects; a route names one with RTA_NH_ID.
import { formatIp, invalidArg, parseIp, type Family } from '../ipaddr';
import { afOf, attr, familyOfAf, parseAttrs, put16, put32, u16, u32, u32Buf, type RawAttr } from './codec';
import type { NexthopGroupMember, NexthopObject } from './types';

/** enum NHA_* (linux/nexthop.h). */
export const NHA = {
  ID: 1,
  GROUP: 2,
  GROUP_TYPE: 3,
  BLACKHOLE: 4,
  OIF: 5,
  GATEWAY: 6,
  ENCAP_TYPE: 7,
  ENCAP: 8,
  GROUPS: 9,
  MASTER: 10,
  FDB: 11,
  RES_GROUP: 12,
  RES_BUCKET: 13,
} as const;

/** NEXTHOP_GRP_TYPE_MPATH (hash-threshold, the default) and NEXTHOP_GRP_TYPE_RES (resilient). */
const GRP_TYPE_MPATH = 0;
const GRP_TYPE_RES = 1;
/**
 * NHA_RES_GROUP members RTM_NEWNEXTHOP accepts: BUCKETS (1), IDLE_TIMER (2), UNBALANCED_TIMER (3).
 * UNBALANCED_TIME (4) is reported only, and the kernel's strict policy rejects it on input.
 */
const RES_GROUP_SETTABLE = new Set([1, 2, 3]);
/** linux/netlink.h: the attribute's payload is itself attributes. */
const NLA_F_NESTED = 0x8000;
/** sizeof(struct nhmsg), sizeof(struct nexthop_grp). */
const NHMSG_LEN = 8;
const GRP_LEN = 8;
/** RTNH_F_ONLINK: the only nh_flags bit userspace sets. */
const RTNH_F_ONLINK = 4;

/** Decode an RTM_NEWNEXTHOP/RTM_DELNEXTHOP payload (struct nhmsg + NHA_* attributes). */
export function decodeNexthop(data: Buffer, ifname: (ifindex: number) => string): NexthopObject | null {
  if (data.length < NHMSG_LEN) return null;
  // struct nhmsg: u8 nh_family, u8 nh_scope, u8 nh_protocol, u8 resvd, u32 nh_flags.
  const nh: NexthopObject = {
    id: 0,
    family: familyOfAf(data[0]!),
    protocol: data[2]!,
    scope: data[1]!,
    flags: u32(data, 4),
    gateway: null,
    ifindex: null,
    ifname: null,
    blackhole: false,
    fdb: false,
    group: null,
    groupType: null,
    raw: null,
  };
  const raw: RawAttr[] = [];
  for (const a of parseAttrs(data.subarray(NHMSG_LEN))) {
    switch (a.type) {
      case NHA.ID:
        nh.id = u32(a.data, 0);
        break;
      case NHA.GROUP:
        nh.group = decodeGroup(a.data);
        nh.groupType ??= 'mpath';
        break;
      case NHA.GROUP_TYPE:
        nh.groupType = u16(a.data, 0) === GRP_TYPE_RES ? 'resilient' : 'mpath';
        break;
      case NHA.BLACKHOLE:
        nh.blackhole = true;
        break;
      case NHA.OIF:
        nh.ifindex = u32(a.data, 0);
        nh.ifname = ifname(nh.ifindex);
        break;
      case NHA.GATEWAY:
        nh.gateway = formatIp(a.data);
        break;
      case NHA.FDB:
        nh.fdb = true;
        break;
      case NHA.ENCAP_TYPE:
      case NHA.ENCAP:
        raw.push(a);
        break;
      case NHA.RES_GROUP: {
        const settable = parseAttrs(a.data).filter((m) => RES_GROUP_SETTABLE.has(m.type));
        raw.push({ type: NHA.RES_GROUP, data: Buffer.concat(settable.map((m) => attr(m.type, m.data))) });
        break;
      }
    }
  }
  if (nh.id === 0) return null;
  if (raw.length > 0) nh.raw = raw.map((a) => [a.type, a.data.toString('hex')]);
  return nh;
}

function decodeGroup(data: Buffer): NexthopGroupMember[] {
  const members: NexthopGroupMember[] = [];
  // struct nexthop_grp: u32 id, u8 weight (weight - 1), u8 resvd1 (weight_high on 6.12+), u16 resvd2.
  for (let off = 0; off + GRP_LEN <= data.length; off += GRP_LEN)
    members.push({ id: u32(data, off), weight: ((data[off + 5]! << 8) | data[off + 4]!) + 1 });
  return members;
}

function int(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v))
    throw invalidArg(`${what} must be an integer, not ${JSON.stringify(v)}`, 'type');
  if (v < min || v > max) throw invalidArg(`${what} must be from ${min} to ${max}, not ${v}`);
  return v;
}

/** Check every field of a nexthop object (from our decoder, a journal file, or built by hand). */
export function validateNexthop(input: unknown): NexthopObject {
  if (!input || typeof input !== 'object') throw invalidArg('nexthop must be an object', 'type');
  const nh = input as NexthopObject;
  int(nh.id, 'nexthop.id', 1, 0xffffffff);
  if (nh.family !== null && nh.family !== 4 && nh.family !== 6)
    throw invalidArg(`nexthop.family must be 4, 6 or null, not ${JSON.stringify(nh.family)}`);
  int(nh.protocol, 'nexthop.protocol', 0, 255);
  int(nh.flags, 'nexthop.flags', 0, 0xffffffff);
  if (nh.gateway !== null && nh.gateway !== undefined) parseIp(nh.gateway, 'nexthop.gateway');
  if (nh.ifindex !== null && nh.ifindex !== undefined) int(nh.ifindex, 'nexthop.ifindex', 1, 0x7fffffff);
  if (nh.group !== null && nh.group !== undefined) {
    if (!Array.isArray(nh.group) || nh.group.length === 0)
      throw invalidArg('nexthop.group must be a non-empty array or null', 'type');
    nh.group.forEach((m, i) => {
      int(m?.id, `nexthop.group[${i}].id`, 1, 0xffffffff);
      int(m?.weight, `nexthop.group[${i}].weight`, 1, 65536);
    });
    if (nh.gateway || nh.ifindex || nh.blackhole)
      throw invalidArg(`nexthop ${nh.id}: a group has no gateway, interface or blackhole of its own`);
  }
  if (
    nh.groupType !== null &&
    nh.groupType !== undefined &&
    nh.groupType !== 'mpath' &&
    nh.groupType !== 'resilient'
  )
    throw invalidArg(
      `nexthop.groupType must be mpath, resilient or null, not ${JSON.stringify(nh.groupType)}`,
    );
  if (nh.raw !== null && nh.raw !== undefined) {
    if (!Array.isArray(nh.raw)) throw invalidArg('nexthop.raw must be an array of [type, hex] pairs', 'type');
    nh.raw.forEach((p, i) => {
      if (
        !Array.isArray(p) ||
        !Number.isInteger(p[0]) ||
        typeof p[1] !== 'string' ||
        !/^([0-9a-f]{2})*$/i.test(p[1])
      )
        throw invalidArg(`nexthop.raw[${i}] must be a [type, hex] pair`, 'type');
    });
  }
  return nh;
}

/**
 * struct nhmsg + attributes for RTM_NEWNEXTHOP. `ifindex` is the resolved interface (names win
 * over indexes: an interface re-created gets a new index).
 */
export function encodeNexthop(nh: NexthopObject, ifindex: number | null): Buffer {
  const hdr = Buffer.alloc(NHMSG_LEN);
  const gw = nh.gateway ? parseIp(nh.gateway, 'nexthop.gateway') : null;
  const family: Family | null = gw ? gw.family : nh.family;
  hdr[0] = family ? afOf(family) : 0;
  hdr[2] = nh.protocol;
  put32(hdr, nh.flags & RTNH_F_ONLINK, 4);
  const parts: Buffer[] = [hdr, attr(NHA.ID, u32Buf(nh.id))];
  if (nh.group && nh.group.length > 0) {
    const g = Buffer.alloc(GRP_LEN * nh.group.length);
    nh.group.forEach((m, i) => {
      put32(g, m.id, i * GRP_LEN);
      g[i * GRP_LEN + 4] = (m.weight - 1) & 0xff;
      g[i * GRP_LEN + 5] = (m.weight - 1) >> 8;
    });
    parts.push(attr(NHA.GROUP, g));
    const type = Buffer.alloc(2);
    put16(type, nh.groupType === 'resilient' ? GRP_TYPE_RES : GRP_TYPE_MPATH, 0);
    parts.push(attr(NHA.GROUP_TYPE, type));
  } else if (nh.blackhole) {
    parts.push(attr(NHA.BLACKHOLE, Buffer.alloc(0)));
  } else {
    if (ifindex !== null) parts.push(attr(NHA.OIF, u32Buf(ifindex)));
    if (gw) parts.push(attr(NHA.GATEWAY, gw.bytes));
  }
  if (nh.fdb) parts.push(attr(NHA.FDB, Buffer.alloc(0)));
  // The kernel parses NHA_RES_GROUP strictly: a nested attribute must say so (NLA_F_NESTED).
  for (const [type, hex] of nh.raw ?? [])
    parts.push(attr(type === NHA.RES_GROUP ? type | NLA_F_NESTED : type, Buffer.from(hex, 'hex')));
  return Buffer.concat(parts);
}

/** struct nhmsg + NHA_ID, for RTM_GETNEXTHOP / RTM_DELNEXTHOP of one object. */
export function encodeNexthopKey(id: number): Buffer {
  int(id, 'nexthop id', 1, 0xffffffff);
  return Buffer.concat([Buffer.alloc(NHMSG_LEN), attr(NHA.ID, u32Buf(id))]);
}

/** struct nhmsg (AF_UNSPEC) for a dump of every nexthop object. */
export function encodeNexthopDump(): Buffer {
  return Buffer.alloc(NHMSG_LEN);
}

/** `ip nexthop` as iproute2 prints an object, for messages and logs. */
export function describeNexthop(nh: NexthopObject): string {
  let s = `nexthop id ${nh.id}`;
  if (nh.group)
    s += ` group ${nh.group.map((m) => (m.weight === 1 ? `${m.id}` : `${m.id},${m.weight}`)).join('/')}`;
  else if (nh.blackhole) s += ' blackhole';
  else {
    if (nh.gateway) s += ` via ${nh.gateway}`;
    if (nh.ifname) s += ` dev ${nh.ifname}`;
  }
  return s;
}
