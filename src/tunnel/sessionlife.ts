// A tunnel session's life as one state machine, written as FRR bfdd writes BFD's: a table of
// handlers per state and event, so every state's reaction to every event is in one place and can
// be read at a glance.
//
// A session joins two ends: `stream`, the yamux stream the session came in on or went out on, and
// `local`, a TCP socket (a forward's accepted client, or the service a node dials) or, on a relay,
// the next hop's stream. Three kinds:
//   forward  local client accepted, stream opened to a service:  opening -> answered -> bridged
//   service  stream accepted, the service dialed:                dialing -> answered -> bridged
//   relay    stream accepted, the next hop's stream opened:       opening -> answered -> bridged
// then bridged -> half_closed (a FIN either way) -> closing -> closed.
//
// Every exit (client reset, service refused, stream reset, link death and heartbeat loss (the link
// aborts its streams), close_timeout, GoAway then the link's end, process stop, the reaper) goes
// through closing, which resets whatever end is still open, and ends in closed, which frees the
// slot. Every state has a bound: opening open_timeout, dialing dial_timeout, answered and
// half_closed close_timeout (idle), closing CLOSING_MS; bridged has none in time (a session may
// rightly last days) but is bounded by liveness: TCP keepalive on the local socket, the link's
// heartbeat on the stream, and the reaper, which ends any session one of whose ends is gone.
//
// close_timeout has one owner: this machine. Once a session holds a yamux stream, the stream's own
// idle timer is off (MuxStream.deferCloseBound(); it bounds only streams no session holds, such as
// a link's control stream or a refused stream), and the reaper (src/tunnel/reaper.ts) never ends a
// session that has a bound in time, only checks that the bound fired. So a session idle past
// close_timeout in answered or half_closed always ends with exit 'close_timeout' (counted in
// closeTimeouts), never as 'stream_reset' or 'reaped'.
import type * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import type { Clock, Timer } from '../util/clock';
import { RunToCompletion } from '../util/runqueue';
import type { HostPort } from './config';
import { MuxStream } from './muxstream';
import { flow } from './flow';
import { prepareSocket, resetSocket } from './localsocket';
import { bridgeBytes, retryHandover } from './handover';
import type { NativeRelay, RelayEvents } from './nativebridge';

export type SessionState =
  'opening' | 'dialing' | 'answered' | 'bridged' | 'half_closed' | 'closing' | 'closed';
export const SESSION_STATES: readonly SessionState[] = [
  'opening',
  'dialing',
  'answered',
  'bridged',
  'half_closed',
  'closing',
  'closed',
];
export type SessionKind = 'forward' | 'service' | 'relay';
/** Which end of the session an event comes from. */
export type End = 'local' | 'stream';

/** Everything that can happen to a session. */
export type SessionEvent =
  /** service: the connection to the service is up. */
  | { type: 'dialed' }
  /** forward, relay: the far end accepted the session. */
  | { type: 'answer_ok' }
  /** forward, relay: the far end (or a relay on the way) refused it. */
  | { type: 'answer_refused'; error: Error; status: number; reason: string }
  /** An end will send no more data (its FIN was read, or the watcher saw it queued). */
  | { type: 'fin'; end: End }
  /** An end failed: TCP RST or error, stream RST, link death, a failed dial. */
  | { type: 'reset'; end: End; error: Error }
  /** An end closed; `clean` when it ended with FIN both ways. */
  | { type: 'gone'; end: End; clean: boolean }
  /** The current state's bound passed. */
  | { type: 'timeout' }
  /** The node stops, or the reaper ends the session. */
  | { type: 'stop'; error: Error; exit: SessionExit };

/** Why a session ended, counted for status. */
export type SessionExit =
  | 'completed'
  | 'local_reset'
  | 'stream_reset'
  | 'dial_failed'
  | 'dial_timeout'
  | 'refused'
  | 'open_timeout'
  | 'close_timeout'
  | 'stopped'
  | 'reaped';

export interface SessionBounds {
  /** dialing: how long the service may take to accept the connection. */
  dialMs: number;
  /** opening: how long the far end may take to answer. */
  openMs: number;
  /** answered, half_closed: idle time without a byte moving either way (close_timeout). */
  closeTimeoutMs: number;
}

/** closing: how long ends may take to close after being reset, or a refused opener to reset. */
export const CLOSING_MS = 2000;

