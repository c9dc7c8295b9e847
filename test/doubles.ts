// Test doubles of the ports and the clock: a manual clock, an in-memory store of the journal and
// the switch, and an event log that keeps what it is told. They live with the tests;
// nothing under src/ uses them.
import type { Clock, Timer } from '../src/util/clock';
import type { DgdStore, GroupJournalEntry, JournalEntry } from '../src/dgd/ports';
import type { EventLog, LogLevel } from '../src/util/eventlog';

/** A manual clock for tests: time moves only when advance() is called. */
export class FakeClock implements Clock {
  private t = 0;
  private wall = Date.UTC(2026, 0, 1);
  private seq = 0;
  private timers: { at: number; seq: number; fn: () => void; cancelled: boolean }[] = [];

  now(): number {
    return this.t;
  }
  wallNow(): number {
    return this.wall + this.t;
  }
  setTimeout(fn: () => void, ms: number): Timer {
    const timer = { at: this.t + Math.max(0, ms), seq: this.seq++, fn, cancelled: false };
    this.timers.push(timer);
    return { cancel: () => void (timer.cancelled = true) };
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const t = this.setTimeout(resolve, ms);
      signal?.addEventListener(
        'abort',
        () => {
          t.cancel();
          reject(signal.reason);
        },
        { once: true },
      );
    });
  }
  /** Number of timers still pending. */
  pending(): number {
    return this.timers.filter((t) => !t.cancelled).length;
  }
  /** Advance time by ms, firing due timers in order, letting promise callbacks run between them. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await flushMicrotasks();
      const live = this.timers.filter((t) => !t.cancelled && t.at <= end);
      if (live.length === 0) break;
      live.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = live[0]!;
      this.t = Math.max(this.t, next.at);
      next.cancelled = true;
      this.timers = this.timers.filter((t) => !t.cancelled);
      next.fn();
    }
    this.t = end;
    await flushMicrotasks();
  }
}

async function flushMicrotasks(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
  await new Promise((r) => setImmediate(r));
}

/** In-memory store for tests. */
export class MemoryStore implements DgdStore {
  journal: JournalEntry[] = [];
  groups: GroupJournalEntry[] = [];
  enabled: boolean | null = null;
  saves = 0;
  async loadJournal(): Promise<JournalEntry[]> {
    return structuredClone(this.journal);
  }
  async loadGroupJournal(): Promise<GroupJournalEntry[]> {
    return structuredClone(this.groups);
  }
  async saveJournal(entries: JournalEntry[], groups: GroupJournalEntry[] = []): Promise<void> {
    this.saves++;
    this.journal = structuredClone(entries);
    this.groups = structuredClone(groups);
  }
  async loadEnabled(): Promise<boolean | null> {
    return this.enabled;
  }
  async saveEnabled(enabled: boolean): Promise<void> {
    this.enabled = enabled;
  }
  macs: Record<string, string> = {};
  async loadMacs(): Promise<Record<string, string>> {
    return { ...this.macs };
  }
  async saveMacs(macs: Record<string, string>): Promise<void> {
    this.macs = { ...macs };
  }
}

/** An EventLog that keeps events in memory (tests) and optionally forwards them. */
export class MemoryEventLog implements EventLog {
  readonly events: ({ event: string; level: LogLevel } & Record<string, unknown>)[] = [];
  constructor(private readonly forward?: EventLog) {}
  event(name: string, fields: Record<string, unknown> = {}, level: LogLevel = 'info'): void {
    this.events.push({ event: name, level, ...fields });
    this.forward?.event(name, fields, level);
  }
  named(name: string): Record<string, unknown>[] {
    return this.events.filter((e) => e.event === name);
  }
}
