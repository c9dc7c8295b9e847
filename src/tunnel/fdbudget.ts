// How close the process is to its descriptor limit (RLIMIT_NOFILE, e.g. the unit's LimitNOFILE),
// for the listeners: near the limit they stop accepting for a while rather than let a flood of
// connections take the descriptors everything else needs (EMFILE for a log file, a route socket,
// a session's dial).
import * as fs from 'node:fs';
import { systemClock, type Clock } from '../util/clock';

/** The soft limit on open descriptors, from /proc/self/limits (undefined when unreadable or unlimited). */
export function softFdLimit(): number | undefined {
  try {
    const text = fs.readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(text);
    return m && m[1] !== 'unlimited' ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Descriptors open now (/proc/self/fd), or undefined when unreadable. */
export function openFds(): number | undefined {
  try {
    return fs.readdirSync('/proc/self/fd').length;
  } catch {
    return undefined;
  }
}

/**
 * Whether accepting one more connection would bring the process near its descriptor limit:
 * above `share` of the soft limit. The count is read at most every `cacheMs` (it costs a
 * directory read), plus what was accepted since.
 */
export class FdBudget {
  private readonly limit: number | undefined;
  private counted = 0;
  private countedAt = -Infinity;
  private since = 0;

  constructor(
    private readonly share = 0.8,
    private readonly cacheMs = 100,
    private readonly clock: Clock = systemClock,
    limit: number | undefined = softFdLimit(),
    private readonly count: () => number | undefined = openFds,
  ) {
    this.limit = limit;
  }

  /** True when the process holds more than `share` of its descriptor limit. */
  nearLimit(): boolean {
    if (this.limit === undefined) return false;
    const now = this.clock.now();
    if (now - this.countedAt >= this.cacheMs) {
      this.counted = this.count() ?? 0;
      this.countedAt = now;
      this.since = 0;
    }
    this.since++;
    return this.counted + this.since > this.limit * this.share;
  }
}
