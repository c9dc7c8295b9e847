// Incidents an operator can read: one record per incident (trigger -> verification -> verdict ->
// withdrawal / routing daemons told / flows resent / conntrack moved -> polls -> revival ->
// restore, or a downstream problem with nothing moved), built from detection's events alone (a
// wrapped EventLog, like the flight recorder and the metrics), kept in the state directory by
// ./incidentstore.ts and read by `ipdeadgate incidents`.
//
// An incident opens at the first event that blames a gateway (a trigger, a speculative
// verification, a verdict or a state change) and collects every event about that gateway until it
// ends: for a dead gateway when it is usable again and its routes are back (or when every route
// was put back by `off` or a stop), for a downstream problem at the alive verdict (a new trigger
// within DOWNSTREAM_JOIN_MS joins it again). Open incidents are saved as they change and read back
// at start, so a restart in the middle of an outage continues the same record.
import { normalizeIp } from '../sys/ipaddr';
import type { EventLog } from '../util/eventlog';
import { INCIDENT_QUIET_MS } from '../dgd/incident';
import {
  IncidentStore,
  type IncidentOutcome,
  type IncidentRecord,
  type SocketSampleRecord,
  type TimelineEntry,
} from './incidentstore';

/** Sockets or flows kept as samples of what triggered an incident. */
export const INCIDENT_SAMPLE_LIMIT = 10;
/** Flows whose segments a capture holds, named in the record. */
const SEGMENT_FLOW_LIMIT = 64;
/** Timeline entries one record keeps (the middle is dropped first, and counted). */
export const TIMELINE_LIMIT = 300;
/** Entries for sockets joining an incident after its trigger, and for unanswered slow polls. */
const JOIN_ENTRIES = 20;
const POLL_ENTRIES = 3;
/** Items of a list (routes, flows) and characters of a string kept in an entry's detail. */
const DETAIL_ITEMS = 20;
const DETAIL_CHARS = 300;
/** Bytes of one entry's detail (as JSON) at most: past it the detail is cut to a JSON excerpt. */
const DETAIL_BYTES = 4096;
/**
 * A downstream problem that comes back this soon joins its last record again: a problem beyond a
 * live gateway that lasts hours is one record, not hundreds pushing real failovers out.
 */
export const DOWNSTREAM_JOIN_MS = 5 * 60_000;
/** Events kept while the records of a previous run are read back at start. */
const EARLY_LIMIT = 1000;

/** What metrics learn from incidents (./metrics.ts). */
export interface IncidentObserver {
  switched(gateway: string, seconds: number): void;
  resumed(gateway: string, seconds: number): void;
  ended(outcome: IncidentOutcome): void;
}

interface Live {
  record: IncidentRecord;
  t0: number;
  /** Verification steps seen before their verdict (placed by the verdict's duration). */
  steps: { at_ms: number; step: string; detail?: string; seen: number }[];
  joins: number;
  lastAt: number;
  revivedAt: number | null;
  switched: boolean;
  /** Counted in the outcome metric (once, even if a downstream incident is joined again). */
  counted: boolean;
}

type Fields = Record<string, unknown>;

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const strings = (v: unknown): string[] =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];

function normalize(ip: string): string {
  try {
    return normalizeIp(ip);
  } catch {
    return ip;
  }
}

/** An event's fields cut to a size a record can hold. */
function bounded(v: unknown, depth = 0): unknown {
  if (typeof v === 'string') return v.length > DETAIL_CHARS ? `${v.slice(0, DETAIL_CHARS)}...` : v;
  if (Array.isArray(v)) {
    const out = v.slice(0, DETAIL_ITEMS).map((x) => bounded(x, depth + 1));
    if (v.length > DETAIL_ITEMS) out.push(`... ${v.length - DETAIL_ITEMS} more`);
    return out;
  }
  if (v && typeof v === 'object') {
    if (depth > 3) return '...';
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Fields)) out[k] = bounded(x, depth + 1);
    return out;
  }
  return v;
}

