// The socket scan's mechanics: when to dump (the namespace's
// RetransSegs and ActiveOpens counters, sockets still retransmitting or connecting, the periodic
// count for status), when to look again (a socket near the threshold is looked at just after its
// retransmit timer fires), and what each socket did since the last look. What that means for a
// gateway (triggers, the aggregate, incidents) stays with the engine.
import type { Clock } from '../util/clock';
import type { DgdPorts, ScannedSocket } from './ports';

/** Count the sockets at least this often, for status, even when nothing retransmits. */
const FULL_SCAN_MS = 30_000;
/** Look this long after a retransmit timer's expiry, so the kernel has retransmitted. */
const TIMER_SLACK_MS = 4;
/** Never dump more often than this. */
const MIN_SCAN_GAP_MS = 10;
/**
 * While sockets retransmit but RetransSegs stands still (none of them retransmitted since the last
 * look, and none is near the threshold), look at them at least this often anyway: a socket that
 * recovered leaves the flow recorder (./resume.ts) and status within this long.
 */
export const QUIET_RESCAN_MS = 1000;
/**
 * TCP_TIMEOUT_INIT (include/net/tcp.h): the first SYN's retransmission timer. A SYN-SENT socket
 * that has not retransmitted yet has been waiting this minus idiag_expires.
 */
const SYN_RTO_INIT_MS = 1000;

/**
 * Half-open sockets (SYN-RECV: a SYN came in, our SYN-ACK goes unanswered) say nothing about a
 * gateway: anyone can make thousands of them with SYNs from spoofed addresses, whose SYN-ACKs are
 * retransmitted through the gateway forever unanswered. A real client of a failing path retries its
 * SYN, and once connected its own data counts.
 */
export function evidenceState(state: string): boolean {
  return state !== 'SYN-RECV';
}

/** One socket of a dump, with what it did since the last one. */
export interface Observation {
  socket: ScannedSocket;
  /** src|sport|dst|dport|inode */
  key: string;
  /** Consecutive retransmissions at the last dump and now; now > before: it retransmitted since. */
  before: number;
  now: number;
  /** A SYN-SENT socket's wait for an answer so far (first seen, or the SYN timer's age); else null. */
  synWaitedMs: number | null;
}

export interface ScanSettings {
  scan_interval: number;
  retransmit_threshold: number;
  /** > 0: connection attempts (SYN-SENT) are looked at too. */
  aggregate_sockets: number;
}

export type ScanPorts = Pick<
  DgdPorts,
  'scanSockets' | 'countSockets' | 'retransmitCounter' | 'activeOpensCounter'
>;

export class SocketScanner {
  private readonly retransmitSeen = new Map<string, number>();
  /** SYN-SENT sockets seen in the last dump, and when each was first seen. */
  private readonly synFirstSeen = new Map<string, number>();
  private lastCounter = -1;
  private lastActiveOpens = -1;
  private lastFullDumpAt = -Infinity;
  private counting = false;
  /** Sockets counted for status (the kernel's walk alone, every FULL_SCAN_MS). */
  private socketCount = 0;
  private retransmitting = 0;
  /** The last dump had a socket one or two retransmissions short of the threshold. */
  private nearThreshold = false;
  private lastDumpAt = -Infinity;
  /** A dump is wanted at the first tick from this time on (lookAgainAt). */
  private lookAt = Infinity;
  private lastScan = { at: 0, durationMs: 0, sockets: 0, retransmitting: 0 };
  private dumps = 0;

  constructor(
    private readonly ports: ScanPorts,
    private readonly clock: Clock,
    private readonly onCountError: (err: unknown) => void,
  ) {}

  /**
   * One tick. The counters are read every scan_interval (microseconds); sockets are dumped with
   * sock_diag only when RetransSegs moved, while a socket is near the threshold or connecting, every
   * QUIET_RESCAN_MS while sockets retransmit, and once in a while for status. Returns null when
   * nothing needed a dump; else the dump's sockets, what each did, and the delay to the next tick.
   *
   * A socket can reach the threshold, or add a retransmission of any kind, only by retransmitting,
   * which moves RetransSegs: a tick whose counter stands still has nothing new to show about
   * retransmissions. Sockets stuck past the threshold (a dead server behind a live gateway, in
   * backoff for tens of seconds) were dumped at every tick all the same: 300 of them made five
   * dumps a second for nothing, the largest part of the daemon's CPU.
   */
  async tick(
    cfg: ScanSettings,
  ): Promise<{ sockets: ScannedSocket[]; observations: Observation[]; nextMs: number } | null> {
    const counter = this.ports.retransmitCounter();
    const moved = counter !== this.lastCounter;
    this.lastCounter = counter;
    // Connection attempts under way (ActiveOpens moved, or SYNs still unanswered at the last
    // look): SYN-SENT sockets are looked at too, for the aggregate trigger.
    let connecting = false;
    if (cfg.aggregate_sockets > 0) {
      const opens = this.ports.activeOpensCounter();
      connecting = opens !== this.lastActiveOpens || this.synFirstSeen.size > 0;
      this.lastActiveOpens = opens;
    }
    const now = this.clock.now();
    const stale = now - this.lastFullDumpAt >= FULL_SCAN_MS;
    const quietDue =
      this.retransmitting > 0 &&
      (now >= this.lookAt || now - this.lastDumpAt >= Math.max(QUIET_RESCAN_MS, cfg.scan_interval));
    if (!moved && !this.nearThreshold && !quietDue && !stale && !connecting) return null;
    this.lookAt = Infinity;
    return this.dump(cfg, stale, connecting);
  }

