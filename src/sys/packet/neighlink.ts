// ARP (RFC 826) and IPv6 neighbour discovery (RFC 4861) on one interface, through one libpcap
// handle (pcap.ts): we send who-has / neighbour solicitations ourselves and watch the ARP and ND
// packets addressed to this host (its MAC, broadcast, multicast). This is what dead gateway
// verification stands on, so it believes no more than the kernel would: the handle is not
// promiscuous, a frame for another MAC (a bridge or veth floods unknown unicast: PACKET_OTHERHOST)
// is dropped before it is decoded, and only an answer to our own question counts as one (an ARP
// reply to our MAC and address whose Ethernet source is its sender; a solicited NA to one of our
// addresses whose target link-layer option is its Ethernet source). Gratuitous ARP and unsolicited
// NA stay sightings, never answers.
//
// Frames are built and decoded by the pure functions of neighframes.ts. Frames come from the wire,
// so decoding is defensive: a truncated or malformed frame is counted in `stats` and dropped, and
// nothing thrown while handling a packet escapes into libpcap's callback.
import { EventEmitter } from 'node:events';
import { isIPv4, isIPv6 } from 'node:net';
import { AbortError, IpdeadgateError, UsageError } from '../../errors';
import { preciseWallNowMs } from '../../util/clock';
import { normalizeIp, normalizeMac, type Family } from '../ipaddr';
import { FrameError } from './framebase';
import { ARP_REPLY, ARP_REQUEST } from './ethernet';
import { ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT } from './icmp';
import { buildArpRequest, buildNeighbourSolicitation, decodeNeighbourFrame } from './neighframes';
import {
  neighbourFilter,
  pickArpSender,
  pickNsSource,
  readInterfaceAddresses,
  type InterfaceAddresses,
} from './neighaddrs';

export {
  NEIGHBOUR_BPF_FILTER,
  neighbourFilter,
  pickArpSender,
  pickNsSource,
  readInterfaceAddresses,
  type InterfaceAddresses,
} from './neighaddrs';
import { openEthernetHandle, type LivePacket } from './pcap';

export interface NeighbourSighting {
  family: Family;
  /** The neighbour's address (canonical text, no zone). */
  ip: string;
  /** Its link-layer address, lower case. */
  mac: string;
  kind: 'arp-reply' | 'arp-request' | 'garp' | 'na' | 'ns' | 'ra';
  /**
   * A valid answer to a question of this host: an ARP reply to our MAC and one of our addresses
   * whose Ethernet source is its sender MAC, or a solicited NA (hop limit 255) to one of our
   * addresses and our MAC, whose target link-layer option is its Ethernet source. Only these
   * resolve().
   */
  answer: boolean;
  /**
   * True when the packet was not an answer addressed to this host: gratuitous ARP, an ARP reply
   * to another MAC, an NA without the Solicited flag, an RA to all-nodes, and every request (the
   * neighbour asking on its own).
   */
  unsolicited: boolean;
  /** performance.now() when the packet was handled. */
  at: number;
}

export interface ResolveOptions {
  /** How many requests to send (>= 1). */
  probes: number;
  /** Spacing between requests, and how long to wait after the last one. */
  intervalMs: number;
  signal?: AbortSignal;
  /** Called as each request goes out (1-based), so callers can log every probe. */
  onProbe?: (n: number) => void;
  /**
   * Listen until the deadline (probes x intervalMs) and report every MAC that answered, instead of
   * finishing at the first answer: an answer from another MAC is then heard even when the expected
   * one answered first (a conflict). Probes stop once `expectMac` answered.
   */
  untilDeadline?: boolean;
  /** The MAC whose answer ends the probing (with untilDeadline). */
  expectMac?: string | null;
  /** With untilDeadline: finish at once when expectMac answered (what was heard before is reported). */
  finishOnExpected?: boolean;
  /**
   * Let the target's ICMP echoes through the kernel filter while resolving (a verification, for
   * the flight recorder's picture); off for a single active probe, which would recompile the
   * filter twice a probe.
   */
  watchEcho?: boolean;
  /** Listen at most this long in all (default and at most probes x intervalMs). */
  listenMs?: number;
  /** Each MAC's first answer, as it arrives. */
  onAnswer?: (a: NeighbourAnswer) => void;
}

