// Durations in config and on the command line: "250ms", "2s", "2m", "1h", "1.5s".

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const PATTERN = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;

/** Parse a duration string into milliseconds; throws RangeError naming the bad text. */
export function parseDuration(text: string): number {
  const m = PATTERN.exec(text.trim());
  if (!m) throw new RangeError(`"${text}" is not a duration (use e.g. 250ms, 2s, 2m, 1h)`);
  return Math.round(Number(m[1]) * UNITS[m[2]!]!);
}

/** Format milliseconds compactly for humans: 250ms, 2s, 2m, 1h30m. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${+(ms / 1000).toFixed(3)}s`;
  if (ms < 3_600_000) return `${+(ms / 60_000).toFixed(2)}m`;
  return `${+(ms / 3_600_000).toFixed(2)}h`;
}
