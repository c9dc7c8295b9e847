// A yamux session (hashicorp/yamux spec.md; session.go in the reference, the stream in its own file
// here too, see muxstream.ts) written by hand as the core of the tunnel, not taken from npm: the
// close-leak guarantees (IY55176) live in exactly the details libraries get wrong or hide: what
// happens after one FIN (close_timeout), a heartbeat that counts any received frame but a ping as life, a
// receive window that grows past yamux's fixed 256 KiB on long links, RST on every abnormal end, a
// stream-level RST (not the link) for a bad SYN, and a protocol error that costs one link and never
// the process.
//
// The session's life is a handler table per (state, event), like src/tunnel/sessionlife.ts:
//   open             streams open both ways.
//   going_away       we sent go-away: we open no stream and refuse the peer's SYNs; ours finish.
//   peer_going_away  the peer sent go-away: we open no stream; the peer's SYNs are still taken.
//   both_going_away  both sent it.
//   closed           terminal: every stream aborted, the transport ended (destroyed after lingerMs).
// Events: go_away (we send it), peer_go_away, close. Bounds: the going-away states last until the
// streams finish or the link ends (the heartbeat bounds a silent peer: heartbeat x misses); open
// has none in time beyond the heartbeat; closed's transport is destroyed lingerMs after it ends.
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { IpdeadgateError } from '../errors';
import { systemClock, type Clock, type Timer } from '../util/clock';
import {
  encodeHeader,
  Flag,
  FrameDecoder,
  FrameType,
  GoAwayCode,
  HEADER_SIZE,
  ProtocolError,
  type Frame,
} from './frame';
import { MuxStream, type StreamHost } from './muxstream';

export type MuxState = 'open' | 'going_away' | 'peer_going_away' | 'both_going_away' | 'closed';
type MuxEvent =
  { type: 'go_away'; code: GoAwayCode } | { type: 'peer_go_away' } | { type: 'close'; err?: Error };
type MuxHandler = (m: MuxSession, ev: MuxEvent) => void;

const stay: MuxHandler = () => undefined;
const sendGoAwayThen =
  (next: MuxState): MuxHandler =>
  (m, ev) => {
    if (ev.type === 'go_away') m.sendGoAway(ev.code);
    m.enter(next);
  };
const to =
  (next: MuxState): MuxHandler =>
  (m) =>
    m.enter(next);
/** Closing before we said go-away: say it first (why, from the error), if the transport can carry it. */
const goAwayAndClose: MuxHandler = (m, ev) => {
  if (ev.type === 'close') m.sayGoingAwayIfPossible(ev.err);
  m.enter('closed');
};

/** A row per state, a column per event. */
const MUX_HANDLERS: { [S in MuxState]: { [E in MuxEvent['type']]: MuxHandler } } = {
  open: { go_away: sendGoAwayThen('going_away'), peer_go_away: to('peer_going_away'), close: goAwayAndClose },
  going_away: { go_away: stay, peer_go_away: to('both_going_away'), close: to('closed') },
  peer_going_away: { go_away: sendGoAwayThen('both_going_away'), peer_go_away: stay, close: goAwayAndClose },
  both_going_away: { go_away: stay, peer_go_away: stay, close: to('closed') },
  closed: { go_away: stay, peer_go_away: stay, close: stay },
};

