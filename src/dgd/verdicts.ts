// Verdicts: a suspect gateway is verified by ARP/NDP (never by ping: ./verify.ts), and the verdict
// acts through the gateway machine (./gateway.ts): alive, a downstream problem, nothing moves;
// dead, its routes are withdrawn (./routekeeper.ts), stuck flows resent (./resume.ts) and its
// neighbour entry flushed. A dead gateway is polled (purge, re-resolve) until revive_probes
// answers in a row bring its routes back. Verifications are shared while one runs and reused
// while fresh, so a speculative one started a retransmission early is the verdict at the threshold.
import { errorMessage } from '../errors';
import type { Clock } from '../util/clock';
import type { EventLog, LogLevel } from '../util/eventlog';
import type { DgdConfig } from './config';
import { emit, type TriggerKind } from './events';
import { GatewayMachine, isDead, type Gateway, type GatewayHost, type InflightVerification } from './gateway';
import { GatewayMacs } from './gatewaymacs';
import type { DgdPorts, DgdStore, Verification } from './ports';
import { describeRoute } from './routeplan';
import type { RouteKeeper } from './routekeeper';
import type { TriggerDetail } from './triggers';

/** How long a verification's verdict may be reused by a later trigger, in units of its own length. */
const FRESHNESS_FACTOR = 2;

export interface VerdictOptions {
  ports: DgdPorts;
  clock: Clock;
  log: EventLog;
  keeper: RouteKeeper;
  config: () => DgdConfig;
  running: () => boolean;
  /** The routes just switched away from dead g: resend its stuck flows (./resume.ts). */
  routesSwitched: (g: Gateway) => Promise<void>;
  /** Still dead at a slow poll: routing daemons that could not be told are told now. */
  stillDead: () => Promise<void>;
  /** Where the gateways' known MACs are kept across restarts (absent: not kept). */
  store?: DgdStore;
}

/** The verdict room; it also implements the machine's host (the slow poll's timer). */
export class Verdicts implements GatewayHost {
  /** The gateway machine, driven by this room and, for off, journal and interface events, the engine. */
  readonly machine: GatewayMachine;
  /** The gateways' known MACs: pinned, or following the kernel's neighbour entries. */
  readonly macs: GatewayMacs;

  constructor(private readonly o: VerdictOptions) {
    this.machine = new GatewayMachine(this);
    this.macs = new GatewayMacs({ store: o.store ?? null, log: o.log, config: o.config });
  }

  get clock(): Clock {
    return this.o.clock;
  }
  get log(): EventLog {
    return this.o.log;
  }
  get slowPollMs(): number {
    return this.o.config().slow_poll_interval;
  }
  get flap(): { limit: number; windowMs: number; holdDownMs: number } {
    const c = this.o.config();
    return { limit: c.flap_limit, windowMs: c.flap_window, holdDownMs: c.flap_hold_down };
  }

  /** How long a verdict stands for a later trigger: twice a verification's length, plus two scans. */
  private freshMs(): number {
    const c = this.o.config();
    return FRESHNESS_FACTOR * c.verify_probes * c.verify_timeout + 2 * c.scan_interval;
  }

  verdictFresh(g: Gateway): boolean {
    return this.o.clock.now() <= this.freshUntil(g);
  }

  /** Until when g's last verdict is fresh (-Infinity without one). */
  freshUntil(g: Gateway): number {
    const last = g.lastVerification;
    return last ? last.at + this.freshMs() : -Infinity;
  }

  macTrusted(g: Gateway, mac: string): boolean {
    const known = this.macs.known(g);
    if (known.pinned) return known.mac === mac;
    return !known.mac || known.mac === mac || this.o.config().allow_mac_change;
  }

  /** The kernel's neighbour entry for g changed (rtnetlink): its known MAC follows a move. */
  kernelNeighbour(g: Gateway, state: string, lladdr: string | null): void {
    this.macs.followKernel(g, state, lladdr);
  }

