// The host's own TCP retransmissions, recorded off the wire and sent again through whatever route
// the kernel now chooses: what lets a flow stuck behind a dead gateway resume the moment its
// routes switch instead of when its backed-off retransmission timer fires (docs/failover.md).
//
// Recording: one libpcap handle per gateway interface, filtered to the few flows that are
// retransmitting through that gateway (the detection scan names them), keeping the latest segment
// of each. An RTO retransmission carries the first unacknowledged byte (snd_una), so the latest
// segment seen while a flow retransmits is the one its peer is missing.
//
// Replay: the recorded IP packet, byte for byte, through a raw IPPROTO_RAW socket (raw(7): the
// header is ours, the kernel routes it by destination and fills in the IPv4 header checksum), with
// two changes: the TCP timestamp (RFC 7323) is advanced by the time elapsed since it was recorded,
// never past the socket's own clock, so the peer's echo gives the socket a true RTT sample instead
// of one as long as the outage; and the TCP checksum is computed again (a segment captured on its
// way out may carry only the pseudo-header sum the NIC was to complete). A segment signed with
// TCP-MD5 or TCP-AO is sent unchanged. To the peer it is one more copy of a segment it has not
// acknowledged, which TCP accepts (RFC 9293 3.10.7.4).
import { isIPv4, isIPv6 } from 'node:net';
import { IpdeadgateError, type SystemError, errorMessage, systemError } from '../../errors';
import { normalizeIp, type Family } from '../ipaddr';
import { ETHERTYPE_IPV4, ETHERTYPE_IPV6, decodeEthernet } from './ethernet';
import { IPPROTO_TCP, decodeIpv4, decodeIpv6, internetChecksum, ipv6PseudoHeaderSum } from './ip';
import { openCaptureHandle, type LivePacket } from './pcap';

/** One direction of a TCP connection: the host's end (src) to its peer (dst). */
export interface TcpFlow {
  family: Family;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
}

export function flowKey(f: TcpFlow): string {
  return `${normalizeIp(f.src)}|${f.srcPort}|${normalizeIp(f.dst)}|${f.dstPort}`;
}

export const TCP_FLAG_SYN = 0x02;
const TCP_OPT_EOL = 0;
const TCP_OPT_NOP = 1;
const TCP_OPT_TIMESTAMP = 8;
const TCP_OPT_MD5 = 19;
const TCP_OPT_AO = 29;

/** One recorded segment: the IP packet as the host sent it. */
export interface TcpSegment {
  flow: TcpFlow;
  seq: number;
  /** TCP flags byte (SYN 0x02, ACK 0x10, ...). */
  flags: number;
  payloadLength: number;
  /** The IP packet (IP header, TCP header, payload): a copy, safe to keep. */
  packet: Buffer;
  tcpOffset: number;
  /** Offset of TSval in `packet`, or -1 without a timestamp option. */
  tsvalOffset: number;
  /** Carries a TCP-MD5 (RFC 2385) or TCP-AO (RFC 5925) option: must leave unchanged. */
  signed: boolean;
  /** performance.now() when the segment reached JavaScript (after the kernel sent it). */
  recordedAt: number;
}

/**
 * Decode an Ethernet frame carrying a TCP segment (IPv4, or IPv6 without extension headers).
 * Null for anything else, a fragment or a frame cut short.
 */