function sampleOf(v: unknown): SocketSampleRecord | null {
  const s = v as Partial<SocketSampleRecord> | null;
  if (!s || typeof s.src !== 'string' || typeof s.dst !== 'string') return null;
  return {
    src: s.src,
    dst: s.dst,
    state: typeof s.state === 'string' ? s.state : '',
    retransmits: typeof s.retransmits === 'number' ? s.retransmits : 0,
    ...(s.wire ? { wire: true } : {}),
  };
}

function describeSample(s: SocketSampleRecord): string {
  const how = s.wire ? 'on the wire' : s.state;
  return `${s.src} > ${s.dst} (${how}, ${s.retransmits} retransmission${s.retransmits === 1 ? '' : 's'})`;
}

/** "2 routes, 1 group, frr told, 3 flows resent, 4 conntrack entries deleted" or "nothing". */
export function movedLine(r: IncidentRecord): string {
  const parts: string[] = [];
  const n = (k: number, one: string, many = `${one}s`) => `${k} ${k === 1 ? one : many}`;
  if (r.routes_withdrawn.length) parts.push(n(r.routes_withdrawn.length, 'route'));
  if (r.groups_changed.length) parts.push(n(r.groups_changed.length, 'group'));
  const told = [...new Set(r.owners_told.map((o) => o.owner))];
  if (told.length) parts.push(`${told.join('+')} told`);
  if (r.flows_resent?.resent) parts.push(`${n(r.flows_resent.resent, 'flow')} resent`);
  if (r.conntrack?.deleted) parts.push(`${r.conntrack.deleted} conntrack deleted`);
  if (r.routes_kept.length) parts.push(`${n(r.routes_kept.length, 'route')} kept (keep_last_route)`);
  return parts.length ? parts.join(', ') : 'nothing';
}

function outcomeOf(r: IncidentRecord): IncidentOutcome {
  if (r.verdict === 'alive') return 'downstream_problem';
  if (r.verdict !== 'dead') return 'unverified';
  return r.routes_withdrawn.length || r.groups_changed.length || r.owners_told.length
    ? 'failover'
    : 'nothing_moved';
}

export class IncidentRecorder {
  private readonly open = new Map<string, Live>();
  /** Downstream incidents just ended: a trigger within DOWNSTREAM_JOIN_MS joins them again. */
  private readonly recent = new Map<string, Live>();
  /** The last ended incident of each gateway with a dead verdict (its capture may come later). */
  private readonly ended = new Map<string, Live>();
  private closed = false;
  /** Events that arrived before load() finished (replayed after it; bounded). */
  private early: [string, Fields, number][] | null = [];

  constructor(
    readonly store: IncidentStore,
    private readonly observer: IncidentObserver | null = null,
    private readonly now: () => number = Date.now,
  ) {}

  /** Continue the incidents a previous run left open. */
  async load(): Promise<void> {
    try {
      await this.loadOpen();
    } finally {
      const early = this.early ?? [];
      this.early = null;
      for (const [name, f, at] of early) this.onEvent(name, f, at);
    }
  }

  private async loadOpen(): Promise<void> {
    for (const r of await this.store.load()) {
      const t0 = Date.parse(r.started_at);
      this.open.set(r.gateway, {
        record: r,
        t0,
        steps: [],
        joins: JOIN_ENTRIES,
        lastAt: this.now(),
        revivedAt: null,
        switched: r.switch_ms !== null,
        counted: false,
      });
    }
  }

  /** An EventLog that forwards everything to `inner` and records the events about gateways. */
  wrap(inner: EventLog): EventLog {
    return {
      event: (name, fields = {}, level) => {
        inner.event(name, fields, level);
        if (this.closed) return;
        if (this.early) {
          if (this.early.length < EARLY_LIMIT) this.early.push([name, fields, this.now()]);
          return;
        }
        try {
          this.onEvent(name, fields);
        } catch {
          /* a record is never worth detection's event path */
        }
      },
    };
  }

  /** Open incidents (for status and tests). */
  openIncidents(): IncidentRecord[] {
    return [...this.open.values()].map((l) => l.record);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.store.flush();
  }

