// Packet capture for debugging (`ipdeadgate capture`) and the daemon's flight recorder: libpcap
// handles (pcap.ts) with tcpdump-syntax BPF filters (pcap-filter(7)), and one-line decodes of what
// dead gateway detection and the tunnel do on the wire: ARP, NDP, ICMP/ICMPv6, TCP (with
// retransmissions marked) and UDP. Decoding reuses the pure frame codecs of this folder
// (ethernet.ts, ip.ts, icmp.ts, tcp.ts).
//
// Timestamps are the kernel's receive stamps from libpcap's packet header (microseconds).
import { EventEmitter } from 'node:events';
import { isIPv4 } from 'node:net';
import { openCaptureHandle, type PcapHandle, type LivePacket } from './pcap';
import { formatEndpoint as endpoint, normalizeIp, type Family } from '../ipaddr';
import { FrameError, readIpv6 } from './framebase';
import {
  ARP_REPLY,
  ARP_REQUEST,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  ETHERTYPE_IPV6,
  decodeArp,
  decodeEthernet,
} from './ethernet';
import {
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  decodeIpv4,
  decodeIpv6,
  solicitedNodeMulticast,
} from './ip';
import {
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  ICMPV6_ECHO_REPLY,
  ICMPV6_ECHO_REQUEST,
  ND_NEIGHBOR_ADVERT,
  ND_NEIGHBOR_SOLICIT,
  ND_ROUTER_ADVERT,
  ND_ROUTER_SOLICIT,
  decodeIcmpEcho,
  decodeIcmpTypeCode,
  decodeNdp,
} from './icmp';
import { TcpRetransmissionTracker } from './tcpretrans';
import {
  TCP_ACK,
  TCP_CWR,
  TCP_ECE,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  TCP_URG,
  decodeTcp,
  decodeUdp,
} from './tcp';

/** What a decoded packet is; the capture summary counts packets by these. */
export type PacketKind =
  | 'arp-request'
  | 'arp-reply'
  | 'garp'
  | 'ndp-ns'
  | 'ndp-na'
  | 'ndp-ra'
  | 'ndp-rs'
  | 'icmp-echo-request'
  | 'icmp-echo-reply'
  | 'icmp'
  | 'icmp6-echo-request'
  | 'icmp6-echo-reply'
  | 'icmp6'
  | 'tcp'
  | 'tcp-retransmission'
  | 'udp'
  | 'ip'
  | 'other'
  | 'malformed';

export interface DecodedPacket {
  kind: PacketKind;
  /** One line, no timestamp or interface: "ARP who-has 198.18.1.1 tell 198.18.1.10 (02:..)". */
  text: string;
}

// ---------------------------------------------------------------------------------------------
// One-line decodes

const ICMP_NAMES: Record<number, string> = {
  0: 'echo reply',
  3: 'unreachable',
  4: 'source quench',
  5: 'redirect',
  8: 'echo request',
  11: 'time exceeded',
  12: 'parameter problem',
};
const ICMP_UNREACH: Record<number, string> = {
  0: 'net',
  1: 'host',
  2: 'protocol',
  3: 'port',
  4: 'need to frag',
  9: 'net prohibited',
  10: 'host prohibited',
  13: 'admin prohibited',
};
const ICMP6_NAMES: Record<number, string> = {
  1: 'unreachable',
  2: 'packet too big',
  3: 'time exceeded',
  4: 'parameter problem',
  128: 'echo request',
  129: 'echo reply',
  130: 'multicast listener query',
  131: 'multicast listener report',
  132: 'multicast listener done',
  133: 'router solicitation',
  134: 'router advertisement',
  135: 'neighbour solicitation',
  136: 'neighbour advertisement',
  137: 'redirect',
  143: 'multicast listener report v2',
};
const ICMP6_UNREACH: Record<number, string> = {
  0: 'no route',
  1: 'admin prohibited',
  3: 'address',
  4: 'port',
};

/** tcpdump's flag notation: S F R P U E W, "." for ACK. */
export function tcpFlagsText(flags: number): string {
  let s = '';
  if (flags & TCP_SYN) s += 'S';
  if (flags & TCP_FIN) s += 'F';
  if (flags & TCP_RST) s += 'R';
  if (flags & TCP_PSH) s += 'P';
  if (flags & TCP_URG) s += 'U';
  if (flags & TCP_ECE) s += 'E';
  if (flags & TCP_CWR) s += 'W';
  if (flags & TCP_ACK) s += '.';
  return s || 'none';
}

