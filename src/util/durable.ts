// The failure policy of state written in the background (the journal of withdrawn routes, the
// on/off switch, the owner journal): a failed write (ENOSPC, EMFILE, EIO) never fails its caller,
// because the kernel change it records is what protects traffic. The failure is logged (naming
// the file and its directory), counted, and the latest content is written again every `retryMs`
// until it lands; only the newest content is kept, so a full disk costs one buffer per file.
import * as path from 'node:path';
import type { EventLog } from './eventlog';

export interface DurableWriteStats {
  /** Failed writes since start. */
  failures: number;
  /** Files whose latest content is not on disk yet. */
  pending: string[];
}

export class DurableWriter {
  private readonly pending = new Map<string, () => Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  private failures = 0;
  private closed = false;
  /** Writes and retries in one order: a retry of old content never lands after newer content. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly log: EventLog,
    private readonly retryMs = 1000,
  ) {}

  /**
   * Write with `write` (after any write queued before); on failure keep it as the file's latest
   * content and retry. Resolves true when the write landed, false when it failed and waits for a
   * retry; never rejects.
   */
  write(file: string, write: () => Promise<void>): Promise<boolean> {
    return this.serially(async () => {
      // A newer content supersedes whatever waits for this file.
      const waited = this.pending.delete(file);
      try {
        await write();
        if (waited) this.recovered(file);
        return true;
      } catch (err) {
        this.failed(file, write, err, !waited);
        return false;
      }
    });
  }

  stats(): DurableWriteStats {
    return { failures: this.failures, pending: [...this.pending.keys()] };
  }

  /** Stop retrying (the daemon stops); what is pending stays unwritten. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private failed(file: string, write: () => Promise<void>, err: unknown, first: boolean): void {
    this.failures++;
    if (!this.closed) this.pending.set(file, write);
    const e = err as NodeJS.ErrnoException;
    // Every failure is an event (counted in ipdeadgate_events_total{event="state_write_failed"});
    // an error the first time, a debug line on each retry, so a full disk does not flood the log.
    this.log.event(
      'state_write_failed',
      {
        file,
        state_dir: path.dirname(file),
        error: `${e?.code ?? 'EIO'}: ${e?.message ?? String(err)}`,
        note:
          'the kernel change goes ahead; the file is written again every ' +
          `${this.retryMs} ms until it lands (free space in ${path.dirname(file)})`,
      },
      first ? 'error' : 'debug',
    );
    this.schedule();
  }

  private recovered(file: string): void {
    this.log.event('state_write_recovered', { file, state_dir: path.dirname(file) }, 'warn');
  }

  private schedule(): void {
    if (this.timer || this.closed || this.pending.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.serially(() => this.retry());
    }, this.retryMs);
  }

  private async retry(): Promise<void> {
    for (const [file, write] of [...this.pending]) {
      if (this.closed) return;
      try {
        await write();
        this.pending.delete(file);
        this.recovered(file);
      } catch (err) {
        this.failed(file, write, err, false);
      }
    }
    this.schedule();
  }
}
