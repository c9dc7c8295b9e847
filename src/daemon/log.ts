// Logging: one structured JSON line per event on stdout (journald keeps them), via pino; or a
// compact text line per event for humans (--log-format text).
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'json' | 'text';

/** What the detection engine and the tunnel log through: one call per event. */
export interface EventLog {
  event(name: string, fields?: Record<string, unknown>, level?: LogLevel): void;
}

export function createLogger(
  opts: { level?: LogLevel; format?: LogFormat; stream?: NodeJS.WritableStream } = {},
): Logger {
  const out = opts.stream ?? process.stdout;
  const dest = opts.format === 'text' ? textStream(out) : out;
  return pino(
    {
      level: opts.level ?? 'info',
      base: undefined,
      messageKey: 'msg',
      timestamp: () => `,"time":"${new Date().toISOString()}"`,
      formatters: { level: (label) => ({ level: label }) },
    },
    dest as pino.DestinationStream,
  );
}

/** An EventLog over a pino logger: {"time","level","event", ...fields}. */
export function eventLog(logger: Logger): EventLog {
  return {
    event(name, fields = {}, level = 'info') {
      logger[level]({ event: name, ...fields });
    },
  };
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

/** Reformat pino's JSON lines as "TIME LEVEL EVENT key=value ...". */
function textStream(out: NodeJS.WritableStream): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        try {
          const { time, level, event, msg, ...rest } = JSON.parse(line) as Record<string, unknown>;
          const kv = Object.entries(rest)
            .map(
              ([k, v]) =>
                `${k}=${typeof v === 'string' ? (/\s/.test(v) ? JSON.stringify(v) : v) : JSON.stringify(v)}`,
            )
            .join(' ');
          out.write(
            `${String(time)} ${String(level).toUpperCase().padEnd(5)} ${String(event ?? msg ?? '')}${kv ? ' ' + kv : ''}\n`,
          );
        } catch {
          out.write(line + '\n');
        }
      }
      cb();
    },
  });
}
