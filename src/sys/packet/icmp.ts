// ICMP and ICMPv6 messages: echo (RFC 792, RFC 4443 4.1-4.2), the neighbour discovery messages
// NS, NA and RA (RFC 4861) with their checksums, and the type and code of any ICMP message.
// Encoders and decoders, no I/O: echo.ts and neighlink.ts put these on the wire.
import { formatIpv6, ipv6ToBytes, macToBytes } from '../ipaddr';
import { malformed, readIpv6, readMac, truncated } from './framebase';
import { IPPROTO_ICMPV6, internetChecksum, ipv6PseudoHeaderSum, type Ipv6Header } from './ip';

/** ICMPv6 checksum of a message (its checksum field taken as zero) between src and dst. */
export function icmpv6Checksum(
  src: string | Uint8Array,
  dst: string | Uint8Array,
  message: Uint8Array,
): number {
  const copy = Buffer.from(message);
  if (copy.length >= 4) copy.writeUInt16BE(0, 2);
  return internetChecksum(copy, ipv6PseudoHeaderSum(src, dst, copy.length, IPPROTO_ICMPV6));
}

/** Type and code of any ICMP or ICMPv6 message (RFC 792, RFC 4443 2.1). */
export function decodeIcmpTypeCode(
  buf: Uint8Array,
  offset: number,
  end: number,
): { type: number; code: number } {
  if (end > buf.length || end - offset < 4)
    throw truncated('ICMP header', 4, Math.max(0, Math.min(end, buf.length) - offset));
  return { type: buf[offset]!, code: buf[offset + 1]! };
}

// ---------------------------------------------------------------------------------------------
// ICMP / ICMPv6 echo (RFC 792, RFC 4443 4.1-4.2)

export const ICMP_ECHO_REPLY = 0;
export const ICMP_ECHO_REQUEST = 8;
export const ICMPV6_ECHO_REQUEST = 128;
export const ICMPV6_ECHO_REPLY = 129;

export interface IcmpEcho {
  type: number;
  code: number;
  id: number;
  seq: number;
  payload: Buffer;
}

/**
 * An echo message. For ICMPv4 the checksum is filled in; for ICMPv6 it is left zero unless the
 * addresses are given, because on a raw ICMPv6 socket the kernel computes it (RFC 3542 3.1).
 */
export function encodeIcmpEcho(
  e: { type: number; id: number; seq: number; payload?: Uint8Array },
  v6?: { src: string; dst: string },
): Buffer {
  const payload = e.payload ?? Buffer.alloc(0);
  const b = Buffer.alloc(8 + payload.length);
  b[0] = e.type;
  b[1] = 0;
  b.writeUInt16BE(e.id & 0xffff, 4);
  b.writeUInt16BE(e.seq & 0xffff, 6);
  Buffer.from(payload).copy(b, 8);
  if (e.type === ICMP_ECHO_REQUEST || e.type === ICMP_ECHO_REPLY) b.writeUInt16BE(internetChecksum(b), 2);
  else if (v6) b.writeUInt16BE(icmpv6Checksum(v6.src, v6.dst, b), 2);
  return b;
}

/** Decode an echo request/reply; throws FrameError for anything else or a bad ICMPv4 checksum. */
export function decodeIcmpEcho(buf: Uint8Array, offset = 0, end = buf.length): IcmpEcho {
  if (offset < 0 || end > buf.length || end < offset)
    throw truncated('ICMP echo', 8, Math.max(0, buf.length - offset));
  if (end - offset < 8) throw truncated('ICMP echo', 8, end - offset);
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const type = b[offset]!;
  if (![ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY].includes(type))
    throw malformed('ICMP echo', `type ${type} is not an echo request or reply`);
  if (
    (type === ICMP_ECHO_REPLY || type === ICMP_ECHO_REQUEST) &&
    internetChecksum(b.subarray(offset, end)) !== 0
  )
    throw malformed('ICMP echo', 'bad checksum');
  return {
    type,
    code: b[offset + 1]!,
    id: b.readUInt16BE(offset + 4),
    seq: b.readUInt16BE(offset + 6),
    payload: Buffer.from(b.subarray(offset + 8, end)),
  };
}

// ---------------------------------------------------------------------------------------------
// Neighbour discovery (RFC 4861 4.2-4.4)

export const ND_ROUTER_SOLICIT = 133;
export const ND_ROUTER_ADVERT = 134;
export const ND_NEIGHBOR_SOLICIT = 135;
export const ND_NEIGHBOR_ADVERT = 136;
/** Option types (RFC 4861 4.6.1). */
export const ND_OPT_SOURCE_LINKADDR = 1;
export const ND_OPT_TARGET_LINKADDR = 2;
/** NA flags (RFC 4861 4.4): Router, Solicited, Override. */
export const NA_FLAG_ROUTER = 0x80;
export const NA_FLAG_SOLICITED = 0x40;
export const NA_FLAG_OVERRIDE = 0x20;
/** Every ND message is sent with hop limit 255 and receivers drop any other (RFC 4861 7.1). */
export const ND_HOP_LIMIT = 255;

export interface NdpNeighbourSolicitation {
  type: typeof ND_NEIGHBOR_SOLICIT;
  target: string;
  sourceMac: string | null;
}
export interface NdpNeighbourAdvertisement {
  type: typeof ND_NEIGHBOR_ADVERT;
  target: string;
  router: boolean;
  solicited: boolean;
  override: boolean;
  targetMac: string | null;
}
export interface NdpRouterAdvertisement {
  type: typeof ND_ROUTER_ADVERT;
  curHopLimit: number;
  managed: boolean;
  other: boolean;
  routerLifetime: number;
  reachableTime: number;
  retransTimer: number;
  sourceMac: string | null;
}
export type NdpMessage = NdpNeighbourSolicitation | NdpNeighbourAdvertisement | NdpRouterAdvertisement;