/** What a session needs from the table that holds it (CloseGuard). */
export interface SessionHost {
  readonly clock: Clock;
  readonly bounds: SessionBounds;
  /** Watch a socket fd for EPOLLRDHUP/HUP/ERR (src/sys/watcher.ts). */
  watch(
    socket: net.Socket,
    onEvent: (ev: { rdhup: boolean; hup: boolean; err: boolean }) => void,
  ): {
    close(): void;
  };
  /**
   * Whether a socket whose end of stream Node just reported was in fact reset: true when the TCP
   * state says so (src/tunnel/closeguard.ts), false when it is a FIN or cannot be told.
   */
  endedByReset(socket: net.Socket): boolean;
  /** @internal the session reached closed: free its slot. */
  ended(s: SessionLife, exit: SessionExit): void;
  /**
   * Hand a bridged session's bytes to the addon (src/tunnel/nativebridge.ts); undefined: they stay
   * on the JavaScript path. The session keeps its state and bounds here either way.
   */
  nativeRelay?(stream: MuxStream, socket: net.Socket, events: RelayEvents): NativeRelay | undefined;
  /**
   * A bridged session is handed to the addon once this many bytes have moved through it (0: at its
   * bridging; undefined: never). The handover costs each proxy about what relaying 150 – 350 KiB
   * on the JavaScript path does (0.3 – 0.7 ms more per session open for the two proxies, against
   * ~1 ms of CPU per MB per proxy), so short and idle sessions (most of them) stay there and never
   * pay it, nor hold the relay's second descriptor.
   */
  readonly relayAfterBytes?: number;
}

/** How a service session refuses (writes the refusal answer and ends its side of the stream). */
export type RefuseFn = (stream: MuxStream, reason: string) => void;

type Handler<E extends SessionEvent['type']> = (
  s: SessionLife,
  ev: Extract<SessionEvent, { type: E }>,
) => void;
type HandlerTable = { [S in SessionState]: { [E in SessionEvent['type']]: Handler<E> } };

const ignore = (): void => undefined;
const resetExit = (end: End): SessionExit => (end === 'local' ? 'local_reset' : 'stream_reset');
const onReset: Handler<'reset'> = (s, ev) => s.abort(resetExit(ev.end), ev.error);
const onStop: Handler<'stop'> = (s, ev) => s.abort(ev.exit, ev.error);
/** An end closed before the session was bridged: nothing can complete any more. */
const onGoneEarly: Handler<'gone'> = (s, ev) =>
  s.abort(
    resetExit(ev.end),
    new IpdeadgateError('ECONNRESET', `the ${ev.end} end closed before the session was bridged`),
  );

/**
 * The handlers: a row per state, a column per event. Reading down a column says what an event does
 * in each state; reading a row says everything a state can do.
 */
