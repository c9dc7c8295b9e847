// Ethernet II frames (with one 802.1Q tag) and ARP for IPv4 over Ethernet (RFC 826): encoders
// and decoders, no I/O.
import { formatMac, ipv4ToBytes, ipv6ToBytes, macToBytes } from '../ipaddr';
import { malformed, need, readIpv4, readMac, type Decoded } from './framebase';

/** The Ethernet multicast MAC of an IPv6 multicast address (RFC 2464 7): 33:33 + its last 32 bits. */
export function ipv6MulticastMac(ip: string): string {
  const b = ipv6ToBytes(ip);
  if (b[0] !== 0xff) throw new RangeError(`${ip} is not an IPv6 multicast address`);
  return formatMac(Buffer.from([0x33, 0x33, b[12]!, b[13]!, b[14]!, b[15]!]));
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
  const value: EthernetHeader = { dst: readMac(b, offset), src: readMac(b, offset + 6), ethertype };
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
    senderMac: readMac(b, offset + 8),
    senderIp: readIpv4(b, offset + 14),
    targetMac: readMac(b, offset + 18),
    targetIp: readIpv4(b, offset + 24),
  };
}
