// One yamux stream (hashicorp/yamux spec.md; the reference keeps it in stream.go, apart from the
// session): a Node Duplex with backpressure both ways.
//  - outbound, a stream never sends more than the peer's window, and waits for the transport's
//    'drain' before sending more data frames (control frames always go);
//  - inbound, the receive window bounds what a peer can make us buffer; a window update is sent
//    only for bytes the stream's consumer has actually taken, so a paused consumer stops the peer.
// Its life is one state machine, a handler table per (state, event) like src/tunnel/sessionlife.ts
// (hashicorp/yamux keeps the same states in stream.go):
//   open        data both ways.
//   local_fin   we sent FIN (our writer ended); the peer may still send.
//   remote_fin  the peer sent FIN; we may still send.
//   closed      FIN both ways: a clean end.
//   reset       RST either way, destroyed before FIN both ways, or the session died.
// Events: end (our writer ended: FIN goes out), peer_fin, peer_rst, destroy (destroyed here: RST goes
// out), abort (the session died: nothing can go out).
// Bounds: local_fin and remote_fin last at most close_timeout without a byte moving (this stream's
// own timer, unless a session holds the stream and owns that bound: deferCloseBound()); open has
// none in time (the link's heartbeat bounds it); closed and reset are terminal, and entering either
// forgets the stream in its session.
import { Duplex } from 'node:stream';
import { IpdeadgateError } from '../errors';
import type { Clock, Timer } from '../util/clock';
import {
  encodeFrame,
  encodeHeader,
  Flag,
  FrameType,
  INITIAL_WINDOW,
  ProtocolError,
  type Frame,
} from './frame';

/**
 * What a stream needs from the session that carries it (src/tunnel/muxsession.ts implements it):
 * the session's settings, its transport for frames, and its table of streams. The stream imports
 * nothing from the session, so each can be read and tested on its own.
 */
export interface StreamHost {
  readonly clock: Clock;
  /** Receive window a stream starts with, announced with SYN/ACK. */
  readonly initialWindow: number;
  /** Largest receive window a stream grows to. */
  readonly maxWindow: number;
  /** Largest data frame we send. */
  readonly sendFrameSize: number;
  /** Idle bound of a half-closed stream that no session holds (0: none). */
  readonly closeTimeoutMs: number;
  /**
   * Streams the peer opens answer with yamux's 256 KiB window (delta 0 on the ACK) and get the
   * initial window only once their consumer is attached (openWindow()): what a peer can make us
   * hold for a session still waiting for its service stays at 256 KiB.
   */
  readonly holdInboundWindow?: boolean;
  /** The last measured round trip of the link, if any. */
  readonly rttMs: number | undefined;
  /** False while the transport's queue is full: wait for the session's drain. */
  readonly writable: boolean;
  /** Queue a frame (or a data frame's payload) on the transport. */
  writeFrame(buf: Buffer): void;
  /** Call the stream's flush() once the transport drains. */
  waitForDrain(s: MuxStream): void;
  /** The stream is over (closed or reset): drop it from the session's table. */
  forget(s: MuxStream): void;
  /** A stream was reset by its own close_timeout: count it for status. */
  countCloseTimeout(): void;
  /** The addon's link this session runs on, when its frames can be relayed natively. */
  readonly relayLink?: number | undefined;
  /** The frames of a read are being handled now (no handover until they are). */
  readonly inRead?: boolean;
  /** Queued frames go to the link now (before a native relay writes behind them). */
  flushFrames?(): void;
  /** The peer broke the protocol on a natively relayed stream: the session ends. */
  protocolError?(err: ProtocolError): void;
}

/** What a stream hands to a native relay (src/tunnel/nativebridge.ts). */
export interface HandOver {
  recvWindow: number;
  recvTarget: number;
  maxWindow: number;
  sendWindow: number;
  frameSize: number;
  rttMs: number | undefined;
  /** The peer's bytes this stream received and nobody read yet: they go to the socket first. */
  buffered: Buffer | undefined;
}

/**
 * Bytes a stream's writer may queue before write() says to wait. It must be larger than one read of
 * a bridged socket (64 KiB, libuv's read size): Writable.write() compares the queue with the mark
 * before _write() runs, so at 64 KiB every full read made pipe() pause the socket and resume it on
 * 'drain' a tick later (two epoll_ctl system calls and a round of stream machinery per 64 KiB).
 * What a stream holds stays bounded by this mark while the peer's window or the link is full.
 */
const STREAM_WRITE_HIGH_WATER = 256 * 1024;