/** One MAC that answered, and its first answer's RTT. */
export interface NeighbourAnswer {
  mac: string;
  rttMs: number;
  /** Answers from this MAC while resolving. */
  count: number;
}

export interface ResolveResult {
  /** The first answer's MAC (expectMac's, when it answered). */
  mac: string;
  /** From the latest request sent before the reply to the reply. */
  rttMs: number;
  probesSent: number;
  /** Every MAC that answered, first answer first. */
  answers: NeighbourAnswer[];
}

/** Counters of what the link saw; `dropped*` are frames that could not be decoded. */
export interface NeighbourLinkStats {
  framesReceived: number;
  sightings: number;
  /** Well-formed frames that are ours to ignore: our own, foreign protocols, DAD probes. */
  ignored: number;
  /** Frames for another host's MAC (flooded by a bridge or veth): dropped undecoded, as the kernel does. */
  notForUs: number;
  droppedTruncated: number;
  droppedMalformed: number;
  framesSent: number;
}

/** The packet I/O a NeighbourLink needs; `cap` in production, a fake in unit tests. */
export interface FrameTransport {
  /** Send one Ethernet frame; throws on failure. */
  send(frame: Buffer): void;
  /** Replace the kernel filter (tcpdump syntax); absent: the transport filters nothing itself. */
  setFilter?(filter: string): void;
  /** Register the one receiver: `frame` is only valid during the call (the buffer is reused). */
  onFrame(receiver: (frame: Buffer, truncated: boolean) => void): void;
  /** Register the one listener for the interface going down or away (the transport is closed then). */
  onDown?(listener: (err: Error) => void): void;
  close(): void;
}

/** How long the interface's addresses are reused when checking answers (a flood must not read them per frame). */
const ADDRESSES_TTL_MS = 1000;

/**
 * A raw frame the link captured ('in') or sent ('out'): the 'frame' event, emitted only while
 * someone listens. libpcap does not show a handle the frames it sent itself, so sent ones are
 * reported here directly. `data` is a copy, safe to keep.
 */
export interface LinkFrame {
  ifname: string;
  direction: 'in' | 'out';
  /** Epoch milliseconds (fractional) when the frame was handled. */
  tsMs: number;
  data: Buffer;
}

const IFNAME = /^[^\s/:]{1,15}$/;

function checkIfname(ifname: string): void {
  if (typeof ifname !== 'string' || !IFNAME.test(ifname))
    throw new UsageError(`"${ifname}" is not a valid interface name`);
}

/** A libpcap handle (pcap.ts) as a FrameTransport. */
function openPcapTransport(ifname: string, mac: string): FrameTransport {
  const handle = openEthernetHandle(
    ifname,
    { filter: neighbourFilter(mac), bufferBytes: 1 << 20, purpose: ' for ARP/NDP' },
    'ARP and NDP need Ethernet',
  );
  return {
    send(frame) {
      handle.send(frame);
    },
    setFilter(filter) {
      handle.setFilter(filter);
    },
    onFrame(receiver) {
      handle.on('packet', (p: LivePacket) => receiver(p.data, p.wireLength > p.data.length));
    },
    onDown(listener) {
      handle.on('down', listener);
    },
    close() {
      handle.close();
    },
  };
}

let warmedUp = false;
/**
 * Decode a few canned frames once per process: the first reply would otherwise pay for compiling
 * the decoders (about 5 ms measured in the lab against 0.05 ms after), and its RTT would say so.
 */
function warmUpDecoders(): void {
  if (warmedUp) return;
  warmedUp = true;
  const mac = '02:00:00:00:00:01';
  for (let i = 0; i < 3; i++) {
    decodeNeighbourFrame(buildArpRequest({ senderMac: mac, senderIp: '198.18.0.1', targetIp: '198.18.0.2' }));
    decodeNeighbourFrame(
      buildNeighbourSolicitation({ srcMac: mac, srcIp: '2001:db8::1', target: '2001:db8::2' }),
    );
  }
}

