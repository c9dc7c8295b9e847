// The failover flight recorder: a bounded ring of the gateways' ARP/NDP/ICMP frames seen (and sent)
// on the gateway interfaces, and, whenever detection declares a gateway dead, a pcap file of the
// moments around it (`before` the verdict to `after` it) in the state directory, for tcpdump -r
// or Wireshark. No detection code knows about it: it reads the engine's `state` events through a
// wrapped EventLog and the frames through NeighbourLink's 'frame' event.
//
// The capture also shows the cause: the headers (Ethernet, IP, TCP; never a payload byte) of the
// TCP segments of the flows that triggered the verdict — their retransmissions or unanswered SYNs
// towards the dead gateway's MAC, and the first segments through the new next hop after the switch.
// They come from the forwarded-traffic wire watch (src/sys/packet/wirewatch.ts: outbound segments
// carrying a SYN or data, and SYN-ACKs, on the gateway interfaces; local flows' segments leave
// there too), kept in a second ring, and the flows are the ones the engine's trigger events name.
//
// Bounded everywhere: the rings by time and bytes, the files by count and total size (oldest
// removed first), one pending dump per gateway, SEGMENT_FLOWS flows per gateway and
// SEGMENTS_PER_FLOW segments of each in one capture.
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { frameAddresses, encodePcap, type PcapPacket } from '../sys/packet';
import { normalizeIp } from '../sys/ipaddr';
import { writeFileAtomic } from '../util/atomic';
import type { EventLog } from './log';
import { emit } from '../dgd/events';

export interface FlightRecorderSettings {
  enabled: boolean;
  /** Milliseconds of frames before the dead verdict that a capture holds. */
  before: number;
  /** Milliseconds after the verdict that the recorder waits for before writing. */
  after: number;
  /** Most bytes of frames the ring holds (oldest dropped first). */
  ring_bytes: number;
  /** Most capture files kept in the directory. */
  max_files: number;
  /** Most bytes all capture files may take together. */
  max_bytes: number;
}

export const FLIGHT_RECORDER_DEFAULTS: FlightRecorderSettings = {
  enabled: true,
  before: 10_000,
  after: 3_000,
  ring_bytes: 4 << 20,
  max_files: 20,
  max_bytes: 32 << 20,
};

export interface RecordedFrame {
  ifname: string;
  tsMs: number;
  data: Buffer;
}

export interface CaptureFileInfo {
  file: string;
  gateway: string;
  /** ISO time of the dead verdict. */
  dead_at: string;
  packets: number;
  bytes: number;
}

export interface FlightRecorderStatus {
  enabled: boolean;
  directory: string;
  ring_packets: number;
  ring_bytes: number;
  /** TCP segment headers kept for the captures (the triggering flows'). */
  ring_segments: number;
  ring_segment_bytes: number;
  files: number;
  files_bytes: number;
  captures_written: number;
  write_errors: number;
}

interface PendingDump {
  gateway: string;
  ifname: string;
  deadAtMs: number;
  timer: NodeJS.Timeout;
}

/** Bytes the segment ring holds at most (headers only: about 80-130 bytes a segment). */
export const SEGMENT_RING_BYTES = 2 << 20;
/** Triggering flows remembered per gateway, and segments of each flow in one capture. */
export const SEGMENT_FLOWS = 64;
export const SEGMENTS_PER_FLOW = 200;

/** A TCP segment seen on the wire, cut to its headers. */
export interface RecordedSegment {
  ifname: string;
  tsMs: number;
  /** Ethernet + IP + TCP headers only. */
  data: Buffer;
  /** The frame's length on the wire (so readers show the real length). */
  origLen: number;
  /** "src|sport|dst|dport" as sent (outbound) or received (a SYN-ACK). */
  flow: string;
  /** Destination MAC: the next hop of an outbound segment. */
  mac: string;
  /** TCP sequence number and payload length: a segment sent again has both again. */
  seq: number;
  len: number;
}

/** Per-record overhead in the pcap file: what the byte bounds count besides the frame. */
const RECORD_OVERHEAD = 16;
/** File names: 20240102T030405.123Z_198.18.1.1.pcap (IPv6 colons as '-'): sorting by name sorts by time. */
const FILE_RE = /^(\d{8}T\d{6}\.\d{3}Z)_([0-9a-fA-F.-]+)\.pcap$/;

function fileStamp(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, '');
}

function stampToIso(stamp: string): string {
  const m = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)\.(\d{3})Z$/.exec(stamp)!;
  return `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${m[7]}Z`;
}