  // ---------------------------------------------------------------------------------------------
  // Suspect -> verdict

  /** A trigger: the gateway becomes suspect and is verified by ARP/NDP; the verdict acts. */
  async suspect(g: Gateway, kind: TriggerKind, detail: TriggerDetail, quiet = false): Promise<void> {
    if (!this.o.running() || isDead(g) || g.link !== 'up') return;
    g.triggers[kind]++;
    // quiet: a re-verification within an incident whose gateway answered; logged at debug level
    // unless the verdict changes.
    const level = quiet ? 'debug' : 'info';
    emit(
      this.o.log,
      { event: 'trigger', gateway: g.address, interface: g.ifname, reason: kind, ...detail },
      level,
    );
    this.machine.fire(g, { type: 'trigger', kind }, kind, level);
    let v: Verification;
    try {
      v = await this.verification(g, 'trigger', quiet);
    } catch (err) {
      emit(
        this.o.log,
        { event: 'error', during: 'verification', gateway: g.address, error: errorMessage(err) },
        'error',
      );
      if (g.phase === 'suspect')
        this.machine.fire(g, { type: 'verification_failed' }, 'verification failed to run');
      return;
    }
    if (!this.o.running() || g.phase !== 'suspect') return;
    if (v.alive) {
      this.machine.fire(g, { type: 'answered' }, 'answered ARP/NDP', level);
      emit(
        this.o.log,
        {
          event: 'downstream_problem',
          gateway: g.address,
          interface: g.ifname,
          reason: kind,
          note: 'the gateway answers ARP/NDP: the problem is beyond it; routes untouched',
          ...detail,
          // Sockets that joined the incident while it was being verified count too.
          ...(g.incident && detail.sockets !== undefined
            ? { sockets: g.incident.sockets.size, samples: g.incident.samples }
            : {}),
        },
        level,
      );
    } else {
      // A death is news even when its trigger joined an incident quietly.
      if (quiet)
        emit(this.o.log, {
          event: 'trigger',
          gateway: g.address,
          interface: g.ifname,
          reason: kind,
          ...detail,
        });
      await this.declareDead(g, `${v.reason ?? `no ARP/NDP answer to ${v.probesSent} probes`} after ${kind}`);
    }
  }

  /**
   * One retransmission before the threshold: verify now; the threshold's trigger reuses it.
   * quiet: within an incident whose gateway answered, an unchanged verdict is debug detail.
   */
  speculate(g: Gateway, quiet = false): void {
    void this.verification(g, 'speculative', quiet).catch(() => undefined);
  }

  /**
   * The verdict for g: an in-flight verification is shared; a finished one is reused while fresh
   * (the speculative one started a retransmission early); otherwise a new one runs.
   */
  private async verification(
    g: Gateway,
    mode: 'speculative' | 'trigger' | 'poll',
    quiet = false,
  ): Promise<Verification> {
    const cfg = this.o.config();
    const speculative = mode === 'speculative';
    if (g.inflight) {
      if (mode !== 'poll') {
        if (!speculative) g.inflight.speculative = false;
        return g.inflight.promise;
      }
      // A poll needs an answer from now on: let the running one finish, then ask again.
      await g.inflight.promise.catch(() => undefined);
    }
    const last = g.lastVerification;
    if (mode === 'trigger' && last && this.verdictFresh(g)) {
      emit(this.o.log, {
        event: 'verdict_reused',
        gateway: g.address,
        alive: last.alive,
        age_ms: Math.round(this.o.clock.now() - last.at),
      });
      return last;
    }
    const startedAt = this.o.clock.now();
    const known = this.macs.known(g);
    const promise = this.o.ports
      .verify({
        gateway: g.address,
        ifname: g.ifname,
        ifindex: g.ifindex,
        probes: cfg.verify_probes,
        intervalMs: cfg.verify_timeout,
        knownMac: known.mac,
        macPinned: known.pinned,
        allowMacChange: cfg.allow_mac_change && !known.pinned,
        // A dead gateway's poll asks only whether its known MAC answers: a revival does not wait.
        untilDeadline: mode !== 'poll',
      })
      .then((v) => {
        this.recordVerdict(g, v, startedAt, inflight.speculative, quiet);
        return v;
      })
      .finally(() => {
        if (g.inflight === inflight) g.inflight = null;
      });
    const inflight: InflightVerification = { promise, startedAt, speculative };
    g.inflight = inflight;
    return promise;
  }

