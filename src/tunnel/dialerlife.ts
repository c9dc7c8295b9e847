// A dialer's life as one state machine, in the idiom of src/tunnel/sessionlife.ts: named states, a
// typed union of events, one handler per (state, event) in one table, each state's entry actions in
// one place (enter()).
//
// A LinkDialer (src/tunnel/link.ts) keeps one link to a target up: it dials (TCP, then TLS 1.3),
// hands the secured socket to a Link (whose own life is src/tunnel/linklife.ts), and redials with
// jittered exponential backoff whenever the dial fails or the link goes down. Status shows a dialer
// without a link (idle, dialing, backoff) as 'connecting'. The states and their bounds:
//   idle     made, not started. No bound in time: its owner starts it (or closes it) right away.
//   dialing  the TCP connection and the TLS handshake are under way. Bound: CONNECT_TIMEOUT_MS
//            (15 s) for both together, then the dial fails (ETIMEDOUT) and the dialer backs off.
//   linked   a Link holds the secured socket. No bound in time here: the Link's machine bounds its
//            handshake (handshake_timeout) and its liveness (heartbeat x heartbeat_misses), and
//            reports its end (link_down).
//   backoff  waiting to redial. Bound: backoffDelay(attempt), a random delay in [d/2, d] with
//            d = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS x 2^attempt): 125 ms at the least, 30 s at the
//            most. attempt counts the redials since a link last came up (reset by link_up).
//   closed   terminal: the timer cancelled, the link closed, the dial's socket destroyed, the TLS
//            context freed.
// idle -> dialing -> linked -> backoff -> dialing ... is the normal life; dialing -> backoff on a
// failed dial; any state -> closed on close().
//
// A pair no handler expects (a second start, a link event with no link) is invalid: it is counted
// (`invalid`) and reported through the host, never dropped silently.
import type { Clock, Timer } from '../util/clock';
import { RunToCompletion } from '../util/runqueue';
import type { LinkRefusal } from './linklife';

export type DialerState = 'idle' | 'dialing' | 'linked' | 'backoff' | 'closed';
export const DIALER_STATES: readonly DialerState[] = ['idle', 'dialing', 'linked', 'backoff', 'closed'];

/** dialing: how long the TCP connection and the TLS handshake may take together. */
export const CONNECT_TIMEOUT_MS = 15_000;
/** backoff: the first redial's delay bound, doubled per redial up to the cap. */
export const BACKOFF_BASE_MS = 250;
export const BACKOFF_CAP_MS = 30_000;

/** Jittered exponential backoff: a random delay in [d/2, d] with d doubling from base to cap. */
export function backoffDelay(
  attempt: number,
  baseMs = BACKOFF_BASE_MS,
  capMs = BACKOFF_CAP_MS,
  random: () => number = Math.random,
): number {
  const d = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 20));
  return d / 2 + random() * (d / 2);
}

/** Everything that can happen to a dialer. */
export type DialerEvent =
  /** The owner starts dialing. */
  | { type: 'start' }
  /** TLS is up with the right ALPN: the socket can carry a link. */
  | { type: 'connected' }
  /** The dial failed; `reason` 'tls_error' when no refusal reason names it (a plain dial failure). */
  | { type: 'failed'; reason: LinkRefusal; detail: string; code: string | undefined }
  /** The link's peer said hello: the link is up. */
  | { type: 'link_up' }
  /** The link ended (refused, lost, or closed). */
  | { type: 'link_down'; error: Error | undefined }
  /** The current state's bound passed. */
  | { type: 'timer' }
  /** The owner closes the dialer. */
  | { type: 'close' };

export type DialerEventType = DialerEvent['type'];

/** What the machine holds of a link: it only ever closes it. */
export interface DialedLink {
  close(): void;
}

/** What the machine needs from the dialer it runs (LinkDialer in src/tunnel/link.ts implements it). */
export interface DialerLifeHost<L extends DialedLink> {
  readonly clock: Clock;
  /** The target, for messages. */
  readonly address: string;
  /** The backoff's jitter, in [0, 1). */
  random(): number;
  /** dialing's entry: start the TCP connection and the TLS handshake; the outcome comes as an event. */
  openDial(): void;
  /** Make the link over the secured socket (connected). */
  makeLink(): L;
  /** Destroy the dial's socket, if any (a failed dial's, a link's that went down, on close). */
  destroySocket(): void;
  /** Free the TLS context (closed's entry). */
  freeContext(): void;
  /** Report what happened: the dialer's owner listens. */
  announceLink(link: L): void;
  announceDialFailure(reason: LinkRefusal, detail: string, code: string | undefined): void;
  /** An event no handler expects in this state: already counted, to be logged. */
  announceInvalid(state: DialerState, event: DialerEventType): void;
}

type Life = DialerLife<DialedLink>;
type Handler<E extends DialerEventType> = (d: Life, ev: Extract<DialerEvent, { type: E }>) => void;
type HandlerTable = { [S in DialerState]: { [E in DialerEventType]: Handler<E> } };

const ignore = (): void => undefined;
/** A pair that cannot happen unless the owner or a bound's timer misbehaves: counted, logged. */
const invalid = (d: Life, ev: DialerEvent): void => d.invalidEvent(ev.type);
const onClose: Handler<'close'> = (d) => d.enter('closed');

