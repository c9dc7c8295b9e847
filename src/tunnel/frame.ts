// The yamux wire format (hashicorp/yamux spec.md, "Framing"): a 12-byte big-endian header
//   Version(8) Type(8) Flags(16) StreamID(32) Length(32)
// followed, for Data frames only, by Length bytes of payload. For the other types Length means:
// WindowUpdate -> window delta, Ping -> opaque value echoed back, GoAway -> error code.
// Stream 0 is the session (Ping and GoAway); the dialer (client) uses odd stream IDs, the listener
// (server) even ones.
import { IpdeadgateError } from '../errors';

export const YAMUX_VERSION = 0;
export const HEADER_SIZE = 12;

/** spec.md "Type Field". */
export enum FrameType {
  Data = 0,
  WindowUpdate = 1,
  Ping = 2,
  GoAway = 3,
}

/** spec.md "Flag Field". */
export const Flag = {
  SYN: 0x1,
  ACK: 0x2,
  FIN: 0x4,
  RST: 0x8,
} as const;
const KNOWN_FLAGS = Flag.SYN | Flag.ACK | Flag.FIN | Flag.RST;

/** spec.md "Session termination": the GoAway length field. */
export enum GoAwayCode {
  Normal = 0,
  ProtocolError = 1,
  InternalError = 2,
}

/** The yamux initial stream window every side assumes before any window update (spec.md "Flow Control"). */
export const INITIAL_WINDOW = 256 * 1024;

export interface Frame {
  type: FrameType;
  flags: number;
  streamId: number;
  /** Data: payload length; WindowUpdate: delta; Ping: opaque; GoAway: code. */
  length: number;
  /** Data frames only (may be empty). */
  data?: Buffer;
}

/** Codes of protocol errors: stable, each closes that link only (go-away ProtocolError). */
export type ProtocolErrorCode =
  | 'ERR_YAMUX_VERSION'
  | 'ERR_YAMUX_TYPE'
  | 'ERR_YAMUX_FLAGS'
  | 'ERR_YAMUX_FRAME_TOO_LARGE'
  | 'ERR_YAMUX_SESSION_FRAME'
  | 'ERR_YAMUX_STREAM_ID'
  | 'ERR_YAMUX_WINDOW'
  | 'ERR_YAMUX_DECODER_FAILED';

/** A peer broke the yamux protocol: the link is torn down with go-away ProtocolError. */
export class ProtocolError extends IpdeadgateError {
  constructor(
    code: ProtocolErrorCode,
    message: string,
    readonly goAway: GoAwayCode = GoAwayCode.ProtocolError,
  ) {
    super(code, message);
  }
}

/** Encode a frame header (and payload for Data) into one buffer. */
export function encodeFrame(f: Frame): Buffer {
  const payload = f.type === FrameType.Data ? (f.data ?? EMPTY) : EMPTY;
  const length = f.type === FrameType.Data ? payload.length : f.length;
  const buf = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  encodeHeaderInto(buf, 0, f.type, f.flags, f.streamId, length);
  if (payload.length) payload.copy(buf, HEADER_SIZE);
  return buf;
}

/** Encode only a header (the payload is written separately, avoiding a copy of large data). */
export function encodeHeader(type: FrameType, flags: number, streamId: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_SIZE);
  encodeHeaderInto(buf, 0, type, flags, streamId, length);
  return buf;
}

function encodeHeaderInto(
  buf: Buffer,
  at: number,
  type: FrameType,
  flags: number,
  streamId: number,
  length: number,
): void {
  if (!Number.isInteger(streamId) || streamId < 0 || streamId > 0xffffffff)
    throw new RangeError(`stream id ${streamId} is outside 0..2^32-1`);
  if (!Number.isInteger(length) || length < 0 || length > 0xffffffff)
    throw new RangeError(`frame length ${length} is outside 0..2^32-1`);
  if ((flags & ~0xffff) !== 0) throw new RangeError(`flags 0x${flags.toString(16)} do not fit 16 bits`);
  buf.writeUInt8(YAMUX_VERSION, at);
  buf.writeUInt8(type, at + 1);
  buf.writeUInt16BE(flags, at + 2);
  buf.writeUInt32BE(streamId, at + 4);
  buf.writeUInt32BE(length, at + 8);
}

const EMPTY = Buffer.alloc(0);

export interface DecoderOptions {
  /** Largest Data payload accepted; a larger one is a protocol error (default 1 MiB). */
  maxFrameSize?: number;
  /**
   * Deliver a data frame's payload in pieces as its bytes arrive instead of reassembling it
   * (no copy, no wait for the whole frame). SYN/ACK stay only on the first piece, FIN/RST only on
   * the last; `length` is the piece's length.
   */
  streamData?: boolean;
}

/**
 * Incremental decoder over a byte stream. push() takes any chunking of the input and returns the
 * complete frames it finished; a malformed or oversized frame makes push() return the ProtocolError
 * in `error` (never throws), after which the decoder is dead: the link must go.
 */