/**
 * The data of a frame a stream keeps for a consumer that is not reading (none yet, or paused): a
 * copy when it is under half of the buffer it is a slice of. A received frame's data is a slice of
 * one read of the link (up to 256 KiB of plaintext, src/sys/tlslink.ts), which holds other streams'
 * frames too. A flowing stream hands each slice on at once and the read is freed behind it; a
 * stream that holds its slices holds their whole reads, so many waiting streams with a few small
 * frames each could hold several times what their windows allow. With the copy, what a waiting
 * stream holds in memory is at most twice its bytes (a slice of at least half its parent, or a
 * copy; copies under 4 KiB share Node's 8 KiB pool slabs).
 */
function keepable(data: Buffer): Buffer {
  return data.length * 2 < data.buffer.byteLength ? Buffer.from(data) : data;
}

export type StreamState = 'open' | 'local_fin' | 'remote_fin' | 'closed' | 'reset';
export type StreamEvent = 'end' | 'peer_fin' | 'peer_rst' | 'destroy' | 'abort';

type Handler = (s: MuxStream) => void;

const ignore: Handler = () => undefined;
const sendFinThen =
  (next: StreamState): Handler =>
  (s) => {
    s.sendFlags(Flag.FIN);
    s.enter(next);
  };
const finFromPeerThen =
  (next: StreamState): Handler =>
  (s) => {
    s.push(null);
    s.enter(next);
  };
/** Destroyed here before FIN went both ways: RST tells the peer, so its end closes too. */
const sendRst: Handler = (s) => {
  s.sendFlags(Flag.RST);
  s.enter('reset');
};
const toReset: Handler = (s) => s.enter('reset');

/**
 * A row per state, a column per event. A FIN the peer repeats, or our writer's end after a reset,
 * changes nothing; after closed or reset every event is void (the stream left its session's table).
 */
const HANDLERS: { [S in StreamState]: { [E in StreamEvent]: Handler } } = {
  open: {
    end: sendFinThen('local_fin'),
    peer_fin: finFromPeerThen('remote_fin'),
    peer_rst: toReset,
    destroy: sendRst,
    abort: toReset,
  },
  local_fin: {
    end: ignore, // the writer ends once
    peer_fin: finFromPeerThen('closed'),
    peer_rst: toReset,
    destroy: sendRst,
    abort: toReset,
  },
  remote_fin: {
    end: sendFinThen('closed'),
    peer_fin: ignore, // a repeated FIN
    peer_rst: toReset,
    destroy: sendRst,
    abort: toReset,
  },
  closed: { end: ignore, peer_fin: ignore, peer_rst: ignore, destroy: ignore, abort: ignore },
  reset: { end: ignore, peer_fin: ignore, peer_rst: ignore, destroy: ignore, abort: ignore },
};

/** One yamux stream. Readable side: the peer's data; writable side: ours. */
export class MuxStream extends Duplex {
  /** Bytes the peer may still send before our next window update. */
  private recvWindow: number;
  /** Our receive window target; grows by doubling when updates come faster than two RTTs. */
  private recvTarget: number;
  private lastUpdateAt: number;
  private sendWindow = INITIAL_WINDOW;
  private pending: { buf: Buffer; cb: (err?: Error | null) => void } | undefined;
  private state: StreamState = 'open';
  private closeTimer: Timer | undefined;
  /** A session holds this stream and owns its close_timeout (src/tunnel/sessionlife.ts). */
  private closeBoundDeferred = false;
  private lastActivity: number;
  /** Set by the session once a SYN (outbound) or ACK (inbound) has gone out. */
  private needFlags: number;
  /** An inbound stream whose window stays at 256 KiB until openWindow(). */
  private windowHeld = false;
  /** A native relay moves this stream's data and keeps its windows (handOver()). */
  private relayed = false;
  /** @internal The relay's byte counts (the session's status counts them). */
  relayCounters: { counters(): { bytesIn: number; bytesOut: number } } | undefined;
  bytesIn = 0;
  bytesOut = 0;
  /** bytesIn + bytesOut at which `moveWatcher` hears of it, once (watchMoved()). */
  private moveMark = Infinity;
  private moveWatcher: { movedPast(): void } | undefined;

  /** @internal */
  constructor(
    readonly id: number,
    private readonly session: StreamHost,
    outbound: boolean,
  ) {
    super({
      allowHalfOpen: true,
      readableHighWaterMark: 64 * 1024,
      writableHighWaterMark: STREAM_WRITE_HIGH_WATER,
    });
    this.recvWindow = INITIAL_WINDOW;
    this.recvTarget = INITIAL_WINDOW;
    this.lastActivity = session.clock.now();
    this.lastUpdateAt = this.lastActivity;
    this.needFlags = outbound ? Flag.SYN : Flag.ACK;
    // A stream error must never escape to the process as an unhandled 'error' event: users that
    // care attach their own listener (pipeline does); resets are also visible through 'close'.
    this.on('error', () => undefined);
  }