  onEvent(name: string, f: Fields, now = this.now()): void {
    if (name === 'owner_told' || name === 'owner_unconfigured') {
      for (const key of strings(f.dead_gateways)) {
        const l = this.open.get(normalize(key.slice(0, key.lastIndexOf('%'))));
        if (l) this.ownerEvent(l, name, f, now);
      }
      return;
    }
    const gw = str(f.gateway);
    if (gw === null) {
      // Every route put back (off, SIGTERM): the incidents still open end with it.
      if (name === 'routes_restored') for (const l of [...this.open.values()]) this.restored(l, f, now);
      else if (name === 'conntrack_followed') for (const l of this.open.values()) this.conntrack(l, f, now);
      return;
    }
    const key = normalize(gw);
    let l = this.open.get(key);
    // An undecided incident gone quiet (no verdict followed its trigger) ends when a new one begins.
    if (l && l.record.verdict !== 'dead' && now - l.lastAt > INCIDENT_QUIET_MS && this.opens(name, f)) {
      this.end(l, l.lastAt, false);
      l = undefined;
    }
    if (!l && this.opens(name, f)) l = this.begin(key, f, now);
    // A capture is written `after` seconds past the verdict: a gateway back sooner has its
    // incident ended by then, and the capture still belongs to it.
    if (!l && name.startsWith('capture_')) l = this.ended.get(key);
    if (!l) return;
    l.lastAt = now;
    this.apply(l, name, f, now);
  }

  private opens(name: string, f: Fields): boolean {
    if (name === 'trigger' || name === 'speculative_verify' || name === 'downstream_problem') return true;
    if (name === 'state') return f.to === 'suspect' || f.to === 'dead';
    return name === 'verdict' && f.alive === false;
  }

  private begin(key: string, f: Fields, now: number): Live {
    const again = this.recent.get(key);
    if (again && now - again.lastAt <= DOWNSTREAM_JOIN_MS) {
      this.recent.delete(key);
      again.record.ended_at = null;
      this.open.set(key, again);
      return again;
    }
    this.recent.delete(key);
    const r: IncidentRecord = {
      version: 1,
      id: this.store.allocateId(),
      gateway: key,
      interface: str(f.interface) ?? '',
      started_at: new Date(now).toISOString(),
      ended_at: null,
      verdict: null,
      outcome: 'unverified',
      switch_ms: null,
      outage_ms: null,
      moved: 'nothing',
      trigger: null,
      durations: { to_verdict_ms: null, to_switch_ms: null, to_resume_ms: null, outage_ms: null },
      verification: [],
      routes_withdrawn: [],
      groups_changed: [],
      routes_kept: [],
      routes_restored: [],
      owners_told: [],
      flows_resent: null,
      conntrack: null,
      polls: 0,
      capture: null,
      timeline: [],
      timeline_dropped: 0,
    };
    const l: Live = {
      record: r,
      t0: now,
      steps: [],
      joins: 0,
      lastAt: now,
      revivedAt: null,
      switched: false,
      counted: false,
    };
    this.open.set(key, l);
    return l;
  }

  private entry(l: Live, at: number, event: string, text: string, detail?: Fields): void {
    const r = l.record;
    const e: TimelineEntry = { t_ms: Math.round(at - l.t0), at: new Date(at).toISOString(), event, text };
    if (detail && Object.keys(detail).length) {
      e.detail = bounded(detail) as Fields;
      const json = JSON.stringify(e.detail);
      if (json.length > DETAIL_BYTES) e.detail = { excerpt: `${json.slice(0, DETAIL_BYTES / 2)}...` };
    }
    if (r.timeline.length >= TIMELINE_LIMIT) {
      // Keep the beginning (the cause) and the end (the latest): drop from the middle.
      r.timeline.splice(Math.floor(TIMELINE_LIMIT / 2), 1);
      r.timeline_dropped++;
    }
    // Verification steps are placed back in time: keep the timeline sorted.
    let i = r.timeline.length;
    while (i > 0 && r.timeline[i - 1]!.t_ms > e.t_ms) i--;
    r.timeline.splice(i, 0, e);
  }

