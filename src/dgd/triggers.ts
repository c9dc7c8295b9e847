// Trigger intake: what makes a gateway suspect. (a) TCP sockets retransmitting through it, seen by
// the socket scan (./scan.ts decides when to dump): a socket crossing retransmit_threshold, or
// many failing sockets within aggregate_window (the aggregate); one retransmission before the
// threshold starts a speculative verification. (a') The same rules for flows seen on the wire
// leaving again towards its MAC (src/sys/packet/wirewatch.ts): the traffic a gateway host forwards,
// which has no socket. (b) The kernel's neighbour entry turning FAILED.
// And sightings: any ARP/NDP packet from a dead gateway polls it at once. Each gateway is found
// by the kernel's own route lookup for the socket. This room only reports; the verdict room
// (./verdicts.ts) verifies and decides.
import { errorMessage } from '../errors';
import type { Clock, Timer } from '../util/clock';
import type { EventLog } from '../util/eventlog';
import type { DgdConfig } from './config';
import { emit, type SocketSample, type TriggerKind } from './events';
import { isDead, type Gateway } from './gateway';
import type { GatewayTable } from './gateways';
import {
  addEvidence,
  failingSocket,
  failingWireFlow,
  flowEvidenceKey,
  inIncident,
  joinIncident,
  socketSample,
} from './incident';
import type { DgdPorts, RouteChoice, ScannedSocket, WireFlowEvent } from './ports';
import { formatEndpoint } from '../sys/ipaddr';
import { lookupCacheKey, socketFlowKey } from './flowkey';
import { gatewayKey } from './routeplan';
import { SocketScanner, type Observation } from './scan';

/** What a trigger says beyond the gateway and its reason (see DgdEvent 'trigger'). */
export interface TriggerDetail {
  sockets?: number;
  samples?: SocketSample[];
  socket?: SocketSample;
  neighbour_state?: string;
}

/** Where triggers go (the verdict room). */
export interface TriggerSink {
  /** g is suspect: verify it and act on the verdict. quiet: a re-verification within an incident. */
  suspect(g: Gateway, kind: TriggerKind, detail: TriggerDetail, quiet: boolean): Promise<void>;
  /**
   * One retransmission before the threshold: verify now, act only if the threshold is hit.
   * quiet: within an incident, where an unchanged verdict is debug detail.
   */
  speculate(g: Gateway, quiet: boolean): void;
  /** Its last verdict is recent enough to stand for a new trigger. */
  verdictFresh(g: Gateway): boolean;
  /** Until when its last verdict stays fresh (-Infinity without one). */
  freshUntil(g: Gateway): number;
  /** The kernel still sends through dead g: a route through it is back; re-read and withdraw. */
  deadGatewayUsed(g: Gateway): Promise<void>;
  /** An ARP/NDP packet from dead g: poll it now. */
  sighted(g: Gateway): void;
}

export interface TriggerOptions {
  ports: DgdPorts;
  clock: Clock;
  log: EventLog;
  gateways: GatewayTable;
  sink: TriggerSink;
  config: () => DgdConfig;
  /** Detection is on and the engine not closed. */
  running: () => boolean;
  /** Every dump's sockets, for the flow resumer (./resume.ts). */
  onSockets: (sockets: readonly ScannedSocket[]) => void;
}

/** Re-verify a gateway for a socket still retransmitting past the threshold at most this often. */
const RETRIGGER_MS = 10_000;
/** Within one incident, sockets already in it re-verify its gateway after this gap, doubling up to the max. */
const RECHECK_FIRST_MS = 2000;
const RECHECK_MAX_MS = 30_000;
/** A sighting of a dead gateway polls it at once, but at most once per this interval. */
const SIGHTING_POLL_MS = 1000;
/** Lookups cached between route events; past this many the cache starts afresh. */
const MAX_LOOKUPS = 65_536;

export class Triggers {
  private readonly scanner: SocketScanner;
  private scanTimer: Timer | null = null;
  private scanning = false;
  private readonly lookupCache = new Map<string, RouteChoice>();
  /** When retransmissions through a dead gateway last made us re-read its routes. */
  private readonly deadRecheckAt = new Map<string, number>();

