// Shared CLI plumbing: exit codes (0 ok, 1 runtime failure, 2 bad usage/config), error printing
// without stack traces, JSON output in snake_case.
import { ConfigError, IpdeadgateError, UsageError } from '../errors';
import { isJournalStream, journalPrefix } from '../daemon/journalstream';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export const DEFAULT_CONTROL = '/run/ipdeadgate.sock';

/** Print an error the way an operator wants it: one line naming the problem; exit code by kind. */
export function reportError(err: unknown): number {
  const debug = process.env.IPDEADGATE_DEBUG === '1';
  // Under systemd the message goes to the journal as an error (journalctl -p err shows it).
  const p = isJournalStream(2) ? journalPrefix('error') : '';
  if (err instanceof UsageError || err instanceof ConfigError) {
    process.stderr.write(`${p}ipdeadgate: ${err.message}\n`);
    return EXIT_USAGE;
  }
  if (err instanceof IpdeadgateError) {
    process.stderr.write(`${p}ipdeadgate: ${err.message}\n`);
    if (debug && err.stack) process.stderr.write(err.stack + '\n');
    return EXIT_FAILURE;
  }
  const e = err as Error;
  process.stderr.write(`${p}ipdeadgate: ${e?.message ?? String(err)}\n`);
  if (debug && e?.stack) process.stderr.write(e.stack + '\n');
  return EXIT_FAILURE;
}

/** Wrap a command action: run it, map errors to exit codes, set process.exitCode. */
export function action<A extends unknown[]>(
  fn: (...args: A) => Promise<number | void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      const code = await fn(...args);
      process.exitCode = code ?? EXIT_OK;
    } catch (err) {
      process.exitCode = reportError(err);
    }
  };
}

/** Print a value as JSON (2-space indent) on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/** Parse a non-negative integer option or throw a UsageError naming it. */
export function intOption(name: string, text: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max)
    throw new UsageError(`${name} must be a whole number from ${min} to ${max}, not "${text}"`);
  return n;
}

/** Rows of cells as an aligned text table (two spaces between columns, no trailing blanks). */
export function formatTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return (
    rows
      .map((r) =>
        r
          .map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!)))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}
