// Flows resume the moment routes switch. When a dead gateway's routes are withdrawn, a TCP socket
// that was retransmitting through it would wait for its backed-off retransmission timer (1.6 s
// after the third retransmission at the default threshold), and a connecting socket whose SYN is
// parked in the dead gateway's neighbour entry is aborted when that entry is flushed or fails: the
// kernel retransmits only when the timer fires. So while sockets retransmit through a gateway their segments are
// recorded off the wire (ports.watchFlows), and the moment the gateway's routes are withdrawn the
// latest segment of each is sent again through the route the kernel now chooses
// (ports.resendSegment). The peer acknowledges it (or, for a SYN, answers with its SYN-ACK), and
// that answer restarts the socket at once. docs/failover.md explains why this and not the
// RFC 6069 ICMP revert, with the kernel code both rely on.
//
// Touches only flows that the detection scan saw retransmitting and that the kernel routed through
// the gateway declared dead, that are not bound to an interface, and whose route no longer goes
// through it; each at most once per withdrawal, at most MAX_FLOWS_PER_GATEWAY per gateway.
import { emit } from './events';
import { errorMessage } from '../errors';
import { formatEndpoint } from '../sys/ipaddr';
import type { EventLog } from '../util/eventlog';
import type { ResendOutcome, ResumeFlow, ResumePorts, RouteChoice, ScannedSocket } from './ports';
import { socketFlowKey } from './flowkey';
import { gatewayKey } from './routeplan';

/** Most flows recorded and resent per gateway (an incident with more resends only these). */
export const MAX_FLOWS_PER_GATEWAY = 64;
/**
 * After resending a SYN, how long routesSwitched waits before returning, so that its caller's
 * neighbour flush comes after the peer's SYN-ACK: the flush drops the socket's own SYN parked in
 * the dead gateway's unresolved neighbour entry, and the ICMP unreachable that drop sends back
 * aborts a socket still in SYN-SENT (tcp_v4_err / tcp_v6_err: tcp_done_with_error).
 */
export const SYN_ANSWER_GRACE_MS = 200;

interface Watched {
  flow: ResumeFlow;
  state: string;
  gatewayKey: string;
  gateway: string;
  ifname: string;
}

const keyOf = (f: ResumeFlow): string => `${f.src}|${f.srcPort}|${f.dst}|${f.dstPort}`;

