// TCP segments leaving towards gateways, watched on the wire: the trigger for traffic a gateway
// host forwards. Forwarded flows have no local socket, so sock_diag never sees them retransmit;
// their segments do leave through this host's uplinks, each frame addressed to the MAC of the
// router the kernel chose. A segment sent again to the same MAC is the forwarded analogue of a
// socket's retransmission, and the MAC says which router it was sent to (ECMP member, policy
// route, whatever the kernel's lookup picked): no lookup of ours can be more exact.
//
// Cost, bounded by the kernel's filter: only outbound unicast TCP segments that carry a SYN or
// data pass it (pure ACKs, the bulk of a download's frames, stay in the kernel), cut at 160 bytes.
// Past `budget` frames a second on an interface the filter samples flows instead: it keeps only
// flows whose port pair hashes into the lowest 1/2^k of the hash space (the same flows every time,
// each one whole, so their retransmissions are all seen) and halves the share until the rate is under the
// budget; it widens again after the rate has stayed low for a while. A gateway's death shows in
// every flow through it, so a sample of a busy uplink's flows sees it as surely as all of them.
import { EventEmitter } from 'node:events';
import type { Family } from '../ipaddr';
import { decodeEthernet, ETHERTYPE_IPV4, ETHERTYPE_IPV6 } from './ethernet';
import { FrameError } from './framebase';
import { decodeIpv4, decodeIpv6, IPPROTO_TCP } from './ip';
import { openEthernetHandle, type LivePacket } from './pcap';
import { TCP_ACK, TCP_SYN, decodeTcp } from './tcp';
import { TcpRetransmissionTracker } from './tcpretrans';

/** A segment seen leaving again towards the same next hop. */
export interface WireRetransmission {
  ifname: string;
  family: Family;
  /** The frame's destination MAC: the next hop the kernel sent it to. */
  mac: string;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  /** The segment is a SYN (a connection attempt that had no answer). */
  syn: boolean;
  /**
   * How many times this segment has now been sent again (1 = the first retransmission); 0 for a
   * SYN that was sent once and had no SYN-ACK within `synStallMs` (`unansweredMs` says how long).
   */
  count: number;
  unansweredMs?: number;
  tsMs: number;
}

export interface WireInterfaceStatus {
  interface: string;
  /** 1: every flow is watched; N: flows whose port hash is 0 mod N (one in N). */
  sampling: number;
  /** Frames read since the watch opened, and retransmissions among them. */
  frames: number;
  retransmissions: number;
  /** Frames the kernel dropped because we read too slowly (libpcap's count). */
  kernel_dropped: number;
  /** Flows whose sequence numbers are remembered now. */
  flows: number;
}

/** What the watch needs of a libpcap handle (./pcap.ts PcapHandle; fakes in tests). */
export interface WireHandle {
  on(event: 'packet', fn: (p: LivePacket) => void): unknown;
  on(event: 'down', fn: (err: Error) => void): unknown;
  setFilter(filter: string): void;
  stats(): { received: number; dropped: number } | null;
  close(): void;
}

export interface WireWatchOptions {
  /** Frames per second per interface read at most, on average, before flows are sampled. */
  budget: number;
  /**
   * A SYN with no SYN-ACK seen on any watched interface for this long is reported once (count 0):
   * clients with a short connect timeout give up before the first SYN retransmission, so that
   * retransmission never comes. 0: off.
   */
  synStallMs?: number;
  open?: (ifname: string, filter: string) => WireHandle;
  now?: () => number;
}

/** Bytes of each frame kept: Ethernet + the longest IPv4 or IPv6 header + the longest TCP header. */
export const WIRE_SNAPLEN = 160;
/** The smallest share of flows sampling goes down to (one in this many). */
export const MAX_SAMPLING = 1024;
/** Flows remembered per interface (least recently seen forgotten first). */
const MAX_FLOWS = 8192;
/** SYNs waiting for their SYN-ACK, across interfaces (the oldest forgotten first). */
const MAX_PENDING_SYNS = 4096;
/** Sampling widens only after the rate stayed under a quarter of the budget this long. */
const WIDEN_AFTER_MS = 30_000;
const KERNEL_BUFFER = 1 << 20;

