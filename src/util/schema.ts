// zod building blocks shared by every config section (dgd, tunnel, metrics, ...), so ranges and
// messages read the same everywhere.
import { z } from 'zod';
import { parseDuration } from './duration';

/** 250 -> "250ms", 2000 -> "2s", 120000 -> "2m", 3600000 -> "1h" (exact units only). */
export function formatLimit(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** A duration string within [min, max] milliseconds, parsed to a number of milliseconds. */
export function duration(min: number, max: number) {
  return z
    .string({ invalid_type_error: 'must be a duration string like "250ms", "2s", "2m"' })
    .transform((text, ctx) => {
      let ms: number;
      try {
        ms = parseDuration(text);
      } catch (err) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: (err as Error).message });
        return z.NEVER;
      }
      if (ms < min || ms > max) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          message: `"${text}" is out of range (${formatLimit(min)} .. ${formatLimit(max)})`,
        });
        return z.NEVER;
      }
      return ms;
    });
}

/** A whole number within [min, max]. */
export function intIn(min: number, max: number) {
  const message = `must be a whole number from ${min} to ${max}`;
  return z.number({ invalid_type_error: message }).int(message).min(min, message).max(max, message);
}