export function decodeTcpFrame(frame: Uint8Array, recordedAt: number): TcpSegment | null {
  try {
    const eth = decodeEthernet(frame);
    const ipOffset = eth.payloadOffset;
    let family: Family;
    let src: string;
    let dst: string;
    let tcpOffset: number;
    let end: number;
    if (eth.value.ethertype === ETHERTYPE_IPV4) {
      const ip = decodeIpv4(frame, ipOffset, { verifyChecksum: false });
      if (ip.value.protocol !== IPPROTO_TCP || ip.value.fragmentOffset !== 0 || ip.value.flags & 1)
        return null;
      family = 4;
      ({ src, dst } = ip.value);
      tcpOffset = ip.payloadOffset;
      end = ipOffset + ip.value.totalLength;
    } else if (eth.value.ethertype === ETHERTYPE_IPV6) {
      const ip = decodeIpv6(frame, ipOffset);
      if (ip.value.nextHeader !== IPPROTO_TCP) return null;
      family = 6;
      ({ src, dst } = ip.value);
      tcpOffset = ip.payloadOffset;
      end = tcpOffset + ip.value.payloadLength;
    } else return null;
    if (end > frame.length || tcpOffset + 20 > end) return null;
    const packet = Buffer.from(frame.subarray(ipOffset, end));
    const t = tcpOffset - ipOffset;
    const dataOffset = (packet[t + 12]! >> 4) * 4;
    if (dataOffset < 20 || t + dataOffset > packet.length) return null;
    let tsvalOffset = -1;
    let signed = false;
    for (let o = t + 20; o < t + dataOffset;) {
      const kind = packet[o]!;
      if (kind === TCP_OPT_EOL) break;
      if (kind === TCP_OPT_NOP) {
        o++;
        continue;
      }
      const len = packet[o + 1] ?? 0;
      if (len < 2 || o + len > t + dataOffset) return null;
      if (kind === TCP_OPT_TIMESTAMP && len === 10) tsvalOffset = o + 2;
      if (kind === TCP_OPT_MD5 || kind === TCP_OPT_AO) signed = true;
      o += len;
    }
    return {
      flow: {
        family,
        src,
        srcPort: packet.readUInt16BE(t),
        dst,
        dstPort: packet.readUInt16BE(t + 2),
      },
      seq: packet.readUInt32BE(t + 4),
      flags: packet[t + 13]!,
      payloadLength: packet.length - t - dataOffset,
      packet,
      tcpOffset: t,
      tsvalOffset,
      signed,
      recordedAt,
    };
  } catch {
    return null;
  }
}

/** The TCP checksum of `packet` (its checksum field taken as zero). */
export function tcpChecksum(packet: Buffer, family: Family, tcpOffset: number): number {
  const tcp = Buffer.from(packet.subarray(tcpOffset));
  tcp.writeUInt16BE(0, 16);
  let pseudo: number;
  if (family === 4) {
    pseudo = 0;
    for (let i = 12; i < 20; i += 2) pseudo += packet.readUInt16BE(i);
    pseudo += IPPROTO_TCP + tcp.length;
  } else {
    pseudo = ipv6PseudoHeaderSum(packet.subarray(8, 24), packet.subarray(24, 40), tcp.length, IPPROTO_TCP);
  }
  return internetChecksum(tcp, pseudo);
}

/**
 * The packet to send again `nowMs` (performance.now()) later: TSval advanced by the whole
 * milliseconds elapsed since it was recorded, which never passes the socket's own timestamp clock
 * (it ticks at least once per millisecond, RFC 7323 5.4, and the segment left before it was
 * recorded), and the TCP checksum computed again. A signed segment comes back unchanged.
 */
export function replayPacket(seg: TcpSegment, nowMs: number): Buffer {
  const p = Buffer.from(seg.packet);
  if (seg.signed) return p;
  if (seg.tsvalOffset >= 0) {
    const elapsed = Math.max(0, Math.floor(nowMs - seg.recordedAt));
    p.writeUInt32BE((p.readUInt32BE(seg.tsvalOffset) + elapsed) >>> 0, seg.tsvalOffset);
  }
  p.writeUInt16BE(tcpChecksum(p, seg.flow.family, seg.tcpOffset), seg.tcpOffset + 16);
  return p;
}

/** A tcpdump filter for exactly these flows, in the host-to-peer direction. */
export function flowsFilter(flows: TcpFlow[]): string {
  if (flows.length === 0) throw new RangeError('flowsFilter needs at least one flow');
  const one = (f: TcpFlow): string => {
    const src = normalizeIp(f.src);
    const dst = normalizeIp(f.dst);
    if (f.family === 4 ? !isIPv4(src) || !isIPv4(dst) : !isIPv6(src) || !isIPv6(dst))
      throw new TypeError(`not an IPv${f.family} flow: ${src} -> ${dst}`);
    const proto = f.family === 4 ? 'ip' : 'ip6';
    return `(${proto} src ${src} and ${proto} dst ${dst} and tcp src port ${f.srcPort} and tcp dst port ${f.dstPort})`;
  };
  return `tcp and (${flows.map(one).join(' or ')})`;
}

/** Most flows one recorder filters for (the BPF program grows with each). */
export const MAX_RECORDED_FLOWS = 64;

/** What SegmentRecorder needs of a capture handle (a PcapHandle; a fake in tests). */
export interface SegmentSource {
  on(event: 'packet', listener: (p: LivePacket) => void): unknown;
  close(): void;
}

/**
 * The latest segment of each watched flow on one interface. watch() replaces the set (the capture
 * is reopened with a filter for exactly those flows; an empty set closes it). Failures to open a
 * capture, and anything thrown while recording a packet, go to `onError`; recording is best effort
 * and never throws from a packet callback.
 */