const HANDLERS: HandlerTable = {
  opening: {
    dialed: ignore,
    answer_ok: (s) => s.bridge(),
    answer_refused: (s, ev) => s.refusedByFarEnd(ev),
    fin: (s, ev) => s.noteFin(ev.end), // a short request already ended: the flow passed the FIN on
    reset: onReset,
    gone: onGoneEarly,
    timeout: (s) =>
      s.abort(
        'open_timeout',
        new IpdeadgateError('ETIMEDOUT', `no answer from the far end within ${s.bounds.openMs} ms`),
      ),
    stop: onStop,
  },
  dialing: {
    dialed: (s) => s.answerAndBridge(),
    answer_ok: ignore,
    answer_refused: ignore,
    fin: (s, ev) => s.noteFin(ev.end),
    // The opener reset or abandoned the session (or its link died) while we dial: the dial is
    // given up and its socket closed; else this is the IY55176 leak in ESTABLISHED form.
    reset: (s, ev) => (ev.end === 'local' ? s.dialFailed(ev.error, 'dial_failed') : onReset(s, ev)),
    gone: (s, ev) =>
      ev.end === 'local'
        ? s.dialFailed(
            new IpdeadgateError('ECONNRESET', 'the connection closed while connecting'),
            'dial_failed',
          )
        : onGoneEarly(s, ev),
    timeout: (s) =>
      s.dialFailed(
        new IpdeadgateError('ETIMEDOUT', `the service did not accept within ${s.bounds.dialMs} ms`),
        'dial_timeout',
      ),
    stop: onStop,
  },
  // Transient: the answer is settled and the bridge is wired in the same turn; events cannot
  // normally arrive here, and if one does it is treated as in bridged.
  answered: {
    dialed: ignore,
    answer_ok: ignore,
    answer_refused: ignore,
    fin: (s, ev) => s.noteFin(ev.end),
    reset: onReset,
    gone: onGoneEarly,
    timeout: (s) => s.abort('close_timeout', new IpdeadgateError('ETIMEDOUT', 'the bridge was never wired')),
    stop: onStop,
  },
  bridged: {
    dialed: ignore,
    answer_ok: ignore,
    answer_refused: ignore,
    fin: (s, ev) => {
      s.noteFin(ev.end);
      s.enter('half_closed');
    },
    reset: onReset,
    gone: (s, ev) => s.goneWhileBridged(ev),
    timeout: ignore, // no bound in time: liveness (keepalive, heartbeat, reaper) bounds it
    stop: onStop,
  },
  half_closed: {
    dialed: ignore,
    answer_ok: ignore,
    answer_refused: ignore,
    fin: (s, ev) => s.noteFin(ev.end),
    reset: onReset,
    gone: (s, ev) => s.goneWhileBridged(ev),
    timeout: (s) => {
      s.countCloseTimeout();
      s.abort(
        'close_timeout',
        new IpdeadgateError(
          'ERR_TUNNEL_CLOSE_TIMEOUT',
          `the session was idle ${s.bounds.closeTimeoutMs} ms after a FIN (close_timeout)`,
        ),
      );
    },
    stop: onStop,
  },
  closing: {
    dialed: ignore, // a dial that completed after all: closing's reset already destroyed its socket
    answer_ok: ignore,
    answer_refused: ignore,
    fin: ignore,
    reset: ignore,
    gone: (s, ev) => s.goneWhileClosing(ev.end),
    timeout: (s) => s.forceClosed(),
    stop: ignore,
  },
  closed: {
    dialed: ignore,
    answer_ok: ignore,
    answer_refused: ignore,
    fin: ignore,
    reset: ignore,
    gone: ignore,
    timeout: ignore,
    stop: ignore,
  },
};

type LocalEnd = net.Socket | MuxStream;

function bytesOf(e: LocalEnd | undefined): number {
  if (!e) return 0;
  if (e instanceof MuxStream) return e.bytesIn + e.bytesOut;
  return e.bytesRead + e.bytesWritten;
}

/** One session. Created through CloseGuard (forward/service/relay), which holds and reaps it. */
export class SessionLife {
  state: SessionState;
  /** Why it ended (set on entering closing). */
  exit: SessionExit | undefined;
  /** When the current state's bound passes (monotonic ms), or undefined when it has none in time. */
  deadline: number | undefined;
  /** The session's last error, for logs. */
  error: Error | undefined;
  local: LocalEnd | undefined;
  private readonly fins = { local: false, stream: false };
  private readonly gone = { local: false, stream: false };
  private timer: Timer | undefined;
  private watcher: { close(): void } | undefined;
  private readonly events = new RunToCompletion<SessionEvent>((e) =>
    (HANDLERS[this.state][e.type] as Handler<typeof e.type>)(this, e as never),
  );
  private lastBytes = 0;
  private lastChange: number;
  private bridged = false;
  closeTimeouts = 0;
  readonly startedAt: number;
  /** Set while a refusal's answer is on its way: the opener resets the stream itself. */
  private lingerStream = false;
  /** @internal set by the guard for service and relay sessions: how to refuse the opener. */
  refuse: ((stream: MuxStream, reason: string, status?: number) => void) | undefined;
  /** @internal set by the guard: the OK answer's bytes (service, relay). */
  answerOk: Buffer = Buffer.alloc(0);
  /** Called once when the session is bridged (its owner's budget for waiting sessions). */
  onBridged: (() => void) | undefined;
  /** The addon moves the bytes between the local socket and the stream (bridged sessions only). */
  relay: NativeRelay | undefined;
  /** @internal HandoverTarget: handover tries so far. */
  relayTries = 0;

  /** @internal use CloseGuard's forward(), service() or relay(). */
  constructor(
    readonly kind: SessionKind,
    readonly stream: MuxStream,
    private readonly host: SessionHost,
    initial: 'opening' | 'dialing',
  ) {
    this.state = initial;
    this.startedAt = host.clock.now();
    this.lastChange = this.startedAt;
  }

  get bounds(): SessionBounds {
    return this.host.bounds;
  }

  /** Feed an event. Events raised while a handler runs are queued and handled in order after it. */
  dispatch(ev: SessionEvent): void {
    this.events.dispatch(ev);
  }

