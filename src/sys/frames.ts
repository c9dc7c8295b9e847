// Pure encoding and decoding of the frames neighbour resolution needs: Ethernet II (with one
// 802.1Q tag), ARP (RFC 826), IPv4 (RFC 791) and IPv6 (RFC 8200) headers, ICMP echo (RFC 792,
// RFC 4443) and the ICMPv6 neighbour discovery messages NS, NA and RA (RFC 4861) with their
// checksums. No I/O: neighlink.ts and icmp.ts put these on the wire, and packet-capture decoding
// reuses the decoders.
//
// Every decoder takes untrusted bytes: it checks lengths before reading and throws a FrameError
// (code ERR_FRAME_TRUNCATED or ERR_FRAME_MALFORMED) instead of reading past the end or returning
// half-parsed garbage. Decoded values are copies (strings, fresh Buffers), never views into the
// caller's buffer, because capture buffers are reused for the next packet.
import { IpdeadgateError } from '../errors';
import * as addr from './ipaddr';
import { ipv4ToBytes, ipv6ToBytes, macToBytes, normalizeIp } from './ipaddr';

/** A frame that cannot be decoded: too short, or a field with an impossible value. */
export class FrameError extends IpdeadgateError {
  constructor(code: 'ERR_FRAME_TRUNCATED' | 'ERR_FRAME_MALFORMED', message: string) {
    super(code, message);
  }
}

function truncated(what: string, need: number, have: number): FrameError {
  return new FrameError('ERR_FRAME_TRUNCATED', `${what}: truncated (need ${need} bytes, have ${have})`);
}

function malformed(what: string, why: string): FrameError {
  return new FrameError('ERR_FRAME_MALFORMED', `${what}: ${why}`);
}

function need(buf: Uint8Array, offset: number, len: number, what: string): void {
  if (offset < 0 || buf.length - offset < len) throw truncated(what, len, Math.max(0, buf.length - offset));
}

// ---------------------------------------------------------------------------------------------
// Addresses

export const BROADCAST_MAC = 'ff:ff:ff:ff:ff:ff';
export const ZERO_MAC = '00:00:00:00:00:00';

// Parsing and formatting are the project's one IP/MAC module (./ipaddr.ts); the formatters here
// check the bounds of untrusted frames first, so a short frame is a FrameError, not a RangeError.
export { ipv4ToBytes, ipv6ToBytes, macToBytes, normalizeIp, normalizeMac, stripZone } from './ipaddr';

/** 6 bytes at offset to lower-case "aa:bb:cc:dd:ee:ff". */
export function formatMac(buf: Uint8Array, offset = 0): string {
  need(buf, offset, 6, 'MAC address');
  return addr.formatMac(buf, offset);
}

export function formatIpv4(buf: Uint8Array, offset = 0): string {
  need(buf, offset, 4, 'IPv4 address');
  return addr.formatIpv4(buf, offset);
}

/** 16 bytes at offset to text, as inet_ntop prints it (RFC 5952). */
export function formatIpv6(buf: Uint8Array, offset = 0): string {
  need(buf, offset, 16, 'IPv6 address');
  return addr.formatIpv6(buf, offset);
}

/** The solicited-node multicast address of an IPv6 address (RFC 4291 2.7.1): ff02::1:ffXX:XXXX. */
export function solicitedNodeMulticast(ip: string): string {
  const b = ipv6ToBytes(ip);
  const m = Buffer.from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, b[13]!, b[14]!, b[15]!]);
  return formatIpv6(m);
}

/** The Ethernet multicast MAC of an IPv6 multicast address (RFC 2464 7): 33:33 + its last 32 bits. */
export function ipv6MulticastMac(ip: string): string {
  const b = ipv6ToBytes(ip);
  if (b[0] !== 0xff) throw new RangeError(`${ip} is not an IPv6 multicast address`);
  return formatMac(Buffer.from([0x33, 0x33, b[12]!, b[13]!, b[14]!, b[15]!]));
}

