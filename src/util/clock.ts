// Injected time, so state machines are tested without sleeping.

export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Wall-clock milliseconds since the epoch, for timestamps in events and status. */
  wallNow(): number;
  setTimeout(fn: () => void, ms: number): Timer;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  wallNow: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(t) };
  },
  sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const t = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      const onAbort = () => {
        clearTimeout(t);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  },
};

/**
 * Wall-clock now in epoch milliseconds with sub-millisecond resolution, for packet timestamps
 * (Date.now() has whole milliseconds only).
 */
export function preciseWallNowMs(): number {
  return performance.timeOrigin + performance.now();
}