  // --- transitions (each state entered in one place) ---

  /** @internal Enter a state: cancel the old bound, arm the new one, run the entry action. */
  enter(next: SessionState): void {
    if (this.state === 'closed') return;
    this.state = next;
    this.timer?.cancel();
    this.timer = undefined;
    this.deadline = undefined;
    switch (next) {
      case 'opening':
        return this.arm(this.bounds.openMs, false);
      case 'dialing':
        return this.arm(this.bounds.dialMs, false);
      case 'answered':
        return this.arm(this.bounds.closeTimeoutMs, false);
      case 'bridged':
        return;
      case 'half_closed':
        return this.arm(this.bounds.closeTimeoutMs, true);
      case 'closing':
        this.resetOpenEnds();
        if (!this.local) this.gone.local = true; // no dial was started: there is no local end
        if (this.gone.local && this.gone.stream) return this.enter('closed');
        return this.arm(CLOSING_MS, false);
      case 'closed':
        this.relay?.close(false);
        this.watcher?.close();
        this.watcher = undefined;
        this.host.ended(this, this.exit ?? 'completed');
        return;
    }
  }

  /** Arm the state's bound; `idle`: measured from the last byte moved, re-armed while bytes move. */
  private arm(ms: number, idle: boolean): void {
    if (ms <= 0) return;
    const now = this.host.clock.now();
    if (idle) this.sampleActivity(now);
    const due = idle ? this.lastChange + ms : now + ms;
    this.deadline = due;
    const state = this.state;
    this.timer = this.host.clock.setTimeout(
      () => {
        this.timer = undefined;
        if (this.state !== state) return;
        if (idle) {
          const t = this.host.clock.now();
          this.sampleActivity(t);
          if (t - this.lastChange < ms) return this.arm(ms, true);
        }
        this.dispatch({ type: 'timeout' });
      },
      Math.max(0, due - now),
    );
  }

  private sampleActivity(now: number): void {
    const b = bytesOf(this.local) + bytesOf(this.stream) + (this.relay?.bytes() ?? 0);
    if (b !== this.lastBytes) {
      this.lastBytes = b;
      this.lastChange = now;
    }
  }

  /** @internal */
  noteFin(end: End): void {
    this.fins[end] = true;
  }

  /** @internal */
  countCloseTimeout(): void {
    this.closeTimeouts++;
  }

  /** @internal End the session abnormally: both ends reset, then closed. */
  abort(exit: SessionExit, err: Error): void {
    if (this.state === 'closing' || this.state === 'closed') return;
    this.exit = exit;
    this.error = err;
    this.enter('closing');
  }

  /** Reset every end that is still open (closing's entry action). */
  private resetOpenEnds(): void {
    const err = this.error ?? new IpdeadgateError('ECONNRESET', 'the session was reset');
    // The relay's descriptor first: the local peer's RST goes out when the last one closes.
    this.relay?.close(true);
    const l = this.local;
    if (l && !l.destroyed) {
      if (l instanceof MuxStream) l.reset(err);
      else resetSocket(l);
    }
    if (!this.stream.destroyed && !this.lingerStream) this.stream.reset(err);
  }

  /** @internal service: the dial failed or timed out: refuse the opener, close the socket. */
  dialFailed(err: Error, exit: SessionExit): void {
    if (this.state !== 'dialing') return this.abort(exit, err);
    this.exit = exit;
    this.error = err;
    const sock = this.local as net.Socket | undefined;
    if (sock && !sock.destroyed) sock.destroy();
    if (!this.stream.destroyed) {
      this.lingerStream = true;
      this.refuse?.(this.stream, err.message);
    }
    this.enter('closing');
  }

  /** @internal forward, relay: the far end refused. A relay passes the answer back unchanged. */
  refusedByFarEnd(ev: Extract<SessionEvent, { type: 'answer_refused' }>): void {
    if (this.kind === 'relay' && !this.stream.destroyed) {
      this.lingerStream = true;
      this.refuse?.(this.stream, ev.reason, ev.status);
    }
    this.exit = 'refused';
    this.error = ev.error;
    this.enter('closing');
  }