export class NeighbourLink extends EventEmitter {
  readonly ifname: string;
  readonly mac: string;
  readonly stats: NeighbourLinkStats = {
    framesReceived: 0,
    sightings: 0,
    ignored: 0,
    notForUs: 0,
    droppedTruncated: 0,
    droppedMalformed: 0,
    framesSent: 0,
  };
  private closed = false;
  private readonly transport: FrameTransport;
  private readonly readAddresses: () => InterfaceAddresses;
  private addressCache: { at: number; v4: Set<string>; v6: Set<string> } | null = null;
  /** Gateways being resolved now (address -> resolutions): their echoes pass the kernel filter. */
  private readonly verifying = new Map<string, number>();

  /**
   * Open the interface for ARP and NDP (needs CAP_NET_RAW). Throws UsageError for an unknown or
   * non-Ethernet interface and a SystemError EPERM with a hint without the privilege.
   */
  static async open(ifname: string): Promise<NeighbourLink> {
    checkIfname(ifname);
    const addrs = readInterfaceAddresses(ifname);
    if (!addrs) throw new UsageError(`no network interface named "${ifname}" in this network namespace`);
    const transport = openPcapTransport(ifname, addrs.mac);
    return new NeighbourLink(ifname, addrs.mac, transport, () => readInterfaceAddresses(ifname) ?? addrs);
  }

  /** Build a link over any transport (unit tests use a fake one). */
  static withTransport(
    ifname: string,
    transport: FrameTransport,
    addresses: InterfaceAddresses | (() => InterfaceAddresses),
  ): NeighbourLink {
    const read = typeof addresses === 'function' ? addresses : () => addresses;
    return new NeighbourLink(ifname, normalizeMac(read().mac), transport, read);
  }

