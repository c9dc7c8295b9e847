// The project's error hierarchy. Every error has a stable `code`; errors that come from a system call
// also carry `errno` and `syscall`, like Node's own.

/** Base class: `code` is stable and documented, `message` says what failed and how to fix it. */
export class IpdeadgateError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Bad usage or a bad config: the CLI exits 2 with the message. */
export class UsageError extends IpdeadgateError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_USAGE', message, options);
  }
}

/** A config file problem: names the file, line and key. */
export class ConfigError extends IpdeadgateError {
  constructor(
    message: string,
    readonly file?: string,
    readonly line?: number,
    readonly key?: string,
  ) {
    super('ERR_CONFIG', message);
  }
}

/** A failed system call. `code` is the errno name (EPERM, ENODEV, ...). */
export class SystemError extends IpdeadgateError {
  readonly errno: number;
  readonly syscall: string;
  constructor(code: string, errno: number, syscall: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** An operation that ran out of time. */
export class TimeoutError extends IpdeadgateError {
  constructor(message: string) {
    super('ETIMEDOUT', message);
  }
}

/** An operation cancelled through its AbortSignal. */
export class AbortError extends IpdeadgateError {
  constructor(message = 'the operation was aborted') {
    super('ABORT_ERR', message);
  }
}

/** Hints for the errno codes an operator meets most, appended to messages. */
const HINTS: Record<string, string> = {
  EPERM: 'needs CAP_NET_ADMIN/CAP_NET_RAW (run as root)',
  EACCES: 'needs CAP_NET_ADMIN/CAP_NET_RAW (run as root)',
  ENODEV: 'no such network interface',
  ESRCH: 'no such entry',
  ENETUNREACH: 'no route to that network',
  EEXIST: 'the entry already exists',
};

/** Wrap any thrown value from a syscall-ish operation into a SystemError with a useful message. */
export function systemError(err: unknown, syscall: string, what: string): SystemError {
  const e = err as { code?: unknown; errno?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : 'EIO';
  const errno = typeof e?.errno === 'number' ? Math.abs(e.errno) : 0;
  const hint = HINTS[code];
  const detail = typeof e?.message === 'string' ? e.message : String(err);
  return new SystemError(code, errno, syscall, `${code}: ${what}${hint ? ` ${hint}` : ''} (${detail})`, {
    cause: err,
  });
}

/** An error's message, or the thrown value as text when it is not an Error. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
