// Flows resume the moment routes switch. When a dead gateway's routes are withdrawn, a TCP socket
// that was retransmitting through it would wait for its backed-off retransmission timer (1.6 s
// after the third retransmission at the default threshold), and a connecting socket whose SYN is
// parked in the dead gateway's neighbour entry is aborted when that entry is flushed or fails: the
// kernel retransmits only when the timer fires. So while sockets retransmit through a gateway their segments are
// recorded off the wire (ports.watchFlows), and the moment the gateway's routes are withdrawn the
// first unacknowledged segment of each is sent again through the route the kernel now chooses
// (ports.resendSegment). The peer acknowledges it (or, for a SYN, answers with its SYN-ACK), and
// that answer restarts the socket at once. docs/failover.md explains why this and not the
// RFC 6069 ICMP revert, with the kernel code both rely on.
//
// Touches only flows that the detection scan saw retransmitting (the timer fired at least once)
// and that the kernel routed through the gateway declared dead, that are not bound to an interface,
// and whose route no longer goes through it; each at most once per withdrawal, at most
// MAX_RECORDED_FLOWS per interface (the one cap; flows past it are remembered and left to the
// kernel). A flow is recorded only while it retransmits: it leaves the recorder when a scan no
// longer shows it retransmitting, and the recorder closes when none is left.
//
// What is sent must be the socket's own snd_una, through the route the socket would take, or
// nothing (the reason goes in the flows_resent event):
// - the recorder keeps only frames this host sent from the interface's MAC, and of each flow the
//   data/SYN/FIN segment with the lowest sequence number (never a pure ACK or a reset);
// - sock_diag has no snd_una, but idiag_retrans (consecutive RTO retransmissions) falls to 0 when
//   an ACK moves snd_una (tcp_ack): a scan that shows it lower, or another inode, starts the
//   flow's record afresh; and just before sending the socket is looked up again and must be the
//   same inode, still retransmitting, with at least one RTO retransmission since recording began.
//   An RTO retransmission carries snd_una and, without an ACK, the kernel sends nothing below it;
// - the raw copy is routed by its destination alone (protocol RAW, no ports, no source, no mark,
//   the daemon's uid: raw_sendmsg / rawv6_sendmsg): it is sent only when such a lookup names the
//   same next hop as the socket's full key (mark, ports, uid), and never for a socket with a mark.
import { emit } from './events';
import { errorMessage } from '../errors';
import { formatEndpoint } from '../sys/ipaddr';
import { MAX_RECORDED_FLOWS } from '../sys/packet/tcpreplay';
import type { EventLog } from '../util/eventlog';
import type { FlowKey, ResendOutcome, ResumeFlow, ResumePorts, RouteChoice, ScannedSocket } from './ports';
import { socketFlowKey } from './flowkey';
import { gatewayKey } from './routeplan';

export { MAX_RECORDED_FLOWS };
/**
 * After resending a SYN, how long routesSwitched waits before returning, so that its caller's
 * neighbour flush comes after the peer's SYN-ACK: the flush drops the socket's own SYN parked in
 * the dead gateway's unresolved neighbour entry, and the ICMP unreachable that drop sends back
 * aborts a socket still in SYN-SENT (tcp_v4_err / tcp_v6_err: tcp_done_with_error).
 */
export const SYN_ANSWER_GRACE_MS = 200;
/** Flow details a flows_resent event carries. */
const DETAIL_LIMIT = 16;

interface Watched {
  flow: ResumeFlow;
  state: string;
  inode: number;
  /** idiag_retrans when recording began, and at the last scan. */
  baseRetrans: number;
  lastRetrans: number;
  mark: number | undefined;
  gatewayKey: string;
  gateway: string;
  ifindex: number;
  ifname: string;
}

const keyOf = (f: { src: string; srcPort: number; dst: string; dstPort: number }): string =>
  `${f.src}|${f.srcPort}|${f.dst}|${f.dstPort}`;

const retransmitting = (s: ScannedSocket): boolean =>
  s.timer === 1 && s.timerRetransmits >= 1 && (s.ifindex ?? 0) === 0;

export class FlowResumer {
  private readonly watched = new Map<string, Watched>();
  /**
   * Flows looked up once in this incident and not recorded (no gateway, over the cap, lookup
   * failed, or resent already): never looked up again while they keep retransmitting.
   */
  private readonly ignored = new Set<string>();
  /** Interfaces whose recorder has flows. */
  private readonly recording = new Set<string>();
  /**
   * Flows a switch is resending now: out of `watched` (once per withdrawal), still in their
   * recorder, which holds the segment to send, until they are sent.
   */
  private readonly resending = new Map<string, Watched>();
  /** The latest scan not yet taken in (a scan arriving while one is taken in replaces it). */
  private pending: readonly ScannedSocket[] | null = null;
  private observing: Promise<void> | null = null;
  private stopped = false;
  private readonly rawUid: number;