// ---------------------------------------------------------------------------------------------
// Checksums

/**
 * The Internet checksum (RFC 1071): one's complement of the one's complement sum of 16-bit words.
 * `initial` is a partial (unfolded) sum, e.g. of a pseudo-header from pseudoHeaderSum().
 */
export function internetChecksum(data: Uint8Array, initial = 0): number {
  let sum = initial;
  const n = data.length;
  for (let i = 0; i + 1 < n; i += 2) sum += (data[i]! << 8) | data[i + 1]!;
  if (n % 2 === 1) sum += data[n - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return ~sum & 0xffff;
}

/** Unfolded sum of the IPv6 upper-layer pseudo-header (RFC 8200 8.1). */
export function ipv6PseudoHeaderSum(
  src: string | Uint8Array,
  dst: string | Uint8Array,
  length: number,
  nextHeader: number,
): number {
  const s = typeof src === 'string' ? ipv6ToBytes(src) : src;
  const d = typeof dst === 'string' ? ipv6ToBytes(dst) : dst;
  let sum = 0;
  for (let i = 0; i < 16; i += 2) sum += ((s[i]! << 8) | s[i + 1]!) + ((d[i]! << 8) | d[i + 1]!);
  sum += Math.floor(length / 0x10000) + (length & 0xffff);
  sum += nextHeader;
  return sum;
}

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

// ---------------------------------------------------------------------------------------------
// Ethernet II (IEEE 802.3 with EtherType), one optional 802.1Q tag

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_VLAN = 0x8100;
export const ETHERTYPE_IPV6 = 0x86dd;
export const ETH_HEADER_LEN = 14;

export interface EthernetHeader {
  dst: string;
  src: string;
  ethertype: number;
  /** 802.1Q VLAN id when the frame carried a tag. */
  vlan?: number;
}

export interface Decoded<T> {
  value: T;
  /** Offset of the payload that follows this header in the buffer passed in. */
  payloadOffset: number;
}

export function encodeEthernet(h: EthernetHeader, payload: Uint8Array): Buffer {
  const tagged = h.vlan !== undefined;
  const hdr = Buffer.alloc(tagged ? 18 : 14);
  macToBytes(h.dst).copy(hdr, 0);
  macToBytes(h.src).copy(hdr, 6);
  if (tagged) {
    if (!Number.isInteger(h.vlan) || h.vlan! < 0 || h.vlan! > 4095)
      throw new RangeError(`VLAN id ${h.vlan} is out of range`);
    hdr.writeUInt16BE(ETHERTYPE_VLAN, 12);
    hdr.writeUInt16BE(h.vlan!, 14);
    hdr.writeUInt16BE(h.ethertype, 16);
  } else hdr.writeUInt16BE(h.ethertype, 12);
  return Buffer.concat([hdr, payload]);
}

export function decodeEthernet(buf: Uint8Array, offset = 0): Decoded<EthernetHeader> {
  need(buf, offset, ETH_HEADER_LEN, 'Ethernet header');
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  let ethertype = b.readUInt16BE(offset + 12);
  let vlan: number | undefined;
  let payloadOffset = offset + 14;
  if (ethertype === ETHERTYPE_VLAN) {
    need(buf, offset, 18, 'Ethernet 802.1Q header');
    vlan = b.readUInt16BE(offset + 14) & 0x0fff;
    ethertype = b.readUInt16BE(offset + 16);
    payloadOffset = offset + 18;
  }
  // Values below 0x0600 are 802.3 lengths (LLC frames), not EtherTypes: nothing of ours.
  if (ethertype < 0x0600)
    throw malformed('Ethernet header', `802.3 length field ${ethertype}, not an EtherType`);
  const value: EthernetHeader = { dst: formatMac(b, offset), src: formatMac(b, offset + 6), ethertype };
  if (vlan !== undefined) value.vlan = vlan;
  return { value, payloadOffset };
}

// ---------------------------------------------------------------------------------------------
// ARP for IPv4 over Ethernet (RFC 826)

export const ARP_REQUEST = 1;
export const ARP_REPLY = 2;
export const ARP_LEN = 28;

export interface ArpPacket {
  op: number;
  senderMac: string;
  senderIp: string;
  targetMac: string;
  targetIp: string;
}

export function encodeArp(p: ArpPacket): Buffer {
  const b = Buffer.alloc(ARP_LEN);
  b.writeUInt16BE(1, 0); // htype: Ethernet
  b.writeUInt16BE(ETHERTYPE_IPV4, 2); // ptype
  b[4] = 6; // hlen
  b[5] = 4; // plen
  b.writeUInt16BE(p.op, 6);
  macToBytes(p.senderMac).copy(b, 8);
  ipv4ToBytes(p.senderIp).copy(b, 14);
  macToBytes(p.targetMac).copy(b, 18);
  ipv4ToBytes(p.targetIp).copy(b, 24);
  return b;
}

export function decodeArp(buf: Uint8Array, offset = 0): ArpPacket {
  need(buf, offset, 8, 'ARP header');
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const htype = b.readUInt16BE(offset);
  const ptype = b.readUInt16BE(offset + 2);
  if (htype !== 1 || ptype !== ETHERTYPE_IPV4 || b[offset + 4] !== 6 || b[offset + 5] !== 4)
    throw malformed(
      'ARP',
      `not Ethernet/IPv4 (htype ${htype}, ptype 0x${ptype.toString(16)}, hlen ${b[offset + 4]}, plen ${b[offset + 5]})`,
    );
  need(buf, offset, ARP_LEN, 'ARP packet');
  const op = b.readUInt16BE(offset + 6);
  if (op !== ARP_REQUEST && op !== ARP_REPLY) throw malformed('ARP', `unknown operation ${op}`);
  return {
    op,
    senderMac: formatMac(b, offset + 8),
    senderIp: formatIpv4(b, offset + 14),
    targetMac: formatMac(b, offset + 18),
    targetIp: formatIpv4(b, offset + 24),
  };
}

// ---------------------------------------------------------------------------------------------
// IPv4 header (RFC 791)

export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMPV6 = 58;

export interface Ipv4Header {
  src: string;
  dst: string;
  protocol: number;
  ttl: number;
  id: number;
  tos: number;
  /** Flags (3 bits: reserved, DF, MF) and fragment offset in 8-byte units. */
  flags: number;
  fragmentOffset: number;
  /** Total length from the header (header + payload). */
  totalLength: number;
  headerLength: number;
}

export function encodeIpv4Header(h: {
  src: string;
  dst: string;
  protocol: number;
  payloadLength: number;
  ttl?: number;
  id?: number;
  tos?: number;
  dontFragment?: boolean;
}): Buffer {
  const b = Buffer.alloc(20);
  b[0] = 0x45;
  b[1] = h.tos ?? 0;
  b.writeUInt16BE(20 + h.payloadLength, 2);
  b.writeUInt16BE(h.id ?? 0, 4);
  b.writeUInt16BE(h.dontFragment ? 0x4000 : 0, 6);
  b[8] = h.ttl ?? 64;
  b[9] = h.protocol;
  ipv4ToBytes(h.src).copy(b, 12);
  ipv4ToBytes(h.dst).copy(b, 16);
  b.writeUInt16BE(internetChecksum(b), 10);
  return b;
}

/** Decode and verify an IPv4 header (version, IHL, total length, header checksum). */
export function decodeIpv4(
  buf: Uint8Array,
  offset = 0,
  opts: { verifyChecksum?: boolean } = {},
): Decoded<Ipv4Header> {
  need(buf, offset, 20, 'IPv4 header');
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const version = b[offset]! >> 4;
  const ihl = (b[offset]! & 0x0f) * 4;
  if (version !== 4) throw malformed('IPv4 header', `version ${version}`);
  if (ihl < 20) throw malformed('IPv4 header', `header length ${ihl}`);
  need(buf, offset, ihl, 'IPv4 header with options');
  const totalLength = b.readUInt16BE(offset + 2);
  if (totalLength < ihl) throw malformed('IPv4 header', `total length ${totalLength} < header length ${ihl}`);
  if (opts.verifyChecksum !== false && internetChecksum(b.subarray(offset, offset + ihl)) !== 0)
    throw malformed('IPv4 header', 'bad header checksum');
  const ff = b.readUInt16BE(offset + 6);
  return {
    value: {
      tos: b[offset + 1]!,
      totalLength,
      id: b.readUInt16BE(offset + 4),
      flags: ff >> 13,
      fragmentOffset: ff & 0x1fff,
      ttl: b[offset + 8]!,
      protocol: b[offset + 9]!,
      src: formatIpv4(b, offset + 12),
      dst: formatIpv4(b, offset + 16),
      headerLength: ihl,
    },
    payloadOffset: offset + ihl,
  };
}

// ---------------------------------------------------------------------------------------------
// IPv6 fixed header (RFC 8200 3)

export const IPV6_HEADER_LEN = 40;

export interface Ipv6Header {
  src: string;
  dst: string;
  nextHeader: number;
  hopLimit: number;
  payloadLength: number;
  trafficClass: number;
  flowLabel: number;
}

export function encodeIpv6Header(h: {
  src: string;
  dst: string;
  nextHeader: number;
  payloadLength: number;
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
}): Buffer {
  const b = Buffer.alloc(IPV6_HEADER_LEN);
  const tc = h.trafficClass ?? 0;
  const fl = h.flowLabel ?? 0;
  b.writeUInt32BE(((6 << 28) | (tc << 20) | (fl & 0xfffff)) >>> 0, 0);
  b.writeUInt16BE(h.payloadLength, 4);
  b[6] = h.nextHeader;
  b[7] = h.hopLimit ?? 64;
  ipv6ToBytes(h.src).copy(b, 8);
  ipv6ToBytes(h.dst).copy(b, 24);
  return b;
}

export function decodeIpv6(buf: Uint8Array, offset = 0): Decoded<Ipv6Header> {
  need(buf, offset, IPV6_HEADER_LEN, 'IPv6 header');
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const w = b.readUInt32BE(offset);
  if (w >>> 28 !== 6) throw malformed('IPv6 header', `version ${w >>> 28}`);
  return {
    value: {
      trafficClass: (w >>> 20) & 0xff,
      flowLabel: w & 0xfffff,
      payloadLength: b.readUInt16BE(offset + 4),
      nextHeader: b[offset + 6]!,
      hopLimit: b[offset + 7]!,
      src: formatIpv6(b, offset + 8),
      dst: formatIpv6(b, offset + 24),
    },
    payloadOffset: offset + IPV6_HEADER_LEN,
  };
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
    if (b[o] === wanted && len >= 8 && found === null) found = formatMac(b, o + 2);
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
  const target = formatIpv6(b, offset + 8);
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

// ---------------------------------------------------------------------------------------------
// Whole frames: what neighlink.ts builds and what it and capture decoding read.

/** Ethernet + ARP who-has, broadcast. */
export function buildArpRequest(p: {
  senderMac: string;
  senderIp: string;
  targetIp: string;
  dstMac?: string;
}): Buffer {
  const arp = encodeArp({
    op: ARP_REQUEST,
    senderMac: p.senderMac,
    senderIp: p.senderIp,
    targetMac: ZERO_MAC,
    targetIp: p.targetIp,
  });
  return encodeEthernet({ dst: p.dstMac ?? BROADCAST_MAC, src: p.senderMac, ethertype: ETHERTYPE_ARP }, arp);
}

/** Ethernet + ARP reply (used by tests and fakes). */
export function buildArpReply(p: {
  senderMac: string;
  senderIp: string;
  targetMac: string;
  targetIp: string;
}): Buffer {
  const arp = encodeArp({ op: ARP_REPLY, ...p });
  return encodeEthernet({ dst: p.targetMac, src: p.senderMac, ethertype: ETHERTYPE_ARP }, arp);
}

/**
 * Ethernet + IPv6 + NS for `target`. Multicast to its solicited-node group unless `unicastMac` is
 * given (then unicast to the target itself, RFC 4861 7.2.2's reachability probe).
 */
export function buildNeighbourSolicitation(p: {
  srcMac: string;
  srcIp: string;
  target: string;
  unicastMac?: string;
}): Buffer {
  const dst = p.unicastMac ? normalizeIp(p.target) : solicitedNodeMulticast(p.target);
  const dstMac = p.unicastMac ?? ipv6MulticastMac(dst);
  const ns = encodeNeighbourSolicitation({ src: p.srcIp, dst, target: p.target, sourceMac: p.srcMac });
  const ip = encodeIpv6Header({
    src: p.srcIp,
    dst,
    nextHeader: IPPROTO_ICMPV6,
    payloadLength: ns.length,
    hopLimit: ND_HOP_LIMIT,
  });
  return encodeEthernet({ dst: dstMac, src: p.srcMac, ethertype: ETHERTYPE_IPV6 }, Buffer.concat([ip, ns]));
}

/** Ethernet + IPv6 + NA (used by tests and fakes). */
export function buildNeighbourAdvertisement(p: {
  srcMac: string;
  srcIp: string;
  dstMac: string;
  dstIp: string;
  target: string;
  solicited?: boolean;
  router?: boolean;
  override?: boolean;
  withTargetMac?: boolean;
}): Buffer {
  const na = encodeNeighbourAdvertisement({
    src: p.srcIp,
    dst: p.dstIp,
    target: p.target,
    targetMac: p.withTargetMac === false ? null : p.srcMac,
    solicited: p.solicited ?? true,
    router: p.router ?? false,
    override: p.override ?? true,
  });
  const ip = encodeIpv6Header({
    src: p.srcIp,
    dst: p.dstIp,
    nextHeader: IPPROTO_ICMPV6,
    payloadLength: na.length,
    hopLimit: ND_HOP_LIMIT,
  });
  return encodeEthernet({ dst: p.dstMac, src: p.srcMac, ethertype: ETHERTYPE_IPV6 }, Buffer.concat([ip, na]));
}

export type NeighbourFrame =
  | { proto: 'arp'; eth: EthernetHeader; arp: ArpPacket }
  | { proto: 'ndp'; eth: EthernetHeader; ip6: Ipv6Header; ndp: NdpMessage };

/**
 * Decode an Ethernet frame carrying ARP or an ND message (NS/NA/RA). Returns null for a well-formed
 * frame of another kind (not ours to judge); throws FrameError for a truncated or malformed one.
 */
export function decodeNeighbourFrame(frame: Uint8Array): NeighbourFrame | null {
  const { value: eth, payloadOffset } = decodeEthernet(frame);
  if (eth.ethertype === ETHERTYPE_ARP) return { proto: 'arp', eth, arp: decodeArp(frame, payloadOffset) };
  if (eth.ethertype !== ETHERTYPE_IPV6) return null;
  const { value: ip6, payloadOffset: l4 } = decodeIpv6(frame, payloadOffset);
  // ND messages never carry extension headers in practice; anything else is not ours.
  if (ip6.nextHeader !== IPPROTO_ICMPV6) return null;
  const end = l4 + ip6.payloadLength;
  if (end > frame.length) throw truncated('IPv6 payload', ip6.payloadLength, frame.length - l4);
  if (ip6.payloadLength < 1) throw truncated('ICMPv6 message', 4, ip6.payloadLength);
  const type = frame[l4]!;
  if (type !== ND_NEIGHBOR_SOLICIT && type !== ND_NEIGHBOR_ADVERT && type !== ND_ROUTER_ADVERT) return null;
  return { proto: 'ndp', eth, ip6, ndp: decodeNdp(frame, l4, end, ip6) };
}

// ---------------------------------------------------------------------------------------------
// TCP (RFC 9293 3.1) and UDP (RFC 768) headers, and the first bytes of any ICMP message: what
// packet-capture decoding (capture.ts) needs to describe a packet and spot TCP retransmissions.

/** TCP control bits (RFC 9293 3.1, RFC 3168 for ECE/CWR). */
export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;
export const TCP_URG = 0x20;
export const TCP_ECE = 0x40;
export const TCP_CWR = 0x80;

export interface TcpHeader {
  srcPort: number;
  dstPort: number;
  /** Sequence and acknowledgment numbers, unsigned 32-bit. */
  seq: number;
  ack: number;
  /** Control bits (TCP_FIN ... TCP_CWR). */
  flags: number;
  window: number;
  headerLength: number;
  /** Payload bytes: from the end of the TCP header to `end` (the IP payload's end). */
  payloadLength: number;
}

/** Decode a TCP header in buf[offset, end); `end` is where the IP payload ends (not the frame: Ethernet pads). */
export function decodeTcp(buf: Uint8Array, offset: number, end: number): Decoded<TcpHeader> {
  if (end > buf.length) throw truncated('TCP segment', end - offset, buf.length - offset);
  if (end - offset < 20) throw truncated('TCP header', 20, Math.max(0, end - offset));
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLength = (b[offset + 12]! >> 4) * 4;
  if (headerLength < 20) throw malformed('TCP header', `data offset ${headerLength} bytes`);
  if (end - offset < headerLength) throw truncated('TCP header with options', headerLength, end - offset);
  return {
    value: {
      srcPort: b.readUInt16BE(offset),
      dstPort: b.readUInt16BE(offset + 2),
      seq: b.readUInt32BE(offset + 4),
      ack: b.readUInt32BE(offset + 8),
      flags: b[offset + 13]!,
      window: b.readUInt16BE(offset + 14),
      headerLength,
      payloadLength: end - offset - headerLength,
    },
    payloadOffset: offset + headerLength,
  };
}

/** A TCP header (no options) followed by payload; the checksum is left zero (tests and fakes only). */
export function encodeTcp(h: {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack?: number;
  flags: number;
  window?: number;
  payload?: Uint8Array;
}): Buffer {
  const payload = h.payload ?? Buffer.alloc(0);
  const b = Buffer.alloc(20 + payload.length);
  b.writeUInt16BE(h.srcPort, 0);
  b.writeUInt16BE(h.dstPort, 2);
  b.writeUInt32BE(h.seq >>> 0, 4);
  b.writeUInt32BE((h.ack ?? 0) >>> 0, 8);
  b[12] = 5 << 4;
  b[13] = h.flags;
  b.writeUInt16BE(h.window ?? 65535, 14);
  Buffer.from(payload).copy(b, 20);
  return b;
}

export interface UdpHeader {
  srcPort: number;
  dstPort: number;
  /** The length field: header + payload. */
  length: number;
}

export function decodeUdp(buf: Uint8Array, offset: number, end: number): Decoded<UdpHeader> {
  if (end > buf.length) throw truncated('UDP datagram', end - offset, buf.length - offset);
  if (end - offset < 8) throw truncated('UDP header', 8, Math.max(0, end - offset));
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  return {
    value: {
      srcPort: b.readUInt16BE(offset),
      dstPort: b.readUInt16BE(offset + 2),
      length: b.readUInt16BE(offset + 4),
    },
    payloadOffset: offset + 8,
  };
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