  private addSamples(l: Live, samples: SocketSampleRecord[], sockets: number | null): void {
    const r = l.record;
    r.trigger ??= { reason: 'unknown', sockets: 0, samples: [] };
    for (const s of samples) {
      if (r.trigger.samples.some((x) => x.src === s.src && x.dst === s.dst)) continue;
      if (r.trigger.samples.length < INCIDENT_SAMPLE_LIMIT) r.trigger.samples.push(s);
    }
    r.trigger.sockets = Math.max(r.trigger.sockets, sockets ?? 0, r.trigger.samples.length);
  }

  private apply(l: Live, name: string, f: Fields, now: number): void {
    const r = l.record;
    const { gateway: _g, interface: _i, ...rest } = f;
    switch (name) {
      case 'trigger': {
        const samples = [...(Array.isArray(f.samples) ? f.samples : []), f.socket]
          .map(sampleOf)
          .filter((s) => s !== null);
        const first = r.trigger === null || r.trigger.reason === 'unknown';
        this.addSamples(l, samples, num(f.sockets));
        if (first) r.trigger!.reason = str(f.reason) ?? 'unknown';
        const who = samples[0] ? `: ${describeSample(samples[0])}` : '';
        const count = num(f.sockets) ?? samples.length;
        this.entry(
          l,
          now,
          name,
          `trigger (${String(f.reason)})${count > 1 ? `, ${count} sockets/flows` : ''}${who}`,
          rest,
        );
        break;
      }
      case 'trigger_socket':
      case 'speculative_verify': {
        const s = sampleOf(f.socket);
        if (s) this.addSamples(l, [s], null);
        if (name === 'speculative_verify')
          this.entry(l, now, name, `speculative verification${s ? `: ${describeSample(s)}` : ''}`, rest);
        else if (l.joins++ < JOIN_ENTRIES && s) this.entry(l, now, name, `joined: ${describeSample(s)}`);
        else r.timeline_dropped++;
        break;
      }
      case 'verify_step':
        l.steps.push({
          at_ms: num(f.at_ms) ?? 0,
          step: str(f.step) ?? '?',
          ...(str(f.detail) ? { detail: str(f.detail)! } : {}),
          seen: now,
        });
        break;
      case 'verdict':
      case 'verdict_reused': {
        const alive = f.alive === true;
        const duration = num(f.duration_ms);
        // The steps ran during the verification: from the verdict back by its duration.
        const start = duration !== null ? now - duration : null;
        // Until the dead verdict, each step is shown; the slow polls after it are summed up by
        // their poll events (their steps would bury the timeline).
        const polling = r.verdict === 'dead';
        for (const s of l.steps.splice(0)) {
          if (polling) continue;
          const at = start !== null ? start + s.at_ms : s.seen;
          r.verification.push({
            t_ms: Math.round(at - l.t0),
            step: s.step,
            ...(s.detail ? { detail: s.detail } : {}),
          });
          if (r.verification.length > 100) r.verification.shift();
          this.entry(l, at, 'verify_step', `verify: ${s.step}${s.detail ? ` ${s.detail}` : ''}`);
        }
        if (polling) break;
        r.verdict = alive ? 'alive' : 'dead';
        r.durations.to_verdict_ms ??= Math.round(now - l.t0);
        const how = alive
          ? `alive (${f.mac ? `${String(f.mac)} ` : ''}answered${num(f.arp_rtt_ms) !== null ? ` in ${num(f.arp_rtt_ms)} ms` : ''})`
          : name === 'verdict_reused'
            ? 'dead'
            : `dead (no answer to ${String(f.probes_sent ?? '?')} probes)`;
        const took =
          name === 'verdict_reused'
            ? `, from a verification ${String(f.age_ms)} ms old`
            : duration !== null
              ? `, verification took ${duration} ms`
              : '';
        this.entry(
          l,
          now,
          name,
          `${name === 'verdict_reused' ? 'verdict reused' : 'verdict'}: ${how}${took}`,
          rest,
        );
        break;
      }
      case 'state': {
        this.entry(
          l,
          now,
          name,
          `state ${String(f.from)} -> ${String(f.to)} (${String(f.reason ?? '')})`,
          rest,
        );
        if (f.to === 'dead') r.verdict = 'dead';
        // The routes come back before the state changes (verdicts.ts revive): the end of it.
        if (f.to === 'active' && f.from === 'dead') {
          l.revivedAt = now;
          this.end(l, now, true);
        } else if (f.to === 'active' && r.verdict !== 'dead') this.end(l, now, false);
        break;
      }
      case 'downstream_problem':
        r.verdict = 'alive';
        this.entry(
          l,
          now,
          name,
          `downstream problem: the gateway answered, nothing moved${f.note ? ` (${String(f.note)})` : ''}`,
          rest,
        );
        this.end(l, now, false);
        break;
      case 'routes_withdrawn': {
        const all = strings(f.routes);
        const groups = all.filter((x) => x.startsWith('nexthop id'));
        const routes = all.filter((x) => !x.startsWith('nexthop id'));
        r.routes_withdrawn.push(...routes.filter((x) => !r.routes_withdrawn.includes(x)));
        r.groups_changed.push(...groups.filter((x) => !r.groups_changed.includes(x)));
        this.entry(
          l,
          now,
          name,
          `withdrew ${routes.length} route(s), changed ${groups.length} group(s)`,
          rest,
        );
        if (all.length) this.switched(l, now);
        break;
      }
      case 'routes_handed_over': {
        const told = {
          owner: str(f.owner) ?? '?',
          routes: strings(f.routes),
          applied: strings(f.applied),
          kept: strings(f.kept),
          ok: f.ok !== false,
        };
        r.owners_told.push(bounded(told) as typeof told);
        if (r.owners_told.length > 20) r.owners_told.shift();
        this.entry(
          l,
          now,
          name,
          `${told.owner} told: ${told.routes.length} route(s) handed over${told.ok ? '' : ' (FAILED: see the error event)'}`,
          rest,
        );
        if (told.ok && told.routes.length) this.switched(l, now);
        break;
      }
      case 'route_kept':
        r.routes_kept.push(...strings(f.routes).filter((x) => !r.routes_kept.includes(x)));
        this.entry(
          l,
          now,
          name,
          `kept ${strings(f.routes).length} route(s): the last route to their destination (keep_last_route)`,
          rest,
        );
        break;
      case 'flows_resent':
        r.flows_resent = {
          flows: num(f.flows) ?? 0,
          resent: num(f.resent) ?? 0,
          detail: bounded(Array.isArray(f.detail) ? f.detail : []) as unknown[],
        };
        this.entry(
          l,
          now,
          name,
          `resent a segment of ${String(f.resent)} of ${String(f.flows)} flow(s) through the new next hop`,
          rest,
        );
        break;
      case 'conntrack_followed':
        this.conntrack(l, f, now);
        break;
      case 'poll': {
        r.polls++;
        const answered = (num(f.answers) ?? 0) > 0;
        if (answered || r.polls <= POLL_ENTRIES)
          this.entry(
            l,
            now,
            name,
            `poll ${r.polls}: ${String(f.answers)} of ${String(f.needed)} answers needed`,
            rest,
          );
        else r.timeline_dropped++;
        break;
      }
      case 'routes_restored':
        this.restored(l, f, now);
        break;
      case 'capture_written':
        r.capture = {
          ...(r.capture ?? {}),
          file: str(f.file) ?? '',
          packets: num(f.packets) ?? 0,
          bytes: num(f.bytes) ?? 0,
        };
        this.entry(l, now, name, `capture written: ${String(f.file)} (${String(f.packets)} packets)`);
        break;
      case 'capture_segments': {
        const first = f.first_via_new_gateway as { ts_ms?: number; flow?: string; mac?: string } | null;
        const cap = (r.capture ??= { file: str(f.file) ?? '', packets: 0, bytes: 0 });
        cap.segments = num(f.segments) ?? 0;
        cap.flows = strings(f.flows).slice(0, SEGMENT_FLOW_LIMIT);
        cap.first_segment_via_new_gateway = null;
        if (first && typeof first.ts_ms === 'number') {
          const t = Math.round(first.ts_ms - l.t0);
          cap.first_segment_via_new_gateway = {
            at: new Date(first.ts_ms).toISOString(),
            t_ms: t,
            flow: String(first.flow),
            mac: String(first.mac),
          };
          r.durations.to_resume_ms ??= t;
          this.observer?.resumed(r.gateway, t / 1000);
          this.entry(
            l,
            first.ts_ms,
            'first_segment',
            `first segment through the new next hop: ${String(first.flow)} to ${String(first.mac)}`,
          );
        }
        break;
      }
      default:
        if (
          name === 'error' ||
          name.startsWith('route') ||
          name.startsWith('owner') ||
          name.startsWith('capture') ||
          [
            'phase',
            'held_down',
            'flap_damping',
            'mac_changed',
            'sighting',
            'active_probing',
            'gateway_interface',
            'invalid_gateway_event',
          ].includes(name)
        )
          this.entry(
            l,
            now,
            name,
            `${name.replace(/_/g, ' ')}${f.reason ? `: ${String(f.reason)}` : f.error ? `: ${String(f.error)}` : f.note ? `: ${String(f.note)}` : ''}`,
            rest,
          );
        break;
    }
    this.persist(l);
  }

