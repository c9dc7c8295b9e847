// ctnetlink messages (nfnetlink subsystem CTNETLINK) in TypeScript, over declarative attribute tables
// taken from linux/netfilter/nfnetlink_conntrack.h (the CTA_* enums), with the status bits of
// linux/netfilter/nf_conntrack_common.h and the TCP states of linux/netfilter/nf_conntrack_tcp.h.
// Every ctnetlink integer is in network byte order. Nothing here touches a socket.
import { align4 } from './rtnl';
import { NFGENMSG_LEN, nfgenmsg, nfnlType } from './nfnetlink';
import { formatEndpoint } from './ipaddr';

/** NFNL_SUBSYS_CTNETLINK (linux/netfilter/nfnetlink.h). */
export const NFNL_SUBSYS_CTNETLINK = 1;
/** enum cntl_msg_types (nfnetlink_conntrack.h). */
export const IPCTNL_MSG = { CT_NEW: 0, CT_GET: 1, CT_DELETE: 2 } as const;
/** enum nfnetlink_groups (linux/netfilter/nfnetlink.h): conntrack events. */
export const NFNLGRP_CONNTRACK = { NEW: 1, UPDATE: 2, DESTROY: 3 } as const;

export const AF_INET = 2;
export const AF_INET6 = 10;
export const IPPROTO = { ICMP: 1, TCP: 6, UDP: 17, ICMPV6: 58 } as const;

const NLA_F_NESTED = 0x8000;
const NLA_TYPE_MASK = 0x3fff;

/** enum ctattr_type */
export const CTA = {
  TUPLE_ORIG: 1,
  TUPLE_REPLY: 2,
  STATUS: 3,
  PROTOINFO: 4,
  TIMEOUT: 7,
  MARK: 8,
  COUNTERS_ORIG: 9,
  COUNTERS_REPLY: 10,
  USE: 11,
  ID: 12,
  ZONE: 18,
  MARK_MASK: 21,
  FILTER: 25,
  STATUS_MASK: 26,
} as const;
/** enum ctattr_filter */
const CTA_FILTER = { ORIG_FLAGS: 1, REPLY_FLAGS: 2 } as const;
/**
 * CTA_FILTER_FLAG_CTA_IP_DST: which fields of the tuple given beside CTA_FILTER the kernel compares
 * (the CTA_FILTER_FLAG_* bits of net/netfilter/nf_conntrack_netlink.c, not in the uapi header).
 */
const CTA_FILTER_FLAG_IP_DST = 1 << 1;
/** enum ctattr_tuple */
const CTA_TUPLE = { IP: 1, PROTO: 2, ZONE: 3 } as const;
/** enum ctattr_ip */
const CTA_IP = { V4_SRC: 1, V4_DST: 2, V6_SRC: 3, V6_DST: 4 } as const;
/** enum ctattr_l4proto */
const CTA_PROTO = {
  NUM: 1,
  SRC_PORT: 2,
  DST_PORT: 3,
  ICMP_ID: 4,
  ICMP_TYPE: 5,
  ICMP_CODE: 6,
  ICMPV6_ID: 7,
  ICMPV6_TYPE: 8,
  ICMPV6_CODE: 9,
} as const;
/** enum ctattr_protoinfo, enum ctattr_protoinfo_tcp */
const CTA_PROTOINFO_TCP = 1;
const CTA_PROTOINFO_TCP_STATE = 1;
/** enum ctattr_counters */
const CTA_COUNTERS = { PACKETS: 1, BYTES: 2, PACKETS32: 3, BYTES32: 4 } as const;

// ---- the declarative tables -----------------------------------------------------------------

type Kind = 'u8' | 'be16' | 'be32' | 'be64' | 'ipv4' | 'ipv6';
type AttrSpec = { name: string; kind: Kind } | { name: string; nested: AttrTable };
type AttrTable = Readonly<Record<number, AttrSpec>>;