/** A row per state, a column per event. */
const HANDLERS: HandlerTable = {
  idle: {
    start: (d) => d.enter('dialing'),
    connected: invalid,
    failed: invalid,
    link_up: invalid,
    link_down: invalid,
    timer: invalid, // idle has no bound in time
    close: onClose,
  },
  dialing: {
    start: invalid, // a second start: one dial at a time
    connected: (d) => d.link(),
    failed: (d, ev) => d.dialFailed(ev),
    link_up: invalid,
    link_down: invalid,
    timer: (d) =>
      d.dialFailed({
        type: 'failed',
        reason: 'tls_error',
        detail: `connecting to ${d.host.address} timed out`,
        code: 'ETIMEDOUT',
      }),
    close: onClose,
  },
  linked: {
    start: invalid,
    connected: invalid, // the dial that made the link is over
    failed: invalid, // the link's socket reports its errors to the link, not to the dialer
    link_up: (d) => d.linkUp(),
    link_down: (d, ev) => d.linkDown(ev.error),
    timer: invalid, // linked has no bound in time: its timer was cancelled on entry
    close: onClose,
  },
  backoff: {
    start: invalid,
    connected: invalid,
    failed: invalid, // the failed dial's socket was destroyed and its callbacks disowned
    link_up: invalid,
    link_down: invalid, // the link that went down is forgotten
    timer: (d) => d.enter('dialing'),
    close: onClose,
  },
  // Terminal: a callback queued before the close (the closed link's end, a dial's last error, a
  // start after an early close) has nothing to act on, except that the closed link is forgotten.
  closed: {
    start: ignore,
    connected: ignore,
    failed: ignore,
    link_up: ignore,
    link_down: (d, ev) => d.forgetLink(ev.error),
    timer: ignore,
    close: ignore, // close() is idempotent
  },
};

/** One dialer's state machine and the counters its transitions keep. */
export class DialerLife<L extends DialedLink> {
  state: DialerState = 'idle';
  /** The link while linked (and a closed link until it reports its end). */
  current: L | undefined;
  /** Redials since a link last came up: the backoff's exponent. */
  attempts = 0;
  /** Redials in the dialer's whole life, for status. */
  reconnects = 0;
  /** Why the last dial failed or the last link ended, for status. */
  lastError = '';
  /** Events that no handler expects in the state they came in. */
  invalid = 0;
  private timer: Timer | undefined;
  private readonly events = new RunToCompletion<DialerEvent>((e) =>
    (HANDLERS[this.state][e.type] as Handler<typeof e.type>)(this, e as never),
  );

  constructor(readonly host: DialerLifeHost<L>) {}

  /** Feed an event. Events raised while a handler runs are queued and handled in order after it. */
  dispatch(ev: DialerEvent): void {
    this.events.dispatch(ev);
  }

  // --- transitions (each state entered in one place) ---

  /** @internal Enter a state: cancel the old bound, run the entry action, arm the new bound. */
  enter(next: DialerState): void {
    if (this.state === 'closed') return;
    this.state = next;
    this.timer?.cancel();
    this.timer = undefined;
    switch (next) {
      case 'idle':
      case 'linked':
        return; // no bound in time (see the header)
      case 'dialing':
        this.host.openDial();
        return this.arm(CONNECT_TIMEOUT_MS);
      case 'backoff': {
        const delay = backoffDelay(this.attempts++, BACKOFF_BASE_MS, BACKOFF_CAP_MS, () =>
          this.host.random(),
        );
        this.reconnects++;
        return this.arm(delay);
      }
      case 'closed':
        // A dial in progress must not keep the process alive, nor a link outlive its dialer.
        this.current?.close();
        this.host.destroySocket();
        this.host.freeContext();
        return;
    }
  }

  private arm(ms: number): void {
    const state = this.state;
    this.timer = this.host.clock.setTimeout(() => {
      this.timer = undefined;
      if (this.state === state) this.dispatch({ type: 'timer' });
    }, ms);
  }

  /** @internal dialing: TLS is up: the socket is the link's now. */
  link(): void {
    this.current = this.host.makeLink();
    this.enter('linked');
  }

  /** @internal dialing: the dial failed or timed out: drop its socket, report it, wait to redial. */
  dialFailed(ev: Extract<DialerEvent, { type: 'failed' }>): void {
    this.lastError = ev.detail;
    this.host.destroySocket();
    this.host.announceDialFailure(ev.reason, ev.detail, ev.code);
    this.enter('backoff');
  }

  /** @internal linked: the peer is known, so the next failure starts the backoff afresh. */
  linkUp(): void {
    this.attempts = 0;
    if (this.current) this.host.announceLink(this.current);
  }

  /** @internal linked: the link ended: wait to redial. */
  linkDown(error: Error | undefined): void {
    this.forgetLink(error);
    this.host.destroySocket();
    this.enter('backoff');
  }

  /** @internal */
  forgetLink(error: Error | undefined): void {
    this.lastError = error?.message ?? 'closed';
    this.current = undefined;
  }

  /** @internal */
  invalidEvent(type: DialerEventType): void {
    this.invalid++;
    this.host.announceInvalid(this.state, type);
  }
}
