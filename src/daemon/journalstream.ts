// Whether a stream goes to the journal, and the priority prefix journald reads: apart from the
// logger (./log.ts) so that the CLI's error reporting needs no logging library.
import { fstatSync } from 'node:fs';

/** syslog(3) priorities of our levels, as sd-daemon(3) prefixes want them. */
const PRIORITY: Record<string, number> = { fatal: 2, error: 3, warn: 4, info: 6, debug: 7, trace: 7 };

/** "<3>" for "error": the prefix journald reads as the line's priority. */
export function journalPrefix(level: string): string {
  return `<${PRIORITY[level] ?? 6}>`;
}

/**
 * Whether file descriptor `fd` (1 stdout, 2 stderr) is connected to the journal: systemd sets
 * JOURNAL_STREAM to "DEVICE:INODE" of that stream (systemd.exec(5)); a redirected stream differs.
 */
export function isJournalStream(fd: number, env: NodeJS.ProcessEnv = process.env): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!);
  } catch {
    return false;
  }
}
