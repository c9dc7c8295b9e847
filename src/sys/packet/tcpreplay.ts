// The host's own TCP retransmissions, recorded off the wire and sent again through whatever route
// the kernel now chooses: what lets a flow stuck behind a dead gateway resume the moment its
// routes switch instead of when its backed-off retransmission timer fires (docs/failover.md).
//
// Recording: one libpcap handle per gateway interface, open only while flows on it retransmit,
// filtered in the kernel to exactly those flows with the interface's own MAC as Ethernet source
// (checked again here), keeping only frames this host sent (pcap_setdirection PCAP_D_OUT: the
// packet socket's PACKET_OUTGOING, which no frame from the LAN ever is, whatever addresses a LAN
// station forges), cut at RECORD_SNAPLEN (a full standard Ethernet frame; a flow seen cut there,
// on a jumbo-frame link, is captured whole from then on). Of
// each flow it keeps the data, SYN or FIN segment with the lowest sequence number since the flow was
// added; pure ACKs and resets are never kept. Once a socket's retransmission timer has fired and no
// ACK has moved it on, the kernel sends nothing but retransmissions of snd_una, so that lowest
// segment is snd_una's: the caller (src/dgd/resume.ts) makes sure of both from sock_diag.
//
// Replay: the recorded IP packet, whole, through a raw IPPROTO_RAW socket (raw(7): the header is
// ours, the kernel routes it by destination and fills in the IPv4 header checksum), with the TCP
// timestamp (RFC 7323) advanced by the time elapsed since it was recorded, never past the socket's
// own clock, and the TCP checksum computed again (a segment captured on its way out may carry only
// the pseudo-header sum the NIC was to complete). Whole, because a part of it does not restart the
// socket: the peer acknowledges the part, the rest of the segment stays in flight with the
// congestion window of one segment that loss recovery leaves, and the socket waits for its backed-off
// timer all the same (measured in the lab: 1.6 s after a one-byte copy). A segment signed with
// TCP-MD5 (RFC 2385) or TCP-AO (RFC 5925) is sent byte for byte as it left, only its checksum made
// right (neither signature covers the checksum).
import { isIPv4, isIPv6 } from 'node:net';
import { IpdeadgateError, type SystemError, errorMessage, systemError } from '../../errors';
import { normalizeIp, type Family } from '../ipaddr';
import { ETHERTYPE_IPV4, ETHERTYPE_IPV6, decodeEthernet } from './ethernet';
import { IPPROTO_TCP, decodeIpv4, decodeIpv6, internetChecksum, ipv6PseudoHeaderSum } from './ip';
import { PcapHandle, type LivePacket } from './pcap';

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

export const TCP_FLAG_FIN = 0x01;
export const TCP_FLAG_SYN = 0x02;
export const TCP_FLAG_RST = 0x04;
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
  /** The whole packet was captured (else `packet` stops at the snap length, its IP length says more). */
  whole: boolean;
  /** The Ethernet source, aa:bb:cc:dd:ee:ff. */
  ethSrc: string;
  /** performance.now() when the segment reached JavaScript (after the kernel sent it). */
  recordedAt: number;
}

/**
 * Decode an Ethernet frame carrying a TCP segment (IPv4, or IPv6 without extension headers).
 * Null for anything else, a fragment, or a frame cut short before the end of its TCP header; a
 * frame cut in its payload (at the snap length) decodes with `whole` false.
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
    if (tcpOffset + 20 > end || tcpOffset + 20 > frame.length) return null;
    const whole = end <= frame.length;
    const packet = Buffer.from(frame.subarray(ipOffset, Math.min(end, frame.length)));
    const declared = end - ipOffset;
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
      payloadLength: declared - t - dataOffset,
      packet,
      tcpOffset: t,
      tsvalOffset,
      signed,
      whole,
      ethSrc: eth.value.src,
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
 * The packet to send again `nowMs` (performance.now()) later: the captured packet, which must be
 * whole, its TSval (unsigned segments only) advanced by the whole milliseconds elapsed since it was
 * recorded, which never passes the socket's own timestamp clock (it ticks at least once per
 * millisecond, RFC 7323 5.4, and the segment left before it was recorded), and its TCP checksum
 * computed again.
 */
export function replayPacket(seg: TcpSegment, nowMs: number): Buffer {
  if (!seg.whole) throw new RangeError('a segment can only be sent again whole');
  const p = Buffer.from(seg.packet);
  if (!seg.signed && seg.tsvalOffset >= 0) {
    const elapsed = Math.max(0, Math.floor(nowMs - seg.recordedAt));
    p.writeUInt32BE((p.readUInt32BE(seg.tsvalOffset) + elapsed) >>> 0, seg.tsvalOffset);
  }
  p.writeUInt16BE(tcpChecksum(p, seg.flow.family, seg.tcpOffset), seg.tcpOffset + 16);
  return p;
}