export class SegmentRecorder {
  private capture: SegmentSource | null = null;
  private filter = '';
  private readonly latest = new Map<string, TcpSegment>();
  private closed = false;

  constructor(
    readonly ifname: string,
    private readonly onError: (err: Error) => void = () => undefined,
    private readonly open: (ifname: string, filter: string) => SegmentSource = openCaptureHandle,
  ) {}

  watch(flows: TcpFlow[]): void {
    if (this.closed) return;
    const chosen = flows.slice(0, MAX_RECORDED_FLOWS);
    const keys = new Set(chosen.map(flowKey));
    for (const k of this.latest.keys()) if (!keys.has(k)) this.latest.delete(k);
    const filter = chosen.length > 0 ? flowsFilter(chosen) : '';
    if (filter === this.filter) return;
    this.capture?.close();
    this.capture = null;
    this.filter = filter;
    if (!filter) return;
    try {
      const capture = this.open(this.ifname, filter);
      capture.on('packet', (p: LivePacket) => {
        try {
          this.record(p);
        } catch (err) {
          // Nothing thrown here may unwind through libpcap's packet callback.
          this.onError(err instanceof Error ? err : new Error(String(err)));
        }
      });
      this.capture = capture;
    } catch (err) {
      this.filter = '';
      this.onError(err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** The latest recorded segment of a flow, if any. */
  segment(flow: TcpFlow): TcpSegment | undefined {
    return this.latest.get(flowKey(flow));
  }

  private record(p: LivePacket): void {
    const seg = decodeTcpFrame(p.data, performance.now());
    if (!seg) return;
    this.latest.set(flowKey(seg.flow), seg);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.capture?.close();
    this.capture = null;
    this.latest.clear();
  }
}

/** The part of raw-socket's Socket that SegmentSender uses. */
interface RawSendSocket {
  send(
    buffer: Buffer,
    offset: number,
    length: number,
    address: string,
    afterCallback: (error: Error | null, bytes: number) => void,
  ): unknown;
  on(event: 'error', listener: (error?: unknown) => void): unknown;
  close(): unknown;
}

const IPPROTO_RAW = 255;

/**
 * Sends recorded segments again through raw IPPROTO_RAW sockets, one per family, opened on first
 * use (CAP_NET_RAW). With IPPROTO_RAW the packet carries its own IP header (IPv4: IP_HDRINCL is
 * implied, raw(7); IPv6: inet6_create sets hdrincl for IPPROTO_RAW), and the kernel routes it by
 * the destination passed to sendto, through the routes as they are now.
 */
export class SegmentSender {
  private readonly sockets = new Map<Family, RawSendSocket>();
  private closed = false;

  send(seg: TcpSegment, nowMs = performance.now()): Promise<number> {
    if (this.closed) return Promise.reject(new IpdeadgateError('ERR_CLOSED', 'the segment sender is closed'));
    const packet = replayPacket(seg, nowMs);
    const socket = this.socket(seg.flow.family);
    return new Promise((resolve, reject) => {
      socket.send(packet, 0, packet.length, normalizeIp(seg.flow.dst), (err, bytes) => {
        if (err) reject(sendError(err, seg.flow));
        else resolve(bytes);
      });
    });
  }

  private socket(family: Family): RawSendSocket {
    let s = this.sockets.get(family);
    if (s) return s;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const raw = require('raw-socket') as typeof import('raw-socket');
    try {
      s = raw.createSocket({
        protocol: IPPROTO_RAW,
        addressFamily: family === 4 ? raw.AddressFamily.IPv4 : raw.AddressFamily.IPv6,
      }) as RawSendSocket;
    } catch (err) {
      throw sendError(err, null);
    }
    s.on('error', () => undefined);
    this.sockets.set(family, s);
    return s;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sockets.values()) {
      try {
        s.close();
      } catch {
        /* already closed */
      }
    }
    this.sockets.clear();
  }
}

function sendError(err: unknown, flow: TcpFlow | null): SystemError {
  const text = errorMessage(err);
  const code = /not permitted/i.test(text)
    ? 'EPERM'
    : /unreachable|no route/i.test(text)
      ? 'EHOSTUNREACH'
      : /too long/i.test(text)
        ? 'EMSGSIZE'
        : 'EIO';
  const what = flow
    ? `sending ${flow.src}:${flow.srcPort} -> ${flow.dst}:${flow.dstPort}'s segment again`
    : 'opening a raw IPPROTO_RAW socket (needs CAP_NET_RAW)';
  return systemError({ code, errno: 0, message: text }, flow ? 'sendto' : 'socket', what);
}
