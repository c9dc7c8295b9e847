// IPv4 (RFC 791) and IPv6 (RFC 8200) headers, the Internet checksum (RFC 1071) and the IPv6
// upper-layer pseudo-header sum: encoders and decoders, no I/O.
import { formatIpv6, ipv4ToBytes, ipv6ToBytes } from '../ipaddr';
import { malformed, need, readIpv4, readIpv6, type Decoded } from './framebase';

/** The solicited-node multicast address of an IPv6 address (RFC 4291 2.7.1): ff02::1:ffXX:XXXX. */
export function solicitedNodeMulticast(ip: string): string {
  const b = ipv6ToBytes(ip);
  const m = Buffer.from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, b[13]!, b[14]!, b[15]!]);
  return formatIpv6(m);
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
      src: readIpv4(b, offset + 12),
      dst: readIpv4(b, offset + 16),
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
      src: readIpv6(b, offset + 8),
      dst: readIpv6(b, offset + 24),
    },
    payloadOffset: offset + IPV6_HEADER_LEN,
  };
}