/**
 * The kernel filter: outbound unicast TCP carrying SYN or data, IPv4 and IPv6 (without extension
 * headers, as the kernel's own TCP sends), and inbound SYN-ACKs, of the sampled flows. A flow is sampled by the top bits
 * of a multiplicative hash of its port pair (XORed, so both directions hash alike): the low bits
 * alone would be biased, since Linux gives connect() even ports and a service keeps one port, so
 * "the lowest bit is 0" would keep all of a server's flows or none.
 */
export function wireFilter(sampling: number): string {
  if (!Number.isInteger(Math.log2(sampling)) || sampling < 1 || sampling > MAX_SAMPLING)
    throw new RangeError(`sampling must be a power of two from 1 to ${MAX_SAMPLING}`);
  const shift = 16 - Math.log2(sampling);
  const sample = (ports: string) =>
    sampling > 1 ? ` and (((${ports}) * 40503) & 0xffff) >> ${shift} = 0` : '';
  const sample4 = sample('tcp[0:2] ^ tcp[2:2]');
  const sample6 = sample('ip6[40:2] ^ ip6[42:2]');
  return (
    '(outbound and not ether multicast and (' +
    `(ip and tcp${sample4} and ((tcp[13] & 2) != 0 or (ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0))` +
    ` or (ip6 and ip6[6] = 6${sample6} and ((ip6[53] & 2) != 0 or (ip6[4:2] - ((ip6[52] & 0xf0) >> 2)) > 0))` +
    '))' +
    // The answers to those SYNs: SYN-ACKs coming in (the same sample, the hash is symmetric).
    ` or (inbound and ((ip and tcp${sample4} and (tcp[13] & 0x12) = 0x12)` +
    ` or (ip6 and ip6[6] = 6${sample6} and (ip6[53] & 0x12) = 0x12)))`
  );
}

/** The same choice as wireFilter's, in TypeScript (tests, and to say which flows a sample keeps). */
export function sampledFlow(srcPort: number, dstPort: number, sampling: number): boolean {
  if (sampling <= 1) return true;
  const shift = 16 - Math.log2(sampling);
  return (Math.imul(srcPort ^ dstPort, 40503) & 0xffff) >>> shift === 0;
}

interface Watched {
  handle: WireHandle;
  tracker: TcpRetransmissionTracker;
  sampling: number;
  windowStart: number;
  windowFrames: number;
  /** Frames in the last whole second (for widening). */
  lastRate: number;
  lastChange: number;
  frames: number;
  retransmissions: number;
}

/**
 * Emits 'frame' (ifname, LivePacket) for every frame read, 'retransmission' (WireRetransmission), 'error' (ifname, Error) for a frame or filter
 * problem, and 'closed' (ifname, Error) when an interface went down or away (its handle is gone;
 * the next setInterfaces() opens it again once it is back).
 */
export class WireWatch extends EventEmitter {
  private readonly watched = new Map<string, Watched>();
  /** SYNs sent towards a next hop and not answered yet: flow key -> the SYN. */
  private readonly pendingSyns = new Map<string, { r: WireRetransmission; seq: number; at: number }>();
  private synTimer: NodeJS.Timeout | null = null;
  private readonly open: (ifname: string, filter: string) => WireHandle;
  private readonly now: () => number;
  private tick: NodeJS.Timeout | null = null;

  constructor(private readonly opts: WireWatchOptions) {
    super();
    this.open =
      opts.open ??
      ((ifname, filter) =>
        openEthernetHandle(
          ifname,
          { filter, snaplen: WIRE_SNAPLEN, bufferBytes: KERNEL_BUFFER, purpose: ' for TCP segments' },
          'segments are read as Ethernet frames',
        ));
    this.now = opts.now ?? Date.now;
  }