  constructor(
    private readonly ports: ResumePorts,
    private readonly log: EventLog,
    private readonly sleep: (ms: number) => Promise<void>,
  ) {
    this.rawUid = process.getuid?.() ?? 0;
  }

  /**
   * Each detection scan's sockets: those retransmitting now and routed through a gateway are
   * recorded; the others are forgotten. A scan that comes while the last one is being taken in
   * waits as the one next in line, replacing any other waiting: the work is bounded whatever the
   * scan rate, and the switch (routesSwitched) never waits for it.
   */
  observe(sockets: readonly ScannedSocket[]): Promise<void> {
    this.stopped = false;
    this.pending = sockets;
    if (this.observing) return this.observing;
    const run = async (): Promise<void> => {
      while (this.pending) {
        const next = this.pending;
        this.pending = null;
        try {
          await this.takeIn(next);
        } catch (err) {
          emit(this.log, { event: 'error', during: 'flow resume', error: errorMessage(err) }, 'warn');
        }
      }
    };
    this.observing = run().finally(() => (this.observing = null));
    return this.observing;
  }

  /** Stop recording and forget every flow (resend_on_switch or detection turned off). */
  stop(): void {
    this.stopped = true;
    this.pending = null;
    this.watched.clear();
    this.ignored.clear();
    this.resending.clear();
    this.syncWatchers();
  }

  private async takeIn(sockets: readonly ScannedSocket[]): Promise<void> {
    const live = new Set<string>();
    for (const s of sockets) {
      if (this.stopped) return;
      if (!retransmitting(s)) continue;
      const key = keyOf(s);
      live.add(key);
      const known = this.watched.get(key);
      if (known) {
        if (known.inode !== s.inode || s.timerRetransmits < known.lastRetrans) {
          // snd_una moved (an ACK sets idiag_retrans to 0) or the 4-tuple is another socket's:
          // what was recorded is no longer its first unacknowledged segment.
          known.inode = s.inode;
          known.baseRetrans = s.timerRetransmits;
          this.ports.forgetFlow(known.ifname, known.flow);
        }
        known.lastRetrans = s.timerRetransmits;
        known.state = s.state;
        continue;
      }
      if (this.ignored.has(key)) continue;
      // Looked up once per incident, whatever comes of it.
      this.ignored.add(key);
      const flow: ResumeFlow = {
        family: s.family,
        src: s.src,
        srcPort: s.srcPort,
        dst: s.dst,
        dstPort: s.dstPort,
        key: socketFlowKey(s),
      };
      let route: RouteChoice;
      try {
        route = await this.ports.lookupRoute(s.dst, s.src, flow.key);
      } catch {
        continue;
      }
      if (!route.gateway || this.stopped || !this.ignored.has(key)) continue;
      let onInterface = 0;
      for (const w of this.watched.values()) if (w.ifname === route.ifname) onInterface++;
      if (onInterface >= MAX_RECORDED_FLOWS) continue;
      this.ignored.delete(key);
      this.watched.set(key, {
        flow,
        state: s.state,
        inode: s.inode,
        baseRetrans: s.timerRetransmits,
        lastRetrans: s.timerRetransmits,
        mark: s.mark,
        gatewayKey: gatewayKey(route.gateway, route.ifindex),
        gateway: route.gateway,
        ifindex: route.ifindex,
        ifname: route.ifname,
      });
    }
    if (this.stopped) return;
    for (const k of this.watched.keys()) if (!live.has(k)) this.watched.delete(k);
    for (const k of this.ignored) if (!live.has(k)) this.ignored.delete(k);
    this.syncWatchers();
  }

  /**
   * The routes through a gateway were just withdrawn: send each of its flows' first unacknowledged
   * segment again. Resolves once they are sent (and, after a SYN, SYN_ANSWER_GRACE_MS later).
   */
  async routesSwitched(gateway: { address: string; ifindex: number; ifname: string }): Promise<void> {
    const gKey = gatewayKey(gateway.address, gateway.ifindex);
    const mine = [...this.watched.entries()].filter(([, w]) => w.gatewayKey === gKey);
    if (mine.length === 0) return;
    for (const [key, w] of mine) {
      // Once per withdrawal: a flow still stuck afterwards is the kernel's to retransmit. A scan
      // taken in while the switch awaits (the dump, the lookups) must not drop the flow from its
      // recorder before its segment is sent: it stays there as `resending`.
      this.watched.delete(key);
      this.ignored.add(key);
      this.resending.set(key, w);
    }
    let synSent: boolean;
    try {
      synSent = await this.resendAll(gateway, mine);
    } finally {
      for (const [key, w] of mine) if (this.resending.get(key) === w) this.resending.delete(key);
      this.syncWatchers();
    }
    if (synSent) await this.sleep(SYN_ANSWER_GRACE_MS);
  }

