// A gateway as detection tracks it, and its life as one state machine, written as
// src/tunnel/sessionlife.ts writes a session's: a table of handlers per phase and event, so every
// phase's reaction to every event is in one place, and one entry action per phase.
//
//   active   --trigger--> suspect  --answered | verification_failed | interface_down--> active
//   active | suspect --no_answer (a verdict, or active probes missed) | journal (restart)--> dead
//   dead     --answers: revived--> active
//            --answers, but flap damping holds it: held--> held_down  --revived--> active
//            --answers, but an interface of its routes is down or gone: routes_waiting-->
//              waiting_for_interface --revived--> active
//   held_down | waiting_for_interface --still_dead (a poll unanswered)--> dead
//   suspect | dead | held_down | waiting_for_interface --off--> active
//   dead phases: still_dead polls again later; sighted and interface_up poll at once.
//
// Bounds: suspect lasts one verification (verify_probes x verify_timeout, then the verdict);
// dead is polled every slow_poll_interval (a journal entry at once); held_down ends at its
// hold-down (at most an hour); waiting_for_interface is polled every slow_poll_interval and at
// once when the interface is back; active has none.
//
// `state` is what status and events show (active, suspect, dead): the three dead phases are all
// "dead" to the operator (routes withdrawn); `phase` says which. A (phase, event) pair the table
// marks invalid changes nothing, and is logged and counted (the rooms must never send one).
import type { Clock, Timer } from '../util/clock';
import type { EventLog, LogLevel } from '../util/eventlog';
import { emit, type GatewayState, type SocketSample, type TriggerKind } from './events';
import type { InterfacePresence } from './interfaces';
import type { Verification } from './ports';
import { gatewayKey } from './routeplan';

export type GatewayPhase = 'active' | 'suspect' | 'dead' | 'held_down' | 'waiting_for_interface';
export const GATEWAY_PHASES: readonly GatewayPhase[] = [
  'active',
  'suspect',
  'dead',
  'held_down',
  'waiting_for_interface',
];

/** Everything that can happen to a gateway. */
export type GatewayEvent =
  /** A trigger (retransmissions, aggregate, neighbour FAILED) made it suspect: verify it. */
  | { type: 'trigger'; kind: TriggerKind }
  /** It answered ARP/NDP: alive, the problem is beyond it. */
  | { type: 'answered' }
  /** The verification could not run (an error): nothing decided. */
  | { type: 'verification_failed' }
  /** No ARP/NDP answer to a verification, or active probes missed: dead. */
  | { type: 'no_answer' }
  /** Its routes were withdrawn before a restart (a journal says so): dead, polled at once. */
  | { type: 'journal' }
  /** Enough answers in a row, and every route of it is back: alive again. */
  | { type: 'revived' }
  /** Enough answers in a row, but flap damping holds it dead until `until` (clock ms). */
  | { type: 'held'; until: number }
  /** Enough answers in a row, but some of its routes wait for their interface. */
  | { type: 'routes_waiting' }
  /** A poll found it silent: poll again after slow_poll_interval. */
  | { type: 'still_dead' }
  /** An ARP/NDP packet from it was seen (it may have rebooted): poll it now. */
  | { type: 'sighted' }
  /** Its interface is up again (or was re-created): poll it now. */
  | { type: 'interface_up' }
  /** `ipdeadgate off`: every gateway counts as active. */
  | { type: 'off' }
  /** Its interface went down or away. */
  | { type: 'interface_down' };
export type GatewayEventType = GatewayEvent['type'];

export const PHASE_STATE: Readonly<Record<GatewayPhase, GatewayState>> = {
  active: 'active',
  suspect: 'suspect',
  dead: 'dead',
  held_down: 'dead',
  waiting_for_interface: 'dead',
};

export interface Transition {
  at: string;
  from: GatewayState;
  to: GatewayState;
  /** The phase entered (a change between dead phases keeps `from` and `to` "dead"). */
  phase: GatewayPhase;
  /** The event, and why. */
  event: GatewayEventType;
  reason: string;
}

/**
 * One incident: the sockets that blamed one gateway, from the first trigger until none has joined
 * for a quiet period. Its trigger and verdict are logged once (with the count and a few samples);
 * each further socket only at debug level.
 */