export class FlightRecorder {
  private ring: RecordedFrame[] = [];
  private ringStart = 0;
  private ringBytes = 0;
  private gateways = new Set<string>();
  private readonly pending = new Map<string, PendingDump>();
  private readonly last = new Map<string, CaptureFileInfo>();
  private writing: Promise<void> = Promise.resolve();
  private written = 0;
  private writeErrors = 0;
  private filesCount = 0;
  private filesBytes = 0;
  private closed = false;
  private segments: RecordedSegment[] = [];
  private segmentsStart = 0;
  private segmentBytes = 0;
  /** Per gateway: the flows its trigger events named ("src|sport|dst|dport"). */
  private readonly triggering = new Map<string, Set<string>>();

  constructor(
    readonly directory: string,
    private settings: FlightRecorderSettings,
    private readonly log: EventLog,
    private readonly now: () => number = Date.now,
  ) {}

  /** Learn the capture files already in the directory (after a restart `status` still names them). */
  async load(): Promise<void> {
    const files = await this.listFiles();
    this.filesCount = files.length;
    this.filesBytes = files.reduce((n, f) => n + f.size, 0);
    for (const f of files) {
      this.last.set(f.gateway, {
        file: path.join(this.directory, f.name),
        gateway: f.gateway,
        dead_at: stampToIso(f.stamp),
        packets: -1,
        bytes: f.size,
      });
    }
  }

  /** New settings (SIGHUP); the ring is trimmed to the new bounds. */
  configure(settings: FlightRecorderSettings): void {
    this.settings = settings;
    if (!settings.enabled) {
      this.ring = [];
      this.ringStart = 0;
      this.ringBytes = 0;
    }
    this.trim();
  }

  /** The gateways whose frames the ring keeps (addresses, any form). */
  setGateways(addresses: Iterable<string>): void {
    const next = new Set<string>();
    for (const a of addresses) {
      try {
        next.add(normalizeIp(a));
      } catch {
        /* not an address: nothing to match */
      }
    }
    this.gateways = next;
  }

  /** Offer one frame: kept if it is about a gateway (ARP sender/target, IP src/dst, NDP target). */
  record(frame: RecordedFrame): void {
    if (this.closed || !this.settings.enabled) return;
    if (!frameAddresses(frame.data).some((a) => this.gateways.has(a))) return;
    this.ring.push(frame);
    this.ringBytes += frame.data.length + RECORD_OVERHEAD;
    this.trim();
  }

  /**
   * Offer one TCP segment frame from the wire watch: its headers are kept (the payload is cut
   * here, before anything is stored) for the captures of the incidents it may belong to.
   */
  recordSegment(ifname: string, tsMs: number, frame: Buffer, wireLength = frame.length): void {
    if (this.closed || !this.settings.enabled) return;
    const h = segmentHeaders(frame);
    if (!h) return;
    const data = Buffer.from(frame.subarray(0, h.headerBytes));
    this.segments.push({
      ifname,
      tsMs,
      data,
      origLen: Math.max(wireLength, h.origLen),
      flow: h.flow,
      mac: h.mac,
      seq: h.seq,
      len: h.len,
    });
    this.segmentBytes += data.length + RECORD_OVERHEAD;
    this.trimSegments();
  }

  private trimSegments(): void {
    const horizon = this.now() - (this.settings.before + this.settings.after + 1000);
    const limit = Math.min(SEGMENT_RING_BYTES, this.settings.ring_bytes);
    while (this.segmentsStart < this.segments.length) {
      const f = this.segments[this.segmentsStart]!;
      if (f.tsMs >= horizon && this.segmentBytes <= limit) break;
      this.segmentBytes -= f.data.length + RECORD_OVERHEAD;
      this.segmentsStart++;
    }
    if (this.segmentsStart > 1024 && this.segmentsStart * 2 > this.segments.length) {
      this.segments = this.segments.slice(this.segmentsStart);
      this.segmentsStart = 0;
    }
  }

  /** Remember the flows a trigger event names for its gateway (bounded per gateway). */
  private noteTriggering(fields: Record<string, unknown>): void {
    if (typeof fields.gateway !== 'string') return;
    const gw = normalizeSafe(fields.gateway);
    const set = this.triggering.get(gw) ?? new Set<string>();
    const socks = [...(Array.isArray(fields.samples) ? fields.samples : []), fields.socket];
    for (const s of socks as ({ src?: unknown; dst?: unknown } | undefined)[]) {
      if (set.size >= SEGMENT_FLOWS) break;
      if (!s || typeof s.src !== 'string' || typeof s.dst !== 'string') continue;
      const a = parseEndpoint(s.src);
      const b = parseEndpoint(s.dst);
      if (a && b) set.add(`${a[0]}|${a[1]}|${b[0]}|${b[1]}`);
    }
    if (set.size > 0) this.triggering.set(gw, set);
  }