const IP_TABLE: AttrTable = {
  [CTA_IP.V4_SRC]: { name: 'src', kind: 'ipv4' },
  [CTA_IP.V4_DST]: { name: 'dst', kind: 'ipv4' },
  [CTA_IP.V6_SRC]: { name: 'src', kind: 'ipv6' },
  [CTA_IP.V6_DST]: { name: 'dst', kind: 'ipv6' },
};
const PROTO_TABLE: AttrTable = {
  [CTA_PROTO.NUM]: { name: 'protocol', kind: 'u8' },
  [CTA_PROTO.SRC_PORT]: { name: 'sport', kind: 'be16' },
  [CTA_PROTO.DST_PORT]: { name: 'dport', kind: 'be16' },
  [CTA_PROTO.ICMP_ID]: { name: 'icmpId', kind: 'be16' },
  [CTA_PROTO.ICMP_TYPE]: { name: 'icmpType', kind: 'u8' },
  [CTA_PROTO.ICMP_CODE]: { name: 'icmpCode', kind: 'u8' },
  [CTA_PROTO.ICMPV6_ID]: { name: 'icmpId', kind: 'be16' },
  [CTA_PROTO.ICMPV6_TYPE]: { name: 'icmpType', kind: 'u8' },
  [CTA_PROTO.ICMPV6_CODE]: { name: 'icmpCode', kind: 'u8' },
};
const TUPLE_TABLE: AttrTable = {
  [CTA_TUPLE.IP]: { name: 'ip', nested: IP_TABLE },
  [CTA_TUPLE.PROTO]: { name: 'proto', nested: PROTO_TABLE },
  [CTA_TUPLE.ZONE]: { name: 'zone', kind: 'be16' },
};
const COUNTERS_TABLE: AttrTable = {
  [CTA_COUNTERS.PACKETS]: { name: 'packets', kind: 'be64' },
  [CTA_COUNTERS.BYTES]: { name: 'bytes', kind: 'be64' },
  [CTA_COUNTERS.PACKETS32]: { name: 'packets', kind: 'be32' },
  [CTA_COUNTERS.BYTES32]: { name: 'bytes', kind: 'be32' },
};
const PROTOINFO_TABLE: AttrTable = {
  [CTA_PROTOINFO_TCP]: {
    name: 'tcp',
    nested: { [CTA_PROTOINFO_TCP_STATE]: { name: 'state', kind: 'u8' } },
  },
};
/** The top level of a conntrack message: what this facade reads (CTA_HELP, CTA_NAT_SEQ_ADJ... are skipped). */
const CT_TABLE: AttrTable = {
  [CTA.TUPLE_ORIG]: { name: 'orig', nested: TUPLE_TABLE },
  [CTA.TUPLE_REPLY]: { name: 'reply', nested: TUPLE_TABLE },
  [CTA.STATUS]: { name: 'status', kind: 'be32' },
  [CTA.PROTOINFO]: { name: 'protoinfo', nested: PROTOINFO_TABLE },
  [CTA.TIMEOUT]: { name: 'timeout', kind: 'be32' },
  [CTA.MARK]: { name: 'mark', kind: 'be32' },
  [CTA.COUNTERS_ORIG]: { name: 'countersOrig', nested: COUNTERS_TABLE },
  [CTA.COUNTERS_REPLY]: { name: 'countersReply', nested: COUNTERS_TABLE },
  [CTA.USE]: { name: 'use', kind: 'be32' },
  [CTA.ID]: { name: 'id', kind: 'be32' },
  [CTA.ZONE]: { name: 'zone', kind: 'be16' },
};

const KIND_LEN: Record<Kind, number> = { u8: 1, be16: 2, be32: 4, be64: 8, ipv4: 4, ipv6: 16 };

type Decoded = { [name: string]: number | string | Decoded };

function readKind(kind: Kind, d: Buffer): number | string {
  switch (kind) {
    case 'u8':
      return d.readUInt8(0);
    case 'be16':
      return d.readUInt16BE(0);
    case 'be32':
      return d.readUInt32BE(0);
    case 'be64':
      // Counters: exact up to 2^53, far beyond what a lab or a year of a gateway counts.
      return Number(d.readBigUInt64BE(0));
    case 'ipv4':
      return [...d.subarray(0, 4)].join('.');
    case 'ipv6':
      return formatIpv6(d);
  }
}