export interface Incident {
  startedAt: number;
  lastJoinAt: number;
  sockets: Set<string>;
  samples: SocketSample[];
  /**
   * Sockets already in the incident ask the gateway again no sooner than this (clock ms), the gap
   * doubling each time (./triggers.ts); absent: at the next stale verdict.
   */
  recheckAt?: number;
  recheckGapMs?: number;
}

export interface InflightVerification {
  promise: Promise<Verification>;
  startedAt: number;
  speculative: boolean;
}

export interface ActiveProbing {
  intervalMs: number;
  misses: number;
  missed: number;
  timer: Timer | null;
  answers: number;
}

export interface Gateway {
  key: string;
  address: string;
  family: 4 | 6;
  ifindex: number;
  ifname: string;
  /** What status shows; written only by the machine below, with `phase`. */
  state: GatewayState;
  phase: GatewayPhase;
  mac: string | null;
  lastVerification: (Verification & { at: number }) | null;
  inflight: InflightVerification | null;
  triggers: Record<TriggerKind, number>;
  /** The incident in progress: every socket that blames g until it has been quiet a while. */
  incident: Incident | null;
  /** The aggregate trigger's evidence: socket key -> when it was seen failing, within the window. */
  aggregate: Map<string, { at: number; socket: SocketSample }>;
  verifications: number;
  deadSince: number | null;
  /** When it died recently (clock ms), for flap damping. */
  deaths: number[];
  holdDownUntil: number | null;
  pollTimer: Timer | null;
  nextPollAt: number | null;
  polling: boolean;
  lastSightingPoll: number;
  transitions: Transition[];
  active: ActiveProbing | null;
  /** Routes currently in the kernel through this gateway (refreshed with the route table). */
  present: boolean;
  /** Its interface: up, down (no ARP/NDP, no verdicts), or absent (deleted; routes wait for its name). */
  link: InterfacePresence;
}

/** A gateway first seen: active, nothing known yet. */
export function newGateway(
  address: string,
  ifindex: number,
  ifname: string,
  link: InterfacePresence,
): Gateway {
  return {
    key: gatewayKey(address, ifindex),
    address,
    family: address.includes(':') ? 6 : 4,
    ifindex,
    ifname,
    link,
    state: 'active',
    phase: 'active',
    mac: null,
    lastVerification: null,
    inflight: null,
    triggers: { retransmit: 0, aggregate: 0, neighbour_failed: 0, active_probe: 0, sighting: 0 },
    incident: null,
    aggregate: new Map(),
    verifications: 0,
    deadSince: null,
    deaths: [],
    holdDownUntil: null,
    pollTimer: null,
    nextPollAt: null,
    polling: false,
    lastSightingPoll: -Infinity,
    transitions: [],
    active: null,
    present: true,
  };
}

/** A gateway is dead in any of its dead phases (routes withdrawn or handed over). */
export function isDead(g: Gateway): boolean {
  return g.state === 'dead';
}

/** What the machine needs from the engine: time, the log, and the slow poll's timer. */
export interface GatewayHost {
  readonly clock: Clock;
  readonly log: EventLog;
  readonly slowPollMs: number;
  readonly flap: { limit: number; windowMs: number; holdDownMs: number };
  /** Poll g after delayMs (replacing a scheduled poll). */
  schedulePoll(g: Gateway, delayMs: number): void;
  cancelPoll(g: Gateway): void;
}

/** Longest hold-down of a flapping gateway. */
export const MAX_HOLD_DOWN_MS = 3_600_000;
const MAX_TRANSITIONS = 32;

type Handler<E extends GatewayEventType> = (
  m: GatewayMachine,
  g: Gateway,
  ev: Extract<GatewayEvent, { type: E }>,
  reason: string,
  level: LogLevel,
) => void;
type HandlerTable = { [P in GatewayPhase]: { [E in GatewayEventType]: Handler<E> } };
/** A handler for any event (the table's shared ones). */
type AnyHandler = (m: GatewayMachine, g: Gateway, ev: GatewayEvent, reason: string, level: LogLevel) => void;

/** The event means nothing in this phase, by design (off for an active gateway, ...). */
const ignore = (): void => undefined;
/** The rooms must never send this event in this phase: logged and counted, nothing changes. */
const invalid: AnyHandler = (m, g, ev) => m.invalid(g, ev.type);
/** The phase each entering handler leads to, so the table can be drawn without running it. */
const ENTERS = new Map<AnyHandler, GatewayPhase>();
const to = (phase: GatewayPhase): AnyHandler => {
  const handler: AnyHandler = (m, g, ev, reason, level) => m.enter(g, phase, ev, reason, level);
  ENTERS.set(handler, phase);
  return handler;
};

