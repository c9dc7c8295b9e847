// A link's life as one state machine, in the idiom of src/tunnel/sessionlife.ts: named states, a
// typed union of events, one handler per (state, event) in one table, each state's entry actions in
// one place (enter()).
//
// A Link (src/tunnel/link.ts) exists once TLS is up with a peer whose certificate chains to our CA;
// dialing the TCP connection and the TLS handshake are LinkDialer's and LinkListener's, before any
// Link (status shows a dialer without a link as 'connecting'). So the machine has no connecting
// state:
//   handshake  waiting for the peer's hello on the control stream (docs/protocol.md "The control
//              stream"). Bound: handshake_timeout (default 10 s), then refused (handshake_timeout).
//   up         the peer said who it is, its certificate vouches for that name and tunnel.peers lets
//              it link: streams flow and announcements (tell) are taken. No bound in time; its
//              liveness is bounded by the heartbeat (heartbeat x heartbeat_misses closes the link).
//   refusing   we refused the link (or the peer did, with a bye): our bye, if any, is on its way and
//              the link closes. Bound: one turn of the event loop (the bye is written first).
//   down       the yamux session is closed and the socket destroyed. Terminal.
// handshake -> up -> down is the normal life; any state but down -> refusing -> down on a refusal;
// any state -> down when the session closes (link error, heartbeat loss, close()).
//
// A pair no handler expects (a second hello, a tell before the hello) is invalid: it is counted
// (`invalid`) and reported as an event through the host, never dropped silently.
import type { Clock, Timer } from '../util/clock';
import { RunToCompletion } from '../util/runqueue';

export type LinkState = 'handshake' | 'up' | 'refusing' | 'down';
export const LINK_STATES: readonly LinkState[] = ['handshake', 'up', 'refusing', 'down'];

/** Why a link was refused: stable names, used in log events, status and metrics. */
export type LinkRefusal =
  | 'cert_expired'
  | 'cert_not_yet_valid'
  | 'unknown_ca'
  | 'wrong_purpose'
  | 'no_certificate'
  | 'bad_certificate'
  | 'name_mismatch'
  | 'peer_not_allowed'
  | 'protocol_version'
  | 'handshake_timeout'
  | 'too_many_handshakes'
  | 'refused_by_peer'
  | 'tls_error';

/** Everything that can happen to a link. */
export type LinkEvent =
  /** The peer's hello: who it says it is, its role, the services it reaches. */
  | { type: 'hello'; name: string; role: string; services: Record<string, number> }
  /** The peer's services changed. */
  | { type: 'tell'; services: Record<string, number> }
  /** The peer refused the link (a bye on the control stream, or a refused control stream). */
  | { type: 'bye'; detail: string }
  /** We refuse the link; `tellPeer`: say why on the control stream first. */
  | { type: 'refuse'; reason: LinkRefusal; detail: string; tellPeer: boolean }
  /** A control line that is not a well-formed message (not JSON, not an object with a string type, wrong fields). */
  | { type: 'garbled'; error: Error }
  /** The rules about what peers may announce changed (a reload). */
  | { type: 'rules_changed' }
  /** The current state's bound passed. */
  | { type: 'timeout' }
  /** The yamux session closed (link error, heartbeat loss, close()). */
  | { type: 'closed'; error: Error | undefined };

export type LinkEventType = LinkEvent['type'];

/** What the machine needs from the link it runs (src/tunnel/link.ts implements it). */
export interface LinkLifeHost {
  readonly clock: Clock;
  /** The peer's address, for messages. */
  readonly remote: string;
  readonly handshakeTimeoutMs: number;
  /** Why a peer that says it is `name` may not link (its certificate, tunnel.peers), or undefined. */
  vetPeer(name: string): { reason: LinkRefusal; detail: string } | undefined;
  /** What of `services` this peer may announce (tunnel.peers). */
  filterAnnounced(services: Record<string, number>): Record<string, number>;
  /** Tell the peer why it is refused, on the control stream. */
  sendBye(reason: LinkRefusal, detail: string): void;
  /** Close the session after what is queued has been written (refusing's exit). */
  closeAfterFlush(reason: LinkRefusal, detail: string): void;
  /** Close the session now. */
  close(error: Error): void;
  /** Destroy the transport (down's entry). */
  destroyTransport(): void;
  /** Report what happened: the link's owner listens. */
  announceUp(): void;
  announceTell(): void;
  announceRefused(reason: LinkRefusal, detail: string): void;
  announceDown(error: Error | undefined): void;
  /** An event no handler expects in this state: already counted, to be logged. */
  announceInvalid(state: LinkState, event: LinkEventType): void;
}

type Handler<E extends LinkEventType> = (l: LinkLife, ev: Extract<LinkEvent, { type: E }>) => void;
type HandlerTable = { [S in LinkState]: { [E in LinkEventType]: Handler<E> } };