function formatIpv6(d: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(d.readUInt16BE(i).toString(16));
  // RFC 5952: the longest run (>1) of zero groups becomes "::".
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** Walk struct nlattr's with a table; unknown and short attributes are skipped, as nla_parse does. */
function decodeAttrs(buf: Buffer, table: AttrTable): Decoded {
  const out: Decoded = {};
  let off = 0;
  while (off + 4 <= buf.length) {
    const hostLen = nativeU16(buf, off);
    const type = nativeU16(buf, off + 2) & NLA_TYPE_MASK;
    if (hostLen < 4 || off + hostLen > buf.length) break;
    const data = buf.subarray(off + 4, off + hostLen);
    const spec = table[type];
    if (spec) {
      if ('nested' in spec) out[spec.name] = decodeAttrs(data, spec.nested);
      else if (data.length >= KIND_LEN[spec.kind]) out[spec.name] = readKind(spec.kind, data);
    }
    off += align4(hostLen);
  }
  return out;
}

// struct nlattr's header is in host order; its payload here is in network order.
const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const nativeU16 = (b: Buffer, o: number): number => (LE ? b.readUInt16LE(o) : b.readUInt16BE(o));
function putNative16(b: Buffer, v: number, o: number): void {
  if (LE) b.writeUInt16LE(v, o);
  else b.writeUInt16BE(v, o);
}

// ---- typed entries ----------------------------------------------------------------------------

export type Family = 4 | 6;

/** One direction's tuple (struct nf_conntrack_tuple as ctnetlink carries it). */
export interface ConntrackTuple {
  src: string;
  dst: string;
  /** IPPROTO_* number. */
  protocol: number;
  sport?: number;
  dport?: number;
  icmpId?: number;
  icmpType?: number;
  icmpCode?: number;
}

export interface ConntrackCounters {
  packets: number;
  bytes: number;
}

/** Bits of enum ip_conntrack_status (nf_conntrack_common.h), by name. */
export const CT_STATUS = {
  EXPECTED: 1 << 0,
  SEEN_REPLY: 1 << 1,
  ASSURED: 1 << 2,
  CONFIRMED: 1 << 3,
  SRC_NAT: 1 << 4,
  DST_NAT: 1 << 5,
  SEQ_ADJUST: 1 << 6,
  SRC_NAT_DONE: 1 << 7,
  DST_NAT_DONE: 1 << 8,
  DYING: 1 << 9,
  FIXED_TIMEOUT: 1 << 10,
  TEMPLATE: 1 << 11,
  NAT_CLASH: 1 << 12,
  HELPER: 1 << 13,
  OFFLOAD: 1 << 14,
  HW_OFFLOAD: 1 << 15,
} as const;
export type CtStatusName = keyof typeof CT_STATUS;

/** enum tcp_conntrack (nf_conntrack_tcp.h). */
export const TCP_CT_STATES = [
  'NONE',
  'SYN_SENT',
  'SYN_RECV',
  'ESTABLISHED',
  'FIN_WAIT',
  'CLOSE_WAIT',
  'LAST_ACK',
  'TIME_WAIT',
  'CLOSE',
  'SYN_SENT2',
] as const;
export type TcpCtState = (typeof TCP_CT_STATES)[number];

export interface ConntrackEntry {
  family: Family;
  orig: ConntrackTuple;
  /** The reply direction: with source NAT its dst is the NAT'd address (what the uplink shows). */
  reply: ConntrackTuple;
  status: number;
  /** The status bits that are set, by name. */
  flags: CtStatusName[];
  tcpState?: TcpCtState;
  /** Seconds until the entry expires. */
  timeout?: number;
  mark: number;
  zone: number;
  id?: number;
  /** Present when net.netfilter.nf_conntrack_acct=1 in the entry's namespace. */
  countersOrig?: ConntrackCounters;
  countersReply?: ConntrackCounters;
}

/** The NAT this entry applies, read from its tuples: source NAT when reply.dst != orig.src. */
export function natOf(e: ConntrackEntry): { snat?: string; dnat?: string } {
  const out: { snat?: string; dnat?: string } = {};
  if (e.reply.dst !== e.orig.src) out.snat = e.reply.dst;
  if (e.reply.src !== e.orig.dst) out.dnat = e.reply.src;
  return out;
}

/** "tcp 198.18.10.10:40000 -> 198.18.2.10:7000" for logs and test messages. */
export function formatTuple(t: ConntrackTuple): string {
  const name =
    Object.entries(IPPROTO)
      .find(([, n]) => n === t.protocol)?.[0]
      .toLowerCase() ?? String(t.protocol);
  if (t.sport === undefined || t.dport === undefined) return `${name} ${t.src} -> ${t.dst}`;
  return `${name} ${formatEndpoint(t.src, t.sport)} -> ${formatEndpoint(t.dst, t.dport)}`;
}

function toTuple(d: Decoded | undefined): ConntrackTuple | null {
  const ip = d?.ip as Decoded | undefined;
  const proto = d?.proto as Decoded | undefined;
  if (
    !ip ||
    !proto ||
    typeof ip.src !== 'string' ||
    typeof ip.dst !== 'string' ||
    typeof proto.protocol !== 'number'
  )
    return null;
  const t: ConntrackTuple = { src: ip.src, dst: ip.dst, protocol: proto.protocol };
  for (const k of ['sport', 'dport', 'icmpId', 'icmpType', 'icmpCode'] as const)
    if (typeof proto[k] === 'number') t[k] = proto[k];
  return t;
}

function toCounters(d: unknown): ConntrackCounters | undefined {
  const c = d as Decoded | undefined;
  if (!c || typeof c.packets !== 'number' || typeof c.bytes !== 'number') return undefined;
  return { packets: c.packets, bytes: c.bytes };
}

/**
 * One IPCTNL_MSG_CT_NEW / CT_DELETE message's payload (struct nfgenmsg, then attributes) as an
 * entry; null when it carries no complete pair of tuples.
 */
export function decodeConntrack(data: Buffer): ConntrackEntry | null {
  if (data.length < NFGENMSG_LEN) return null;
  const af = data.readUInt8(0);
  const family: Family | null = af === AF_INET ? 4 : af === AF_INET6 ? 6 : null;
  if (family === null) return null;
  const d = decodeAttrs(data.subarray(NFGENMSG_LEN), CT_TABLE);
  const orig = toTuple(d.orig as Decoded | undefined);
  const reply = toTuple(d.reply as Decoded | undefined);
  if (!orig || !reply) return null;
  const status = typeof d.status === 'number' ? d.status : 0;
  const e: ConntrackEntry = {
    family,
    orig,
    reply,
    status,
    flags: (Object.keys(CT_STATUS) as CtStatusName[]).filter((n) => status & CT_STATUS[n]),
    mark: typeof d.mark === 'number' ? d.mark : 0,
    zone: typeof d.zone === 'number' ? d.zone : 0,
  };
  const tcpState = ((d.protoinfo as Decoded | undefined)?.tcp as Decoded | undefined)?.state;
  if (typeof tcpState === 'number') e.tcpState = TCP_CT_STATES[tcpState] ?? 'NONE';
  if (typeof d.timeout === 'number') e.timeout = d.timeout;
  if (typeof d.id === 'number') e.id = d.id;
  const co = toCounters(d.countersOrig);
  const cr = toCounters(d.countersReply);
  if (co) e.countersOrig = co;
  if (cr) e.countersReply = cr;
  return e;
}

// ---- encoding ----------------------------------------------------------------------------------

function nla(type: number, data: Buffer, nested = false): Buffer {
  const len = 4 + data.length;
  const b = Buffer.alloc(align4(len));
  putNative16(b, len, 0);
  putNative16(b, type | (nested ? NLA_F_NESTED : 0), 2);
  data.copy(b, 4);
  return b;
}
const be16 = (v: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};
const be32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
const u8 = (v: number): Buffer => Buffer.from([v]);
const u32Host = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(v >>> 0);
  else b.writeUInt32BE(v >>> 0);
  return b;
};

