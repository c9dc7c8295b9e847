// A gateway as detection tracks it, and its state machine written as one (STYLE.md; FRR bfdd's
// handler table is the model): every (state, event) pair that moves a gateway is in
// GATEWAY_TRANSITIONS, and nothing else moves it. The engine fires events; a pair not in the
// table changes nothing, so "revived" while active or "trigger" while dead cannot happen by
// accident.
//
//   active --trigger--> suspect --answered / verification_failed / interface_down--> active
//   active|suspect --no_answer (verdict, active probes) / journal (restart)--> dead
//   dead --revived--> active;   suspect|dead --off--> active
import type { Timer } from '../util/clock';
import type { GatewayState, SocketSample, TriggerKind } from './events';
import type { LinkState } from './interfaces';
import type { Verification } from './ports';
import { gatewayKey } from './routeplan';

export type GatewayEvent =
  /** A trigger (retransmissions, aggregate, neighbour FAILED) made it suspect. */
  | 'trigger'
  /** It answered ARP/NDP: alive, the problem is beyond it. */
  | 'answered'
  /** The verification could not run (an error): back to active, nothing decided. */
  | 'verification_failed'
  /** No ARP/NDP answer to a verification, or active probes missed: dead. */
  | 'no_answer'
  /** Its routes were withdrawn before a restart (the journal says so): dead. */
  | 'journal'
  /** Enough answers in a row to a poll, or to active probes: alive again. */
  | 'revived'
  /** `ipdeadgate off`: every gateway counts as active. */
  | 'off'
  /** Its interface went down or away while it was being verified. */
  | 'interface_down';

export const GATEWAY_TRANSITIONS: Readonly<
  Record<GatewayState, Readonly<Partial<Record<GatewayEvent, GatewayState>>>>
> = {
  active: { trigger: 'suspect', no_answer: 'dead', journal: 'dead' },
  suspect: {
    answered: 'active',
    verification_failed: 'active',
    interface_down: 'active',
    no_answer: 'dead',
    journal: 'dead',
    off: 'active',
  },
  dead: { revived: 'active', off: 'active' },
};

/** The state `event` moves a gateway in `from` to; null when the pair is not a transition. */
export function nextState(from: GatewayState, event: GatewayEvent): GatewayState | null {
  return GATEWAY_TRANSITIONS[from][event] ?? null;
}

export interface Transition {
  at: string;
  from: GatewayState;
  to: GatewayState;
  /** The event, and why. */
  event: GatewayEvent;
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
}

export interface InflightVerification {
  promise: Promise<Verification>;
  startedAt: number;
  speculative: boolean;
}

export interface Gateway {
  key: string;
  address: string;
  family: 4 | 6;
  ifindex: number;
  ifname: string;
  state: GatewayState;
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
  deaths: number[];
  holdDownUntil: number | null;
  pollTimer: Timer | null;
  nextPollAt: number | null;
  polling: boolean;
  lastSightingPoll: number;
  transitions: Transition[];
  active: { intervalMs: number; misses: number; missed: number; timer: Timer | null; answers: number } | null;
  /** Routes currently in the kernel through this gateway (refreshed with the route table). */
  present: boolean;
  /** Its interface: up, down (no ARP/NDP, no verdicts), or absent (deleted; routes wait for its name). */
  link: LinkState;
}

/** A gateway first seen: active, nothing known yet. */
export function newGateway(address: string, ifindex: number, ifname: string, link: LinkState): Gateway {
  return {
    key: gatewayKey(address, ifindex),
    address,
    family: address.includes(':') ? 6 : 4,
    ifindex,
    ifname,
    link,
    state: 'active',
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
