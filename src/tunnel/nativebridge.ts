// The native relay of a bridged session (native/relay.cc): once a session is bridged, the bytes
// between its local TCP socket and its yamux stream move in the addon, on this environment's libuv
// loop, with no JavaScript per chunk; the decisions stay in src/tunnel/sessionlife.ts, which hears
// what happens here and says what to do.
//
// The descriptor: the addon relays on its own dup() of the Node socket's descriptor, and Node stops
// reading it (its _read is a no-op from then on, its handle's read stopped; what Node had read and
// not yet passed on goes to the relay first). The Node socket stays open and keeps being the
// session's local end for everything but the bytes: the watcher (EPOLLRDHUP/ERR), the reaper's TCP
// state, keepalive, and the reset or close at the end. Two descriptors of one socket, each closed
// by its owner: an RST (SO_LINGER 0) goes out when the last of them closes, so the relay's is
// closed first on every reset.
//
// A session is handed over only when nothing is in flight in JavaScript: both ends open, no write
// pending on the stream or the socket, no frame of the stream half-way up from the link. Otherwise
// (or on a link that cannot relay: a transport that is not the addon's TLS, relaying switched off)
// the session stays on the JavaScript path, which works as before: a failure never loses a session.
import type * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import { loadNative } from '../sys/native';
import { unflow } from './flow';
import type { MuxStream } from './muxstream';

/** What a native relay tells the session it belongs to. */
export interface RelayEvents {
  /** The local peer sent FIN; every byte before it went to the stream (the stream's FIN follows). */
  localEnd(): void;
  /** Reading or writing the local socket failed. */
  localError(err: Error): void;
  /** The stream's receive window ran out with bytes still waiting for the local reader. */
  stall?(): void;
}

interface NodeSocketHandle {
  fd?: number;
  reading?: boolean;
  readStop?(): number;
}

/** The Node socket's handle: libuv's TCP handle (its descriptor, its reading). */
function handleOf(socket: net.Socket): NodeSocketHandle | undefined {
  return (socket as unknown as { _handle?: NodeSocketHandle })._handle ?? undefined;
}

/** The open relays by id: the addon's one dispatch function finds each event's relay here. */
const live = new Map<number, NativeRelay>();
let dispatching = false;

function dispatchOnce(): void {
  if (dispatching) return;
  dispatching = true;
  loadNative().relayDispatch((id, kind, errno) => live.get(id)?.onEvent(kind, errno));
}

/** One session's relay in the addon. */
export class NativeRelay {
  /** The local peer's FIN was read and passed on; our FIN went to it after the stream's data. */
  private localEof = false;
  private finSent = false;
  /** Both ways ended cleanly: the local socket is closed without a reset (its 'close' is clean). */
  done = false;
  private lastBytes = 0;

  private constructor(
    private id: number | undefined,
    readonly stream: MuxStream,
    readonly socket: net.Socket,
    private readonly events: RelayEvents,
  ) {}

