// What sockets say about their gateway, as policy without I/O:
// which sockets count as evidence for the aggregate trigger, the aggregate's window, and how
// sockets gather into one incident per gateway (one trigger, one verdict, the rest at debug).
import { formatEndpoint } from '../sys/ipaddr';
import type { SocketSample } from './events';
import type { Gateway, Incident } from './gateway';
import type { ScannedSocket } from './ports';
import { evidenceState, type Observation } from './scan';

/** An incident ends when no socket has blamed its gateway for this long. */
export const INCIDENT_QUIET_MS = 10_000;
/** Samples of sockets an incident's events carry. */
export const INCIDENT_SAMPLES = 3;

/** A socket as events show it. */
export function socketSample(s: ScannedSocket, retransmits = s.timerRetransmits): SocketSample {
  return {
    src: formatEndpoint(s.src, s.srcPort),
    dst: formatEndpoint(s.dst, s.dstPort),
    state: s.state,
    retransmits,
  };
}

/**
 * Evidence for the aggregate trigger: a SYN retransmitted, a SYN unanswered for syn_stall (a
 * client with a 1 s connect timeout gives up before the kernel retransmits it), or any segment
 * retransmitted twice in a row. One lost segment is ordinary loss; these are not.
 */
export function failingSocket(o: Observation, synStallMs: number): boolean {
  const s = o.socket;
  if (s.timer !== 1 || !evidenceState(s.state)) return false;
  if (s.state === 'SYN-SENT') return s.timerRetransmits >= 1 || (o.synWaitedMs ?? 0) >= synStallMs;
  return s.timerRetransmits >= 2;
}

/**
 * The aggregate's key for one flow: its addresses and ports, so a local flow seen both by the
 * socket scan and on the wire counts once.
 */
export function flowEvidenceKey(src: string, srcPort: number, dst: string, dstPort: number): string {
  return `${src}|${srcPort}|${dst}|${dstPort}`;
}

/**
 * Count a failing flow against g, within the aggregate window; returns how many distinct ones g has.
 * Constant work per flow (amortized), however many flows a scan brings: the evidence is kept in the
 * order it came (a Map keeps insertion order, and `at` never goes back), so what left the window is
 * at the front and the walk stops at the first entry still inside it.
 */
export function addEvidence(
  g: Gateway,
  key: string,
  /** The flow as events show it; a function is called only for a flow not counted yet. */
  sample: SocketSample | (() => SocketSample),
  now: number,
  windowMs: number,
): number {
  for (const [k, e] of g.aggregate) {
    if (now - e.at <= windowMs) break;
    g.aggregate.delete(k);
  }
  if (!g.aggregate.has(key))
    g.aggregate.set(key, { at: now, socket: typeof sample === 'function' ? sample() : sample });
  return g.aggregate.size;
}

/**
 * Evidence for the aggregate from a flow seen on the wire, as failingSocket asks of a socket: a
 * SYN sent again, or unanswered for syn_stall; or a data segment sent again twice.
 */
export function failingWireFlow(
  ev: { syn: boolean; count: number; unansweredMs?: number },
  synStallMs: number,
): boolean {
  if (ev.syn) return ev.count >= 1 || (ev.unansweredMs ?? 0) >= synStallMs;
  return ev.count >= 2;
}

/**
 * Sockets that blame g join its incident (a new one if it has been quiet INCIDENT_QUIET_MS).
 * Returns the incident, whether these joined one already under way, and the sockets new to it.
 */
export function joinIncident(
  g: Gateway,
  samples: readonly SocketSample[],
  now: number,
): { incident: Incident; joining: boolean; added: SocketSample[] } {
  let inc = g.incident;
  if (!inc || now - inc.lastJoinAt > INCIDENT_QUIET_MS) {
    inc = { startedAt: now, lastJoinAt: now, sockets: new Set(), samples: [] };
    g.incident = inc;
  }
  const joining = inc.sockets.size > 0;
  inc.lastJoinAt = now;
  const added: SocketSample[] = [];
  for (const sock of samples) {
    const key = `${sock.src}>${sock.dst}`;
    if (inc.sockets.has(key)) continue;
    inc.sockets.add(key);
    if (inc.samples.length < INCIDENT_SAMPLES) inc.samples.push(sock);
    added.push(sock);
  }
  return { incident: inc, joining, added };
}

/** An incident is open for g (a socket blamed it within INCIDENT_QUIET_MS). */
export function inIncident(g: Gateway, now: number): boolean {
  return g.incident !== null && now - g.incident.lastJoinAt <= INCIDENT_QUIET_MS;
}