  private ownerEvent(l: Live, name: string, f: Fields, now: number): void {
    if (name === 'owner_told')
      this.entry(
        l,
        now,
        name,
        `${String(f.owner)} told the dead gateways (${strings(f.applied).length} applied, ${strings(f.kept).length} kept)`,
        f,
      );
    else
      this.entry(
        l,
        now,
        name,
        `${String(f.owner)} is not configured in dgd.owners: ${String(f.hint ?? '')}`,
        f,
      );
    this.persist(l);
  }

  private conntrack(l: Live, f: Fields, now: number): void {
    const r = l.record;
    const prev = r.conntrack ?? { deleted: 0, examined: 0, samples: [] };
    r.conntrack = {
      deleted: prev.deleted + (num(f.deleted) ?? 0),
      examined: prev.examined + (num(f.examined) ?? 0),
      samples: [...prev.samples, ...strings(f.samples)].slice(0, INCIDENT_SAMPLE_LIMIT),
    };
    const { gateway: _g, interface: _i, ...rest } = f;
    this.entry(
      l,
      now,
      'conntrack_followed',
      `conntrack after ${String(f.after)}: ${String(f.deleted)} of ${String(f.examined)} entries deleted (their flows leave by another interface now)`,
      rest,
    );
    this.persist(l);
  }

