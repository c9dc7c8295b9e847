// What the process does with an error nothing handled (process-wide, installed by the daemon and
// `ipdeadgate tunnel`). Every handler that takes a peer's input catches its own faults (a stream
// reset, a link closed); this is the net under them:
//  - an unhandled promise rejection: a continuation that did not run. The state machines change
//    state synchronously in their handlers, so none was left half-way: logged (event
//    `unhandled_rejection`, counted by the daemon's ipdeadgate_events_total), counted, and the
//    process keeps running;
//  - an uncaught exception: a handler unwound half-way, its state may be inconsistent: logged
//    (`uncaught_exception`), then the process stops the way SIGTERM stops it (withdrawn routes
//    restored) and exits with 70 (EX_SOFTWARE), so that systemd restarts it; if the stop itself
//    hangs, the exit comes after `graceMs` anyway.
import type { EventLog } from './eventlog';

export interface FaultPolicyOptions {
  events: EventLog;
  /** Stop as SIGTERM would (restoring routes); the process exits with 70 once it resolves. */
  stop: (err: Error) => Promise<unknown>;
  exit?: (code: number) => void;
  /** The longest the stop may take before the exit (default 10 s). */
  graceMs?: number;
}

export const EXIT_FAULT = 70;

export interface FaultPolicy {
  readonly counts: { unhandledRejections: number; uncaughtExceptions: number };
  uninstall(): void;
}

const describe = (e: unknown): Record<string, unknown> =>
  e instanceof Error
    ? {
        error: e.message,
        code: (e as NodeJS.ErrnoException).code,
        stack: e.stack?.split('\n').slice(0, 6).join(' | '),
      }
    : { error: String(e) };

export function installFaultPolicy(o: FaultPolicyOptions): FaultPolicy {
  const counts = { unhandledRejections: 0, uncaughtExceptions: 0 };
  const exit = o.exit ?? ((code: number) => process.exit(code));
  let stopping = false;
  const onRejection = (reason: unknown): void => {
    counts.unhandledRejections++;
    o.events.event(
      'unhandled_rejection',
      { ...describe(reason), note: 'logged and counted; running on' },
      'error',
    );
  };
  const onException = (err: Error): void => {
    counts.uncaughtExceptions++;
    o.events.event(
      'uncaught_exception',
      { ...describe(err), note: 'stopping as on SIGTERM (routes restored), then exit 70' },
      'error',
    );
    if (stopping) return;
    stopping = true;
    setTimeout(() => exit(EXIT_FAULT), o.graceMs ?? 10_000).unref();
    o.stop(err).then(
      () => exit(EXIT_FAULT),
      () => exit(EXIT_FAULT),
    );
  };
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return {
    counts,
    uninstall() {
      process.off('unhandledRejection', onRejection);
      process.off('uncaughtException', onException);
    },
  };
}