/** Poll g again after slow_poll_interval (it stays in its phase). */
const pollLater: AnyHandler = (m, g) => m.host.schedulePoll(g, m.host.slowPollMs);
/** Poll g at once (a sighting, its interface back). */
const pollNow: AnyHandler = (m, g) => m.host.schedulePoll(g, 0);

/** A row per phase, a column per event. */
const HANDLERS: HandlerTable = {
  active: {
    trigger: to('suspect'),
    answered: invalid,
    verification_failed: invalid,
    no_answer: to('dead'), // active probes missed: the probes are the verdict
    journal: to('dead'),
    revived: invalid,
    held: invalid,
    routes_waiting: invalid,
    still_dead: invalid,
    sighted: ignore, // a live gateway's ARP traffic
    interface_up: ignore,
    off: ignore,
    interface_down: ignore,
  },
  suspect: {
    trigger: ignore, // one verification at a time; the running one covers this trigger too
    answered: to('active'),
    verification_failed: to('active'),
    no_answer: to('dead'),
    journal: to('dead'),
    revived: invalid,
    held: invalid,
    routes_waiting: invalid,
    still_dead: invalid,
    sighted: ignore,
    interface_up: ignore,
    off: to('active'),
    interface_down: to('active'), // no verdict on a link that is down: nothing decided
  },
  dead: {
    trigger: ignore, // retransmissions through a dead gateway re-read its routes instead
    answered: ignore, // a late verdict of a verification that started before the death
    verification_failed: ignore,
    no_answer: ignore,
    journal: ignore,
    revived: to('active'),
    held: to('held_down'),
    routes_waiting: to('waiting_for_interface'),
    still_dead: pollLater,
    sighted: pollNow,
    interface_up: pollNow,
    off: to('active'),
    interface_down: ignore, // polls pause while it is down; interface_up polls at once
  },
  held_down: {
    trigger: ignore,
    answered: ignore,
    verification_failed: ignore,
    no_answer: ignore,
    journal: ignore,
    revived: to('active'),
    held: to('held_down'),
    routes_waiting: to('waiting_for_interface'),
    still_dead: to('dead'), // silent again when the hold-down ended
    sighted: ignore, // the hold-down's end polls it
    interface_up: pollNow,
    off: to('active'),
    interface_down: ignore,
  },
  waiting_for_interface: {
    trigger: ignore,
    answered: ignore,
    verification_failed: ignore,
    no_answer: ignore,
    journal: ignore,
    revived: to('active'),
    held: to('held_down'),
    routes_waiting: pollLater, // still waiting: the verdict room logged which routes
    still_dead: to('dead'), // the interface is back, but the gateway is silent
    sighted: pollNow,
    interface_up: pollNow,
    off: to('active'),
    interface_down: ignore,
  },
};

/**
 * Each phase's entry actions, in one place. `from` is the phase left (equal to the entered one
 * when a dead phase is entered again, e.g. a second hold-down).
 */
const ENTRY: {
  [P in GatewayPhase]: (m: GatewayMachine, g: Gateway, ev: GatewayEvent, from: GatewayPhase) => void;
} = {
  active: (m, g, _ev, from) => {
    g.deadSince = null;
    g.holdDownUntil = null;
    m.host.cancelPoll(g);
    if (from === 'suspect') return;
    if (g.active) g.active.missed = 0;
    // The death is over: a later one is a new incident (its own trigger event, and a speculative
    // verification again), not a join of this one.
    g.incident = null;
  },
  suspect: () => undefined,
  dead: (m, g, ev, from) => {
    const h = m.host;
    if (PHASE_STATE[from] !== 'dead') {
      g.deadSince = h.clock.now();
      if (ev.type === 'no_answer') m.countDeath(g);
    }
    // A death is polled after slow_poll_interval; a gateway the journal says is dead, at once.
    h.schedulePoll(g, ev.type === 'journal' ? 0 : h.slowPollMs);
  },
  held_down: (m, g, ev) => {
    const h = m.host;
    const until = ev.type === 'held' ? ev.until : (g.holdDownUntil ?? h.clock.now());
    g.holdDownUntil = until;
    emit(h.log, { event: 'held_down', gateway: g.address, until_ms: Math.round(until - h.clock.now()) });
    h.schedulePoll(g, until - h.clock.now());
  },
  waiting_for_interface: (m, g) => m.host.schedulePoll(g, m.host.slowPollMs),
};