  /** Send each flow's segment again (or say why not) and log it; true when a SYN was sent. */
  private async resendAll(
    gateway: { address: string; ifindex: number; ifname: string },
    mine: [string, Watched][],
  ): Promise<boolean> {
    let synSent = false;
    let resent = 0;
    const results: Record<string, unknown>[] = [];
    // The sockets as they are now, for every flow at once: one dump, not one per flow.
    let now: Map<string, ScannedSocket> | Error;
    try {
      now = new Map((await this.ports.scanSockets()).map((s) => [keyOf(s), s]));
    } catch (err) {
      now = err instanceof Error ? err : new Error(String(err));
    }
    for (const [key, w] of mine) {
      let outcome: ResendOutcome;
      try {
        outcome =
          now instanceof Error
            ? { sent: false, reason: errorMessage(now) }
            : await this.resend(w, now.get(key));
      } catch (err) {
        outcome = { sent: false, reason: errorMessage(err) };
      }
      if (outcome.sent) resent++;
      if (outcome.sent && outcome.syn) synSent = true;
      if (results.length < DETAIL_LIMIT)
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
    emit(this.log, {
      event: 'flows_resent',
      gateway: gateway.address,
      interface: gateway.ifname,
      flows: mine.length,
      resent,
      detail: results,
    });
    return synSent;
  }

  /** One flow: still stuck, routed the socket's way, then its recorded segment. */
  private async resend(w: Watched, row: ScannedSocket | undefined): Promise<ResendOutcome> {
    if (!row) return { sent: false, reason: 'the socket is gone or no longer retransmitting' };
    if (row.inode !== w.inode)
      return { sent: false, reason: 'its addresses and ports are another socket now' };
    if (!retransmitting(row))
      return { sent: false, reason: 'the socket is gone or no longer retransmitting' };
    if (row.timerRetransmits < w.lastRetrans)
      return { sent: false, reason: 'an acknowledgement moved it on since it was recorded' };
    if (row.timerRetransmits <= w.baseRetrans)
      return { sent: false, reason: 'no retransmission of it since recording began' };
    if (row.mark)
      return {
        sent: false,
        reason: `the socket has mark 0x${row.mark.toString(16)}, which a copy would not carry`,
      };
    const key: FlowKey = { ...socketFlowKey(row) };
    const socketRoute = await this.ports.lookupRoute(w.flow.dst, w.flow.src, key);
    if (socketRoute.gateway === w.gateway && socketRoute.ifindex === w.ifindex)
      return { sent: false, reason: 'no other route' };
    // The kernel routes a header-included send as protocol RAW, which RTM_GETROUTE does not take
    // (rtm_getroute_parse_ip_proto): looked up with no protocol, which `ipproto` rules match the
    // same way (neither is TCP).
    const rawRoute = await this.ports.lookupRoute(w.flow.dst, null, { uid: this.rawUid });
    if (rawRoute.gateway !== socketRoute.gateway || rawRoute.ifindex !== socketRoute.ifindex)
      return {
        sent: false,
        reason:
          `a copy would leave via ${rawRoute.gateway ?? 'no gateway'} on ${rawRoute.ifname}, the socket via ` +
          `${socketRoute.gateway ?? 'no gateway'} on ${socketRoute.ifname} (a policy rule or multipath hash a raw send cannot reproduce)`,
      };
    return this.ports.resendSegment(w.ifname, w.flow);
  }

  /** Flows recorded now (for tests and status). */
  get watching(): number {
    return this.watched.size;
  }

  /** Hand each interface's recorder exactly the flows retransmitting through it now. */
  private syncWatchers(): void {
    const byInterface = new Map<string, ResumeFlow[]>();
    for (const i of this.recording) byInterface.set(i, []);
    for (const w of [...this.watched.values(), ...this.resending.values()]) {
      const list = byInterface.get(w.ifname) ?? [];
      list.push(w.flow);
      byInterface.set(w.ifname, list);
    }
    for (const [ifname, flows] of byInterface) {
      if (flows.length === 0) this.recording.delete(ifname);
      else this.recording.add(ifname);
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
}
