// The service manager's notification protocol (sd_notify(3)): READY=1 once the daemon serves,
// RELOADING=1/READY=1 around a reload, STOPPING=1, and WATCHDOG=1 keep-alives. systemd names its
// socket in NOTIFY_SOCKET; the datagram is sent by the addon (native/sdnotify.cc) because Node has
// no unix datagram sockets. Outside systemd (no NOTIFY_SOCKET) every call does nothing.
import { loadNative, nativeSystemError } from './native';

export interface ServiceNotifier {
  /** Whether a service manager listens (NOTIFY_SOCKET was set). */
  readonly active: boolean;
  /** Send one notification ("READY=1", "STATUS=...", lines joined by \n). Never throws. */
  notify(...assignments: string[]): boolean;
  /** WATCHDOG_USEC for this process, in ms, or null when no watchdog is armed for it. */
  readonly watchdogMs: number | null;
  /** Send WATCHDOG=1 every half watchdog period from the event loop; returns a stop function. */
  startWatchdog(): () => void;
}

export type SendDatagram = (socketPath: string, message: string) => void;

function nativeSend(socketPath: string, message: string): void {
  try {
    loadNative().sdNotify(socketPath, message);
  } catch (err) {
    throw nativeSystemError(err, `sd_notify to ${socketPath}`);
  }
}

/**
 * Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID once and remove them from the environment
 * (as sd_notify's unset_environment does), so child processes do not notify on our behalf.
 * `onError` hears a failed send (the daemon logs it); a failed notification never stops the daemon.
 */
export function openServiceNotifier(
  opts: {
    env?: NodeJS.ProcessEnv;
    pid?: number;
    send?: SendDatagram;
    onError?: (err: Error) => void;
  } = {},
): ServiceNotifier {
  const env = opts.env ?? process.env;
  const pid = opts.pid ?? process.pid;
  const send = opts.send ?? nativeSend;
  const socketPath = env.NOTIFY_SOCKET || null;
  const usec = Number(env.WATCHDOG_USEC);
  const wdPid = env.WATCHDOG_PID;
  const watchdogMs =
    socketPath && Number.isFinite(usec) && usec > 0 && (!wdPid || Number(wdPid) === pid)
      ? Math.max(1, Math.floor(usec / 1000))
      : null;
  delete env.NOTIFY_SOCKET;
  delete env.WATCHDOG_USEC;
  delete env.WATCHDOG_PID;

  const notify = (...assignments: string[]): boolean => {
    if (!socketPath) return false;
    try {
      send(socketPath, assignments.join('\n'));
      return true;
    } catch (err) {
      opts.onError?.(err as Error);
      return false;
    }
  };
  return {
    active: socketPath !== null,
    watchdogMs,
    notify,
    startWatchdog() {
      if (watchdogMs === null) return () => undefined;
      // Fed by a timer on the event loop: a loop blocked for half the period misses a beat, and
      // systemd kills and restarts a daemon that is stuck for the whole period.
      const timer = setInterval(() => notify('WATCHDOG=1'), Math.max(1, Math.floor(watchdogMs / 2)));
      timer.unref();
      notify('WATCHDOG=1');
      return () => clearInterval(timer);
    },
  };
}