function linkAddrOption(type: number, mac: string): Buffer {
  const o = Buffer.alloc(8);
  o[0] = type;
  o[1] = 1; // length in units of 8 octets
  macToBytes(mac).copy(o, 2);
  return o;
}

/** An NS message (ICMPv6 body) with its checksum for src -> dst; sourceMac adds the SLLA option. */
export function encodeNeighbourSolicitation(p: {
  src: string;
  dst: string;
  target: string;
  sourceMac?: string | null;
}): Buffer {
  const body = Buffer.alloc(24);
  body[0] = ND_NEIGHBOR_SOLICIT;
  ipv6ToBytes(p.target).copy(body, 8);
  // RFC 4861 4.3: the source link-layer option MUST NOT be included when the source is unspecified.
  const withOpt = p.sourceMac && formatIpv6(ipv6ToBytes(p.src)) !== '::';
  const msg = withOpt ? Buffer.concat([body, linkAddrOption(ND_OPT_SOURCE_LINKADDR, p.sourceMac!)]) : body;
  msg.writeUInt16BE(icmpv6Checksum(p.src, p.dst, msg), 2);
  return msg;
}

/** An NA message (ICMPv6 body) with its checksum for src -> dst. */
export function encodeNeighbourAdvertisement(p: {
  src: string;
  dst: string;
  target: string;
  targetMac?: string | null;
  router?: boolean;
  solicited?: boolean;
  override?: boolean;
}): Buffer {
  const body = Buffer.alloc(24);
  body[0] = ND_NEIGHBOR_ADVERT;
  body[4] =
    (p.router ? NA_FLAG_ROUTER : 0) |
    (p.solicited ? NA_FLAG_SOLICITED : 0) |
    (p.override ? NA_FLAG_OVERRIDE : 0);
  ipv6ToBytes(p.target).copy(body, 8);
  const msg = p.targetMac ? Buffer.concat([body, linkAddrOption(ND_OPT_TARGET_LINKADDR, p.targetMac)]) : body;
  msg.writeUInt16BE(icmpv6Checksum(p.src, p.dst, msg), 2);
  return msg;
}

/** Walk ND options (RFC 4861 4.6): a zero length is invalid and the message must be dropped. */
function readLinkAddrOption(b: Buffer, start: number, end: number, wanted: number): string | null {
  let found: string | null = null;
  for (let o = start; o < end;) {
    if (end - o < 2) throw truncated('ND option', 2, end - o);
    const len = b[o + 1]! * 8;
    if (len === 0) throw malformed('ND option', `option type ${b[o]} has length 0`);
    if (end - o < len) throw truncated('ND option', len, end - o);
    if (b[o] === wanted && len >= 8 && found === null) found = readMac(b, o + 2);
    o += len;
  }
  return found;
}

/**
 * Decode and validate an NS, NA or RA message (RFC 4861 6.1.1, 6.1.2, 7.1.1, 7.1.2): length, code 0,
 * hop limit 255, checksum against the IPv6 addresses, target not multicast, well-formed options.
 * `message` spans exactly the ICMPv6 message (offset..end).
 */
export function decodeNdp(buf: Uint8Array, offset: number, end: number, ip: Ipv6Header): NdpMessage {
  if (end > buf.length || end < offset)
    throw truncated('ND message', end - offset, Math.max(0, buf.length - offset));
  if (end - offset < 4) throw truncated('ND message', 4, end - offset);
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const type = b[offset]!;
  const minLen = type === ND_ROUTER_ADVERT ? 16 : 24;
  if (type !== ND_NEIGHBOR_SOLICIT && type !== ND_NEIGHBOR_ADVERT && type !== ND_ROUTER_ADVERT)
    throw malformed('ND message', `ICMPv6 type ${type} is not NS, NA or RA`);
  if (end - offset < minLen) throw truncated(`ND type ${type}`, minLen, end - offset);
  if (b[offset + 1] !== 0) throw malformed('ND message', `code ${b[offset + 1]}`);
  if (ip.hopLimit !== ND_HOP_LIMIT)
    throw malformed('ND message', `hop limit ${ip.hopLimit}, not 255 (off-link sender)`);
  if (icmpv6Checksum(ip.src, ip.dst, b.subarray(offset, end)) !== b.readUInt16BE(offset + 2))
    throw malformed('ND message', 'bad ICMPv6 checksum');
  if (type === ND_ROUTER_ADVERT) {
    const flags = b[offset + 5]!;
    return {
      type,
      curHopLimit: b[offset + 4]!,
      managed: (flags & 0x80) !== 0,
      other: (flags & 0x40) !== 0,
      routerLifetime: b.readUInt16BE(offset + 6),
      reachableTime: b.readUInt32BE(offset + 8),
      retransTimer: b.readUInt32BE(offset + 12),
      sourceMac: readLinkAddrOption(b, offset + 16, end, ND_OPT_SOURCE_LINKADDR),
    };
  }
  if (b[offset + 8] === 0xff) throw malformed('ND message', 'target address is multicast');
  const target = readIpv6(b, offset + 8);
  if (type === ND_NEIGHBOR_SOLICIT)
    return { type, target, sourceMac: readLinkAddrOption(b, offset + 24, end, ND_OPT_SOURCE_LINKADDR) };
  const flags = b[offset + 4]!;
  return {
    type,
    target,
    router: (flags & NA_FLAG_ROUTER) !== 0,
    solicited: (flags & NA_FLAG_SOLICITED) !== 0,
    override: (flags & NA_FLAG_OVERRIDE) !== 0,
    targetMac: readLinkAddrOption(b, offset + 24, end, ND_OPT_TARGET_LINKADDR),
  };
}
