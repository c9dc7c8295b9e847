// The classic libpcap savefile format (pcap-savefile(5); draft-ietf-opsawg-pcap): a 24-byte global
// header, then per packet a 16-byte record header and the captured bytes. This is what tcpdump -r,
// tshark and Wireshark read. We write link type 1 (LINKTYPE_ETHERNET, DLT_EN10MB) in this host's
// byte order (the magic number tells readers which), with microsecond timestamps by default or
// nanosecond ones (magic 0xa1b23c4d) on request.
//
// PcapFileWriter writes each record with one write(2) of header + data, so the file is a valid
// savefile after every packet: a capture stopped by SIGTERM, or even SIGKILL between two packets,
// leaves a file tcpdump reads to the last whole packet.
import * as fs from 'node:fs';
import { IpdeadgateError, systemError } from '../../errors';

/** Magic numbers (pcap-savefile(5)): microsecond and nanosecond timestamp resolution. */
export const PCAP_MAGIC_MICROS = 0xa1b2c3d4;
export const PCAP_MAGIC_NANOS = 0xa1b23c4d;
export const PCAP_VERSION_MAJOR = 2;
export const PCAP_VERSION_MINOR = 4;
/** LINKTYPE_ETHERNET (tcpdump.org/linktypes.html): DLT_EN10MB. */
export const LINKTYPE_ETHERNET = 1;
export const PCAP_GLOBAL_HEADER_LEN = 24;
export const PCAP_RECORD_HEADER_LEN = 16;
/** Our captures never hold more than this per packet (libpcap's snaplen in cap is 65535). */
export const DEFAULT_SNAPLEN = 65535;

export type TimestampResolution = 'micro' | 'nano';

export interface PcapPacket {
  /** Wall-clock time in milliseconds since the epoch, fractional (µs resolution or better). */
  tsMs: number;
  /** The captured bytes (an Ethernet frame). */
  data: Uint8Array;
  /** The frame's length on the wire, if larger than `data` (a truncated capture); default data.length. */
  origLen?: number;
}

export interface PcapHeaderOptions {
  resolution?: TimestampResolution;
  snaplen?: number;
  linktype?: number;
}

/** The 24-byte global header. */
export function encodePcapHeader(opts: PcapHeaderOptions = {}): Buffer {
  const b = Buffer.alloc(PCAP_GLOBAL_HEADER_LEN);
  b.writeUInt32LE(opts.resolution === 'nano' ? PCAP_MAGIC_NANOS : PCAP_MAGIC_MICROS, 0);
  b.writeUInt16LE(PCAP_VERSION_MAJOR, 4);
  b.writeUInt16LE(PCAP_VERSION_MINOR, 6);
  b.writeInt32LE(0, 8); // thiszone: timestamps are UTC
  b.writeUInt32LE(0, 12); // sigfigs: always 0
  b.writeUInt32LE(opts.snaplen ?? DEFAULT_SNAPLEN, 16);
  b.writeUInt32LE(opts.linktype ?? LINKTYPE_ETHERNET, 20);
  return b;
}

/** Split an epoch-milliseconds time into whole seconds and the fraction in µs or ns. */
export function splitTimestamp(tsMs: number, resolution: TimestampResolution = 'micro'): [number, number] {
  if (!Number.isFinite(tsMs) || tsMs < 0)
    throw new RangeError(`packet timestamp ${tsMs} is not a time since the epoch`);
  const perSecond = resolution === 'nano' ? 1e9 : 1e6;
  let sec = Math.floor(tsMs / 1000);
  let frac = Math.round((tsMs - sec * 1000) * (perSecond / 1000));
  if (frac >= perSecond) {
    sec += 1;
    frac -= perSecond;
  }
  return [sec, frac];
}

/** One record: 16-byte header and the data, in one buffer. */
export function encodePcapRecord(
  p: PcapPacket,
  resolution: TimestampResolution = 'micro',
  snaplen = DEFAULT_SNAPLEN,
): Buffer {
  const incl = Math.min(p.data.length, snaplen);
  const orig = Math.max(p.origLen ?? p.data.length, incl);
  const [sec, frac] = splitTimestamp(p.tsMs, resolution);
  const b = Buffer.alloc(PCAP_RECORD_HEADER_LEN + incl);
  b.writeUInt32LE(sec >>> 0, 0);
  b.writeUInt32LE(frac, 4);
  b.writeUInt32LE(incl, 8);
  b.writeUInt32LE(orig, 12);
  Buffer.from(p.data.buffer, p.data.byteOffset, incl).copy(b, PCAP_RECORD_HEADER_LEN);
  return b;
}

/** A whole savefile in memory (the flight recorder writes these atomically). */
export function encodePcap(packets: Iterable<PcapPacket>, opts: PcapHeaderOptions = {}): Buffer {
  const parts = [encodePcapHeader(opts)];
  for (const p of packets) parts.push(encodePcapRecord(p, opts.resolution, opts.snaplen));
  return Buffer.concat(parts);
}

