// The one event port of the project: detection, the tunnel and the daemon's own parts report every
// decision as one named event with its fields, and whoever runs them (the daemon's logger, which
// counts events for metrics; a test's memory log) decides what becomes of it. It lives below every
// layer so that src/dgd and src/tunnel share it without importing src/daemon or each other.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** One call per event: a stable name, its fields, and how loud it is. */
export interface EventLog {
  event(name: string, fields?: Record<string, unknown>, level?: LogLevel): void;
}
