// Logging: one structured JSON line per event on stdout (journald keeps them), via pino; or a
// compact text line per event for humans (--log-format text). When stdout is the journal
// (JOURNAL_STREAM names it), each line starts with its syslog priority, "<3>" for an error
// (sd-daemon(3)), so `journalctl -p err` finds errors; the unit keeps SyslogLevelPrefix=yes.
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

import type { EventLog, LogLevel } from '../util/eventlog';
import { isJournalStream, journalPrefix } from './journalstream';

export { isJournalStream, journalPrefix };

export type { EventLog, LogLevel } from '../util/eventlog';
export type LogFormat = 'json' | 'text';

export function createLogger(
  opts: { level?: LogLevel; format?: LogFormat; stream?: NodeJS.WritableStream } = {},
): Logger {
  const out = opts.stream ?? process.stdout;
  const journal = opts.stream === undefined && isJournalStream(1);
  const dest = opts.format === 'text' ? textStream(out, journal) : journal ? journalPrefixStream(out) : out;
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

/** Prefix each of pino's JSON lines with its priority. */
function journalPrefixStream(out: NodeJS.WritableStream): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      let text = '';
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        const level = /"level":"(\w+)"/.exec(line)?.[1] ?? 'info';
        text += `${journalPrefix(level)}${line}\n`;
      }
      out.write(text, () => cb());
    },
  });
}

/** Reformat pino's JSON lines as "TIME LEVEL EVENT key=value ..." (with priority prefixes for the journal). */
function textStream(out: NodeJS.WritableStream, journal = false): Writable {
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
            `${journal ? journalPrefix(String(level)) : ''}${String(time)} ${String(level).toUpperCase().padEnd(5)} ${String(event ?? msg ?? '')}${kv ? ' ' + kv : ''}\n`,
          );
        } catch {
          out.write(line + '\n');
        }
      }
      cb();
    },
  });
}
