// IP and MAC addresses, text <-> network-order bytes: the one implementation that rtnetlink
// (rtnl/), the frame codecs (packet/: ARP/NDP, capture decoding), the CLI and detection's events
// use, so an address compares equal wherever it was parsed. Validation before anything reaches
// the kernel or the wire; text as inet_ntop prints it (RFC 5952, with the mixed notation of its
// section 5 for IPv4-mapped addresses).
import { isIPv4, isIPv6 } from 'node:net';

/** An IP version: what rtnetlink, the frame codecs and detection all key addresses by. */
export type Family = 4 | 6;

/** A TypeError/RangeError with a Node-style `code`, for bad input caught before the kernel. */
export function invalidArg(message: string, kind: 'type' | 'range' = 'range'): TypeError | RangeError {
  const err = kind === 'type' ? new TypeError(message) : new RangeError(message);
  (err as Error & { code: string }).code = kind === 'type' ? 'ERR_INVALID_ARG_TYPE' : 'ERR_INVALID_ARG_VALUE';
  return err;
}

/** 4, 6, or 0 when `text` is not an IP address (no prefix, no zone). */
export function ipFamily(text: string): 0 | Family {
  if (isIPv4(text)) return 4;
  if (isIPv6(text) && !text.includes('%')) return 6;
  return 0;
}

/** Strip an IPv6 zone ("fe80::1%eth0" -> "fe80::1"). */
export function stripZone(ip: string): string {
  const i = ip.indexOf('%');
  return i < 0 ? ip : ip.slice(0, i);
}

/** Dotted quad to 4 bytes; throws RangeError for anything else. */
export function ipv4ToBytes(ip: string): Buffer {
  if (!isIPv4(ip)) throw invalidArg(`"${ip}" is not an IPv4 address`);
  return Buffer.from(ip.split('.').map(Number));
}

/** IPv6 text (RFC 4291 2.2; a zone is allowed and ignored) to 16 bytes; throws RangeError otherwise. */
export function ipv6ToBytes(ip: string): Buffer {
  const text = stripZone(ip);
  if (!isIPv6(text)) throw invalidArg(`"${ip}" is not an IPv6 address`);
  const words = (s: string): number[] => {
    if (s === '') return [];
    const out: number[] = [];
    for (const part of s.split(':')) {
      if (part.includes('.')) {
        const v4 = ipv4ToBytes(part);
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else out.push(parseInt(part, 16));
    }
    return out;
  };
  const dbl = text.indexOf('::');
  const head = words(dbl >= 0 ? text.slice(0, dbl) : text);
  const tail = dbl >= 0 ? words(text.slice(dbl + 2)) : [];
  const out = Buffer.alloc(16);
  head.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  tail.forEach((w, i) => out.writeUInt16BE(w, 16 - (tail.length - i) * 2));
  return out;
}

/** Parse an IP address (no zone); throws a RangeError naming `what` when it is not one. */
export function parseIp(text: unknown, what: string, family?: Family): { family: Family; bytes: Buffer } {
  if (typeof text !== 'string')
    throw invalidArg(`${what} must be an IP address string, not ${typeof text}`, 'type');
  const fam = ipFamily(text);
  if (fam === 0) throw invalidArg(`${what} "${text}" is not an IP address`);
  if (family !== undefined && fam !== family)
    throw invalidArg(`${what} "${text}" is an IPv${fam} address where IPv${family} is needed`);
  return { family: fam, bytes: fam === 4 ? ipv4ToBytes(text) : ipv6ToBytes(text) };
}

function room(buf: Uint8Array, offset: number, len: number, what: string): void {
  if (offset < 0 || buf.length - offset < len)
    throw invalidArg(`${what} needs ${len} bytes at offset ${offset}, the buffer has ${buf.length}`);
}

/** 4 bytes at offset to a dotted quad. */
export function formatIpv4(buf: Uint8Array, offset = 0): string {
  room(buf, offset, 4, 'an IPv4 address');
  return `${buf[offset]}.${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}`;
}

/**
 * 16 bytes at offset to text as inet_ntop prints it: lower case, the longest run of two or more
 * zero words as "::" (the first on a tie; RFC 5952 4.2), IPv4-mapped addresses as ::ffff:a.b.c.d
 * (RFC 5952 5).
 */
export function formatIpv6(buf: Uint8Array, offset = 0): string {
  room(buf, offset, 16, 'an IPv6 address');
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push((buf[offset + 2 * i]! << 8) | buf[offset + 2 * i + 1]!);
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff)
    return `::ffff:${formatIpv4(buf, offset + 12)}`;
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(':');
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

/** Network-order address bytes (4 or 16 of them) as text. */
export function formatIp(bytes: Uint8Array): string {
  if (bytes.length === 4) return formatIpv4(bytes);
  if (bytes.length === 16) return formatIpv6(bytes);
  throw invalidArg(`an address of ${bytes.length} bytes is neither IPv4 nor IPv6`);
}

/** Canonical text of an IPv4 or IPv6 address (zone dropped), for comparisons; throws RangeError. */
export function normalizeIp(ip: string): string {
  if (isIPv4(ip)) return ip;
  return formatIpv6(ipv6ToBytes(ip));
}

/** "addr:port", with brackets for IPv6 ("[2001:db8::1]:443"). */
export function formatEndpoint(addr: string, port: number): string {
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

/** Parse "a.b.c.d/len", "x::/len", or a bare address (a host prefix). */
export function parseCidr(
  text: unknown,
  what: string,
  family?: Family,
): { family: Family; bytes: Buffer; prefix: number } {
  if (typeof text !== 'string') throw invalidArg(`${what} must be a CIDR string, not ${typeof text}`, 'type');
  const slash = text.indexOf('/');
  const addr = slash >= 0 ? text.slice(0, slash) : text;
  const { family: fam, bytes } = parseIp(addr, what, family);
  const max = fam === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > max)
      throw invalidArg(`${what} "${text}" has an invalid prefix length`);
    prefix = Number(p);
  }
  return { family: fam, bytes, prefix };
}

/** Format a destination as a CIDR string, "0.0.0.0/0" / "::/0" for the default. */
export function formatCidr(family: Family, bytes: Buffer | null, prefix: number): string {
  const addr = bytes ?? Buffer.alloc(family === 4 ? 4 : 16);
  return `${formatIp(addr)}/${prefix}`;
}

/** "aa:bb:cc:dd:ee:ff" (also "-" separated, any case) to 6 bytes; throws RangeError otherwise. */
export function macToBytes(mac: string): Buffer {
  const m =
    /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(
      mac.trim(),
    );
  if (!m) throw invalidArg(`"${mac}" is not a MAC address (use aa:bb:cc:dd:ee:ff)`);
  return Buffer.from(m.slice(1).map((h) => parseInt(h, 16)));
}

/** A link-layer address of any length (IFLA_ADDRESS, NDA_LLADDR) as lower-case hex pairs: aa:bb:... */
export function formatLinkAddress(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** 6 bytes at offset to lower-case "aa:bb:cc:dd:ee:ff". */
export function formatMac(buf: Uint8Array, offset = 0): string {
  room(buf, offset, 6, 'a MAC address');
  return formatLinkAddress(buf.subarray(offset, offset + 6));
}

/** Canonical lower-case form of a MAC address, for comparisons; throws RangeError. */
export function normalizeMac(mac: string): string {
  return formatMac(macToBytes(mac));
}