/** Drives every gateway through the table; the only writer of `state`, `phase` and `transitions`. */
export class GatewayMachine {
  /** (phase, event) pairs that the table marks invalid, as they happened: "phase:event" -> count. */
  readonly invalidPairs = new Map<string, number>();

  constructor(readonly host: GatewayHost) {}

  /** Fire an event at g; `reason` goes into the transition and the state event. */
  fire(g: Gateway, ev: GatewayEvent, reason: string, level: LogLevel = 'info'): void {
    const handler = HANDLERS[g.phase][ev.type] as AnyHandler;
    handler(this, g, ev, reason, level);
  }

  /** @internal from the table: move g to `phase` and run its entry action. */
  enter(g: Gateway, phase: GatewayPhase, ev: GatewayEvent, reason: string, level: LogLevel): void {
    const fromPhase = g.phase;
    const from = g.state;
    const toState = PHASE_STATE[phase];
    g.transitions.push({
      at: new Date(this.host.clock.wallNow()).toISOString(),
      from,
      to: toState,
      phase,
      event: ev.type,
      reason,
    });
    if (g.transitions.length > MAX_TRANSITIONS) g.transitions.shift();
    g.phase = phase;
    g.state = toState;
    if (from !== toState)
      emit(
        this.host.log,
        { event: 'state', gateway: g.address, interface: g.ifname, from, to: toState, phase, reason },
        level,
      );
    else
      emit(this.host.log, {
        event: 'phase',
        gateway: g.address,
        interface: g.ifname,
        from: fromPhase,
        to: phase,
        reason,
      });
    ENTRY[phase](this, g, ev, fromPhase);
  }

  /** @internal from the table: an event the rooms must never send in this phase. */
  invalid(g: Gateway, event: GatewayEventType): void {
    const pair = `${g.phase}:${event}`;
    this.invalidPairs.set(pair, (this.invalidPairs.get(pair) ?? 0) + 1);
    emit(
      this.host.log,
      {
        event: 'invalid_gateway_event',
        gateway: g.address,
        interface: g.ifname,
        phase: g.phase,
        gateway_event: event,
      },
      'error',
    );
  }

  /**
   * Flap damping: a gateway that died more than flap_limit times within flap_window is held dead
   * for an exponentially growing hold-down once it answers again.
   */
  countDeath(g: Gateway): void {
    const now = this.host.clock.now();
    const { limit, windowMs, holdDownMs } = this.host.flap;
    g.deaths = g.deaths.filter((t) => now - t <= windowMs);
    g.deaths.push(now);
    if (g.deaths.length <= limit) return;
    const excess = g.deaths.length - limit;
    const hold = Math.min(MAX_HOLD_DOWN_MS, holdDownMs * 2 ** (excess - 1));
    g.holdDownUntil = now + hold;
    emit(
      this.host.log,
      { event: 'flap_damping', gateway: g.address, deaths_in_window: g.deaths.length, hold_down_ms: hold },
      'warn',
    );
  }
}

/** What a table cell does: enter a phase, poll (staying in the phase), ignore, or refuse. */
export type GatewayCell = GatewayPhase | 'poll_later' | 'poll_now' | 'ignored' | 'invalid';

/** The table, for tests and docs: what each event does in each phase. */
export function gatewayTable(): Record<GatewayPhase, Record<GatewayEventType, GatewayCell>> {
  const out = {} as Record<GatewayPhase, Record<GatewayEventType, GatewayCell>>;
  for (const p of GATEWAY_PHASES) {
    out[p] = {} as Record<GatewayEventType, GatewayCell>;
    for (const e of Object.keys(HANDLERS[p]) as GatewayEventType[]) {
      const h = HANDLERS[p][e] as AnyHandler;
      if (h === ignore) out[p][e] = 'ignored';
      else if (h === invalid) out[p][e] = 'invalid';
      else if (h === pollLater) out[p][e] = 'poll_later';
      else if (h === pollNow) out[p][e] = 'poll_now';
      else out[p][e] = ENTERS.get(h)!;
    }
  }
  return out;
}