function ipBytes(addr: string, family: Family): Buffer {
  if (family === 4) {
    const parts = addr.split('.').map(Number);
    if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255))
      throw new TypeError(`conntrack: ${addr} is not an IPv4 address`);
    return Buffer.from(parts);
  }
  const [head, tail, more] = addr.split('::');
  if (more !== undefined) throw new TypeError(`conntrack: ${addr} is not an IPv6 address`);
  const h = head ? head.split(':') : [];
  const t = tail !== undefined ? (tail ? tail.split(':') : []) : [];
  const groups = tail !== undefined ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t] : h;
  if (groups.length !== 8 || groups.some((g) => !/^[0-9a-f]{1,4}$/i.test(g)))
    throw new TypeError(`conntrack: ${addr} is not an IPv6 address (IPv4-mapped forms are not accepted)`);
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  return b;
}

export function familyOfAddress(addr: string): Family {
  return addr.includes(':') ? 6 : 4;
}

function encodeTuple(type: number, t: ConntrackTuple): Buffer {
  const family = familyOfAddress(t.src);
  if (familyOfAddress(t.dst) !== family)
    throw new TypeError(`conntrack: ${t.src} and ${t.dst} are of two families`);
  const ip = Buffer.concat([
    nla(family === 4 ? CTA_IP.V4_SRC : CTA_IP.V6_SRC, ipBytes(t.src, family)),
    nla(family === 4 ? CTA_IP.V4_DST : CTA_IP.V6_DST, ipBytes(t.dst, family)),
  ]);
  const proto: Buffer[] = [nla(CTA_PROTO.NUM, u8(t.protocol))];
  if (t.protocol === IPPROTO.ICMP || t.protocol === IPPROTO.ICMPV6) {
    const v6 = t.protocol === IPPROTO.ICMPV6;
    if (t.icmpId === undefined || t.icmpType === undefined || t.icmpCode === undefined)
      throw new TypeError('conntrack: an ICMP tuple needs icmpId, icmpType and icmpCode');
    proto.push(
      nla(v6 ? CTA_PROTO.ICMPV6_ID : CTA_PROTO.ICMP_ID, be16(t.icmpId)),
      nla(v6 ? CTA_PROTO.ICMPV6_TYPE : CTA_PROTO.ICMP_TYPE, u8(t.icmpType)),
      nla(v6 ? CTA_PROTO.ICMPV6_CODE : CTA_PROTO.ICMP_CODE, u8(t.icmpCode)),
    );
  } else if (
    t.protocol === IPPROTO.TCP ||
    t.protocol === IPPROTO.UDP ||
    t.sport !== undefined ||
    t.dport !== undefined
  ) {
    for (const [k, v] of [
      ['sport', t.sport],
      ['dport', t.dport],
    ] as const)
      if (v === undefined || !Number.isInteger(v) || v < 0 || v > 65535)
        throw new RangeError(`conntrack: ${k} must be a port number 0..65535 (got ${String(v)})`);
    proto.push(nla(CTA_PROTO.SRC_PORT, be16(t.sport!)), nla(CTA_PROTO.DST_PORT, be16(t.dport!)));
  }
  // Other protocols (ESP, GRE without keys, ...) are tracked by addresses alone (the kernel's
  // generic l4proto has no ports).
  return nla(
    type,
    Buffer.concat([nla(CTA_TUPLE.IP, ip, true), nla(CTA_TUPLE.PROTO, Buffer.concat(proto), true)]),
    true,
  );
}

