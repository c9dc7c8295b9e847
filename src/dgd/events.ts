// Detection's typed events: what the engine reports through the project's event port
// (src/util/eventlog.ts) that something downstream acts on.

import type { EventLog, LogLevel } from '../util/eventlog';

export type GatewayState = 'active' | 'suspect' | 'dead';
export type TriggerKind = 'retransmit' | 'aggregate' | 'neighbour_failed' | 'active_probe' | 'sighting';

/** A socket as events show it ("198.18.1.10:40000", "[2001:db8::1]:443"). */
export interface SocketSample {
  src: string;
  dst: string;
  state: string;
  retransmits: number;
  /** Seen on the wire leaving towards the gateway (a forwarded flow, or a local one), not by the socket scan. */
  wire?: true;
}

/**
 * The events that something downstream acts on (metrics count them, the flight recorder writes a
 * capture on a death): a typed union, so the engine cannot emit one with a field missing and
 * src/daemon/metrics.ts reads typed fields instead of matching names and guessing types. Other
 * events (verify_step, poll, errors, ...) are only logged and stay name + fields.
 */
export type DgdEvent =
  | {
      event: 'trigger';
      gateway: string;
      interface: string;
      reason: TriggerKind;
      /** Sockets in the incident so far, a few of them, and the first (for one-socket triggers). */
      sockets?: number;
      samples?: SocketSample[];
      socket?: SocketSample;
      neighbour_state?: string;
      missed?: number;
    }
  | {
      event: 'verdict';
      gateway: string;
      interface: string;
      alive: boolean;
      speculative: boolean;
      mac: string | null;
      arp_rtt_ms: number | null;
      echo_rtt_ms: number | null;
      probes_sent: number;
      duration_ms: number;
    }
  | {
      event: 'state';
      gateway: string;
      interface: string;
      from: GatewayState;
      to: GatewayState;
      /** The machine's phase entered (src/dgd/gateway.ts): dead, held_down, ... */
      phase: string;
      reason: string;
    }
  | {
      /** A change between the dead phases (held down, waiting for an interface): state stays dead. */
      event: 'phase';
      gateway: string;
      interface: string;
      from: string;
      to: string;
      reason: string;
    }
  | {
      event: 'downstream_problem';
      gateway: string;
      interface: string;
      reason: TriggerKind;
      note: string;
      sockets?: number;
      samples?: SocketSample[];
      socket?: SocketSample;
      neighbour_state?: string;
    }
  | {
      event: 'routes_withdrawn';
      gateway: string;
      interface: string;
      reason: string;
      routes: string[];
      /** How many of them its owner had put back through the dead gateway. */
      readded?: number;
    }
  | {
      event: 'routes_restored';
      /** null: every route (off, SIGTERM). */
      gateway: string | null;
      interface?: string;
      reason: string;
      routes: string[];
      waiting_for_interface?: string[];
      note?: string;
    }
  | {
      /** Routes of a routing daemon in dgd.owners through a dead gateway: the daemon was told. */
      event: 'routes_handed_over';
      gateway: string;
      interface: string;
      /** frr or bird. */
      owner: string;
      reason: string;
      routes: string[];
      /** What is configured in the routing daemon now. */
      applied: string[];
      /** Destinations left alone (keep_last_route). */
      kept: string[];
      /** false: the routing daemon could not be told (see the error event). */
      ok: boolean;
    }
  | {
      /**
       * After a route change, conntrack entries whose source NAT bound them to an interface their
       * flow no longer leaves by were deleted (./conntrackfollow.ts).
       */
      event: 'conntrack_followed';
      /** The gateway whose routes changed; null: every withdrawn route went back (off, stop). */
      gateway: string | null;
      interface: string | null;
      after: 'withdrawal' | 'restore';
      /** The interfaces whose addresses' entries were examined. */
      interfaces: string[];
      examined: number;
      deleted: number;
      kept: number;
      /** Gone before they could be deleted (expired, or deleted by someone else). */
      gone?: number;
      /** Cut at dgd.conntrack.max_entries: the rest keep their binding until they expire. */
      truncated: boolean;
      ms: number;
      /** A few deleted flows (original tuple, and the address they were translated to). */
      samples?: string[];
    }
  | {
      event: 'capture_written';
      gateway: string;
      interface: string | null;
      file: string;
      dead_at: string;
      packets: number;
      bytes: number;
      /** Older capture files removed to stay within the bounds. */
      removed_files: string[];
    };

/**
 * Every other event detection reports: logged (and counted by name in metrics), read by operators
 * and tests. Typed like the union above, so no event goes out with a field missing or misspelt.
 */