  private recordVerdict(
    g: Gateway,
    v: Verification,
    startedAt: number,
    speculative: boolean,
    quiet: boolean,
  ): void {
    g.verifications++;
    g.lastVerification = { ...v, at: startedAt };
    const known = this.macs.known(g);
    // A quiet re-verification's steps and an unchanged (alive) verdict are debug detail.
    const level: LogLevel = quiet && v.alive ? 'debug' : 'info';
    for (const s of v.steps)
      emit(this.o.log, { event: 'verify_step', gateway: g.address, interface: g.ifname, ...s }, level);
    const conflicts = v.conflicts ?? [];
    if (conflicts.length > 0)
      emit(
        this.o.log,
        {
          event: 'neighbour_conflict',
          gateway: g.address,
          interface: g.ifname,
          known_mac: v.movedFrom ? v.mac : known.mac,
          seen_macs: conflicts,
          known_answered: v.alive,
        },
        'warn',
      );
    if (v.alive && v.mac && v.mac !== known.mac && !known.pinned) {
      if (v.movedFrom)
        emit(
          this.o.log,
          {
            event: 'neighbour_moved',
            gateway: g.address,
            interface: g.ifname,
            from: known.mac,
            to: v.mac,
            by: 'verification',
          },
          'warn',
        );
      if (v.macChanged && !v.movedFrom)
        emit(this.o.log, {
          event: 'mac_changed',
          gateway: g.address,
          known_mac: known.mac,
          seen_mac: v.mac,
          trusted: true,
        });
      this.macs.set(g, v.mac);
    }
    emit(
      this.o.log,
      {
        event: 'verdict',
        gateway: g.address,
        interface: g.ifname,
        alive: v.alive,
        speculative,
        mac: v.mac,
        arp_rtt_ms: v.arpRttMs,
        echo_rtt_ms: v.echoRttMs,
        probes_sent: v.probesSent,
        duration_ms: Math.round(v.durationMs),
      },
      level,
    );
  }

  /** No ARP/NDP answer (a verdict, or active probes): dead; its routes leave and its flows resume. */
  async declareDead(g: Gateway, reason: string): Promise<void> {
    if (isDead(g)) return;
    this.machine.fire(g, { type: 'no_answer' }, reason);
    await this.withdrawAndRelease(g, reason, true);
  }

  /**
   * Routes put back through dead g (by their owner, a DHCP renewal, `networkctl reconfigure`):
   * withdrawn again, and the flows that used them in between released like at the death.
   */
  async withdrawAgain(g: Gateway, reason: string): Promise<void> {
    await this.withdrawAndRelease(g, reason, false);
  }

  private async withdrawAndRelease(g: Gateway, reason: string, death: boolean): Promise<void> {
    const done = await this.o.keeper.withdraw(g, reason);
    if (!death && done.length === 0) return;
    // Flows that were retransmitting through g get their first unacknowledged segment resent through the new
    // route now, before the neighbour flush below.
    await this.o.routesSwitched(g);
    if (!this.o.running() || !isDead(g)) return;
    // Our purge left the gateway's neighbour entry unresolved, and the kernel parks packets
    // (TCP's retransmissions among them) in it until it fails; TCP does not retransmit a segment
    // still held in the host. Deleting the entry frees them, so the next retransmission takes the
    // new route instead of waiting one more backoff.
    // After a route was put back, what the flows sent meanwhile waits in the entry the kernel
    // started for g (INCOMPLETE, failed only after 3 s): the same flush frees it.
    await this.o.ports
      .flushNeighbour(g.ifindex, g.address)
      .then(() =>
        emit(this.o.log, { event: 'neighbour_flushed', gateway: g.address, interface: g.ifname, reason }),
      )
      .catch((err: unknown) =>
        emit(
          this.o.log,
          { event: 'error', during: 'neighbour flush', gateway: g.address, error: errorMessage(err) },
          'warn',
        ),
      );
  }