  /** @internal An end closed while bridged or half-closed. */
  goneWhileBridged(ev: Extract<SessionEvent, { type: 'gone' }>): void {
    this.gone[ev.end] = true;
    if (!ev.clean)
      return this.abort(
        resetExit(ev.end),
        new IpdeadgateError('ECONNRESET', `the ${ev.end} end closed before the session ended`),
      );
    // A clean close of one end (FIN read and sent) races the other's last FIN, already asked for
    // by the flow (./flow.ts): let it go out; half_closed's bound covers the wait.
    if (this.gone.local && this.gone.stream) {
      this.exit = 'completed';
      this.enter('closing');
    } else if (this.state === 'bridged') this.enter('half_closed');
  }

  /** @internal */
  goneWhileClosing(end: End): void {
    this.gone[end] = true;
    if (this.gone.local && this.gone.stream) this.enter('closed');
  }

  /** @internal closing's bound passed: whatever has not reported its close is destroyed now. */
  forceClosed(): void {
    this.lingerStream = false;
    this.resetOpenEnds();
    this.enter('closed');
  }

  // --- wiring ---

  /** Attach the listeners that turn an end's events into session events. */
  watchEnd(end: End, e: LocalEnd): void {
    if (e.closed || (e.destroyed && end === 'stream')) {
      // Gone before we looked (a stream reset in the same read as its SYN): the session must not
      // wait for a 'close' that already happened.
      if (e.closed) this.gone[end] = true;
      this.dispatch({
        type: 'reset',
        end,
        error: new IpdeadgateError('ECONNRESET', `the ${end} end was reset before the session began`),
      });
      if (e.closed) return;
    }
    // The session owns close_timeout for its streams: one bound, one exit reason.
    if (e instanceof MuxStream) e.deferCloseBound();
    e.on('end', () => {
      // libuv may report an RST as end of stream: when data and the RST were both queued before it
      // read (a forward reads its client only once the stream is open), it reads the data, sees the
      // socket hung up and stops there, without the read that would have returned ECONNRESET. A FIN
      // passed on for it would leave the far end waiting (dialing until dial_timeout): the socket's
      // TCP state tells the two apart. This listener runs before the flow's, so no FIN goes first.
      if (!(e instanceof MuxStream) && this.host.endedByReset(e))
        return this.dispatch({
          type: 'reset',
          end,
          error: new IpdeadgateError('ECONNRESET', `the ${end} peer reset the connection`),
        });
      this.dispatch({ type: 'fin', end });
    });
    e.on('error', (error: Error) => this.dispatch({ type: 'reset', end, error }));
    if (e instanceof MuxStream) {
      e.on('close', () => this.dispatch({ type: 'gone', end, clean: e.closedCleanly }));
    } else {
      // A relayed socket ends cleanly in the addon (FIN read and sent), not in Node.
      e.on('close', (hadError: boolean) =>
        this.dispatch({ type: 'gone', end, clean: !hadError && (e.readableEnded || !!this.relay?.done) }),
      );
    }
  }

  /** forward: start (the local socket accepted, its stream opened, `answer` pending). */
  startForward(local: net.Socket, answer: Promise<void>): void {
    if (this.openLocal(local)) this.awaitAnswer(answer);
  }

  /** Enter opening with a local socket flowing into the stream; false if that already ended it. */
  private openLocal(local: net.Socket): boolean {
    this.local = local;
    this.enter('opening');
    this.watchEnd('stream', this.stream);
    this.watchEnd('local', local);
    if (this.state !== 'opening') return false;
    prepareSocket(local);
    flow(local, this.stream); // the request flows at once: opening costs no round trip
    return true;
  }

  /** relay: start (`up` came from a peer, `down` goes on to the next hop). */
  startRelay(down: MuxStream, answer: Promise<{ status: number; reason: string }>): void {
    this.local = down;
    this.enter('opening');
    this.watchEnd('stream', this.stream);
    this.watchEnd('local', down);
    if (this.state !== 'opening') return;
    flow(this.stream, down);
    answer.then(
      (a) =>
        this.dispatch(
          a.status === 0
            ? { type: 'answer_ok' }
            : {
                type: 'answer_refused',
                status: a.status,
                reason: a.reason,
                error: new IpdeadgateError('ERR_TUNNEL_REFUSED', a.reason),
              },
        ),
      (error: Error) => this.dispatch({ type: 'reset', end: 'local', error }),
    );
  }

  private awaitAnswer(answer: Promise<void>): void {
    answer.then(
      () => this.dispatch({ type: 'answer_ok' }),
      (error: Error & { refusal?: number; reason?: string }) =>
        this.dispatch(
          error.refusal !== undefined
            ? { type: 'answer_refused', error, status: error.refusal, reason: error.reason ?? '' }
            : { type: 'reset', end: 'stream', error },
        ),
    );
  }