/** RFC 8200 4: hop-by-hop (0), routing (43), destination options (60) and fragment (44) headers. */
function skipIpv6ExtensionHeaders(
  buf: Uint8Array,
  nextHeader: number,
  offset: number,
  end: number,
): { proto: number; offset: number; fragment: boolean } {
  let proto = nextHeader;
  let o = offset;
  for (let i = 0; i < 8; i++) {
    if (proto === 44) {
      if (end - o < 8) throw new FrameError('ERR_FRAME_TRUNCATED', 'IPv6 fragment header: truncated');
      const fragOffset = ((buf[o + 2]! << 8) | buf[o + 3]!) >> 3;
      const next = buf[o]!;
      if (fragOffset !== 0) return { proto: next, offset: o + 8, fragment: true };
      proto = next;
      o += 8;
      continue;
    }
    if (proto !== 0 && proto !== 43 && proto !== 60) break;
    if (end - o < 8) throw new FrameError('ERR_FRAME_TRUNCATED', `IPv6 extension header ${proto}: truncated`);
    const len = (buf[o + 1]! + 1) * 8;
    proto = buf[o]!;
    o += len;
  }
  return { proto, offset: o, fragment: false };
}

/**
 * Decodes captured Ethernet frames into one-line descriptions. Stateful only for TCP
 * retransmissions (one tracker per describer). Never throws: a frame it cannot decode is
 * `malformed` with the reason.
 */
export class PacketDescriber {
  readonly tcp = new TcpRetransmissionTracker();

  describe(frame: Uint8Array): DecodedPacket {
    try {
      return this.decode(frame);
    } catch (err) {
      if (err instanceof FrameError) return { kind: 'malformed', text: `malformed: ${err.message}` };
      return { kind: 'malformed', text: `malformed: ${(err as Error).message}` };
    }
  }

  private decode(frame: Uint8Array): DecodedPacket {
    const { value: eth, payloadOffset } = decodeEthernet(frame);
    const vlan = eth.vlan !== undefined ? `vlan ${eth.vlan} ` : '';
    if (eth.ethertype === ETHERTYPE_ARP) {
      const a = decodeArp(frame, payloadOffset);
      if (a.senderIp === a.targetIp)
        return { kind: 'garp', text: `${vlan}ARP announcement ${a.senderIp} is-at ${a.senderMac}` };
      if (a.op === ARP_REQUEST)
        return {
          kind: 'arp-request',
          text: `${vlan}ARP who-has ${a.targetIp} tell ${a.senderIp} (${a.senderMac}${eth.dst === 'ff:ff:ff:ff:ff:ff' ? '' : `, unicast to ${eth.dst}`})`,
        };
      if (a.op === ARP_REPLY)
        return {
          kind: 'arp-reply',
          text: `${vlan}ARP reply ${a.senderIp} is-at ${a.senderMac} to ${a.targetIp} (${a.targetMac})`,
        };
    }
    if (eth.ethertype === ETHERTYPE_IPV4) {
      const { value: ip, payloadOffset: l4 } = decodeIpv4(frame, payloadOffset, { verifyChecksum: false });
      const end = Math.min(frame.length, payloadOffset + ip.totalLength);
      if (ip.fragmentOffset !== 0)
        return {
          kind: 'ip',
          text: `${vlan}IPv4 ${ip.src} > ${ip.dst} fragment (proto ${ip.protocol}, offset ${ip.fragmentOffset * 8})`,
        };
      return this.transport(vlan, 4, ip.src, ip.dst, ip.protocol, frame, l4, end, ip.ttl);
    }
    if (eth.ethertype === ETHERTYPE_IPV6) {
      const { value: ip, payloadOffset: l3end } = decodeIpv6(frame, payloadOffset);
      const end = Math.min(frame.length, l3end + ip.payloadLength);
      const { proto, offset: l4, fragment } = skipIpv6ExtensionHeaders(frame, ip.nextHeader, l3end, end);
      if (fragment)
        return { kind: 'ip', text: `${vlan}IPv6 ${ip.src} > ${ip.dst} fragment (next header ${proto})` };
      return this.transport(vlan, 6, ip.src, ip.dst, proto, frame, l4, end, ip.hopLimit, ip);
    }
    return {
      kind: 'other',
      text: `${vlan}ethertype 0x${eth.ethertype.toString(16).padStart(4, '0')} ${eth.src} > ${eth.dst} length ${frame.length}`,
    };
  }

