// What every frame codec in this folder shares: the FrameError its decoders throw, the
// bounds-checked readers of addresses inside untrusted frames, and the well-known MAC addresses.
//
// Every decoder takes untrusted bytes: it checks lengths before reading and throws a FrameError
// (code ERR_FRAME_TRUNCATED or ERR_FRAME_MALFORMED) instead of reading past the end or returning
// half-parsed garbage. Decoded values are copies (strings, fresh Buffers), never views into the
// caller's buffer, because capture buffers are reused for the next packet.
import { IpdeadgateError } from '../../errors';
import * as addr from '../ipaddr';

/** A frame that cannot be decoded: too short, or a field with an impossible value. */
export class FrameError extends IpdeadgateError {
  constructor(code: 'ERR_FRAME_TRUNCATED' | 'ERR_FRAME_MALFORMED', message: string) {
    super(code, message);
  }
}

export function truncated(what: string, need: number, have: number): FrameError {
  return new FrameError('ERR_FRAME_TRUNCATED', `${what}: truncated (need ${need} bytes, have ${have})`);
}

export function malformed(what: string, why: string): FrameError {
  return new FrameError('ERR_FRAME_MALFORMED', `${what}: ${why}`);
}

export function need(buf: Uint8Array, offset: number, len: number, what: string): void {
  if (offset < 0 || buf.length - offset < len) throw truncated(what, len, Math.max(0, buf.length - offset));
}

export interface Decoded<T> {
  value: T;
  /** Offset of the payload that follows this header in the buffer passed in. */
  payloadOffset: number;
}

export const BROADCAST_MAC = 'ff:ff:ff:ff:ff:ff';
export const ZERO_MAC = '00:00:00:00:00:00';

// Parsing and formatting are the project's one IP/MAC module (../ipaddr.ts); these readers check
// the bounds of an untrusted frame first, so a short frame is a FrameError, not a RangeError.

/** 6 bytes of a frame at offset to lower-case "aa:bb:cc:dd:ee:ff". */
export function readMac(buf: Uint8Array, offset = 0): string {
  need(buf, offset, 6, 'MAC address');
  return addr.formatMac(buf, offset);
}

export function readIpv4(buf: Uint8Array, offset = 0): string {
  need(buf, offset, 4, 'IPv4 address');
  return addr.formatIpv4(buf, offset);
}

/** 16 bytes at offset to text, as inet_ntop prints it (RFC 5952). */
export function readIpv6(buf: Uint8Array, offset = 0): string {
  need(buf, offset, 16, 'IPv6 address');
  return addr.formatIpv6(buf, offset);
}