  /** Watch exactly these interfaces (opening the new, closing the rest). Throws nothing: errors are emitted. */
  setInterfaces(ifnames: readonly string[]): void {
    const want = new Set(ifnames);
    for (const [name, w] of this.watched)
      if (!want.has(name)) {
        w.handle.close();
        this.watched.delete(name);
      }
    for (const name of want) {
      if (this.watched.has(name)) continue;
      try {
        this.watch(name);
      } catch (err) {
        this.emit('error', name, err as Error);
      }
    }
    if (this.watched.size > 0 && !this.tick) {
      this.tick = setInterval(() => this.widen(), 1000);
      this.tick.unref();
    } else if (this.watched.size === 0 && this.tick) {
      clearInterval(this.tick);
      this.tick = null;
    }
  }

  status(): WireInterfaceStatus[] {
    return [...this.watched].map(([name, w]) => ({
      interface: name,
      sampling: w.sampling,
      frames: w.frames,
      retransmissions: w.retransmissions,
      kernel_dropped: w.handle.stats()?.dropped ?? 0,
      flows: w.tracker.size,
    }));
  }

  close(): void {
    this.setInterfaces([]);
    this.pendingSyns.clear();
    if (this.synTimer) clearInterval(this.synTimer);
    this.synTimer = null;
  }

  private watch(ifname: string): void {
    const handle = this.open(ifname, wireFilter(1));
    const now = this.now();
    const w: Watched = {
      handle,
      tracker: new TcpRetransmissionTracker(MAX_FLOWS),
      sampling: 1,
      windowStart: now,
      windowFrames: 0,
      lastRate: 0,
      lastChange: now,
      frames: 0,
      retransmissions: 0,
    };
    this.watched.set(ifname, w);
    handle.on('packet', (p) => this.onFrame(ifname, w, p));
    handle.on('down', (err) => {
      if (this.watched.get(ifname) !== w) return;
      this.watched.delete(ifname);
      this.emit('closed', ifname, err);
    });
  }

  private onFrame(ifname: string, w: Watched, p: LivePacket): void {
    w.frames++;
    // The flight recorder keeps these segments' headers (src/daemon/flightrec.ts).
    if (this.listenerCount('frame') > 0) this.emit('frame', ifname, p);
    const now = this.now();
    if (now - w.windowStart >= 1000) {
      w.lastRate = lastRate(w, now);
      w.windowStart = now;
      w.windowFrames = 0;
    }
    if (++w.windowFrames > this.opts.budget && w.sampling < MAX_SAMPLING) {
      this.resample(ifname, w, w.sampling * 2);
      w.windowStart = now;
      w.windowFrames = 0;
    }
    let seg;
    try {
      seg = decodeSegment(p.data);
    } catch (err) {
      // Outbound frames are this host's own; one that does not decode is skipped, never fatal.
      if (err instanceof FrameError) return;
      throw err;
    }
    if (!seg) return;
    const flags = seg.tcp.flags;
    if ((flags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK)) {
      // An answer coming in (the filter passes SYN-ACKs inbound only): its SYN is answered.
      const key = `${seg.dst}|${seg.tcp.dstPort}|${seg.src}|${seg.tcp.srcPort}`;
      const p = this.pendingSyns.get(key);
      if (p && seg.tcp.ack === (p.seq + 1) >>> 0) this.pendingSyns.delete(key);
      return;
    }
    const count = w.tracker.observe(seg.src, seg.dst, seg.tcp, seg.mac);
    const r: WireRetransmission = {
      ifname,
      family: seg.family,
      mac: seg.mac,
      src: seg.src,
      srcPort: seg.tcp.srcPort,
      dst: seg.dst,
      dstPort: seg.tcp.dstPort,
      syn: (flags & TCP_SYN) !== 0,
      count,
      tsMs: p.tsMs,
    };
    if (r.syn && count === 0 && this.opts.synStallMs) this.awaitAnswer(r, seg.tcp.seq);
    if (count === 0) return;
    w.retransmissions++;
    this.emit('retransmission', r);
  }