export interface MuxOptions {
  /** 'client' (the dialer of the link) opens odd stream IDs, 'server' even ones (spec.md "StreamID Field"). */
  role: 'client' | 'server';
  clock?: Clock;
  /** Receive window a stream starts with, announced with SYN/ACK (default 1 MiB; yamux assumes 256 KiB). */
  initialWindow?: number;
  /** Largest receive window a stream grows to when its consumer keeps up (default 16 MiB). */
  maxWindow?: number;
  /**
   * Largest data frame accepted from the peer (default: maxWindow). hashicorp/yamux and its ports
   * send a frame as large as the window allows, so a smaller limit breaks interop; a frame past
   * the stream's receive window is refused anyway (ERR_YAMUX_WINDOW).
   */
  maxFrameSize?: number;
  /** Largest data frame we send (default 64 KiB). */
  sendFrameSize?: number;
  /** A stream that is half-closed (FIN either way) and idle this long is reset (0: never). */
  closeTimeoutMs?: number;
  /** Ping every this often (0: no heartbeat). */
  heartbeatMs?: number;
  /** Close the session after this many heartbeat intervals with the ping unanswered and nothing received. */
  heartbeatMisses?: number;
  /** Streams the peer may have open at once before a new SYN is reset. */
  maxStreams?: number;
  /** How long close() waits for the transport to flush before destroying it. */
  lingerMs?: number;
  /** Streams the peer opens keep yamux's 256 KiB window until MuxStream.openWindow() (default false). */
  holdInboundWindow?: boolean;
  /**
   * Close the session when bytes wait on the transport and none has left for this long (0: never;
   * hashicorp/yamux's ConnectionWriteTimeout): a peer that stops reading costs a link, not memory.
   */
  writeTimeoutMs?: number;
  /** Let native relays take bridged streams when the transport can (default true). */
  nativeRelay?: boolean;
  /**
   * Most bytes that may wait on the transport (default 16 MiB). Reading from the peer stops at a
   * quarter of it (only frames we must answer can grow the queue past the streams' own threshold:
   * a peer that sends without reading); past it, Go Away and the session closes.
   */
  maxUnsent?: number;
}

/** A transport that takes frames past the Writable machinery, batching them itself (src/sys/tlslink.ts). */
export interface FrameSink {
  /** Queue a frame; false once `highWater` bytes wait (then 'drain' on the transport). */
  queueFrame(buf: Buffer, highWater: number): boolean;
  /** Bytes queued and not yet taken by the kernel. */
  readonly queuedBytes?: number;
  /** Bytes the kernel took so far (relays write on the transport too). */
  readonly sentBytes?: number | undefined;
  /** Have the transport split its plaintext into frames for native relays (src/sys/tlslink.ts). */
  trackFrames?(): boolean;
  /** The addon's id of the link, while it is open. */
  readonly linkId?: number | undefined;
  /** Queued frames go to the addon now. */
  flushFrames?(): void;
}

/** Pings from the peer answered per turn of the event loop; more in the same turn go unanswered. */
const PING_ANSWERS_PER_TURN = 8;

/** Counters a session keeps for status. */
export interface MuxStats {
  bytesIn: number;
  bytesOut: number;
  streamsOpen: number;
  closeTimeouts: number;
  rttMs: number | undefined;
}

/**
 * Bytes queued on the transport before streams wait for its 'drain'. 'drain' comes only once the
 * queue is empty, so a small threshold leaves the link idle between refills: 1 MiB measured 15-25 %
 * less CPU per GB than 256 KiB in the bench lab. Per link, not per stream; control frames queue
 * behind it too (1 MiB is 80 ms at 100 Mbit/s, small against heartbeat x misses).
 */
const SESSION_HIGH_WATER = 1024 * 1024;

/**
 * One yamux session over a byte transport (a TLS socket in production, a TCP socket or an in-memory
 * pair in tests). Events: 'stream' (MuxStream), 'goaway' (code), 'close' (Error | undefined).
 */