  /** The current receive window target (grows from initialWindow up to maxWindow). */
  get receiveWindow(): number {
    return this.recvTarget;
  }

  /** True once FIN went both ways (a clean end), false while open or after a reset. */
  get closedCleanly(): boolean {
    return this.state === 'closed';
  }

  /** Where the stream is in its life (the table above). */
  get streamState(): StreamState {
    return this.state;
  }

  /** Fire an event at the stream's machine. */
  private fire(ev: StreamEvent): void {
    HANDLERS[this.state][ev](this);
  }

  /** @internal From the table: enter a state and run its entry action. */
  enter(next: StreamState): void {
    this.state = next;
    if (next === 'closed' || next === 'reset') this.cleanup();
    else this.armCloseTimer(); // local_fin, remote_fin: the idle bound after the first FIN
  }

  /** @internal From the table: a window update carrying flags (FIN or RST) and nothing else. */
  sendFlags(flag: number): void {
    this.sendWindowUpdate(0, this.takeFlags() | flag);
  }

  /** The peer sent FIN: it sends no more data. */
  private get peerEnded(): boolean {
    return this.state === 'remote_fin' || this.state === 'closed';
  }

  /**
   * Send the first frame: SYN (outbound) or ACK (inbound) on a window update that raises the peer's
   * view of our window from yamux's 256 KiB to our initial one; an outbound stream's `synData` (the
   * service header) follows in the same write, before any ACK: opening costs no round trip.
   * SYN travels on a window update rather than on the data frame because that is what hashicorp's
   * own implementation sends, and some implementations (yamux-js) drop data carried on a SYN frame.
   * @internal
   */
  sendOpen(synData?: Buffer): void {
    this.windowHeld = this.needFlags === Flag.ACK && !!this.session.holdInboundWindow;
    const delta = this.windowHeld ? 0 : Math.max(0, this.session.initialWindow - INITIAL_WINDOW);
    this.sendWindowUpdate(delta, this.takeFlags());
    this.recvWindow += delta;
    this.recvTarget = INITIAL_WINDOW + delta;
    if (synData && synData.length) {
      if (synData.length > Math.min(this.sendWindow, this.session.sendFrameSize))
        throw new RangeError('the opening data is larger than one frame');
      this.sendWindow -= synData.length;
      this.bytesOut += synData.length;
      this.session.writeFrame(
        encodeFrame({
          type: FrameType.Data,
          flags: 0,
          streamId: this.id,
          length: synData.length,
          data: synData,
        }),
      );
    }
  }

  /** A held inbound window (holdInboundWindow) grows to the initial window: the stream has a consumer. */
  openWindow(): void {
    if (!this.windowHeld) return;
    this.windowHeld = false;
    if (this.state !== 'open' && this.state !== 'local_fin') return;
    const delta = Math.max(0, this.session.initialWindow - INITIAL_WINDOW);
    if (!delta) return;
    this.recvWindow += delta;
    this.recvTarget += delta;
    this.sendWindowUpdate(delta, this.takeFlags());
  }

  private takeFlags(): number {
    const f = this.needFlags;
    this.needFlags = 0;
    return f;
  }

  private sendWindowUpdate(delta: number, flags: number): void {
    this.session.writeFrame(encodeHeader(FrameType.WindowUpdate, flags, this.id, delta));
  }

  /** The link this stream's frames could be relayed on natively (undefined: not possible). */
  get relayLink(): number | undefined {
    return this.session.relayLink;
  }

  /** The session is handling the frames of a read (a handover waits until it is done). */
  get inRead(): boolean {
    return this.session.inRead === true;
  }

  /** Frames queued on the link go to it now (before a native relay writes behind them). */
  flushFrames(): void {
    this.session.flushFrames?.();
  }

  /** Whether a native relay moves this stream's data. */
  get isRelayed(): boolean {
    return this.relayed;
  }

