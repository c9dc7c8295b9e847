// TCP (RFC 9293 3.1) and UDP (RFC 768) headers: what packet-capture decoding (capture.ts) needs to
// describe a packet and spot TCP retransmissions. No I/O.
import { malformed, truncated, type Decoded } from './framebase';

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