export class MuxSession extends EventEmitter implements StreamHost {
  readonly clock: Clock;
  readonly initialWindow: number;
  readonly maxWindow: number;
  readonly sendFrameSize: number;
  readonly closeTimeoutMs: number;
  private readonly decoder: FrameDecoder;
  private readonly streams = new Map<number, MuxStream>();
  private readonly drainWaiters = new Set<MuxStream>();
  private nextId: number;
  private readonly remoteParity: number;
  /** SYNs refused with a stream RST (our parity, ID 0, or a duplicate of a live stream). */
  refusedSyns = 0;
  private nextPing = 1;
  private readonly pings = new Map<
    number,
    { sentAt: number; resolve: (rtt: number) => void; timer: Timer | undefined }
  >();
  private heartbeatTimer: Timer | undefined;
  private heartbeatOutstanding = false;
  /** Frames received since the last heartbeat tick, the peer's pings not counted: they are no answer. */
  private framesSinceTick = 0;
  /** Ping values to answer at the end of this turn (coalesced: a flood gets a few answers). */
  private pingAnswers: number[] = [];
  /** Pings from the peer left unanswered because more came in one turn. */
  pingsUnanswered = 0;
  /** Reading from the transport is paused: too much waits to be sent. */
  private readPaused = false;
  private stallTimer: Timer | undefined;
  /** Bytes handed to the kernel, as last seen by the stall check, and when that last grew. */
  private sentSeen = 0;
  private sentGrewAt = 0;
  private readonly maxUnsent: number;
  private unsentOver = false;
  private misses = 0;
  private state: MuxState = 'open';
  /** Why the session closed (the 'close' event and the streams' abort carry it). */
  private closeError: Error | undefined;
  writable = true;
  private corked = false;
  /** A transport that batches frames itself (the link's TlsLinkSocket): no Writable machinery per frame. */
  private readonly sink: FrameSink | undefined;
  /** The transport splits its plaintext into frames: streams can be relayed natively. */
  private readonly framesTracked: boolean;
  rttMs: number | undefined;
  bytesIn = 0;
  bytesOut = 0;
  closeTimeouts = 0;

