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

export type DgdEventName = DgdEvent['event'];

/** Log a typed event through the port (its fields are the union member's, minus the name). */
export function emit(log: EventLog, ev: DgdEvent, level: LogLevel = 'info'): void {
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
      return str(ev.gateway) && str(ev.from) && str(ev.to) ? ev : null;
    case 'routes_withdrawn':
      return str(ev.gateway) && strings(ev.routes) ? ev : null;
    case 'routes_restored':
      return strOrNull(ev.gateway) && strings(ev.routes) ? ev : null;
    case 'routes_handed_over':
      return str(ev.gateway) && str(ev.owner) && strings(ev.routes) ? ev : null;
    case 'capture_written':
      return str(ev.gateway) ? ev : null;
    default:
      return null;
  }
}
