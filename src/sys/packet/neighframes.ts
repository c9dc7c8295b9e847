// Whole ARP and NDP frames: what neighlink.ts builds and what it and capture decoding read.
import { normalizeIp } from '../ipaddr';
import { BROADCAST_MAC, ZERO_MAC, truncated } from './framebase';
import {
  ARP_REPLY,
  ARP_REQUEST,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV6,
  decodeArp,
  decodeEthernet,
  encodeArp,
  encodeEthernet,
  ipv6MulticastMac,
  type ArpPacket,
  type EthernetHeader,
} from './ethernet';
import { IPPROTO_ICMPV6, decodeIpv6, encodeIpv6Header, solicitedNodeMulticast, type Ipv6Header } from './ip';
import {
  ND_HOP_LIMIT,
  ND_NEIGHBOR_ADVERT,
  ND_NEIGHBOR_SOLICIT,
  ND_ROUTER_ADVERT,
  decodeNdp,
  encodeNeighbourAdvertisement,
  encodeNeighbourSolicitation,
  type NdpMessage,
} from './icmp';

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