  constructor(private readonly o: TriggerOptions) {
    this.scanner = new SocketScanner(o.ports, o.clock, (err: unknown) =>
      emit(o.log, { event: 'error', during: 'socket count', error: errorMessage(err) }, 'warn'),
    );
  }

  /** Routes changed: every cached lookup may be wrong now. */
  forgetLookups(): void {
    this.lookupCache.clear();
  }

  scanStatus(): ReturnType<SocketScanner['status']> {
    return this.scanner.status();
  }

  // ---------------------------------------------------------------------------------------------
  // (a) TCP retransmissions seen by sock_diag

  schedule(delayMs: number): void {
    if (!this.o.running()) return;
    this.scanTimer?.cancel();
    this.scanTimer = this.o.clock.setTimeout(() => {
      this.scanTimer = null;
      void this.scanOnce();
    }, delayMs);
  }

  stop(): void {
    this.scanTimer?.cancel();
    this.scanTimer = null;
  }

  /** One scan tick (./scan.ts decides whether to dump and when to look again); act on it. */
  async scanOnce(): Promise<void> {
    if (this.scanning || !this.o.running()) return;
    this.scanning = true;
    const cfg = this.o.config();
    let next = cfg.scan_interval;
    try {
      const result = await this.scanner.tick(cfg);
      if (result) {
        next = result.nextMs;
        this.o.onSockets(result.sockets);
        await this.actOnScan(result.observations);
      }
    } catch (err) {
      emit(this.o.log, { event: 'error', during: 'socket scan', error: errorMessage(err) }, 'error');
    } finally {
      this.scanning = false;
    }
    this.schedule(next);
  }

  /** What one dump's sockets say about their gateways: threshold crossings, the aggregate. */
  private async actOnScan(observations: Observation[]): Promise<void> {
    const cfg = this.o.config();
    // Sockets that crossed the threshold in this dump, per gateway: one trigger for all of them.
    const crossed = new Map<Gateway, SocketSample[]>();
    for (const o of observations) {
      if (cfg.aggregate_sockets > 0 && failingSocket(o, cfg.syn_stall)) await this.countEvidence(o.socket);
      if (o.now > 0 && o.now > o.before) await this.onRetransmission(o.socket, o.before, o.now, crossed);
    }
    const triggers: Promise<void>[] = [];
    for (const [g, samples] of crossed) triggers.push(this.incidentTrigger(g, 'retransmit', samples));
    for (const g of this.o.gateways.values()) {
      if (cfg.aggregate_sockets === 0 || g.state !== 'active' || g.aggregate.size < cfg.aggregate_sockets)
        continue;
      triggers.push(this.incidentTrigger(g, 'aggregate', this.takeAggregate(g)));
    }
    await Promise.all(triggers);
  }

  /** Count a failing socket against its gateway (./incident.ts keeps the window). */
  private async countEvidence(s: ScannedSocket): Promise<void> {
    let choice;
    try {
      choice = await this.routeFor(s);
    } catch {
      return; // the retransmission path reports lookup errors
    }
    if (!choice.gateway) return;
    const g = this.o.gateways.get(gatewayKey(choice.gateway, choice.ifindex));
    if (!g || g.state !== 'active') return;
    const key = flowEvidenceKey(s.src, s.srcPort, s.dst, s.dstPort);
    // The sample (two formatted endpoints) only for a flow not counted yet: most scans count the
    // same failing sockets again.
    addEvidence(g, key, () => socketSample(s), this.o.clock.now(), this.o.config().aggregate_window);
  }