  /** service: dial `target` for the stream. */
  startService(target: HostPort, connect: (t: HostPort) => net.Socket): void {
    this.enter('dialing');
    this.watchEnd('stream', this.stream);
    if (this.state !== 'dialing') return;
    const sock = connect(target);
    this.local = sock;
    sock.once('connect', () => this.dispatch({ type: 'dialed' }));
    this.watchEnd('local', sock);
  }

  /** An already connected socket and stream (CloseGuard.bridge, tests): straight to bridged. */
  startBridged(local: net.Socket, answer?: Promise<void>): void {
    if (!this.openLocal(local)) return;
    if (answer) this.awaitAnswer(answer);
    else this.bridge();
  }

  /** @internal service: the service accepted: answer OK, then bridge. */
  answerAndBridge(): void {
    if (this.stream.destroyed)
      return this.abort('stream_reset', new IpdeadgateError('ECONNRESET', 'stream gone'));
    const sock = this.local as net.Socket;
    prepareSocket(sock);
    this.stream.write(this.answerOk);
    flow(sock, this.stream);
    this.bridge();
  }

  /** @internal The answer is settled: wire the way back, watch the socket, and be bridged. */
  bridge(): void {
    this.enter('answered');
    if (this.bridged) return;
    this.bridged = true;
    // A stream a peer opened held its window at yamux's 256 KiB while its session waited: it has a
    // consumer now, so it gets its full window.
    this.stream.openWindow();
    const bridgedHook = this.onBridged;
    this.onBridged = undefined;
    bridgedHook?.();
    const l = this.local!;
    if (l instanceof MuxStream) {
      if (!this.stream.destroyed) this.stream.write(this.answerOk); // the far end's OK, passed back
      flow(l, this.stream);
    } else {
      if (l.destroyed) return this.abort('local_reset', new IpdeadgateError('ECONNRESET', 'socket gone'));
      bridgeBytes(this, l, this.host.relayAfterBytes);
      if (this.state !== 'answered') return;
      this.watcher = this.host.watch(l, (ev) => {
        if (ev.err) {
          // The local peer reset the connection: seen even if Node is not reading (backpressure).
          this.dispatch({
            type: 'reset',
            end: 'local',
            error: new IpdeadgateError('ECONNRESET', 'the local peer reset the connection'),
          });
        } else if (ev.rdhup || ev.hup) {
          // The local peer's FIN is queued behind data not read yet: the bridge keeps delivering
          // in order, and the session's idle life is bounded from now on.
          this.dispatch({ type: 'fin', end: 'local' });
        }
      });
    }
    if (this.state !== 'answered') return;
    this.enter(this.fins.local || this.fins.stream ? 'half_closed' : 'bridged');
  }

  /** @internal The stream has carried relayAfterBytes: time to hand the session to the addon. */
  movedPast(): void {
    if (this.local && !(this.local instanceof MuxStream) && !this.relay) retryHandover(this, this.local);
  }

  /** @internal HandoverTarget */
  handoverDue(l: net.Socket): boolean {
    return (
      !!this.host.nativeRelay &&
      !this.relay &&
      this.state === 'bridged' &&
      !l.destroyed &&
      !this.stream.destroyed
    );
  }

  /** @internal The addon takes the bytes (./nativebridge.ts); false: they stay on the flows here. */
  startNativeRelay(l: net.Socket): boolean {
    if (!this.host.nativeRelay) return false;
    try {
      this.relay = this.host.nativeRelay(this.stream, l, {
        localEnd: () => this.dispatch({ type: 'fin', end: 'local' }),
        localError: (error) => this.dispatch({ type: 'reset', end: 'local', error }),
      });
    } catch (err) {
      // Half handed over: neither path can carry the session any more.
      this.abort('local_reset', err as Error);
      return true;
    }
    return this.relay !== undefined;
  }

  /** How long no byte has moved either way (ms): the one measure of idleness for close_timeout. */
  idleMs(now: number): number {
    this.sampleActivity(now);
    return now - this.lastChange;
  }

  /** Whether the session has been idle for close_timeout (the reaper asks, src/tunnel/reaper.ts). */
  idlePastCloseTimeout(now: number): boolean {
    return this.idleMs(now) >= this.bounds.closeTimeoutMs;
  }
}
