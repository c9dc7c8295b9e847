// IP addresses as rtnetlink carries them (network-order bytes) and as people read them (text),
// validated before anything reaches the kernel.
import { isIPv4, isIPv6 } from 'node:net';
import type { Family } from './rtnl-types';

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

/** Parse an IP address; throws a RangeError naming `what` when it is not one. */
export function parseIp(text: unknown, what: string, family?: Family): { family: Family; bytes: Buffer } {
  if (typeof text !== 'string')
    throw invalidArg(`${what} must be an IP address string, not ${typeof text}`, 'type');
  const fam = ipFamily(text);
  if (fam === 0) throw invalidArg(`${what} "${text}" is not an IP address`);
  if (family !== undefined && fam !== family)
    throw invalidArg(`${what} "${text}" is an IPv${fam} address where IPv${family} is needed`);
  return { family: fam, bytes: fam === 4 ? ipv4Bytes(text) : ipv6Bytes(text) };
}

function ipv4Bytes(text: string): Buffer {
  return Buffer.from(text.split('.').map((p) => Number(p)));
}

function ipv6Bytes(text: string): Buffer {
  const out = Buffer.alloc(16);
  let head = text;
  let tail = '';
  const dbl = text.indexOf('::');
  if (dbl >= 0) {
    head = text.slice(0, dbl);
    tail = text.slice(dbl + 2);
  }
  const groups = (s: string): number[] => {
    if (s === '') return [];
    const words: number[] = [];
    for (const part of s.split(':')) {
      if (part.includes('.')) {
        const v4 = ipv4Bytes(part);
        words.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else words.push(parseInt(part, 16));
    }
    return words;
  };
  const h = groups(head);
  const t = groups(tail);
  h.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  t.forEach((w, i) => out.writeUInt16BE(w, 16 - (t.length - i) * 2));
  return out;
}

/** Format network-order address bytes as text (RFC 5952 for IPv6, like inet_ntop). */
export function formatIp(bytes: Buffer): string {
  if (bytes.length === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  if (bytes.length !== 16)
    throw new RangeError(`an address of ${bytes.length} bytes is neither IPv4 nor IPv6`);
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push(bytes.readUInt16BE(i));
  // IPv4-mapped addresses (::ffff:a.b.c.d) print their IPv4 part in dotted form, as inet_ntop does.
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff)
    return `::ffff:${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  // Longest run of two or more zero words becomes "::" (the first one on a tie, RFC 5952 4.2.3).
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

/** aa:bb:cc:dd:ee:ff */
export function formatMac(bytes: Buffer): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}