  private async dump(
    cfg: ScanSettings,
    withCount: boolean,
    connecting: boolean,
  ): Promise<{ sockets: ScannedSocket[]; observations: Observation[]; nextMs: number }> {
    const t0 = this.clock.now();
    if (withCount) {
      this.lastFullDumpAt = this.clock.now();
      // Beside the scan, not before it: at 100 000 sockets the kernel's walk takes a few hundred
      // milliseconds, which must not delay detection.
      if (!this.counting) {
        this.counting = true;
        this.ports
          .countSockets()
          .then((n) => void (this.socketCount = n), this.onCountError)
          .finally(() => (this.counting = false));
      }
    }
    // Half-open sockets are dropped here, before any lookup or bookkeeping: a SYN flood costs a
    // scan nothing more than the dump (and the system ports leave them out of it).
    const sockets = (await this.ports.scanSockets({ minRetransmits: 1, synSent: connecting })).filter((s) =>
      evidenceState(s.state),
    );
    const threshold = cfg.retransmit_threshold;
    let retransmitting = 0;
    let nearThreshold = false;
    let due = Infinity;
    const live = new Set<string>();
    const synLive = new Set<string>();
    const observations: Observation[] = [];
    const now = this.clock.now();
    for (const s of sockets) {
      const key = `${s.src}|${s.srcPort}|${s.dst}|${s.dstPort}|${s.inode}`;
      let synWaitedMs: number | null = null;
      if (s.state === 'SYN-SENT' && s.timer === 1) {
        synLive.add(key);
        if (!this.synFirstSeen.has(key)) this.synFirstSeen.set(key, now);
        const seen = now - this.synFirstSeen.get(key)!;
        synWaitedMs = s.timerRetransmits === 0 ? Math.max(seen, SYN_RTO_INIT_MS - s.timerExpiresMs) : seen;
      }
      const retrans = s.timer === 1 ? s.timerRetransmits : 0;
      // Fewer than at the last look: an ACK reset the count in between (dumps can be a second
      // apart), and every retransmission it shows now is new.
      const seen = this.retransmitSeen.get(key) ?? 0;
      const before = retrans < seen ? 0 : seen;
      if (retrans > 0) {
        retransmitting++;
        // The next retransmission of a socket that is one or two short of the threshold matters
        // to the millisecond: look again just after its timer fires.
        // Past the threshold it has blamed its gateway already: its later retransmissions are not
        // worth a scan of their own (300 sockets retransmitting to a dead server behind a live
        // gateway had the scan run at every one of their timers).
        if (retrans >= threshold - 2 && retrans < threshold) {
          due = Math.min(due, Math.max(0, s.timerExpiresMs) + TIMER_SLACK_MS);
          nearThreshold = true;
        }
        live.add(key);
        this.retransmitSeen.set(key, retrans);
      }
      observations.push({ socket: s, key, before, now: retrans, synWaitedMs });
    }
    for (const k of this.retransmitSeen.keys()) if (!live.has(k)) this.retransmitSeen.delete(k);
    if (connecting)
      for (const k of this.synFirstSeen.keys()) if (!synLive.has(k)) this.synFirstSeen.delete(k);
    this.retransmitting = retransmitting;
    this.nearThreshold = nearThreshold;
    this.lastDumpAt = now;
    this.lastScan = {
      at: this.clock.wallNow(),
      durationMs: this.clock.now() - t0,
      sockets: this.socketCount,
      retransmitting,
    };
    this.dumps++;
    return {
      sockets,
      observations,
      nextMs: Math.max(MIN_SCAN_GAP_MS, Math.min(cfg.scan_interval, due)),
    };
  }

  /**
   * Dump again at the first tick from `at` on, even if RetransSegs stands still: what the sockets
   * said at the last dump was set aside until then (a fresh verdict covered them, or their
   * incident's re-verification gap), and at `at` the same sockets say it again, as they did when
   * every tick dumped.
   */
  lookAgainAt(at: number): void {
    this.lookAt = Math.min(this.lookAt, at);
  }

  /** The last dump, for status. */
  status(): { at: number; durationMs: number; sockets: number; retransmitting: number; dumps: number } {
    return { ...this.lastScan, dumps: this.dumps };
  }
}
