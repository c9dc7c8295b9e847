// Detection's event port: the engine reports every decision as one named event with its fields,
// and whoever runs it (the daemon's logger, a test's MemoryEventLog) decides what becomes of it.
// Defined here, below the daemon, so src/dgd never imports src/daemon (layering, issue 8).

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** What the detection engine and the tunnel log through: one call per event. */
export interface EventLog {
  event(name: string, fields?: Record<string, unknown>, level?: LogLevel): void;
}