  private constructor(
    ifname: string,
    mac: string,
    transport: FrameTransport,
    readAddresses: () => InterfaceAddresses,
  ) {
    super();
    this.ifname = ifname;
    this.mac = mac;
    this.transport = transport;
    this.readAddresses = readAddresses;
    transport.onFrame((frame, truncated) => this.handleFrame(frame, truncated));
    transport.onDown?.((err) => {
      // The interface went down or away: this link is finished; its owner opens a new one later.
      if (this.closed) return;
      this.emit('down', err);
      this.close();
    });
    warmUpDecoders();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Broadcast an ARP who-has for targetIp. The sender IP is ours on the target's subnet. */
  sendArpRequest(targetIp: string, opts: { senderIp?: string } = {}): void {
    if (!isIPv4(targetIp)) throw new TypeError(`sendArpRequest: "${targetIp}" is not an IPv4 address`);
    if (opts.senderIp !== undefined && !isIPv4(opts.senderIp))
      throw new TypeError(`sendArpRequest: sender "${opts.senderIp}" is not an IPv4 address`);
    const senderIp = opts.senderIp ?? pickArpSender(this.readAddresses(), targetIp);
    this.send(buildArpRequest({ senderMac: this.mac, senderIp, targetIp }));
  }

  /**
   * Send an NS for targetIp to its solicited-node group (or unicast to `unicastMac`), from our
   * link-local or global address, with the source link-layer option so the answer comes straight back.
   */
  sendNeighbourSolicitation(targetIp: string, opts: { unicastMac?: string } = {}): void {
    if (!isIPv6(targetIp.split('%')[0]!))
      throw new TypeError(`sendNeighbourSolicitation: "${targetIp}" is not an IPv6 address`);
    const target = normalizeIp(targetIp);
    const srcIp = pickNsSource(this.readAddresses(), target);
    const frame = buildNeighbourSolicitation({
      srcMac: this.mac,
      srcIp,
      target,
      ...(opts.unicastMac ? { unicastMac: normalizeMac(opts.unicastMac) } : {}),
    });
    this.send(frame);
  }

  /**
   * Send `probes` requests (ARP for IPv4, NS for IPv6) spaced by `intervalMs` until a valid answer
   * for `ip` arrives (see NeighbourSighting.answer: never a gratuitous ARP, an unsolicited NA or a
   * frame for another MAC). With untilDeadline, listen until probes * intervalMs and report every
   * MAC that answered (finishing early only on expectMac's answer). Resolves null when nothing
   * answered within probes * intervalMs. Rejects with AbortError on abort and with the send error
   * if sending fails.
   */
  resolve(ip: string, opts: ResolveOptions): Promise<ResolveResult | null> {
    if (!Number.isInteger(opts.probes) || opts.probes < 1)
      throw new RangeError(`resolve: probes must be a whole number >= 1, not ${opts.probes}`);
    if (!(opts.intervalMs > 0) || !Number.isFinite(opts.intervalMs))
      throw new RangeError(
        `resolve: intervalMs must be a positive number of milliseconds, not ${opts.intervalMs}`,
      );
    const family: Family = isIPv4(ip) ? 4 : 6;
    const target = normalizeIp(ip); // throws RangeError for a non-address
    const { signal } = opts;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new AbortError(`resolving ${target} on ${this.ifname} was aborted`));
      if (this.closed)
        return reject(new IpdeadgateError('ERR_CLOSED', `the ARP/NDP handle on ${this.ifname} is closed`));
      let sent = 0;
      let lastSentAt = 0;
      let timer: NodeJS.Timeout | undefined;
      const expect = opts.expectMac ? normalizeMac(opts.expectMac) : null;
      const answers = new Map<string, NeighbourAnswer>();
      const result = (): ResolveResult | null => {
        const all = [...answers.values()];
        const first = (expect && answers.get(expect)) || all[0];
        return first ? { mac: first.mac, rttMs: first.rttMs, probesSent: sent, answers: all } : null;
      };
      const finish = (fn: () => void) => {
        clearTimeout(timer);
        clearTimeout(deadline);
        this.off('sighting', onSighting);
        this.off('closed', onClosed);
        signal?.removeEventListener('abort', onAbort);
        if (opts.watchEcho) this.endVerifying(target);
        fn();
      };
      const onSighting = (s: NeighbourSighting) => {
        if (s.ip !== target || !s.answer) return;
        const seen = answers.get(s.mac);
        if (seen) {
          seen.count++;
          return;
        }
        const a = { mac: s.mac, rttMs: Math.max(0, s.at - lastSentAt), count: 1 };
        answers.set(s.mac, a);
        opts.onAnswer?.({ ...a });
        if (!opts.untilDeadline) finish(() => resolve(result()));
        else if (s.mac === expect) {
          if (opts.finishOnExpected) finish(() => resolve(result()));
          // Nothing more to ask, but whoever else answers is still heard.
          else clearTimeout(timer);
        }
      };
      const onClosed = () =>
        finish(() =>
          reject(
            new IpdeadgateError(
              'ERR_CLOSED',
              `the ARP/NDP handle on ${this.ifname} was closed while resolving ${target}`,
            ),
          ),
        );
      const onAbort = () =>
        finish(() => reject(new AbortError(`resolving ${target} on ${this.ifname} was aborted`)));
      const sendNext = () => {
        try {
          if (family === 4) this.sendArpRequest(target);
          else this.sendNeighbourSolicitation(target);
        } catch (err) {
          return finish(() => reject(err));
        }
        sent++;
        lastSentAt = performance.now();
        opts.onProbe?.(sent);
        if (sent < opts.probes) timer = setTimeout(sendNext, opts.intervalMs);
      };
      // The last request gets one interval for its answer, as every other.
      const budget = opts.probes * opts.intervalMs;
      const listenMs =
        opts.listenMs !== undefined && opts.listenMs >= 0 ? Math.min(budget, opts.listenMs) : budget;
      const deadline = setTimeout(() => finish(() => resolve(result())), listenMs);
      this.on('sighting', onSighting);
      this.once('closed', onClosed);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (opts.watchEcho) this.beginVerifying(target);
      sendNext();
    });
  }

  /** While a gateway is resolved, its echoes pass the filter (the flight recorder's picture). */
  private beginVerifying(ip: string): void {
    const n = this.verifying.get(ip) ?? 0;
    this.verifying.set(ip, n + 1);
    if (n === 0) this.applyFilter();
  }

  private endVerifying(ip: string): void {
    const n = this.verifying.get(ip) ?? 0;
    if (n <= 1) {
      this.verifying.delete(ip);
      if (n === 1) this.applyFilter();
    } else this.verifying.set(ip, n - 1);
  }

  private applyFilter(): void {
    if (this.closed || !this.transport.setFilter) return;
    try {
      this.transport.setFilter(neighbourFilter(this.mac, this.verifying.keys()));
    } catch (err) {
      // The old filter stays: ARP/NDP still pass, only the echo picture is missing.
      if (this.listenerCount('error') > 0)
        this.emit('error', err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** Our IPv4 and IPv6 addresses, re-read at most once a second. */
  private ourAddresses(): { v4: Set<string>; v6: Set<string> } {
    const now = performance.now();
    if (!this.addressCache || now - this.addressCache.at > ADDRESSES_TTL_MS) {
      const a = this.readAddresses();
      this.addressCache = {
        at: now,
        v4: new Set(a.ipv4.map((x) => x.address)),
        v6: new Set(a.ipv6.map((x) => normalizeIp(x.address.split('%')[0]!))),
      };
    }
    return this.addressCache;
  }

  /** Idempotent; safe from inside a 'sighting' listener. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.transport.close();
    this.emit('closed');
  }

  [Symbol.dispose](): void {
    this.close();
  }

  private send(frame: Buffer): void {
    if (this.closed)
      throw new IpdeadgateError('ERR_CLOSED', `the ARP/NDP handle on ${this.ifname} is closed`);
    this.transport.send(frame);
    this.stats.framesSent++;
    if (this.listenerCount('frame') > 0) this.emitFrame('out', frame);
  }

  private emitFrame(direction: LinkFrame['direction'], frame: Buffer): void {
    const f: LinkFrame = {
      ifname: this.ifname,
      direction,
      tsMs: preciseWallNowMs(),
      data: Buffer.from(frame),
    };
    try {
      this.emit('frame', f);
    } catch (err) {
      if (this.listenerCount('error') > 0)
        this.emit('error', err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** Decode one captured frame; never throws (it runs inside libpcap's dispatch). */
  private handleFrame(frame: Buffer, truncated: boolean): void {
    if (this.closed) return;
    this.stats.framesReceived++;
    // A frame for another MAC is one the kernel drops (PACKET_OTHERHOST): so do we, undecoded.
    if (frame.length >= 12 && !this.forUs(frame)) {
      this.stats.notForUs++;
      return;
    }
    if (this.listenerCount('frame') > 0 && !truncated) this.emitFrame('in', frame);
    let sighting: NeighbourSighting | null;
    try {
      if (truncated) throw new FrameError('ERR_FRAME_TRUNCATED', 'frame larger than the capture buffer');
      sighting = this.classify(frame);
    } catch (err) {
      if (err instanceof FrameError && err.code === 'ERR_FRAME_TRUNCATED') this.stats.droppedTruncated++;
      else this.stats.droppedMalformed++;
      return;
    }
    if (!sighting) {
      this.stats.ignored++;
      return;
    }
    this.stats.sightings++;
    try {
      this.emit('sighting', sighting);
    } catch (err) {
      // A listener's bug must not unwind through libpcap; report it if anyone listens for errors.
      if (this.listenerCount('error') > 0)
        this.emit('error', err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** Destination our MAC or a group address (broadcast, multicast), or sent by us. */
  private forUs(frame: Buffer): boolean {
    if ((frame[0]! & 1) === 1) return true;
    const mac = this.macBytes;
    return frame.compare(mac, 0, 6, 0, 6) === 0 || frame.compare(mac, 0, 6, 6, 12) === 0;
  }

  private get macBytes(): Buffer {
    this.macBuf ??= Buffer.from(this.mac.split(':').map((h) => parseInt(h, 16)));
    return this.macBuf;
  }
  private macBuf: Buffer | null = null;

  private classify(frame: Buffer): NeighbourSighting | null {
    const d = decodeNeighbourFrame(frame);
    if (!d) return null;
    // Our own packets (and the kernel's from this interface) are seen on the way out: not neighbours.
    if (d.eth.src === this.mac) return null;
    const at = performance.now();
    const toUs = d.eth.dst === this.mac;
    if (d.proto === 'arp') {
      const a = d.arp;
      if (a.senderMac === this.mac || a.senderIp === '0.0.0.0') return null; // RFC 5227 probes carry no binding
      const garp = a.senderIp === a.targetIp;
      const base = { family: 4 as const, ip: a.senderIp, mac: a.senderMac, at };
      if (garp) return { ...base, kind: 'garp', answer: false, unsolicited: true };
      if (a.op === ARP_REPLY) {
        const answer =
          toUs &&
          a.targetMac === this.mac &&
          d.eth.src === a.senderMac &&
          this.ourAddresses().v4.has(a.targetIp);
        return { ...base, kind: 'arp-reply', answer, unsolicited: !answer };
      }
      if (a.op === ARP_REQUEST) return { ...base, kind: 'arp-request', answer: false, unsolicited: true };
      return null;
    }
    const n = d.ndp;
    if (n.type === ND_NEIGHBOR_ADVERT) {
      // decodeNdp already insists on hop limit 255 (an on-link sender) and a valid checksum.
      const answer =
        n.solicited &&
        toUs &&
        n.targetMac !== null &&
        n.targetMac === d.eth.src &&
        this.ourAddresses().v6.has(d.ip6.dst);
      return {
        family: 6,
        ip: n.target,
        mac: n.targetMac ?? d.eth.src,
        kind: 'na',
        answer,
        unsolicited: !n.solicited,
        at,
      };
    }
    if (n.type === ND_NEIGHBOR_SOLICIT) {
      if (d.ip6.src === '::') return null; // duplicate address detection: no binding yet
      return {
        family: 6,
        ip: d.ip6.src,
        mac: n.sourceMac ?? d.eth.src,
        kind: 'ns',
        answer: false,
        unsolicited: true,
        at,
      };
    }
    return {
      family: 6,
      ip: d.ip6.src,
      mac: n.sourceMac ?? d.eth.src,
      kind: 'ra',
      answer: false,
      unsolicited: d.ip6.dst.startsWith('ff'),
      at,
    };
  }
}

/**
 * One NeighbourLink per interface, opened on first use and shared: what the verifier's `resolve`
 * port needs in the daemon and the CLI.
 */
export class NeighbourLinks {
  private readonly links = new Map<string, Promise<NeighbourLink>>();
  private closed = false;

  constructor(
    private readonly opener: (ifname: string) => Promise<NeighbourLink> = (n) => NeighbourLink.open(n),
  ) {}

  get(ifname: string): Promise<NeighbourLink> {
    if (this.closed)
      return Promise.reject(new IpdeadgateError('ERR_CLOSED', 'the neighbour links are closed'));
    let p = this.links.get(ifname);
    if (!p) {
      const opened = this.opener(ifname);
      p = opened;
      this.links.set(ifname, opened);
      // A failed open is not cached, nor a link that closed (its interface went down or away):
      // the interface may appear later.
      opened.then(
        (link) => link.once('closed', () => this.links.get(ifname) === opened && this.links.delete(ifname)),
        () => this.links.get(ifname) === opened && this.links.delete(ifname),
      );
    }
    return p;
  }

  async resolve(ifname: string, ip: string, opts: ResolveOptions): Promise<ResolveResult | null> {
    return (await this.get(ifname)).resolve(ip, opts);
  }

  /** Close and forget one interface's link (e.g. when the interface went away). */
  async drop(ifname: string): Promise<void> {
    const p = this.links.get(ifname);
    this.links.delete(ifname);
    if (p) (await p.catch(() => null))?.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const all = [...this.links.values()];
    this.links.clear();
    for (const p of all) (await p.catch(() => null))?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