export type DgdLogEvent =
  | {
      /** Something failed; `during` says what was being done. Nothing is dropped because of it. */
      event: 'error';
      during: string;
      error: string;
      gateway?: string;
      interface?: string;
      dst?: string;
      route?: string;
      nexthop?: string;
      owner?: string;
      dead_gateways?: string[];
    }
  | { event: 'dgd_started'; enabled: boolean; tables: number[]; gateways: string[] }
  | { event: 'dgd_on' | 'dgd_off' }
  | { event: 'config_reloaded'; tables: number[] }
  | {
      event: 'journal_loaded';
      entries: number;
      nexthop_groups: number;
      owners?: Record<string, string[]>;
      enabled: boolean;
      this_boot: number;
      earlier_boot: number;
      unknown_boot: number;
    }
  | { event: 'journal_reconciled'; route?: string; nexthop?: string; op: string }
  | { event: 'trigger_socket'; gateway: string; interface: string; reason: TriggerKind; socket: SocketSample }
  | { event: 'speculative_verify'; gateway: string; interface: string; socket: SocketSample }
  | { event: 'sighting'; gateway: string; interface: string; mac: string }
  | { event: 'active_probing'; gateway: string; interface: string; interval_ms: number; misses: number }
  | { event: 'verdict_reused'; gateway: string; alive: boolean; age_ms: number }
  | ({ event: 'verify_step'; gateway: string; interface: string } & Record<string, unknown>)
  | { event: 'mac_changed'; gateway: string; known_mac: string | null; seen_mac: string; trusted: boolean }
  /** Another MAC answered for the gateway besides (or instead of) its known one: never a death by itself. */
  | {
      event: 'neighbour_conflict';
      gateway: string;
      interface: string;
      known_mac: string | null;
      seen_macs: string[];
      /** Did the known MAC answer too (the verdict stayed alive)? */
      known_answered: boolean;
    }
  /** The gateway's known MAC moved: the kernel's entry followed a new MAC (VRRP takeover, a replaced router). */
  | {
      event: 'neighbour_moved';
      gateway: string;
      interface: string;
      from: string | null;
      to: string;
      by: 'kernel' | 'verification';
      kernel_state?: string;
    }
  | { event: 'poll'; gateway: string; interface: string; answers: number; needed: number }
  | { event: 'held_down'; gateway: string; until_ms: number }
  | { event: 'flap_damping'; gateway: string; deaths_in_window: number; hold_down_ms: number }
  | {
      event: 'invalid_gateway_event';
      gateway: string;
      interface: string;
      phase: string;
      gateway_event: string;
    }
  | { event: 'routes_waiting'; gateway: string; interface: string; routes: string[]; note: string }
  /** A withdrawal whose turn came after its gateway revived (or detection went off): nothing done. */
  | { event: 'withdrawal_skipped'; gateway: string; interface: string; reason: string; note: string }
  /** A dead gateway's neighbour entry deleted, so the packets parked in it go the new way. */
  | { event: 'neighbour_flushed'; gateway: string; interface: string; reason: string }
  | { event: 'route_kept'; gateway: string; reason: string; routes: string[] }
  | {
      event: 'route_readded';
      gateway: string;
      interface: string;
      route: string;
      owner: string | null;
      routing_daemon: string | null;
      note: string;
    }
  | {
      event: 'route_fight';
      gateway: string;
      interface: string;
      route: string;
      owner: string | null;
      routing_daemon: string | null;
      rewithdrawals: number;
      window_ms: number;
      note: string;
    }
  | { event: 'route_dropped'; route: string; reason: string; interface?: string | null; absent_ms?: number }
  | { event: 'nexthop_group_dropped'; nexthop: string; reason: string }
  | { event: 'nexthop_group_gone'; nexthop: string; note?: string }
  | {
      event: 'interface_renumbered';
      interface: string;
      old_ifindex: number;
      ifindex: number;
      note: string;
    }
  | {
      event: 'gateway_interface';
      gateway: string;
      interface: string;
      ifindex: number;
      from: string;
      to: string;
    }
  | {
      event: 'flows_resent';
      gateway: string;
      interface: string;
      flows: number;
      resent: number;
      detail: unknown[];
    }
  | { event: 'conntrack_unavailable'; note: string }
  | { event: 'owner_ready'; owner: string; version: string; mode: 'found' | 'configured' }
  | { event: 'owner_unreachable'; owner: string; error: string; note: string; hint: string }
  | {
      event: 'routes_unprotected';
      owner: string;
      routes: string[];
      error: string | null;
      hint: string | null;
    }
  | { event: 'owner_unconfigured'; owner: string; dead_gateways: string[]; hint: string }
  | {
      event: 'owner_told';
      owner: string;
      dead_gateways: string[];
      reason: string;
      applied: string[];
      kept: string[];
    }
  | { event: 'owner_problem'; owner: string; problem: string };

export type DgdEventName = DgdEvent['event'];

/** Log a typed event through the port (its fields are the union member's, minus the name). */
export function emit(log: EventLog, ev: DgdEvent | DgdLogEvent, level: LogLevel = 'info'): void {
  const { event, ...fields } = ev;
  log.event(event, fields, level);
}

const str = (v: unknown): v is string => typeof v === 'string';
const strOrNull = (v: unknown): v is string | null => v === null || typeof v === 'string';
const numOrNull = (v: unknown): v is number | null => v === null || typeof v === 'number';
const strings = (v: unknown): v is string[] => Array.isArray(v) && v.every(str);

/**
 * The typed event behind a name and its fields, as they travel through an EventLog; null for
 * events outside the union or fields of the wrong shape (a consumer must never throw on a log line).
 */
export function asDgdEvent(name: string, f: Record<string, unknown>): DgdEvent | null {
  const ev = { event: name, ...f } as DgdEvent;
  switch (ev.event) {
    case 'trigger':
    case 'downstream_problem':
      return str(ev.gateway) && str(ev.reason) ? ev : null;
    case 'verdict':
      return str(ev.gateway) && typeof ev.alive === 'boolean' && numOrNull(ev.arp_rtt_ms) ? ev : null;
    case 'state':
    case 'phase':
      return str(ev.gateway) && str(ev.from) && str(ev.to) ? ev : null;
    case 'routes_withdrawn':
      return str(ev.gateway) && strings(ev.routes) ? ev : null;
    case 'routes_restored':
      return strOrNull(ev.gateway) && strings(ev.routes) ? ev : null;
    case 'routes_handed_over':
      return str(ev.gateway) && str(ev.owner) && strings(ev.routes) ? ev : null;
    case 'capture_written':
      return str(ev.gateway) ? ev : null;
    case 'conntrack_followed':
      return strOrNull(ev.gateway) && typeof ev.deleted === 'number' && str(ev.after) ? ev : null;
    default:
      return null;
  }
}