  private trim(): void {
    // Time: what a dump could still need (before + after), with a second of slack.
    const horizon = this.now() - (this.settings.before + this.settings.after + 1000);
    while (this.ringStart < this.ring.length) {
      const f = this.ring[this.ringStart]!;
      if (f.tsMs >= horizon && this.ringBytes <= this.settings.ring_bytes) break;
      this.ringBytes -= f.data.length + RECORD_OVERHEAD;
      this.ringStart++;
    }
    if (this.ringStart > 1024 && this.ringStart * 2 > this.ring.length) {
      this.ring = this.ring.slice(this.ringStart);
      this.ringStart = 0;
    }
  }

  /** An EventLog that forwards everything to `inner` and starts a dump on every `state` to dead. */
  wrap(inner: EventLog): EventLog {
    return {
      event: (name, fields = {}, level) => {
        inner.event(name, fields, level);
        if (name === 'trigger' || name === 'trigger_socket' || name === 'speculative_verify')
          this.noteTriggering(fields);
        if (name === 'state' && fields.to === 'active' && typeof fields.gateway === 'string')
          this.triggering.delete(normalizeSafe(fields.gateway));
        if (name === 'state' && fields.to === 'dead' && typeof fields.gateway === 'string')
          this.onDead(fields.gateway, typeof fields.interface === 'string' ? fields.interface : null);
      },
    };
  }

  /** A gateway was declared dead now: write the capture `after` ms from now. */
  onDead(gateway: string, ifname: string | null): void {
    if (this.closed || !this.settings.enabled || this.pending.has(gateway)) return;
    const deadAtMs = this.now();
    const timer = setTimeout(() => this.flush(gateway), this.settings.after);
    timer.unref();
    this.pending.set(gateway, { gateway, ifname: ifname ?? '', deadAtMs, timer });
  }

  private flush(gateway: string): Promise<void> {
    const p = this.pending.get(gateway);
    if (!p) return this.writing;
    clearTimeout(p.timer);
    this.pending.delete(gateway);
    const from = p.deadAtMs - this.settings.before;
    const to = p.deadAtMs + this.settings.after;
    const frames: (RecordedFrame & { origLen?: number })[] = this.ring
      .slice(this.ringStart)
      .filter((f) => f.tsMs >= from && f.tsMs <= to && (!p.ifname || f.ifname === p.ifname));
    const flows = this.triggering.get(normalizeSafe(p.gateway)) ?? new Set<string>();
    this.triggering.delete(normalizeSafe(p.gateway));
    const seg = triggeringSegments(
      this.segments
        .slice(this.segmentsStart)
        .filter((f) => f.tsMs >= from && f.tsMs <= to && (!p.ifname || f.ifname === p.ifname)),
      flows,
      p.deadAtMs,
    );
    const merged = [...frames, ...seg.segments].sort((a, b) => a.tsMs - b.tsMs);
    this.writing = this.writing.then(() => this.write(p, merged, seg));
    return this.writing;
  }

  private async write(
    p: PendingDump,
    frames: (RecordedFrame & { origLen?: number })[],
    seg: ReturnType<typeof triggeringSegments> = { segments: [], firstViaNew: null, flows: [] },
  ): Promise<void> {
    if (frames.length === 0) {
      // Nothing was seen: the link was not open yet, or the gateway was dead before a restart.
      this.log.event('capture_skipped', {
        gateway: p.gateway,
        reason: 'no frames of the gateway in the ring',
      });
      return;
    }
    const name = `${fileStamp(p.deadAtMs)}_${normalizeSafe(p.gateway).replace(/:/g, '-')}.pcap`;
    const file = path.join(this.directory, name);
    // A single capture never exceeds the total bound: keep its newest frames.
    let packets: PcapPacket[] = frames.map((f) => ({
      tsMs: f.tsMs,
      data: f.data,
      ...(f.origLen !== undefined ? { origLen: f.origLen } : {}),
    }));
    const limit = this.settings.max_bytes - 24;
    let size = packets.reduce((n, f) => n + f.data.length + RECORD_OVERHEAD, 0);
    while (size > limit && packets.length > 0) {
      size -= packets[0]!.data.length + RECORD_OVERHEAD;
      packets = packets.slice(1);
    }
    const bytes = encodePcap(packets);
    try {
      await mkdir(this.directory, { recursive: true, mode: 0o700 });
      await writeFileAtomic(file, bytes, 0o600);
      this.written++;
      const info: CaptureFileInfo = {
        file,
        gateway: p.gateway,
        dead_at: new Date(p.deadAtMs).toISOString(),
        packets: packets.length,
        bytes: bytes.length,
      };
      this.last.set(p.gateway, info);
      const removed = await this.enforceBounds();
      emit(this.log, {
        event: 'capture_written',
        ...info,
        interface: p.ifname || null,
        removed_files: removed,
      });
      this.log.event('capture_segments', {
        gateway: p.gateway,
        file,
        segments: seg.segments.length,
        flows: seg.flows,
        first_via_new_gateway: seg.firstViaNew,
      });
    } catch (err) {
      this.writeErrors++;
      this.log.event(
        'error',
        { during: 'flight recorder', gateway: p.gateway, file, error: (err as Error).message },
        'warn',
      );
    }
  }