export interface ParsedPcap {
  resolution: TimestampResolution;
  snaplen: number;
  linktype: number;
  packets: { tsMs: number; data: Buffer; origLen: number }[];
  /** Bytes after the last whole record (a writer killed mid-record); 0 for a clean file. */
  trailingBytes: number;
}

/** Read a savefile (either byte order, µs or ns); throws for anything that is not one. */
export function parsePcap(buf: Buffer): ParsedPcap {
  if (buf.length < PCAP_GLOBAL_HEADER_LEN)
    throw new IpdeadgateError(
      'ERR_PCAP_FORMAT',
      `not a pcap file: ${buf.length} bytes, shorter than its header`,
    );
  const magicLE = buf.readUInt32LE(0);
  const magicBE = buf.readUInt32BE(0);
  let le: boolean;
  let resolution: TimestampResolution;
  if (magicLE === PCAP_MAGIC_MICROS || magicLE === PCAP_MAGIC_NANOS) {
    le = true;
    resolution = magicLE === PCAP_MAGIC_NANOS ? 'nano' : 'micro';
  } else if (magicBE === PCAP_MAGIC_MICROS || magicBE === PCAP_MAGIC_NANOS) {
    le = false;
    resolution = magicBE === PCAP_MAGIC_NANOS ? 'nano' : 'micro';
  } else throw new IpdeadgateError('ERR_PCAP_FORMAT', `not a pcap file: magic 0x${magicBE.toString(16)}`);
  const u16 = (o: number) => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  if (u16(4) !== PCAP_VERSION_MAJOR)
    throw new IpdeadgateError('ERR_PCAP_FORMAT', `unsupported pcap version ${u16(4)}.${u16(6)}`);
  const snaplen = u32(16);
  const linktype = u32(20) & 0x0fffffff; // the top bits may carry FCS information
  const packets: ParsedPcap['packets'] = [];
  const perSecond = resolution === 'nano' ? 1e9 : 1e6;
  let o = PCAP_GLOBAL_HEADER_LEN;
  while (buf.length - o >= PCAP_RECORD_HEADER_LEN) {
    const incl = u32(o + 8);
    if (buf.length - o - PCAP_RECORD_HEADER_LEN < incl) break;
    const tsMs = u32(o) * 1000 + (u32(o + 4) / perSecond) * 1000;
    packets.push({
      tsMs,
      origLen: u32(o + 12),
      data: Buffer.from(buf.subarray(o + PCAP_RECORD_HEADER_LEN, o + PCAP_RECORD_HEADER_LEN + incl)),
    });
    o += PCAP_RECORD_HEADER_LEN + incl;
  }
  return { resolution, snaplen, linktype, packets, trailingBytes: buf.length - o };
}

/**
 * A savefile being written. `open` creates (or truncates) the file and writes the global header;
 * each `write` appends one whole record; `close` fsyncs and closes (idempotent).
 */
export class PcapFileWriter {
  packets = 0;
  bytes = 0;
  private fd: number | null;

  private constructor(
    readonly path: string,
    fd: number,
    private readonly resolution: TimestampResolution,
    private readonly snaplen: number,
  ) {
    this.fd = fd;
  }

  /**
   * Create the file; an existing one is refused unless `overwrite`, and a symlink is never
   * followed (root writing where a link points could clobber any file). Throws a SystemError
   * naming the file (EEXIST, ELOOP, ENOENT, EACCES, EROFS...).
   */
  static open(path: string, opts: PcapHeaderOptions & { overwrite?: boolean } = {}): PcapFileWriter {
    const c = fs.constants;
    const flags = c.O_WRONLY | c.O_CREAT | c.O_NOFOLLOW | (opts.overwrite ? c.O_TRUNC : c.O_EXCL);
    let fd: number;
    try {
      fd = fs.openSync(path, flags, 0o640);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why =
        code === 'EEXIST'
          ? `cannot write the capture file ${path}: it exists (pass --force to overwrite it)`
          : code === 'ELOOP'
            ? `cannot write the capture file ${path}: it is a symlink, which is never followed`
            : `cannot write the capture file ${path}`;
      throw systemError(err, 'open', why);
    }
    const w = new PcapFileWriter(path, fd, opts.resolution ?? 'micro', opts.snaplen ?? DEFAULT_SNAPLEN);
    w.append(encodePcapHeader(opts));
    return w;
  }

  get isClosed(): boolean {
    return this.fd === null;
  }

  write(p: PcapPacket): void {
    if (this.fd === null) throw new IpdeadgateError('ERR_CLOSED', `the capture file ${this.path} is closed`);
    this.append(encodePcapRecord(p, this.resolution, this.snaplen));
    this.packets++;
  }

  private append(b: Buffer): void {
    try {
      let done = 0;
      while (done < b.length) done += fs.writeSync(this.fd!, b, done, b.length - done);
    } catch (err) {
      throw systemError(err, 'write', `writing the capture file ${this.path}`);
    }
    this.bytes += b.length;
  }

  close(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