  /**
   * Enough answers in a row: held down by flap damping, or its routes back (all of them: revived;
   * some waiting for their interface: the gateway stays dead and the interface's return polls it).
   */
  async revive(g: Gateway, reason: string): Promise<void> {
    if (!isDead(g)) return;
    const now = this.o.clock.now();
    if (g.holdDownUntil !== null && now < g.holdDownUntil) {
      this.machine.fire(g, { type: 'held', until: g.holdDownUntil }, 'flap damping');
      return;
    }
    this.cancelPoll(g);
    // Restored and marked alive in one step of the route chain: a re-check or a refresh queued
    // meanwhile (it saw the restored route while g was still dead) finds g alive when it runs.
    await this.o.keeper.restore(g, reason, () => {
      if (!isDead(g)) return; // another revival (a poll and active probing) came first
      const left = this.o.keeper.waitingVia(g);
      if (left.length > 0) {
        emit(this.o.log, {
          event: 'routes_waiting',
          gateway: g.address,
          interface: g.ifname,
          routes: left.map((e) => describeRoute(e.original)),
          note: 'their interface is not up (or is being renumbered); restored when it is',
        });
        this.machine.fire(g, { type: 'routes_waiting' }, 'routes wait for their interface');
        return;
      }
      this.machine.fire(g, { type: 'revived' }, reason);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Slow polling of dead gateways

  schedulePoll(g: Gateway, delayMs: number): void {
    this.cancelPoll(g);
    if (!this.o.running()) return;
    g.nextPollAt = this.o.clock.wallNow() + delayMs;
    g.pollTimer = this.o.clock.setTimeout(() => {
      g.pollTimer = null;
      void this.poll(g);
    }, delayMs);
  }

  cancelPoll(g: Gateway): void {
    g.pollTimer?.cancel();
    g.pollTimer = null;
    g.nextPollAt = null;
  }

  /** Purge and re-resolve; revive_probes answers in a row restore the gateway's routes. */
  async poll(g: Gateway): Promise<void> {
    const cfg = this.o.config();
    if (!isDead(g) || g.polling || !this.o.running()) return;
    // Its interface is down or gone: the poll runs when the interface is back (interface_up).
    if (g.link !== 'up') return;
    g.polling = true;
    let answers = 0;
    try {
      for (let i = 0; i < cfg.revive_probes; i++) {
        const v = await this.verification(g, 'poll');
        if (!v.alive) break;
        answers++;
        if (i + 1 < cfg.revive_probes) await this.o.clock.sleep(cfg.verify_timeout);
        g.lastVerification = null; // each answer must be a fresh one
      }
    } catch (err) {
      emit(
        this.o.log,
        { event: 'error', during: 'slow poll', gateway: g.address, error: errorMessage(err) },
        'error',
      );
    } finally {
      g.polling = false;
    }
    emit(this.o.log, {
      event: 'poll',
      gateway: g.address,
      interface: g.ifname,
      answers,
      needed: cfg.revive_probes,
    });
    if (!isDead(g) || !this.o.running() || g.link !== 'up') return;
    if (answers >= cfg.revive_probes) await this.revive(g, `${answers} ARP/NDP answers in a row`);
    else {
      await this.o.stillDead();
      this.machine.fire(g, { type: 'still_dead' }, `${answers} of ${cfg.revive_probes} answers`);
    }
  }
}