  /**
   * Sockets blame g (all that crossed in one dump, or the aggregate's): one incident. The first
   * trigger of an incident is logged with the count and a few samples and verified; sockets that
   * join it are logged at debug level only.
   */
  private async incidentTrigger(g: Gateway, kind: TriggerKind, samples: SocketSample[]): Promise<void> {
    const { incident: inc, joining, added } = joinIncident(g, samples, this.o.clock.now());
    for (const sock of added)
      emit(
        this.o.log,
        { event: 'trigger_socket', gateway: g.address, interface: g.ifname, reason: kind, socket: sock },
        'debug',
      );
    // Joining an incident: a pending verification that will act, or a fresh "alive" verdict,
    // covers this socket too. Past that the gateway is asked again (it may have died since it
    // answered: a dead server first, then its gateway), but quietly: only a changed verdict is
    // news, so an incident stays one trigger, one verdict. A speculative verification or a fresh
    // "dead" verdict does not cover it: nothing acts on those but a trigger.
    const covered =
      g.state !== 'active' ||
      (g.inflight !== null && !g.inflight.speculative) ||
      (g.inflight === null && this.o.sink.verdictFresh(g) && g.lastVerification?.alive === true);
    if (joining && covered) {
      g.triggers[kind]++;
      // A fresh "alive" verdict covers it only for a while: the scan looks again when it goes
      // stale (sockets stuck past the threshold are otherwise dumped only every QUIET_RESCAN_MS,
      // and g may have died since it answered).
      if (g.state === 'active' && g.inflight === null) this.scanner.lookAgainAt(this.o.sink.freshUntil(g));
      return;
    }
    // Sockets that blamed g before and blame it again (a dead server's keep retransmitting) have
    // nothing new to say each time its verdict goes stale: they ask again with a doubling gap. A
    // socket new to the incident (a new connection failing: maybe g died after all) asks at once.
    if (joining && added.length === 0) {
      const now = this.o.clock.now();
      if (now < (inc.recheckAt ?? 0)) {
        g.triggers[kind]++;
        this.scanner.lookAgainAt(inc.recheckAt!);
        return;
      }
      inc.recheckGapMs = Math.min(RECHECK_MAX_MS, (inc.recheckGapMs ?? RECHECK_FIRST_MS / 2) * 2);
      inc.recheckAt = now + inc.recheckGapMs;
    }
    const detail = { socket: inc.samples[0], sockets: inc.sockets.size, samples: inc.samples };
    await this.o.sink.suspect(g, kind, detail, joining);
  }

  private async onRetransmission(
    s: ScannedSocket,
    before: number,
    now: number,
    crossed: Map<Gateway, SocketSample[]>,
  ): Promise<void> {
    const threshold = this.o.config().retransmit_threshold;
    let choice;
    try {
      choice = await this.routeFor(s);
    } catch (err) {
      emit(
        this.o.log,
        { event: 'error', during: 'route lookup', dst: s.dst, error: errorMessage(err) },
        'warn',
      );
      return;
    }
    if (!choice.gateway) return; // a directly connected peer: no gateway to blame
    const g = this.o.gateways.get(gatewayKey(choice.gateway, choice.ifindex));
    if (!g) return;
    if (isDead(g)) {
      await this.recheckDeadGateway(g);
      return;
    }
    if (now < threshold - 1) return;
    const socket = socketSample(s, now);
    if (now >= threshold) {
      if (!this.blameDue(g, before, now)) return;
      const list = crossed.get(g);
      if (list) list.push(socket);
      else crossed.set(g, [socket]);
    } else if (
      before < threshold - 1 &&
      !g.inflight &&
      g.state === 'active' &&
      !this.o.sink.verdictFresh(g)
    ) {
      // Also within an incident (a server behind g failing a moment ago): the gateway may have died
      // since it answered, and that death must be found as early as any other. Such a verification
      // is quiet unless its verdict changes (an incident stays one trigger, one verdict).
      const quiet = inIncident(g, this.o.clock.now());
      emit(
        this.o.log,
        { event: 'speculative_verify', gateway: g.address, interface: g.ifname, socket },
        quiet ? 'debug' : 'info',
      );
      this.o.sink.speculate(g, quiet);
    }
  }

  /** At most once per scan interval per gateway: withdraw whatever is back through dead g. */
  private async recheckDeadGateway(g: Gateway): Promise<void> {
    const now = this.o.clock.now();
    if (now - (this.deadRecheckAt.get(g.key) ?? -Infinity) < this.o.config().scan_interval) return;
    this.deadRecheckAt.set(g.key, now);
    await this.o.sink.deadGatewayUsed(g);
  }

  // ---------------------------------------------------------------------------------------------
  // (a') segments sent again on the wire