  private async listFiles(): Promise<{ name: string; stamp: string; gateway: string; size: number }[]> {
    let names: string[];
    try {
      names = await readdir(this.directory);
    } catch {
      return [];
    }
    const out: { name: string; stamp: string; gateway: string; size: number }[] = [];
    for (const name of names.sort()) {
      const m = FILE_RE.exec(name);
      if (!m) continue;
      try {
        const st = await stat(path.join(this.directory, name));
        const gw = m[2]!.includes('-') ? m[2]!.replace(/-/g, ':') : m[2]!;
        out.push({ name, stamp: m[1]!, gateway: normalizeSafe(gw), size: st.size });
      } catch {
        /* removed meanwhile */
      }
    }
    return out;
  }

  /** Remove the oldest files until both bounds hold; returns the removed names. */
  private async enforceBounds(): Promise<string[]> {
    const files = await this.listFiles();
    let total = files.reduce((n, f) => n + f.size, 0);
    const removed: string[] = [];
    while (files.length > 0 && (files.length > this.settings.max_files || total > this.settings.max_bytes)) {
      const f = files.shift()!;
      await rm(path.join(this.directory, f.name), { force: true });
      total -= f.size;
      removed.push(f.name);
      const full = path.join(this.directory, f.name);
      for (const [gw, info] of this.last) if (info.file === full) this.last.delete(gw);
    }
    this.filesCount = files.length;
    this.filesBytes = total;
    return removed;
  }

  /** The newest capture written for a gateway, if any. */
  lastCapture(gateway: string): CaptureFileInfo | null {
    return this.last.get(normalizeSafe(gateway)) ?? this.last.get(gateway) ?? null;
  }

  status(): FlightRecorderStatus {
    return {
      enabled: this.settings.enabled,
      directory: this.directory,
      ring_packets: this.ring.length - this.ringStart,
      ring_bytes: this.ringBytes,
      ring_segments: this.segments.length - this.segmentsStart,
      ring_segment_bytes: this.segmentBytes,
      files: this.filesCount,
      files_bytes: this.filesBytes,
      captures_written: this.written,
      write_errors: this.writeErrors,
    };
  }