  /** Remember a first SYN; unanswered after synStallMs it is reported once (count 0). */
  private awaitAnswer(r: WireRetransmission, seq: number): void {
    const key = `${r.src}|${r.srcPort}|${r.dst}|${r.dstPort}`;
    this.pendingSyns.delete(key);
    this.pendingSyns.set(key, { r, seq, at: this.now() });
    if (this.pendingSyns.size > MAX_PENDING_SYNS)
      this.pendingSyns.delete(this.pendingSyns.keys().next().value!);
    if (!this.synTimer) {
      // A tenth of the stall: an unanswered SYN is reported at most that late.
      this.synTimer = setInterval(() => this.expireSyns(), Math.max(10, this.opts.synStallMs! / 10));
      this.synTimer.unref();
    }
  }

  private expireSyns(): void {
    const now = this.now();
    const stall = this.opts.synStallMs!;
    for (const [key, p] of this.pendingSyns) {
      // Oldest first: the first one still young ends the pass.
      if (now - p.at < stall) break;
      this.pendingSyns.delete(key);
      this.emit('retransmission', { ...p.r, count: 0, unansweredMs: Math.round(now - p.at) });
    }
    if (this.pendingSyns.size === 0 && this.synTimer) {
      clearInterval(this.synTimer);
      this.synTimer = null;
    }
  }

  /** Once a second: a quiet interface's sampling widens again (one step per WIDEN_AFTER_MS). */
  private widen(): void {
    const now = this.now();
    for (const [ifname, w] of this.watched) {
      const rate = lastRate(w, now);
      if (w.sampling > 1 && rate < this.opts.budget / 4 && now - w.lastChange >= WIDEN_AFTER_MS)
        this.resample(ifname, w, w.sampling / 2);
    }
  }

  private resample(ifname: string, w: Watched, sampling: number): void {
    try {
      w.handle.setFilter(wireFilter(sampling));
      w.sampling = sampling;
      w.lastChange = this.now();
    } catch (err) {
      this.emit('error', ifname, err as Error);
    }
  }
}

/**
 * Frames in the last whole second: the window just ended if it is over (none if more than a second
 * has passed since without a frame), else the one before it.
 */
function lastRate(w: Watched, now: number): number {
  const age = now - w.windowStart;
  if (age < 1000) return w.lastRate;
  return age < 2000 ? w.windowFrames : 0;
}

interface Segment {
  family: Family;
  mac: string;
  src: string;
  dst: string;
  tcp: ReturnType<typeof decodeTcp>['value'];
}

/**
 * The TCP segment in a frame cut at WIRE_SNAPLEN: its payload length comes from the IP header
 * (the bytes were cut), not from what was captured. Null for anything else.
 */
export function decodeSegment(frame: Uint8Array): Segment | null {
  const { value: eth, payloadOffset } = decodeEthernet(frame);
  if (eth.vlan !== undefined) return null;
  let family: Family;
  let src: string;
  let dst: string;
  let l4: number;
  let end: number;
  if (eth.ethertype === ETHERTYPE_IPV4) {
    const { value: ip, payloadOffset: off } = decodeIpv4(frame, payloadOffset, { verifyChecksum: false });
    if (ip.protocol !== IPPROTO_TCP || ip.fragmentOffset !== 0) return null;
    family = 4;
    src = ip.src;
    dst = ip.dst;
    l4 = off;
    end = payloadOffset + ip.totalLength;
  } else if (eth.ethertype === ETHERTYPE_IPV6) {
    const { value: ip, payloadOffset: off } = decodeIpv6(frame, payloadOffset);
    if (ip.nextHeader !== IPPROTO_TCP) return null;
    family = 6;
    src = ip.src;
    dst = ip.dst;
    l4 = off;
    end = off + ip.payloadLength;
  } else return null;
  const { value: tcp } = decodeTcp(frame, l4, Math.min(frame.length, end));
  tcp.payloadLength = Math.max(0, end - l4 - tcp.headerLength);
  return { family, mac: eth.dst, src, dst, tcp };
}