export class FrameDecoder {
  readonly maxFrameSize: number;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private header: { type: FrameType; flags: number; streamId: number; length: number } | undefined;
  private failed: ProtocolError | undefined;
  private readonly streamData: boolean;
  /** Streaming mode: payload bytes of the current data frame still to come, and whether a piece went out. */
  private remaining = 0;
  private pieceSent = false;

  constructor(opts: DecoderOptions = {}) {
    this.maxFrameSize = opts.maxFrameSize ?? 1024 * 1024;
    this.streamData = opts.streamData ?? false;
  }

  /** Bytes received but not yet part of a complete frame. */
  get pendingBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): { frames: Frame[]; error?: ProtocolError } {
    const frames: Frame[] = [];
    const error = this.decode(chunk, (f) => void frames.push(f));
    return error ? { frames, error } : { frames };
  }

  /**
   * Decode `chunk`, handing each frame to `each` as it completes (no array of a read's frames: a
   * read full of 12-byte frames would make one large enough for V8's large-object space, which
   * only a full collection frees). Stops early when `each` returns true; returns the
   * ProtocolError that kills the decoder, if any.
   */
  decode(chunk: Buffer, each: (f: Frame) => boolean | void): ProtocolError | undefined {
    if (this.failed) return this.failed;
    if (chunk.length) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    try {
      for (;;) {
        if (!this.header) {
          if (this.buffered < HEADER_SIZE) break;
          const h = this.take(HEADER_SIZE);
          this.header = parseHeader(h, this.maxFrameSize);
        }
        const h = this.header;
        if (h.type !== FrameType.Data) {
          this.header = undefined;
          if (each({ type: h.type, flags: h.flags, streamId: h.streamId, length: h.length })) break;
          continue;
        }
        if (this.streamData && h.length > 0) {
          if (!this.pieceSent) this.remaining = h.length;
          if (this.buffered === 0) break;
          const n = Math.min(this.remaining, this.chunks[0]!.length);
          const data = this.take(n);
          this.remaining -= n;
          const last = this.remaining === 0;
          let flags = h.flags;
          if (this.pieceSent) flags &= ~(Flag.SYN | Flag.ACK);
          if (!last) flags &= ~(Flag.FIN | Flag.RST);
          this.pieceSent = !last;
          if (last) this.header = undefined;
          if (each({ type: h.type, flags, streamId: h.streamId, length: n, data })) break;
          continue;
        }
        if (this.buffered < h.length) break;
        const data = h.length === 0 ? EMPTY : this.take(h.length);
        this.header = undefined;
        if (each({ type: h.type, flags: h.flags, streamId: h.streamId, length: h.length, data })) break;
      }
    } catch (err) {
      this.failed =
        err instanceof ProtocolError
          ? err
          : new ProtocolError('ERR_YAMUX_DECODER_FAILED', `yamux decoder failed: ${(err as Error).message}`);
      this.chunks = [];
      this.buffered = 0;
      return this.failed;
    }
    return undefined;
  }

  /** Remove n bytes from the front of the buffered chunks (copying only when a frame spans chunks). */
  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length === n) {
      this.chunks.shift();
      this.buffered -= n;
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    return out;
  }
}

/** Validate a header per spec.md; the rules a peer can break are protocol errors. */
export function parseHeader(
  h: Buffer,
  maxFrameSize: number,
): { type: FrameType; flags: number; streamId: number; length: number } {
  const version = h.readUInt8(0);
  const type = h.readUInt8(1);
  const flags = h.readUInt16BE(2);
  const streamId = h.readUInt32BE(4);
  const length = h.readUInt32BE(8);
  if (version !== YAMUX_VERSION)
    throw new ProtocolError('ERR_YAMUX_VERSION', `yamux version ${version} is not supported (only 0)`);
  if (type > FrameType.GoAway) throw new ProtocolError('ERR_YAMUX_TYPE', `unknown yamux frame type ${type}`);
  if ((flags & ~KNOWN_FLAGS) !== 0)
    throw new ProtocolError(
      'ERR_YAMUX_FLAGS',
      `unknown yamux flags 0x${flags.toString(16)} on a ${FrameType[type]} frame`,
    );
  if ((type === FrameType.Ping || type === FrameType.GoAway) && streamId !== 0)
    throw new ProtocolError(
      'ERR_YAMUX_SESSION_FRAME',
      `a ${FrameType[type]} frame must use stream 0, not ${streamId}`,
    );
  if ((type === FrameType.Data || type === FrameType.WindowUpdate) && streamId === 0)
    throw new ProtocolError('ERR_YAMUX_STREAM_ID', `a ${FrameType[type]} frame on stream 0 (the session)`);
  if (type === FrameType.Data && length > maxFrameSize)
    throw new ProtocolError(
      'ERR_YAMUX_FRAME_TOO_LARGE',
      `a data frame of ${length} bytes exceeds the maximum of ${maxFrameSize}`,
    );
  return { type: type as FrameType, flags, streamId, length };
}