  private switched(l: Live, now: number): void {
    if (l.switched) return;
    l.switched = true;
    const ms = Math.round(now - l.t0);
    l.record.durations.to_switch_ms = ms;
    l.record.switch_ms = ms;
    this.observer?.switched(l.record.gateway, ms / 1000);
  }

  private restored(l: Live, f: Fields, now: number): void {
    const r = l.record;
    r.routes_restored.push(...strings(f.routes).filter((x) => !r.routes_restored.includes(x)));
    const { gateway: _g, interface: _i, ...rest } = f;
    this.entry(
      l,
      now,
      'routes_restored',
      `restored ${strings(f.routes).length} route(s)${f.reason ? ` (${String(f.reason)})` : ''}`,
      rest,
    );
    // Every route put back (off, a stop): the incident ends with it. A gateway's own restore is
    // followed by its state change (revived), or by routes_waiting when some wait for an interface.
    if (f.gateway === null || f.gateway === undefined) this.end(l, now, true);
    else this.persist(l);
  }

  private end(l: Live, now: number, outage: boolean): void {
    const r = l.record;
    r.ended_at = new Date(now).toISOString();
    if (outage && r.verdict === 'dead') {
      r.durations.outage_ms = Math.round(now - l.t0);
      r.outage_ms = r.durations.outage_ms;
    }
    this.open.delete(r.gateway);
    if (r.verdict !== 'dead') this.recent.set(r.gateway, l);
    else this.ended.set(r.gateway, l);
    this.persist(l);
    if (!l.counted) this.observer?.ended(r.outcome);
    l.counted = true;
  }

  private persist(l: Live): void {
    const r = l.record;
    r.outcome = outcomeOf(r);
    r.moved = movedLine(r);
    this.store.save(r);
  }
}