  constructor(
    readonly transport: Duplex,
    private readonly opts: MuxOptions,
  ) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.initialWindow = opts.initialWindow ?? 1024 * 1024;
    this.maxWindow = Math.max(this.initialWindow, opts.maxWindow ?? 16 * 1024 * 1024);
    this.sendFrameSize = opts.sendFrameSize ?? 64 * 1024;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? 60_000;
    this.decoder = new FrameDecoder({ maxFrameSize: opts.maxFrameSize ?? this.maxWindow, streamData: true });
    this.nextId = opts.role === 'client' ? 1 : 2;
    const sink = transport as Partial<FrameSink> & Duplex;
    this.sink = typeof sink.queueFrame === 'function' ? (sink as FrameSink & Duplex) : undefined;
    this.remoteParity = opts.role === 'client' ? 0 : 1;
    this.maxUnsent = opts.maxUnsent ?? 16 * 1024 * 1024;
    // Before the first byte is read: the addon must see every frame from the start.
    this.framesTracked = opts.nativeRelay !== false && (this.sink?.trackFrames?.() ?? false);
    transport.on('data', (chunk: Buffer) => this.onData(chunk));
    transport.on('drain', () => this.onDrain());
    transport.once('end', () =>
      this.close(new IpdeadgateError('ERR_TUNNEL_LINK_CLOSED', 'the link was closed by the peer')),
    );
    transport.once('close', () =>
      this.close(new IpdeadgateError('ERR_TUNNEL_LINK_CLOSED', 'the link closed')),
    );
    transport.on('error', (err: Error) => this.close(err));
    if (opts.heartbeatMs && opts.heartbeatMs > 0) this.scheduleHeartbeat();
    if (opts.writeTimeoutMs && opts.writeTimeoutMs > 0) this.scheduleStallCheck(opts.writeTimeoutMs);
  }

  /** What the peer may open keeps its window small until its consumer is attached (MuxStream). */
  get holdInboundWindow(): boolean {
    return !!this.opts.holdInboundWindow;
  }

  /** Reading from the peer is paused: too much waits to be sent to it (maxUnsent / 4). */
  get readingPaused(): boolean {
    return this.readPaused;
  }

  /** Bytes waiting on the transport: queued frames and what the kernel has not taken. */
  get unsentBytes(): number {
    return this.sink?.queuedBytes ?? this.transport.writableLength;
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  /**
   * StreamHost: the addon's link, when this session's streams can be relayed natively now: not
   * while frames the addon handed up wait unread in the transport or are being handled (one of
   * them may be the stream's, and after the handover it would be dropped).
   */
  get relayLink(): number | undefined {
    if (!this.framesTracked || this.decoding || this.state === 'closed' || this.transport.readableLength > 0)
      return undefined;
    return this.sink?.linkId;
  }

  /** StreamHost */
  flushFrames(): void {
    this.sink?.flushFrames?.();
  }

  /** StreamHost: a relayed stream's peer broke the protocol. */
  protocolError(err: ProtocolError): void {
    this.close(err);
  }

  /** Where the session is in its life (the table above). */
  get muxState(): MuxState {
    return this.state;
  }

  private fire(ev: MuxEvent): void {
    MUX_HANDLERS[this.state][ev.type](this, ev);
  }

  /** We said go-away (we refuse the peer's SYNs from then on). */
  private get saidGoAway(): boolean {
    return this.state === 'going_away' || this.state === 'both_going_away';
  }

  stats(): MuxStats {
    return {
      bytesIn: this.bytesIn + this.relayedBytes('bytesIn'),
      bytesOut: this.bytesOut + this.relayedBytes('bytesOut'),
      streamsOpen: this.streams.size,
      closeTimeouts: this.closeTimeouts,
      rttMs: this.rttMs,
    };
  }

  get streamCount(): number {
    return this.streams.size;
  }

  /** Open a stream; `synData` (e.g. the service header) travels in the SYN frame itself. */
  open(synData?: Buffer): MuxStream {
    if (this.state === 'closed')
      throw new IpdeadgateError('ERR_TUNNEL_LINK_CLOSED', 'cannot open a stream: the link is closed');
    if (this.state !== 'open')
      throw new IpdeadgateError('ERR_TUNNEL_GOAWAY', 'cannot open a stream: the link is going away');
    if (this.nextId > 0xffffffff)
      throw new IpdeadgateError('ERR_TUNNEL_IDS_EXHAUSTED', 'stream IDs exhausted on this link; reconnect');
    const s = new MuxStream(this.nextId, this, true);
    this.nextId += 2;
    this.streams.set(s.id, s);
    s.sendOpen(synData);
    return s;
  }

  /** Measure the round trip with a yamux ping; rejects on timeout or when the session closes. */
  ping(timeoutMs = 10_000): Promise<number> {
    if (this.state === 'closed')
      return Promise.reject(new IpdeadgateError('ERR_TUNNEL_LINK_CLOSED', 'the link is closed'));
    const id = this.nextPing;
    this.nextPing = (this.nextPing % 0xffffffff) + 1;
    return new Promise<number>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.pings.delete(id);
        reject(new IpdeadgateError('ETIMEDOUT', `yamux ping unanswered after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pings.set(id, { sentAt: this.clock.now(), resolve, timer });
      this.writeFrame(encodeHeader(FrameType.Ping, Flag.SYN, 0, id));
    });
  }

  /** Send go-away: no new streams either way; existing ones finish. */
  goAway(code: GoAwayCode = GoAwayCode.Normal): void {
    this.fire({ type: 'go_away', code });
  }

  /** Close the session: every stream dies, the transport is ended then destroyed. Idempotent. */
  close(err?: Error): void {
    if (this.state !== 'closed') this.closeError = err;
    this.fire({ type: 'close', err });
  }

  /** @internal From the table: the go-away frame. */
  sendGoAway(code: GoAwayCode): void {
    this.writeFrame(encodeHeader(FrameType.GoAway, 0, 0, code));
  }

  /** @internal From the table: closing without having said go-away: say why, if the transport can. */
  sayGoingAwayIfPossible(err: Error | undefined): void {
    if (this.transport.destroyed || !this.transport.writable) return;
    this.sendGoAway(
      err instanceof ProtocolError ? err.goAway : err ? GoAwayCode.InternalError : GoAwayCode.Normal,
    );
  }

  /** @internal From the table: enter a state; closed's entry ends everything. */
  enter(next: MuxState): void {
    this.state = next;
    if (next === 'closed') this.closeEverything();
  }

  private closeEverything(): void {
    const err = this.closeError;
    this.heartbeatTimer?.cancel();
    this.stallTimer?.cancel();
    this.pingAnswers = [];
    for (const [, p] of this.pings) p.timer?.cancel();
    this.pings.clear();
    const abortErr = err ?? new IpdeadgateError('ERR_TUNNEL_LINK_CLOSED', 'the link was closed');
    for (const s of [...this.streams.values()]) s.abort(abortErr);
    this.streams.clear();
    this.drainWaiters.clear();
    if (!this.transport.destroyed) {
      this.transport.end();
      const t = this.transport;
      this.clock.setTimeout(() => t.destroy(), this.opts.lingerMs ?? 2000);
    }
    this.emit('close', err);
  }

  /** @internal */
  writeFrame(buf: Buffer): void {
    if (this.state === 'closed' || this.transport.destroyed || !this.transport.writable) return;
    this.bytesOut += buf.length;
    if (this.sink) {
      if (!this.sink.queueFrame(buf, SESSION_HIGH_WATER)) this.writable = false;
      this.checkUnsent();
      return;
    }
    if (!this.corked) {
      // Frames written in one turn of the event loop leave in one writev (one TLS write), in the
      // loop's check phase: with several streams, the frames of every socket read handled in one
      // poll phase share a TLS write and a system call, instead of one per read (and far fewer
      // than a write per 12-byte header).
      this.corked = true;
      this.transport.cork();
      setImmediate(this.uncorkTransport);
    }
    // Streams stop at the session's own threshold rather than the transport's (16 KiB for a TLS
    // socket): pausing every stream after each 64 KiB frame costs a drain round per frame.
    if (!this.transport.write(buf) && this.transport.writableLength >= SESSION_HIGH_WATER)
      this.writable = false;
    this.checkUnsent();
  }

  /**
   * Streams stop at SESSION_HIGH_WATER by themselves; only frames we must send whatever the queue
   * (window updates, ping answers, resets) grow it further, and only while the peer sends and does
   * not read. So reading stops at a quarter of maxUnsent, until the transport drains; past
   * maxUnsent the peer has had its chance: Go Away and close.
   */
  private checkUnsent(): void {
    const unsent = this.unsentBytes;
    if (unsent > this.maxUnsent) {
      if (this.unsentOver) return; // the Go Away written while closing comes back here
      this.unsentOver = true;
      return this.close(
        new IpdeadgateError(
          'ERR_TUNNEL_UNSENT',
          `${unsent} bytes wait to be sent on the link (more than ${this.maxUnsent}): the peer does not read`,
        ),
      );
    }
    if (!this.readPaused && unsent > this.maxUnsent / 4) {
      this.readPaused = true;
      this.writable = false; // so that the transport's 'drain' comes back to us
      this.transport.pause();
    }
  }

  /** Close the session when bytes wait and none has left for writeTimeoutMs. */
  private scheduleStallCheck(ms: number): void {
    this.sentGrewAt = this.clock.now();
    const check = (): void => {
      if (this.closed) return;
      const unsent = this.unsentBytes;
      // What the kernel took, when the transport counts it: relays send on it past bytesOut.
      const sent = this.sink?.sentBytes ?? this.bytesOut - unsent;
      const now = this.clock.now();
      if (unsent === 0 || sent > this.sentSeen) {
        this.sentSeen = Math.max(this.sentSeen, sent);
        this.sentGrewAt = now;
      } else if (now - this.sentGrewAt >= ms) {
        return this.close(
          new IpdeadgateError(
            'ERR_TUNNEL_WRITE_TIMEOUT',
            `${unsent} bytes waited ${Math.round(now - this.sentGrewAt)} ms on the link without a byte leaving (write_timeout)`,
          ),
        );
      }
      this.stallTimer = this.clock.setTimeout(check, Math.max(50, ms / 4));
    };
    this.stallTimer = this.clock.setTimeout(check, Math.max(50, ms / 4));
  }

  private readonly uncorkTransport = (): void => {
    this.corked = false;
    this.transport.uncork();
  };

  /** @internal */
  waitForDrain(s: MuxStream): void {
    this.drainWaiters.add(s);
  }

  /** Payload bytes natively relayed streams moved (they bypass bytesIn and bytesOut). */
  private relayedBytes(which: 'bytesIn' | 'bytesOut'): number {
    let n = this.relayedDone[which];
    for (const s of this.streams.values()) if (s.relayCounters) n += s.relayCounters.counters()[which];
    return n;
  }

  private readonly relayedDone = { bytesIn: 0, bytesOut: 0 };

  /** @internal */
  forget(s: MuxStream): void {
    if (s.relayCounters && this.streams.get(s.id) === s) {
      const c = s.relayCounters.counters();
      this.relayedDone.bytesIn += c.bytesIn;
      this.relayedDone.bytesOut += c.bytesOut;
    }
    if (this.streams.get(s.id) === s) this.streams.delete(s.id);
    this.drainWaiters.delete(s);
  }

  /** @internal */
  countCloseTimeout(): void {
    this.closeTimeouts++;
  }

  private onDrain(): void {
    this.writable = true;
    if (this.readPaused && !this.closed) {
      this.readPaused = false;
      this.transport.resume();
    }
    const waiting = [...this.drainWaiters];
    this.drainWaiters.clear();
    for (const s of waiting) {
      if (!this.writable) {
        this.drainWaiters.add(s);
        continue;
      }
      s.flush();
    }
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.bytesIn += chunk.length;
    // Whatever a handler of the peer's frames throws costs this link (Go Away 2), never the process.
    try {
      this.decoding = true;
      let failed: ProtocolError | undefined;
      const error = this.decoder.decode(chunk, (f) => {
        if (this.closed) return true;
        failed = this.onFrame(f);
        return failed !== undefined;
      });
      if (failed) return this.close(failed);
      if (error) this.close(error);
    } catch (err) {
      this.internalErrors++;
      this.close(
        new IpdeadgateError(
          'ERR_TUNNEL_INTERNAL',
          `handling the peer's frames failed: ${(err as Error).message}`,
        ),
      );
    } finally {
      this.decoding = false;
    }
  }

  /**
   * Frames of one read are being handled: a handover now (from a 'drain' one of them emitted)
   * would leave the stream's next frames in this read to a stream that no longer takes them.
   */
  private decoding = false;

  /** StreamHost */
  get inRead(): boolean {
    return this.decoding;
  }

  /** Errors thrown while handling the peer's frames (each closed the session). */
  internalErrors = 0;

  private onFrame(f: Frame): ProtocolError | undefined {
    switch (f.type) {
      case FrameType.Ping:
        if (f.flags & Flag.SYN) this.answerPing(f.length);
        else if (f.flags & Flag.ACK) {
          this.framesSinceTick++;
          this.onPingAck(f.length);
        }
        return undefined;
      case FrameType.GoAway:
        this.framesSinceTick++;
        this.fire({ type: 'peer_go_away' });
        this.emit('goaway', f.length);
        return undefined;
      default:
        this.framesSinceTick++;
        return this.onStreamFrame(f);
    }
  }

  /**
   * Answer a ping at the end of this turn, with the others that came in it: at most
   * PING_ANSWERS_PER_TURN, so a flood of pings from a peer costs a few answers per read, not one
   * each; none while reading is paused (the peer is not reading ours).
   */
  private answerPing(value: number): void {
    if (this.readPaused || this.pingAnswers.length >= PING_ANSWERS_PER_TURN) {
      this.pingsUnanswered++;
      return;
    }
    this.pingAnswers.push(value);
    if (this.pingAnswers.length === 1) setImmediate(this.sendPingAnswers);
  }

  private readonly sendPingAnswers = (): void => {
    const values = this.pingAnswers;
    this.pingAnswers = [];
    for (const v of values) this.writeFrame(encodeHeader(FrameType.Ping, Flag.ACK, 0, v));
  };

  private onPingAck(id: number): void {
    const p = this.pings.get(id);
    if (!p) return;
    this.pings.delete(id);
    p.timer?.cancel();
    const rtt = this.clock.now() - p.sentAt;
    this.rttMs = rtt;
    p.resolve(rtt);
  }

  /**
   * A frame for a stream. spec.md "StreamID Field" asks only that an opener use its own parity
   * (client odd, server even) and never 0; it does not ask for increasing order, and peers that
   * open streams from several threads put SYNs on the wire out of ID order. So a SYN is refused,
   * with a stream-level RST ("Opening a stream": ACK to accept, RST to reject) and the link kept,
   * only when its ID is 0, has our parity, or names a stream that is still live (then that stream
   * is reset too: the peer applies our RST to whatever it holds under the ID).
   */
  private onStreamFrame(f: Frame): ProtocolError | undefined {
    const existing = this.streams.get(f.streamId);
    if (existing && !(f.flags & Flag.SYN)) return existing.onFrame(f);
    if (!(f.flags & Flag.SYN)) return undefined; // late frame for a stream already gone: ignore
    if (f.flags & Flag.RST) return undefined; // opened and reset at once: nothing to answer
    if (existing) {
      this.refusedSyns++;
      this.emit('refused-syn', f.streamId, 'duplicate');
      existing.reset(
        new IpdeadgateError(
          'ERR_YAMUX_STREAM_ID',
          `the peer opened stream ${f.streamId} again while it was live`,
        ),
      );
      return undefined;
    }
    if (f.streamId === 0 || f.streamId % 2 !== this.remoteParity) {
      this.refusedSyns++;
      this.emit('refused-syn', f.streamId, 'parity');
      this.writeFrame(encodeHeader(FrameType.WindowUpdate, Flag.RST, f.streamId, 0));
      return undefined;
    }
    if (this.saidGoAway || this.streams.size >= (this.opts.maxStreams ?? 65536)) {
      this.writeFrame(encodeHeader(FrameType.WindowUpdate, Flag.RST, f.streamId, 0));
      return undefined;
    }
    const s = new MuxStream(f.streamId, this, false);
    this.streams.set(s.id, s);
    s.sendOpen();
    const err = s.onFrame({ ...f, flags: f.flags & ~Flag.SYN });
    if (err) return err;
    this.emit('stream', s);
    return undefined;
  }

  private scheduleHeartbeat(): void {
    const every = this.opts.heartbeatMs!;
    const limit = this.opts.heartbeatMisses ?? 3;
    this.heartbeatTimer = this.clock.setTimeout(() => {
      if (this.closed) return;
      if (this.heartbeatOutstanding && this.framesSinceTick === 0) this.misses++;
      else this.misses = 0;
      this.framesSinceTick = 0;
      if (this.misses >= limit) {
        this.close(
          new IpdeadgateError(
            'ERR_TUNNEL_HEARTBEAT',
            `the link's heartbeat went unanswered ${this.misses} times (${limit} x ${every} ms)`,
          ),
        );
        return;
      }
      this.heartbeatOutstanding = true;
      this.ping(every * limit).then(
        () => void (this.heartbeatOutstanding = false),
        () => undefined,
      );
      this.scheduleHeartbeat();
    }, every);
  }
}

export { GoAwayCode, HEADER_SIZE, MuxStream };