/**
 * A tcpdump filter for exactly these flows, in the host-to-peer direction; with `mac`, only frames
 * from that Ethernet source. (Direction is the handle's, PCAP_D_OUT: the filter's `outbound`
 * missed some of the host's own frames in the lab.)
 */
export function flowsFilter(flows: TcpFlow[], mac?: string): string {
  if (flows.length === 0) throw new RangeError('flowsFilter needs at least one flow');
  const one = (f: TcpFlow): string => {
    const src = normalizeIp(f.src);
    const dst = normalizeIp(f.dst);
    if (f.family === 4 ? !isIPv4(src) || !isIPv4(dst) : !isIPv6(src) || !isIPv6(dst))
      throw new TypeError(`not an IPv${f.family} flow: ${src} -> ${dst}`);
    const proto = f.family === 4 ? 'ip' : 'ip6';
    return `(${proto} src ${src} and ${proto} dst ${dst} and tcp src port ${f.srcPort} and tcp dst port ${f.dstPort})`;
  };
  const own = mac === undefined ? '' : `ether src ${checkedMac(mac)} and `;
  return `${own}tcp and (${flows.map(one).join(' or ')})`;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function checkedMac(mac: string): string {
  const m = mac.toLowerCase();
  if (!MAC.test(m)) throw new TypeError(`not an Ethernet address: ${mac}`);
  return m;
}

/**
 * Most flows one recorder filters for, and so most flows resumed per interface in one incident:
 * the one cap of flow resume (the BPF program grows with each flow; flows past it are left to the
 * kernel's own timers).
 */
export const MAX_RECORDED_FLOWS = 64;

/**
 * Bytes a recorder captures of a frame: an Ethernet frame of the standard 1500-byte MTU with a
 * VLAN tag. A retransmission timeout sends at most one MSS (tcp_retransmit_skb), so on such a link
 * every segment worth sending again fits; a larger one (a jumbo-frame link, a TSO super-packet of
 * a flow that is still sending) switches the recorder to WHOLE_SNAPLEN.
 */
export const RECORD_SNAPLEN = 14 + 4 + 1500;
/** After a data segment was seen cut at RECORD_SNAPLEN. */
export const WHOLE_SNAPLEN = 65535;
/** A capture that failed to open (interface down) is tried again at most this often. */
export const REOPEN_AFTER_MS = 1000;

/** What SegmentRecorder needs of a capture handle (a PcapHandle; a fake in tests). */
export interface SegmentSource {
  on(event: 'packet', listener: (p: LivePacket) => void): unknown;
  on(event: 'down', listener: (err: Error) => void): unknown;
  close(): void;
}

export type OpenSegmentSource = (ifname: string, filter: string, snaplen: number) => SegmentSource;

const openRecorderHandle: OpenSegmentSource = (ifname, filter, snaplen) =>
  PcapHandle.open(ifname, {
    filter,
    snaplen,
    bufferBytes: 256 << 10,
    direction: 'out',
    purpose: ' for flow resume',
  });

/** Why a flow has no segment to send again (for the flows_resent event). */
export type NoSegmentReason =
  | 'nothing of it was seen leaving (source or destination NAT rewrote it after the socket, or it left elsewhere)'
  | 'only pure ACKs or resets of it were seen'
  | 'it was not yet captured whole (larger than a standard frame)';

interface FlowRecord {
  /** Frames of the flow seen since it was added (any kind). */
  frames: number;
  /** The data, SYN or FIN segment with the lowest sequence number. */
  lowest: TcpSegment | null;
  /** A segment of it was seen cut short: capture it whole. */
  cut: boolean;
}

/** Counts since the recorder was made (status and tests). */
export interface RecorderStats {
  /** Frames handed to JavaScript. */
  frames: number;
  /** Frames dropped because their Ethernet source was not this interface's. */
  foreign: number;
  /** Captures opened. */
  opens: number;
  /** Flows recorded now. */
  flows: number;
  open: boolean;
}

/**
 * The lowest data/SYN/FIN segment of each watched flow on one interface. watch() replaces the set:
 * the capture is reopened when its filter changes (an empty set closes it). A capture that went
 * down (the interface went down or away) is opened again by the next watch(), at most once per
 * REOPEN_AFTER_MS. Failures to open, and anything thrown while recording, go to `onError` (each
 * failure once until a capture opens again); recording never throws from a packet callback.
 */
export class SegmentRecorder {
  private capture: SegmentSource | null = null;
  private filter = '';
  private snaplen = RECORD_SNAPLEN;
  private flows: TcpFlow[] = [];
  /** The flows last given to watch(), as one string. */
  private sig = '';
  private readonly records = new Map<string, FlowRecord>();
  private failedAt = -Infinity;
  private lastError = '';
  private closed = false;
  private readonly counts = { frames: 0, foreign: 0, opens: 0 };

  constructor(
    readonly ifname: string,
    /** The interface's MAC now (aa:bb:..), null when it has none or is not known. */
    private readonly mac: () => string | null,
    private readonly onError: (err: Error) => void = () => undefined,
    private readonly open: OpenSegmentSource = openRecorderHandle,
    private readonly now: () => number = () => performance.now(),
  ) {}

  watch(flows: TcpFlow[]): void {
    if (this.closed) return;
    // Called after every scan: the same flows with the capture open cost one string compare.
    const sig = flows.map((f) => `${f.src}|${f.srcPort}|${f.dst}|${f.dstPort}`).join(',');
    if (sig === this.sig && this.capture !== null) return;
    this.sig = sig;
    this.flows = flows.slice(0, MAX_RECORDED_FLOWS);
    const keys = new Set(this.flows.map(flowKey));
    for (const k of this.records.keys()) if (!keys.has(k)) this.records.delete(k);
    for (const k of keys)
      if (!this.records.has(k)) this.records.set(k, { frames: 0, lowest: null, cut: false });
    this.reopen();
  }

  /** Forget what was recorded of a flow (its socket moved on): record it afresh. */
  forget(flow: TcpFlow): void {
    const r = this.records.get(flowKey(flow));
    if (r) {
      r.frames = 0;
      r.lowest = null;
    }
  }

  /** The lowest data/SYN/FIN segment recorded of a flow, or why there is none. */
  segment(flow: TcpFlow): TcpSegment | NoSegmentReason {
    const r = this.records.get(flowKey(flow));
    if (!r || r.frames === 0)
      return 'nothing of it was seen leaving (source or destination NAT rewrote it after the socket, or it left elsewhere)';
    if (r.lowest) return r.lowest;
    return r.cut
      ? 'it was not yet captured whole (larger than a standard frame)'
      : 'only pure ACKs or resets of it were seen';
  }

  stats(): RecorderStats {
    return { ...this.counts, flows: this.flows.length, open: this.capture !== null };
  }

  private reopen(): void {
    const mac = this.mac();
    let filter = '';
    if (this.flows.length > 0) {
      if (!mac) {
        this.fail(
          new Error(`${this.ifname} has no Ethernet address: its frames cannot be told from others'`),
        );
        this.stop();
        return;
      }
      filter = flowsFilter(this.flows, mac);
    }
    const whole = [...this.records.values()].some((r) => r.cut);
    const snaplen = whole ? WHOLE_SNAPLEN : RECORD_SNAPLEN;
    if (filter === this.filter && snaplen === this.snaplen && (this.capture !== null || !filter)) return;
    this.stop();
    this.filter = filter;
    this.snaplen = snaplen;
    if (!filter) return;
    if (this.now() - this.failedAt < REOPEN_AFTER_MS) return;
    try {
      const capture = this.open(this.ifname, filter, snaplen);
      capture.on('packet', (p: LivePacket) => {
        try {
          this.record(p, mac!);
        } catch (err) {
          // Nothing thrown here may unwind through libpcap's packet callback.
          this.onError(err instanceof Error ? err : new Error(String(err)));
        }
      });
      capture.on('down', (err: Error) => {
        if (this.capture !== capture) return;
        this.capture = null;
        this.failedAt = this.now();
        this.fail(err);
      });
      this.capture = capture;
      this.counts.opens++;
      this.lastError = '';
      this.failedAt = -Infinity;
    } catch (err) {
      this.failedAt = this.now();
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private fail(err: Error): void {
    if (err.message === this.lastError) return;
    this.lastError = err.message;
    this.onError(err);
  }

  private stop(): void {
    this.capture?.close();
    this.capture = null;
    this.filter = '';
  }

  private record(p: LivePacket, mac: string): void {
    this.counts.frames++;
    const seg = decodeTcpFrame(p.data, this.now());
    if (!seg) return;
    if (seg.ethSrc !== mac) {
      this.counts.foreign++;
      return;
    }
    const r = this.records.get(flowKey(seg.flow));
    if (!r) return;
    r.frames++;
    const pure = (seg.flags & (TCP_FLAG_SYN | TCP_FLAG_FIN)) === 0 && seg.payloadLength === 0;
    if (pure || seg.flags & TCP_FLAG_RST) return;
    if (!seg.whole) {
      if (!r.cut) {
        r.cut = true;
        // Not from inside libpcap's callback: the handle is closed and opened again.
        setImmediate(() => {
          if (!this.closed) {
            this.stop();
            this.reopen();
          }
        });
      }
      return;
    }
    // Serial-number order (RFC 1982): the lowest is snd_una's once the flow only retransmits; of
    // equal ones the latest, whose timestamp is the freshest.
    if (!r.lowest || ((seg.seq - r.lowest.seq) | 0) <= 0) r.lowest = seg;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stop();
    this.records.clear();
    this.flows = [];
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
