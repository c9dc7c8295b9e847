// Opt-in active probing (dgd.active): an ARP request / neighbour solicitation to a gateway every
// interval, for hosts whose traffic is UDP and never triggers by retransmissions. `misses`
// unanswered probes in a row are the verdict itself (ARP/NDP decides); while dead, revive_probes
// answers in a row revive it. RFC 1122 3.3.1.4 forbids continuous pinging of a first hop by
// default, hence opt-in.
import { errorMessage } from '../errors';
import type { Clock } from '../util/clock';
import type { EventLog } from '../util/eventlog';
import type { DgdConfig } from './config';
import { emit } from './events';
import { isDead, type ActiveProbing, type Gateway } from './gateway';
import type { GatewayTable } from './gateways';
import type { DgdPorts } from './ports';

/** How long an active probe waits for its answer: half the interval, at least 10 ms. */
export function activeProbeTimeout(intervalMs: number): number {
  return Math.max(10, Math.floor(intervalMs / 2));
}

export interface ActiveProbeOptions {
  ports: DgdPorts;
  clock: Clock;
  log: EventLog;
  gateways: GatewayTable;
  config: () => DgdConfig;
  running: () => boolean;
  /** Is this MAC the gateway's (or may it change)? */
  macTrusted: (g: Gateway, mac: string) => boolean;
  /** misses probes unanswered: dead. */
  missed: (g: Gateway, missed: number) => Promise<void>;
  /** revive_probes answers in a row while dead. */
  answered: (g: Gateway) => Promise<void>;
}

export class ActiveProber {
  constructor(private readonly o: ActiveProbeOptions) {}

  /** Start probing every gateway dgd.active names (those not yet known are found by a lookup). */
  setup(): void {
    if (!this.o.running()) return;
    for (const a of this.o.config().active) {
      const g = this.o.gateways.find(a.gateway);
      if (g) {
        this.start(g, a.interval, a.misses);
        continue;
      }
      // Not (yet) a gateway of a managed route: probe it anyway on the interface the kernel would use.
      void this.o.ports
        .lookupRoute(a.gateway, null)
        .then((choice) => {
          if (!this.o.running() || this.o.gateways.find(a.gateway)) return;
          if (choice.gateway) {
            emit(
              this.o.log,
              {
                event: 'error',
                during: 'active probing',
                gateway: a.gateway,
                error: 'not on-link (routed via ' + choice.gateway + ')',
              },
              'warn',
            );
            return;
          }
          this.start(this.o.gateways.ensure(a.gateway, choice.ifindex), a.interval, a.misses);
        })
        .catch((err: unknown) =>
          emit(
            this.o.log,
            { event: 'error', during: 'active probing', gateway: a.gateway, error: errorMessage(err) },
            'warn',
          ),
        );
    }
  }

  /**
   * Stop probing every gateway (off, reload): setup() starts again from the config. Each one's
   * probing ends whole (its timer and its state), so that setup() finds nothing half-stopped.
   */
  stopAll(): void {
    for (const g of this.o.gateways.values()) this.stop(g);
  }

  /** Stop probing g (it is forgotten, or detection stops). */
  stop(g: Gateway): void {
    g.active?.timer?.cancel();
    g.active = null;
  }

  private start(g: Gateway, intervalMs: number, misses: number): void {
    if (g.active) return;
    const a: ActiveProbing = { intervalMs, misses, missed: 0, timer: null, answers: 0 };
    g.active = a;
    emit(this.o.log, {
      event: 'active_probing',
      gateway: g.address,
      interface: g.ifname,
      interval_ms: intervalMs,
      misses,
    });
    a.timer = this.o.clock.setTimeout(() => void this.tick(g), 0);
  }

  private async tick(g: Gateway): Promise<void> {
    const a = g.active;
    if (!a || !this.o.running()) return;
    a.timer = null;
    const again = (delayMs: number) => (a.timer = this.o.clock.setTimeout(() => void this.tick(g), delayMs));
    if (g.link !== 'up') {
      // No probing on a link that is down or gone: an unanswered probe there says nothing about
      // the gateway. Probing resumes when the interface is back.
      a.missed = 0;
      a.answers = 0;
      again(a.intervalMs);
      return;
    }
    let answer: { mac: string; rttMs: number } | null = null;
    const sentAt = this.o.clock.now();
    try {
      // A probe is missed when no answer came within half the interval (an ARP/NDP answer on a
      // LAN takes well under a millisecond); probes still go out every interval. So `misses`
      // unanswered probes are concluded half an interval after the last one, not a whole one.
      answer = await this.o.ports.probeOnce(g.address, g.ifname, activeProbeTimeout(a.intervalMs));
    } catch (err) {
      emit(
        this.o.log,
        { event: 'error', during: 'active probe', gateway: g.address, error: errorMessage(err) },
        'warn',
      );
    }
    if (g.active !== a || !this.o.running()) return;
    if (answer && this.o.macTrusted(g, answer.mac)) {
      a.missed = 0;
      if (isDead(g) && !g.polling) {
        a.answers++;
        if (a.answers >= this.o.config().revive_probes) {
          a.answers = 0;
          await this.o.answered(g);
        }
      }
      if (!g.mac) g.mac = answer.mac;
    } else {
      a.answers = 0;
      a.missed++;
      if (a.missed >= a.misses && !isDead(g)) {
        g.triggers.active_probe++;
        emit(this.o.log, {
          event: 'trigger',
          gateway: g.address,
          interface: g.ifname,
          reason: 'active_probe',
          missed: a.missed,
        });
        await this.o.missed(g, a.missed);
      }
    }
    // The next probe goes out one interval after this one was sent.
    again(Math.max(0, a.intervalMs - (this.o.clock.now() - sentAt)));
  }
}