const ignore = (): void => undefined;
/** A pair that cannot happen unless a peer misbehaves or a bound's timer misfires: counted, logged. */
const invalid = (l: LinkLife, ev: LinkEvent): void => l.invalidEvent(ev.type);
const onRefuse: Handler<'refuse'> = (l, ev) => l.refuse(ev.reason, ev.detail, ev.tellPeer);
const onBye: Handler<'bye'> = (l, ev) => l.refuse('refused_by_peer', ev.detail, false);
const onGarbled: Handler<'garbled'> = (l, ev) => l.host.close(ev.error);
const onClosed: Handler<'closed'> = (l, ev) => l.down(ev.error);

/** A row per state, a column per event. */
const HANDLERS: HandlerTable = {
  handshake: {
    hello: (l, ev) => l.admit(ev),
    tell: invalid, // a tell before the hello
    bye: onBye,
    garbled: onGarbled,
    refuse: onRefuse,
    rules_changed: ignore, // the hello is filtered with the rules of its time
    timeout: (l) =>
      l.refuse(
        'handshake_timeout',
        `link ${l.host.remote}: no hello within ${l.host.handshakeTimeoutMs} ms`,
        true,
      ),
    closed: onClosed,
  },
  up: {
    hello: invalid, // a second hello: the name is bound once
    tell: (l, ev) => l.takeAnnouncement(ev.services),
    bye: onBye,
    garbled: onGarbled,
    refuse: onRefuse,
    rules_changed: (l) => l.takeAnnouncement(l.announced),
    timeout: invalid, // up has no bound in time: its timer was cancelled on entry
    closed: onClosed,
  },
  // Control messages that were on their way when we refused are moot.
  refusing: {
    hello: ignore,
    tell: ignore,
    bye: ignore,
    garbled: ignore,
    refuse: ignore, // already refusing: the first reason stands
    rules_changed: ignore,
    timeout: invalid, // refusing's timer was cancelled on entry
    closed: onClosed,
  },
  // Terminal: whatever still arrives (a callback queued before the close) has nothing to act on.
  down: {
    hello: ignore,
    tell: ignore,
    bye: ignore,
    garbled: ignore,
    refuse: ignore,
    rules_changed: ignore,
    timeout: ignore,
    closed: ignore,
  },
};

/** One link's state machine and the peer facts its transitions establish. */
export class LinkLife {
  state: LinkState = 'handshake';
  peerName = '';
  peerRole = '';
  /** What the peer may announce, after tunnel.peers. */
  peerServices: Record<string, number> = {};
  /** What the peer announced, before tunnel.peers filtered it. */
  announced: Record<string, number> = {};
  /** Events that no handler expects in the state they came in. */
  invalid = 0;
  private timer: Timer | undefined;
  private readonly events = new RunToCompletion<LinkEvent>((e) =>
    (HANDLERS[this.state][e.type] as Handler<typeof e.type>)(this, e as never),
  );

  constructor(readonly host: LinkLifeHost) {
    this.enter('handshake');
  }

  /** Feed an event. Events raised while a handler runs are queued and handled in order after it. */
  dispatch(ev: LinkEvent): void {
    this.events.dispatch(ev);
  }

  // --- transitions (each state entered in one place) ---

  private enter(next: LinkState): void {
    if (this.state === 'down' && next !== 'down') return;
    this.state = next;
    this.timer?.cancel();
    this.timer = undefined;
    switch (next) {
      case 'handshake':
        return this.arm(this.host.handshakeTimeoutMs);
      case 'up':
        return this.host.announceUp();
      case 'refusing':
        return; // the exit is refuse()'s closeAfterFlush, within one turn of the loop
      case 'down':
        this.host.destroyTransport();
        return;
    }
  }

  private arm(ms: number): void {
    const state = this.state;
    this.timer = this.host.clock.setTimeout(() => {
      this.timer = undefined;
      if (this.state === state) this.dispatch({ type: 'timeout' });
    }, ms);
  }

  /** @internal handshake: the peer's hello. Its name must pass the vetting, else it is refused. */
  admit(ev: Extract<LinkEvent, { type: 'hello' }>): void {
    const refusal = this.host.vetPeer(ev.name);
    if (refusal) return this.refuse(refusal.reason, refusal.detail, true);
    this.peerName = ev.name;
    this.peerRole = ev.role;
    this.announced = ev.services;
    this.peerServices = this.host.filterAnnounced(ev.services); // by the name just bound
    this.enter('up');
  }

  /** @internal up: the peer's services, or the rules about them, changed. */
  takeAnnouncement(services: Record<string, number>): void {
    this.announced = services;
    this.peerServices = this.host.filterAnnounced(services);
    this.host.announceTell();
  }

  /** @internal Refuse: a bye first if asked, report it, close once the bye is written. */
  refuse(reason: LinkRefusal, detail: string, tellPeer: boolean): void {
    this.enter('refusing');
    if (tellPeer) this.host.sendBye(reason, detail);
    this.host.announceRefused(reason, detail);
    this.host.closeAfterFlush(reason, detail);
  }

  /** @internal The session closed. */
  down(error: Error | undefined): void {
    this.enter('down');
    this.host.announceDown(error);
  }

  /** @internal */
  invalidEvent(type: LinkEventType): void {
    this.invalid++;
    this.host.announceInvalid(this.state, type);
  }
}