  /**
   * Give the data path to a native relay: its windows and the bytes it holds for the reader, or
   * undefined when the stream is not in a state to hand over (not open both ways, a write or its
   * opening flags still pending, its window still held). From now on this stream sends no window
   * update and takes no data; its FIN, RST and state stay here (relayPeerFin(), end(), reset()).
   */
  handOver(): HandOver | undefined {
    if (this.relayed || this.state !== 'open' || this.needFlags !== 0 || this.windowHeld) return undefined;
    if (this.pending || this.writableLength > 0 || this.writableEnded || this.readableEnded) return undefined;
    const chunks: Buffer[] = [];
    for (let c = this.read() as Buffer | null; c !== null; c = this.read() as Buffer | null) chunks.push(c);
    this.relayed = true;
    const buffered = chunks.length ? Buffer.concat(chunks) : undefined;
    // Nothing more is pushed but the peer's FIN (relayPeerFin): flowing, so that 'end' is emitted.
    this.resume();
    return {
      recvWindow: this.recvWindow,
      recvTarget: this.recvTarget,
      maxWindow: this.session.maxWindow,
      sendWindow: this.sendWindow,
      frameSize: this.session.sendFrameSize,
      rttMs: this.session.rttMs,
      buffered,
    };
  }

  /** The relay saw the peer's FIN (after its data, which the relay writes to the socket). */
  relayPeerFin(): void {
    this.touch();
    this.fire('peer_fin');
  }

  /** The relay saw the peer's RST. */
  relayPeerReset(): void {
    this.resetByPeer();
  }

  /** The relay saw the peer break the stream's rules: data past the window ends the session. */
  relayViolation(kind: 'window' | 'after_fin'): void {
    if (kind === 'after_fin')
      return this.reset(
        new IpdeadgateError('ERR_TUNNEL_DATA_AFTER_FIN', `yamux stream ${this.id}: data after FIN`),
      );
    const err = new ProtocolError(
      'ERR_YAMUX_WINDOW',
      `yamux stream ${this.id}: the peer sent past the receive window`,
    );
    if (this.session.protocolError) this.session.protocolError(err);
    else this.reset(err);
  }

  /** @internal A frame for this stream from the peer. Returns a ProtocolError to end the session. */
  onFrame(f: Frame): ProtocolError | undefined {
    if (this.state === 'reset') return undefined;
    if (this.relayed) {
      // The relay takes this stream's frames; one that still comes here (the relay already
      // closed by the session's end) changes nothing but a reset.
      if (f.flags & Flag.RST) this.resetByPeer();
      return undefined;
    }
    if (f.flags & Flag.RST) {
      this.resetByPeer();
      return undefined;
    }
    if (f.type === FrameType.WindowUpdate) {
      if (f.length > 0) {
        this.sendWindow = Math.min(this.sendWindow + f.length, 0xffffffff);
        this.flush();
      }
    } else if (f.data && f.data.length) {
      if (this.peerEnded) {
        // Data after the peer's FIN: the stream is broken, not the session.
        this.reset(
          new IpdeadgateError('ERR_TUNNEL_DATA_AFTER_FIN', `yamux stream ${this.id}: data after FIN`),
        );
        return undefined;
      }
      if (f.data.length > this.recvWindow)
        return new ProtocolError(
          'ERR_YAMUX_WINDOW',
          `yamux stream ${this.id}: ${f.data.length} bytes exceed the receive window of ${this.recvWindow}`,
        );
      this.recvWindow -= f.data.length;
      this.bytesIn += f.data.length;
      this.touch();
      if (this.bytesIn + this.bytesOut >= this.moveMark) this.movedPast();
      // Flowing (bridged, read by pipe): the data goes on at once, uncopied; else it waits here.
      this.push(this.readableFlowing === true ? f.data : keepable(f.data));
      this.maybeUpdateWindow();
    }
    if (f.flags & Flag.FIN) this.fire('peer_fin');
    return undefined;
  }

  private touch(): void {
    this.lastActivity = this.session.clock.now();
  }

  /**
   * @internal `watcher` hears once when this stream has carried `bytes` more payload either way
   * (the session's handover to the native relay). Two fields, where 'data' listeners on both ends
   * would cost an idle session three closures and two listener arrays.
   */
  watchMoved(bytes: number, watcher: { movedPast(): void }): void {
    this.moveMark = this.bytesIn + this.bytesOut + bytes;
    this.moveWatcher = watcher;
  }

  private movedPast(): void {
    const w = this.moveWatcher;
    this.moveMark = Infinity;
    this.moveWatcher = undefined;
    w?.movedPast();
  }