const afOf = (f: Family): number => (f === 4 ? AF_INET : AF_INET6);

/** What a dump asks the kernel to filter by (ctnetlink_alloc_filter, nf_conntrack_netlink.c). */
export interface DumpFilter {
  family?: Family;
  /** Only entries whose mark & mask equals value. */
  mark?: { value: number; mask: number };
  /** Only entries whose status & mask equals value (CTA_STATUS with CTA_STATUS_MASK). */
  status?: { value: number; mask: number };
  /**
   * Only entries whose reply tuple goes to this address (CTA_FILTER with CTA_TUPLE_REPLY); with
   * source NAT that is the address the flow was translated to. Sets the family.
   */
  replyDst?: string;
}

/**
 * IPCTNL_MSG_CT_GET|NLM_F_DUMP: one family or all, filtered by the kernel. Kernels older than a
 * filter's attribute ignore it (nfnetlink parses attributes past its CTA_MAX liberally), so a
 * caller checks the entries it gets as well.
 */
export function encodeDump(opts: DumpFilter): Buffer {
  const family = opts.replyDst !== undefined ? familyOfAddress(opts.replyDst) : opts.family;
  if (opts.replyDst !== undefined && opts.family !== undefined && opts.family !== family)
    throw new TypeError(`conntrack: ${opts.replyDst} is not an IPv${opts.family} address`);
  const parts = [nfgenmsg(family ? afOf(family) : 0)];
  if (opts.mark) parts.push(nla(CTA.MARK, be32(opts.mark.value)), nla(CTA.MARK_MASK, be32(opts.mark.mask)));
  if (opts.status) {
    // A zero mask is EINVAL (ctnetlink_filter_parse_status): it would match all or nothing.
    if (opts.status.mask === 0) throw new RangeError('conntrack: a status filter needs a mask other than 0');
    parts.push(nla(CTA.STATUS, be32(opts.status.value)), nla(CTA.STATUS_MASK, be32(opts.status.mask)));
  }
  if (opts.replyDst !== undefined) {
    const f = family!;
    const ip = nla(f === 4 ? CTA_IP.V4_DST : CTA_IP.V6_DST, ipBytes(opts.replyDst, f));
    parts.push(
      nla(CTA.TUPLE_REPLY, nla(CTA_TUPLE.IP, ip, true), true),
      // The flags are an NLA_U32, in host order unlike every other ctnetlink integer.
      nla(CTA.FILTER, nla(CTA_FILTER.REPLY_FLAGS, u32Host(CTA_FILTER_FLAG_IP_DST)), true),
    );
  }
  return Buffer.concat(parts);
}