  /**
   * Hand the session over to the addon; undefined (nothing changed) when it cannot be now: the
   * session then stays on the JavaScript path.
   */
  static start(stream: MuxStream, socket: net.Socket, events: RelayEvents): NativeRelay | undefined {
    const link = stream.relayLink;
    const handle = handleOf(socket);
    const fd = handle?.fd;
    if (link === undefined || typeof fd !== 'number' || fd < 0 || typeof handle?.readStop !== 'function')
      return undefined;
    if (socket.destroyed || socket.connecting || socket.writableEnded || socket.writableLength > 0)
      return undefined;
    if (
      socket.readableEnded ||
      (socket as unknown as { _readableState?: { ended?: boolean } })._readableState?.ended
    )
      return undefined;
    if (stream.isRelayed || stream.streamState !== 'open' || stream.writableLength > 0) return undefined;
    const native = loadNative();
    if (!native.relayCanOpen(link, stream.id)) return undefined;
    dispatchOnce();
    // Node reads no more: no read starts again (Readable.read() would call _read), the handle's
    // read is stopped, and what it had read goes to the relay first.
    unflow(socket);
    socket.pause();
    (socket as unknown as { _read: () => void })._read = () => undefined;
    if (handle.reading !== false) {
      handle.reading = false;
      handle.readStop();
    }
    const early: Buffer[] = [];
    for (let c = socket.read() as Buffer | null; c !== null; c = socket.read() as Buffer | null)
      early.push(c);
    const h = stream.handOver();
    if (!h) {
      // Checked above; a stream that cannot be handed over after all keeps the JavaScript path.
      throw new IpdeadgateError('ERR_TUNNEL_RELAY', `yamux stream ${stream.id} could not be handed over`);
    }
    // Frames queued for the link (the stream's opening, its last window update) go before any the
    // relay writes.
    stream.flushFrames();
    const relay = new NativeRelay(undefined, stream, socket, events);
    const id = native.relayOpen(link, stream.id, fd, {
      recvWindow: h.recvWindow,
      recvTarget: h.recvTarget,
      maxWindow: h.maxWindow,
      sendWindow: h.sendWindow,
      frameSize: h.frameSize,
      rttMs: h.rttMs ?? -1,
      toSocket: h.buffered,
      toPeer: early.length ? Buffer.concat(early) : undefined,
    });
    if (!id) throw new IpdeadgateError('ERR_TUNNEL_RELAY', 'the link refused the relay after checking it');
    relay.id = id;
    live.set(id, relay);
    stream.relayCounters = relay;
    return relay;
  }

  /** @internal An event of this relay from the addon (relayEvents). */
  onEvent(kind: number, errno: number): void {
    const native = loadNative();
    const ev = native.relayEvents;
    const stream = this.stream;
    switch (kind) {
      case ev.localEof:
        this.localEof = true;
        this.events.localEnd();
        stream.end(); // the stream's FIN, after every frame the relay wrote
        return this.maybeDone();
      case ev.peerFin:
        stream.relayPeerFin();
        if (this.id !== undefined) native.relayHalfClose(this.id); // FIN after the queue
        return;
      case ev.finSent:
        this.finSent = true;
        return this.maybeDone();
      case ev.localError:
        return this.events.localError(
          new IpdeadgateError(
            errno === 104 ? 'ECONNRESET' : 'ERR_TUNNEL_LOCAL',
            `the local socket failed (errno ${errno})`,
          ),
        );
      case ev.peerReset:
        return stream.relayPeerReset();
      case ev.windowError:
        return stream.relayViolation('window');
      case ev.dataAfterFin:
        return stream.relayViolation('after_fin');
      case ev.stall:
        return this.events.stall?.();
    }
  }

  /** Both ways ended cleanly: our descriptor goes, then Node's (its 'close' counts as clean). */
  private maybeDone(): void {
    if (!this.localEof || !this.finSent || this.done) return;
    this.done = true;
    this.close(false);
    this.socket.destroy();
  }

  /** Bytes moved both ways (the session's idle measure); the last count once closed. */
  bytes(): number {
    if (this.id === undefined) return this.lastBytes;
    const b = loadNative().relayBytes(this.id);
    if (b >= 0) this.lastBytes = b;
    return this.lastBytes;
  }

  /** Payload bytes from the peer to the socket (in) and back (out); the last counts once closed. */
  counters(): { bytesIn: number; bytesOut: number } {
    const s = this.stats();
    if (s) this.lastCounters = { bytesIn: s.bytesIn, bytesOut: s.bytesOut };
    return this.lastCounters;
  }

  private lastCounters = { bytesIn: 0, bytesOut: 0 };

  /** The relay's counters and windows (tests, status). */
  stats(): ReturnType<ReturnType<typeof loadNative>['relayStats']> {
    return this.id === undefined ? undefined : loadNative().relayStats(this.id);
  }

  /** Stop relaying and close our descriptor; `reset`: the local peer gets an RST once Node's closes too. */
  close(reset: boolean): void {
    if (this.id === undefined) return;
    this.bytes();
    this.counters();
    loadNative().relayClose(this.id, reset);
    live.delete(this.id);
    this.id = undefined;
  }
}