  private transport(
    vlan: string,
    family: Family,
    src: string,
    dst: string,
    proto: number,
    frame: Uint8Array,
    l4: number,
    end: number,
    hops: number,
    ip6?: Parameters<typeof decodeNdp>[3],
  ): DecodedPacket {
    if (proto === IPPROTO_TCP) {
      const { value: t } = decodeTcp(frame, l4, end);
      const resent = this.tcp.observe(src, dst, t);
      const segLen = t.payloadLength;
      const seq = segLen > 0 ? `${t.seq}:${(t.seq + segLen) >>> 0}` : `${t.seq}`;
      const ack = t.flags & TCP_ACK ? ` ack ${t.ack}` : '';
      const text =
        `${vlan}TCP ${endpoint(src, t.srcPort)} > ${endpoint(dst, t.dstPort)} [${tcpFlagsText(t.flags)}] seq ${seq}${ack} ` +
        `win ${t.window} len ${segLen}` +
        (resent > 0 ? ` RETRANSMISSION${resent > 1 ? ` #${resent}` : ''}` : '');
      return { kind: resent > 0 ? 'tcp-retransmission' : 'tcp', text };
    }
    if (proto === IPPROTO_UDP) {
      const { value: u } = decodeUdp(frame, l4, end);
      return {
        kind: 'udp',
        text: `${vlan}UDP ${endpoint(src, u.srcPort)} > ${endpoint(dst, u.dstPort)} len ${Math.max(0, u.length - 8)}`,
      };
    }
    if (proto === IPPROTO_ICMP && family === 4) {
      const { type, code } = decodeIcmpTypeCode(frame, l4, end);
      if (type === ICMP_ECHO_REQUEST || type === ICMP_ECHO_REPLY) {
        const e = decodeIcmpEcho(frame, l4, end);
        const req = type === ICMP_ECHO_REQUEST;
        return {
          kind: req ? 'icmp-echo-request' : 'icmp-echo-reply',
          text: `${vlan}ICMP echo ${req ? 'request' : 'reply'} ${src} > ${dst} id ${e.id} seq ${e.seq} ttl ${hops}`,
        };
      }
      const detail = type === 3 ? ` (${ICMP_UNREACH[code] ?? `code ${code}`})` : code ? ` code ${code}` : '';
      return {
        kind: 'icmp',
        text: `${vlan}ICMP ${ICMP_NAMES[type] ?? `type ${type}`}${detail} ${src} > ${dst}`,
      };
    }
    if (proto === IPPROTO_ICMPV6 && family === 6) {
      const { type, code } = decodeIcmpTypeCode(frame, l4, end);
      if (type === ICMPV6_ECHO_REQUEST || type === ICMPV6_ECHO_REPLY) {
        const e = decodeIcmpEcho(frame, l4, end);
        const req = type === ICMPV6_ECHO_REQUEST;
        return {
          kind: req ? 'icmp6-echo-request' : 'icmp6-echo-reply',
          text: `${vlan}ICMP6 echo ${req ? 'request' : 'reply'} ${src} > ${dst} id ${e.id} seq ${e.seq} hlim ${hops}`,
        };
      }
      if ((type === ND_NEIGHBOR_SOLICIT || type === ND_NEIGHBOR_ADVERT || type === ND_ROUTER_ADVERT) && ip6) {
        const n = decodeNdp(frame, l4, end, ip6);
        if (n.type === ND_NEIGHBOR_SOLICIT)
          return {
            kind: 'ndp-ns',
            text: `${vlan}NDP NS who-has ${n.target} from ${src}${n.sourceMac ? ` (${n.sourceMac})` : ''}${dst === n.target ? ', unicast' : ''}`,
          };
        if (n.type === ND_NEIGHBOR_ADVERT) {
          const flags = [n.router && 'router', n.solicited && 'solicited', n.override && 'override']
            .filter(Boolean)
            .join(',');
          return {
            kind: 'ndp-na',
            text: `${vlan}NDP NA ${n.target} is-at ${n.targetMac ?? '(no lladdr option)'} to ${dst}${flags ? ` [${flags}]` : ''}`,
          };
        }
        return {
          kind: 'ndp-ra',
          text: `${vlan}NDP RA from ${src}${n.sourceMac ? ` (${n.sourceMac})` : ''} router lifetime ${n.routerLifetime}s`,
        };
      }
      if (type === ND_ROUTER_SOLICIT) return { kind: 'ndp-rs', text: `${vlan}NDP RS from ${src}` };
      const detail = type === 1 ? ` (${ICMP6_UNREACH[code] ?? `code ${code}`})` : code ? ` code ${code}` : '';
      return {
        kind: 'icmp6',
        text: `${vlan}ICMP6 ${ICMP6_NAMES[type] ?? `type ${type}`}${detail} ${src} > ${dst}`,
      };
    }
    return { kind: 'ip', text: `${vlan}IPv${family} ${src} > ${dst} proto ${proto} length ${end - l4}` };
  }
}

/**
 * The IP addresses a frame is about, for matching a gateway: ARP sender and target, IP source and
 * destination, and the target of an NDP NS/NA (which a solicitation sent to a multicast group
 * names only in its body). Empty for a frame that cannot be decoded.
 */
export function frameAddresses(frame: Uint8Array): string[] {
  try {
    const { value: eth, payloadOffset } = decodeEthernet(frame);
    if (eth.ethertype === ETHERTYPE_ARP) {
      const a = decodeArp(frame, payloadOffset);
      return [a.senderIp, a.targetIp];
    }
    if (eth.ethertype === ETHERTYPE_IPV4) {
      const { value: ip } = decodeIpv4(frame, payloadOffset, { verifyChecksum: false });
      return [ip.src, ip.dst];
    }
    if (eth.ethertype === ETHERTYPE_IPV6) {
      const { value: ip, payloadOffset: l4 } = decodeIpv6(frame, payloadOffset);
      const out = [ip.src, ip.dst];
      const t = frame[l4];
      if (
        ip.nextHeader === IPPROTO_ICMPV6 &&
        (t === ND_NEIGHBOR_SOLICIT || t === ND_NEIGHBOR_ADVERT) &&
        frame.length >= l4 + 24
      )
        out.push(readIpv6(frame, l4 + 8));
      return out;
    }
  } catch {
    /* not decodable: about nothing */
  }
  return [];
}

// ---------------------------------------------------------------------------------------------
// Filters

/**
 * A tcpdump-syntax filter for everything about these gateways on one interface: their IP traffic
 * and ARP (`host G` covers both for IPv4), NDP solicitations for them (sent to their
 * solicited-node group, which `host` does not match), and, when their MACs are known, every frame
 * to or from them (the flows routed through them, where retransmissions show).
 */
export function gatewayFilter(gateways: { address: string; mac?: string | null }[]): string {
  if (gateways.length === 0) throw new RangeError('gatewayFilter needs at least one gateway');
  const terms: string[] = [];
  const macs = new Set<string>();
  for (const g of gateways) {
    const ip = normalizeIp(g.address);
    terms.push(`host ${ip}`);
    if (!isIPv4(ip)) terms.push(`ip6 dst ${solicitedNodeMulticast(ip)}`);
    if (g.mac) macs.add(g.mac.toLowerCase());
  }
  for (const m of macs) terms.push(`ether host ${m}`);
  return [...new Set(terms)].join(' or ');
}

/** `a` and `b` combined with "and", each parenthesised; empty parts dropped. */
export function andFilters(...parts: (string | undefined | null)[]): string {
  const p = parts.map((s) => (s ?? '').trim()).filter(Boolean);
  if (p.length <= 1) return p[0] ?? '';
  return p.map((s) => `(${s})`).join(' and ');
}

// ---------------------------------------------------------------------------------------------
// Live capture

export interface CapturedPacket {
  ifname: string;
  /** Epoch milliseconds (fractional): the kernel's receive stamp. */
  tsMs: number;
  /** A copy of the frame: safe to keep. */
  data: Buffer;
  /** The frame was larger than the capture buffer and was cut. */
  truncated: boolean;
}

/**
 * One libpcap handle on one interface with a BPF filter, emitting 'packet' (CapturedPacket), and
 * 'down' (SystemError) once if the interface goes down or away — the capture is closed then.
 * Not promiscuous (the interface's own, broadcast and multicast frames, plus what a veth or bridge
 * floods to it); immediate. close() is idempotent and safe from a listener.
 */
export class LiveCapture extends EventEmitter {
  private closed = false;
  packets = 0;

  private constructor(
    readonly ifname: string,
    readonly filter: string,
    private readonly handle: PcapHandle,
  ) {
    super();
    handle.on('packet', (pkt: LivePacket) => {
      if (this.closed) return;
      this.packets++;
      const p: CapturedPacket = {
        ifname,
        tsMs: pkt.tsMs,
        data: pkt.data,
        truncated: pkt.wireLength > pkt.data.length,
      };
      try {
        this.emit('packet', p);
      } catch (err) {
        // Nothing thrown by a listener may unwind through the packet callback.
        if (this.listenerCount('error') > 0)
          this.emit('error', err instanceof Error ? err : new Error(String(err)));
      }
    });
    handle.on('down', (err: Error) => {
      if (this.closed) return;
      this.close();
      this.emit('down', err);
    });
  }

  /**
   * Open `ifname` with a tcpdump-syntax filter ('' for everything). Throws UsageError for an
   * unknown interface, a non-Ethernet one or a bad filter (naming it), SystemError EPERM without
   * CAP_NET_RAW, ENETDOWN for an interface that is down.
   */
  static open(ifname: string, filter = ''): LiveCapture {
    return new LiveCapture(ifname, filter, openCaptureHandle(ifname, filter));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handle.close();
    this.emit('closed');
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