/** IPCTNL_MSG_CT_DELETE by the original tuple (plus zone, and id to delete that very entry only). */
export function encodeDelete(key: { orig: ConntrackTuple; zone?: number; id?: number }): Buffer {
  const family = familyOfAddress(key.orig.src);
  const parts = [nfgenmsg(afOf(family)), encodeTuple(CTA.TUPLE_ORIG, key.orig)];
  if (key.zone) parts.push(nla(CTA.ZONE, be16(key.zone)));
  if (key.id !== undefined) parts.push(nla(CTA.ID, be32(key.id)));
  return Buffer.concat(parts);
}

/**
 * IPCTNL_MSG_CT_NEW with NLM_F_CREATE: an entry made from its two tuples and a timeout (what
 * `conntrack -I` does); for filling a table in benchmarks and tests.
 */
export function encodeCreate(e: {
  orig: ConntrackTuple;
  reply: ConntrackTuple;
  timeout: number;
  mark?: number;
}): Buffer {
  const family = familyOfAddress(e.orig.src);
  const parts = [
    nfgenmsg(afOf(family)),
    encodeTuple(CTA.TUPLE_ORIG, e.orig),
    encodeTuple(CTA.TUPLE_REPLY, e.reply),
    nla(CTA.TIMEOUT, be32(e.timeout)),
  ];
  if (e.mark !== undefined) parts.push(nla(CTA.MARK, be32(e.mark)));
  return Buffer.concat(parts);
}

export const ctType = (msg: number): number => nfnlType(NFNL_SUBSYS_CTNETLINK, msg);