  /** Credit the peer with what our consumer has taken, once that is a quarter of the target. */
  private maybeUpdateWindow(): void {
    if (this.relayed || (this.state !== 'open' && this.state !== 'local_fin')) return;
    const credit = this.recvTarget - this.recvWindow - this.readableLength;
    if (credit <= 0 || credit < this.recvTarget / 4) return;
    const now = this.session.clock.now();
    let grow = 0;
    const rtt = this.session.rttMs;
    if (
      this.recvTarget < this.session.maxWindow &&
      (rtt === undefined || now - this.lastUpdateAt < 2 * Math.max(rtt, 1))
    ) {
      // The consumer drained a quarter window within two RTTs: the window, not the reader, is the
      // limit, so double it (as quic-go and newer yamux do).
      const next = Math.min(this.recvTarget * 2, this.session.maxWindow);
      grow = next - this.recvTarget;
      this.recvTarget = next;
    }
    this.lastUpdateAt = now;
    this.recvWindow += credit + grow;
    this.sendWindowUpdate(credit + grow, this.takeFlags());
  }

  override _read(): void {
    this.maybeUpdateWindow();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.state === 'reset')
      return cb(new IpdeadgateError('ERR_TUNNEL_STREAM_RESET', `yamux stream ${this.id} was reset`));
    this.pending = { buf: chunk, cb };
    this.flush();
  }

  /** @internal Send as much of the pending write as the window and the transport allow. */
  flush(): void {
    while (this.pending && this.state !== 'reset') {
      if (this.sendWindow <= 0) return; // resumed by the peer's window update
      if (!this.session.writable) {
        this.session.waitForDrain(this);
        return;
      }
      const p = this.pending;
      const n = Math.min(p.buf.length, this.sendWindow, this.session.sendFrameSize);
      const data = n === p.buf.length ? p.buf : p.buf.subarray(0, n);
      // Header and payload as two writes in one corked batch: no copy of the payload here.
      this.session.writeFrame(encodeHeader(FrameType.Data, this.takeFlags(), this.id, n));
      this.session.writeFrame(data);
      this.sendWindow -= n;
      this.bytesOut += n;
      this.touch();
      if (this.bytesIn + this.bytesOut >= this.moveMark) this.movedPast();
      if (n === p.buf.length) {
        this.pending = undefined;
        p.cb();
      } else {
        p.buf = p.buf.subarray(n);
      }
    }
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.fire('end');
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.fire('destroy');
    this.cleanup();
    const p = this.pending;
    this.pending = undefined;
    if (p)
      p.cb(err ?? new IpdeadgateError('ERR_TUNNEL_STREAM_RESET', `yamux stream ${this.id} was destroyed`));
    cb(err);
  }

  /** Reset the stream (RST to the peer) and destroy it with `err`. */
  reset(err?: Error): void {
    if (this.destroyed) return;
    this.destroy(err ?? new IpdeadgateError('ERR_TUNNEL_STREAM_RESET', `yamux stream ${this.id} was reset`));
  }

  private resetByPeer(): void {
    this.fire('peer_rst');
    const err = new IpdeadgateError('ECONNRESET', `yamux stream ${this.id} was reset by the peer`);
    this.destroy(err);
  }

  /** @internal The session is gone: the stream dies without sending anything. */
  abort(err: Error): void {
    this.fire('abort');
    this.cleanup();
    this.destroy(err);
  }

  /**
   * A session holds this stream from now on: close_timeout is the session's (its half_closed bound),
   * so this stream's own timer is off, and the idle session ends as close_timeout, never as a
   * stream reset racing an equal timer.
   */
  deferCloseBound(): void {
    this.closeBoundDeferred = true;
    this.closeTimer?.cancel();
    this.closeTimer = undefined;
  }

  /**
   * After the first FIN either way, the stream's idle life is bounded by close_timeout (IY55176):
   * by this stream's own timer, unless a session holds the stream and owns the bound.
   */
  private armCloseTimer(): void {
    const ms = this.session.closeTimeoutMs;
    if (this.closeTimer || this.closeBoundDeferred || ms <= 0) return;
    const check = (): void => {
      this.closeTimer = undefined;
      if (this.state !== 'local_fin' && this.state !== 'remote_fin') return;
      const idle = this.session.clock.now() - this.lastActivity;
      if (idle >= ms) {
        this.session.countCloseTimeout();
        this.reset(
          new IpdeadgateError(
            'ERR_TUNNEL_CLOSE_TIMEOUT',
            `yamux stream ${this.id}: idle ${Math.round(idle)} ms after FIN (close_timeout)`,
          ),
        );
      } else {
        this.closeTimer = this.session.clock.setTimeout(check, ms - idle);
      }
    };
    this.closeTimer = this.session.clock.setTimeout(check, ms);
  }

  private cleanup(): void {
    this.closeTimer?.cancel();
    this.closeTimer = undefined;
    this.session.forget(this);
  }
}
