// What a tunnel node reports through: a pino-like logger as the event port, and a rate limit for
// the events a peer can cause in bulk.
import type { Clock } from '../util/clock';
import type { EventLog } from '../util/eventlog';

/** The subset of pino's API a node can log with (adapted to the event port, src/util/eventlog.ts). */
export interface TunnelLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** A pino-like logger as an event port: each line gets its `event`. */
export function eventsFromLogger(logger: TunnelLogger): EventLog {
  return {
    event(name, fields = {}, level = 'info') {
      (level === 'debug' ? logger.info : logger[level]).call(logger, { event: name, ...fields });
    },
  };
}

export const silent: EventLog = { event: () => undefined };

/**
 * Rate limit for events a peer can cause in bulk (refused links, refused sessions): at most
 * `burst` per key in each `windowMs`; what was held back is counted into the next one that goes
 * out (`suppressed`). Counters in status and metrics count every one.
 */
export class EventRateLimit {
  private readonly keys = new Map<string, { windowStart: number; sent: number; suppressed: number }>();
  constructor(
    private readonly clock: Clock,
    private readonly burst = 5,
    private readonly windowMs = 10_000,
  ) {}

  /** Fields to log with (plus `suppressed` when some were held back), or undefined to hold this one. */
  admit(key: string, fields: Record<string, unknown>): Record<string, unknown> | undefined {
    const now = this.clock.now();
    let k = this.keys.get(key);
    if (!k || now - k.windowStart >= this.windowMs) {
      const suppressed = k?.suppressed ?? 0;
      k = { windowStart: now, sent: 0, suppressed: 0 };
      this.keys.set(key, k);
      if (this.keys.size > 10_000) this.keys.clear(); // bounded memory under a flood of keys
      if (suppressed) fields = { ...fields, suppressed };
    }
    if (k.sent >= this.burst) {
      k.suppressed++;
      return undefined;
    }
    k.sent++;
    return fields;
  }
}