  /** Write every pending capture now (with what the ring has), then stop recording. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return this.writing;
    for (const gw of [...this.pending.keys()]) void this.flush(gw);
    this.closed = true;
    await this.writing;
  }
}

function normalizeSafe(ip: string): string {
  try {
    return normalizeIp(ip);
  } catch {
    return ip;
  }
}

/** "198.18.1.10:40000" or "[2001:db8::1]:443" -> [normalized address, port]. */
function parseEndpoint(text: string): [string, number] | null {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  if (!m) return null;
  return [normalizeSafe(m[1]!), Number(m[2])];
}

function macAt(b: Buffer, off: number): string {
  return [...b.subarray(off, off + 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/**
 * Where a TCP segment's headers end in an Ethernet frame, its flow and its next hop's MAC; null
 * for anything else (VLAN-tagged, IPv6 extension headers, not TCP, cut too short).
 */
export function segmentHeaders(
  frame: Buffer,
): { headerBytes: number; origLen: number; flow: string; mac: string; seq: number; len: number } | null {
  if (frame.length < 14) return null;
  const type = frame.readUInt16BE(12);
  let l4: number;
  let src: string;
  let dst: string;
  let origLen: number;
  if (type === 0x0800) {
    if (frame.length < 34 || frame[23] !== 6) return null;
    l4 = 14 + (frame[14]! & 0x0f) * 4;
    src = [...frame.subarray(26, 30)].join('.');
    dst = [...frame.subarray(30, 34)].join('.');
    origLen = 14 + frame.readUInt16BE(16);
  } else if (type === 0x86dd) {
    if (frame.length < 54 || frame[20] !== 6) return null;
    l4 = 54;
    src = normalizeSafe(ipv6At(frame, 22));
    dst = normalizeSafe(ipv6At(frame, 38));
    origLen = 54 + frame.readUInt16BE(18);
  } else return null;
  if (frame.length < l4 + 20) return null;
  const tcpHeader = (frame[l4 + 12]! >> 4) * 4;
  const headerBytes = Math.min(frame.length, l4 + tcpHeader);
  const flow = `${src}|${frame.readUInt16BE(l4)}|${dst}|${frame.readUInt16BE(l4 + 2)}`;
  const len = Math.max(0, origLen - l4 - tcpHeader);
  const syn = (frame[l4 + 13]! & 0x02) !== 0;
  // A SYN counts as one byte of sequence space: sent again, it repeats as data does.
  return {
    headerBytes,
    origLen,
    flow,
    mac: macAt(frame, 0),
    seq: frame.readUInt32BE(l4 + 4),
    len: syn ? len + 1 : len,
  };
}

function ipv6At(b: Buffer, off: number): string {
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(b.readUInt16BE(off + i).toString(16));
  return words.join(':');
}

/**
 * The segments of the triggering flows (both directions, at most SEGMENTS_PER_FLOW each), and the
 * first segment of one of them sent after the dead verdict to a MAC other than the one its
 * segments went to before it: the first through the new next hop. The triggering flows are the
 * ones the trigger events named, and every other flow that sent a segment again before the verdict
 * towards the MAC those went to (the dead gateway's): a trigger names a few samples, and a
 * forwarded flow that joins after the verdict is named by no event at all.
 */
export function triggeringSegments(
  all: readonly RecordedSegment[],
  named: ReadonlySet<string>,
  deadAtMs: number,
): {
  segments: RecordedSegment[];
  firstViaNew: { ts_ms: number; flow: string; mac: string } | null;
  flows: string[];
} {
  const reverse = (k: string) => {
    const [a, ap, b, bp] = k.split('|');
    return `${b}|${bp}|${a}|${ap}`;
  };
  const flows = new Set(named);
  // The dead gateway's MAC: where the named flows' segments went before the verdict.
  const macs = new Map<string, number>();
  for (const s of all)
    if (s.tsMs <= deadAtMs && named.has(s.flow)) macs.set(s.mac, (macs.get(s.mac) ?? 0) + 1);
  const deadMac = [...macs].sort((a, b) => b[1] - a[1])[0]?.[0];
  if (deadMac) {
    const sent = new Set<string>();
    for (const s of all) {
      if (s.tsMs > deadAtMs || s.mac !== deadMac || s.len === 0 || flows.has(s.flow)) continue;
      if (flows.size >= SEGMENT_FLOWS) break;
      // Keyed by the first sequence number only: the kernel may collapse several segments into
      // one retransmission (tcp_retrans_collapse), which starts where the first one did.
      const k = `${s.flow}|${s.seq}`;
      if (sent.has(k)) flows.add(s.flow);
      else sent.add(k);
    }
  }
  const perFlow = new Map<string, number>();
  const before = new Map<string, string>();
  const segments: RecordedSegment[] = [];
  let firstViaNew: { ts_ms: number; flow: string; mac: string } | null = null;
  const ep = (ip: string, port: string) => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);
  const show = (key: string) => {
    const [a, ap, b, bp] = key.split('|');
    return `${ep(a!, ap!)} > ${ep(b!, bp!)}`;
  };
  for (const s of all) {
    const outbound = flows.has(s.flow);
    const key = outbound ? s.flow : flows.has(reverse(s.flow)) ? reverse(s.flow) : null;
    if (key === null) continue;
    const n = perFlow.get(key) ?? 0;
    if (n >= SEGMENTS_PER_FLOW) continue;
    perFlow.set(key, n + 1);
    segments.push(s);
    if (!outbound) continue;
    if (s.tsMs <= deadAtMs) before.set(key, s.mac);
    else if (!firstViaNew && before.has(key) && before.get(key) !== s.mac)
      firstViaNew = { ts_ms: s.tsMs, flow: show(key), mac: s.mac };
  }
  return { segments, firstViaNew, flows: [...perFlow.keys()].map(show) };
}