  /**
   * A segment left again towards a next hop: the frame's MAC names the gateway the kernel really
   * used (every managed gateway that MAC belongs to on that interface), so no lookup is needed.
   * The socket's rules, the threshold and the aggregate, but no speculative verification: a
   * verification purges the neighbour entry, and from then on the kernel holds the flow's frames
   * until the gateway answers, so the wire could never show the threshold that a speculative
   * verdict waits for. The verification starts when the evidence is complete, and decides.
   */
  onWire(ev: WireFlowEvent): void {
    if (!this.o.running()) return;
    const cfg = this.o.config();
    for (const address of ev.nextHops) {
      const g = this.o.gateways.find(address, ev.ifindex);
      if (!g || g.family !== ev.family || g.link !== 'up') continue;
      if (isDead(g)) {
        void this.recheckDeadGateway(g);
        continue;
      }
      const sample = {
        src: formatEndpoint(ev.src, ev.srcPort),
        dst: formatEndpoint(ev.dst, ev.dstPort),
        state: ev.syn ? 'SYN-SENT' : 'ESTABLISHED',
        retransmits: ev.count,
        wire: true as const,
      };
      const now = this.o.clock.now();
      if (cfg.aggregate_sockets > 0 && failingWireFlow(ev, cfg.syn_stall) && g.state === 'active') {
        const key = flowEvidenceKey(ev.src, ev.srcPort, ev.dst, ev.dstPort);
        if (addEvidence(g, key, sample, now, cfg.aggregate_window) >= cfg.aggregate_sockets) {
          this.fire(this.incidentTrigger(g, 'aggregate', this.takeAggregate(g)));
          continue;
        }
      }
      if (this.blameDue(g, ev.count - 1, ev.count))
        this.fire(this.incidentTrigger(g, 'retransmit', [sample]));
    }
  }

  /**
   * A flow's retransmissions went from `before` to `now`: it blames g when it crosses
   * retransmit_threshold, and again past it at most every RETRIGGER_MS while g is not being verified.
   */
  private blameDue(g: Gateway, before: number, now: number): boolean {
    const threshold = this.o.config().retransmit_threshold;
    if (now < threshold) return false;
    if (before < threshold) return true;
    const last = g.lastVerification?.at ?? -Infinity;
    return this.o.clock.now() - last >= RETRIGGER_MS && !g.inflight;
  }

  /** g's aggregate evidence has reached aggregate_sockets: take it for one trigger. */
  private takeAggregate(g: Gateway): SocketSample[] {
    const samples = [...g.aggregate.values()].map((e) => e.socket);
    g.aggregate.clear();
    return samples;
  }

  private fire(p: Promise<void>): void {
    p.catch((err: unknown) =>
      emit(this.o.log, { event: 'error', during: 'wire trigger', error: errorMessage(err) }, 'error'),
    );
  }

  /** The route this socket's packets take, by its whole lookup key (./flowkey.ts). */
  private async routeFor(s: ScannedSocket): Promise<RouteChoice> {
    const key = socketFlowKey(s);
    const cacheKey = lookupCacheKey(s.dst, s.src, key);
    const hit = this.lookupCache.get(cacheKey);
    if (hit) return hit;
    const choice = await this.o.ports.lookupRoute(s.dst, s.src, key);
    if (this.lookupCache.size > MAX_LOOKUPS) this.lookupCache.clear();
    this.lookupCache.set(cacheKey, choice);
    return choice;
  }

  // ---------------------------------------------------------------------------------------------
  // (b) the kernel's neighbour entry for a gateway turning FAILED, and sightings

  onNeighbour(address: string, ifindex: number, state: string): void {
    if (!this.o.running() || state !== 'FAILED') return;
    const g = this.o.gateways.find(address, ifindex);
    if (!g || isDead(g) || g.link !== 'up') return;
    void this.o.sink.suspect(g, 'neighbour_failed', { neighbour_state: state }, false);
  }

  /** Any ARP/NDP packet from a dead gateway: it may have come back, poll it now. */
  onSighting(address: string, ifindex: number | undefined, mac: string): void {
    if (!this.o.running()) return;
    const g = this.o.gateways.find(address, ifindex);
    if (!g || !isDead(g) || g.polling || g.link !== 'up') return;
    if (this.o.clock.now() - g.lastSightingPoll < SIGHTING_POLL_MS) return;
    g.lastSightingPoll = this.o.clock.now();
    g.triggers.sighting++;
    emit(this.o.log, { event: 'sighting', gateway: g.address, interface: g.ifname, mac });
    this.o.sink.sighted(g);
  }
}