export class FlowResumer {
  private readonly watched = new Map<string, Watched>();
  /** Flows whose route lookup is under way or found no gateway, so each is looked up once. */
  private readonly ignored = new Set<string>();
  /** The flows each interface's recorder was last given. */
  private readonly perInterface = new Map<string, Set<string>>();
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly ports: ResumePorts,
    private readonly log: EventLog,
    private readonly sleep: (ms: number) => Promise<void>,
  ) {}

  /**
   * Each detection scan's sockets: those retransmitting now (timer pending, at least one
   * retransmission) and routed through a gateway are recorded; the others are forgotten.
   */
  observe(sockets: readonly ScannedSocket[]): Promise<void> {
    return this.serially(async () => {
      const live = new Set<string>();
      for (const s of sockets) {
        if (s.timer !== 1 || s.timerRetransmits < 1 || (s.ifindex ?? 0) !== 0) continue;
        const flow: ResumeFlow = {
          family: s.family,
          src: s.src,
          srcPort: s.srcPort,
          dst: s.dst,
          dstPort: s.dstPort,
          key: socketFlowKey(s),
        };
        const key = keyOf(flow);
        live.add(key);
        const known = this.watched.get(key);
        if (known) {
          known.state = s.state;
          continue;
        }
        if (this.ignored.has(key)) continue;
        let route: RouteChoice;
        try {
          route = await this.ports.lookupRoute(s.dst, s.src, flow.key);
        } catch {
          this.ignored.add(key);
          continue;
        }
        if (!route.gateway) {
          this.ignored.add(key);
          continue;
        }
        const gKey = gatewayKey(route.gateway, route.ifindex);
        let count = 0;
        for (const w of this.watched.values()) if (w.gatewayKey === gKey) count++;
        if (count >= MAX_FLOWS_PER_GATEWAY) continue;
        this.watched.set(key, {
          flow,
          state: s.state,
          gatewayKey: gKey,
          gateway: route.gateway,
          ifname: route.ifname,
        });
      }
      for (const k of this.watched.keys()) if (!live.has(k)) this.watched.delete(k);
      for (const k of this.ignored) if (!live.has(k)) this.ignored.delete(k);
      this.syncWatchers();
    });
  }

  /**
   * The routes through a gateway were just withdrawn: resend each of its flows' latest segment.
   * Resolves once they are sent (and, after a SYN, SYN_ANSWER_GRACE_MS later).
   */
  routesSwitched(gateway: { address: string; ifindex: number; ifname: string }): Promise<void> {
    let synSent = false;
    const done = this.serially(async () => {
      const gKey = gatewayKey(gateway.address, gateway.ifindex);
      const mine = [...this.watched.entries()].filter(([, w]) => w.gatewayKey === gKey);
      if (mine.length === 0) return;
      const results: Record<string, unknown>[] = [];
      let resent = 0;
      for (const [key, w] of mine) {
        // Once per withdrawal: a flow still stuck afterwards is the kernel's to retransmit.
        this.watched.delete(key);
        this.ignored.add(key);
        let outcome: ResendOutcome;
        try {
          const now = await this.ports.lookupRoute(w.flow.dst, w.flow.src, w.flow.key);
          if (now.gateway === w.gateway && now.ifname === w.ifname)
            outcome = { sent: false, reason: 'no other route' };
          else outcome = await this.ports.resendSegment(w.ifname, w.flow);
        } catch (err) {
          outcome = { sent: false, reason: errorMessage(err) };
        }
        if (outcome.sent) resent++;
        if (outcome.sent && outcome.syn) synSent = true;
        if (results.length < 16)
          results.push({
            src: formatEndpoint(w.flow.src, w.flow.srcPort),
            dst: formatEndpoint(w.flow.dst, w.flow.dstPort),
            state: w.state,
            ...(outcome.sent
              ? {
                  resent: true,
                  seq: outcome.seq,
                  syn: outcome.syn,
                  bytes: outcome.bytes,
                  age_ms: outcome.ageMs,
                }
              : { resent: false, reason: outcome.reason }),
          });
      }
      this.syncWatchers();
      emit(this.log, {
        event: 'flows_resent',
        gateway: gateway.address,
        interface: gateway.ifname,
        flows: mine.length,
        resent,
        detail: results,
      });
    });
    return done.then(() => (synSent ? this.sleep(SYN_ANSWER_GRACE_MS) : undefined));
  }

  /** Flows recorded now (for tests and status). */
  get watching(): number {
    return this.watched.size;
  }

  /**
   * Tell the ports which flows to record per interface. Reopening a capture costs a BPF compile and
   * a moment without recording, so it is done when a flow is added or none is left; a flow that
   * stopped retransmitting stays in the filter until then (recording it costs nothing: it sends
   * nothing the filter would match that is not its own traffic).
   */
  private syncWatchers(): void {
    const byInterface = new Map<string, ResumeFlow[]>();
    for (const i of this.perInterface.keys()) byInterface.set(i, []);
    for (const w of this.watched.values()) {
      const list = byInterface.get(w.ifname) ?? [];
      list.push(w.flow);
      byInterface.set(w.ifname, list);
    }
    for (const [ifname, flows] of byInterface) {
      const recorded = this.perInterface.get(ifname) ?? new Set<string>();
      const keys = flows.map(keyOf);
      const added = keys.some((k) => !recorded.has(k));
      if (!added && (flows.length > 0 || recorded.size === 0)) continue;
      if (flows.length === 0) this.perInterface.delete(ifname);
      else this.perInterface.set(ifname, new Set(keys));
      try {
        this.ports.watchFlows(ifname, flows);
      } catch (err) {
        emit(
          this.log,
          { event: 'error', during: 'recording flows', interface: ifname, error: errorMessage(err) },
          'warn',
        );
      }
    }
  }

  private serially(fn: () => Promise<void>): Promise<void> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch((err: unknown) =>
      emit(this.log, { event: 'error', during: 'flow resume', error: errorMessage(err) }, 'warn'),
    );
    return this.chain;
  }
}
