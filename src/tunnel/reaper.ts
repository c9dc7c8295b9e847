// The reaper: the backstop of the close-leak promise (TFST's IY55176 left sockets in CLOSE_WAIT
// until accept() failed with EMFILE). Each session's own state machine (src/tunnel/sessionlife.ts)
// ends it within its state's bound, close_timeout included; the reaper never races those bounds. On
// a timer it looks at every session in the table and ends one only when an event was lost:
//  - its state outlived its bound by OVERDUE_MS (the bound's timer did not fire);
//  - its stream is gone while its local socket is not, in any TCP state;
//  - for a session with no bound in time (bridged): its local end is gone while its stream lingers,
//    or its socket sits in CLOSE_WAIT, either idle past close_timeout as SessionLife measures it.
// A reaped session ends with exit 'reaped' and is counted.
import type * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import type { Clock, Timer } from '../util/clock';
import { MuxStream } from './muxstream';
import type { SessionLife } from './sessionlife';

/** How far past its deadline a state may be before the reaper ends the session itself. */
export const OVERDUE_MS = 1000;

/** A socket's TCP state, e.g. 'ESTABLISHED', 'CLOSE-WAIT' (undefined when unknown). */
export type TcpStateOf = (socket: net.Socket) => string | undefined;

/** Why the reaper must end `s` now, or undefined when the session is fine. */
export function reapVerdict(s: SessionLife, now: number, tcpState: TcpStateOf): string | undefined {
  if (s.state === 'closed') return undefined;
  if (s.deadline !== undefined && now > s.deadline + OVERDUE_MS) return `${s.state} outlived its bound`;
  if (s.state === 'closing') return undefined;
  const l = s.local;
  if (s.stream.destroyed && l && !l.destroyed) return 'its stream is gone';
  // A state with a bound in time is ended by it (SessionLife owns close_timeout); checked above.
  if (s.deadline !== undefined || !s.idlePastCloseTimeout(now)) return undefined;
  if (l && l.destroyed && !s.stream.destroyed) return 'its local end is gone';
  if (l && !(l instanceof MuxStream) && !l.destroyed) {
    const st = tcpState(l);
    if (st && st.replace('_', '-').toUpperCase() === 'CLOSE-WAIT') return 'its socket sat in CLOSE_WAIT';
  }
  return undefined;
}

export interface ReaperOptions {
  clock: Clock;
  intervalMs: number;
  /** The sessions to look at (the guard's table). */
  sessions: () => Iterable<SessionLife>;
  tcpState: TcpStateOf;
  /** Called after each pass that ended sessions, with how many. */
  onReaped?: (n: number) => void;
}

/** The reaper's loop: a pass every `intervalMs` until close(). */
export class Reaper {
  private timer: Timer | undefined;
  private closed = false;

  constructor(private readonly opts: ReaperOptions) {
    this.schedule();
  }

  private schedule(): void {
    this.timer = this.opts.clock.setTimeout(() => {
      if (this.closed) return;
      this.reap();
      this.schedule();
    }, this.opts.intervalMs);
  }

  /** One pass; returns how many sessions it ended. */
  reap(): number {
    const now = this.opts.clock.now();
    let n = 0;
    for (const s of [...this.opts.sessions()]) {
      const why = reapVerdict(s, now, this.opts.tcpState);
      if (!why) continue;
      n++;
      if (s.state === 'closing') s.forceClosed();
      else
        s.dispatch({
          type: 'stop',
          exit: 'reaped',
          error: new IpdeadgateError('ERR_TUNNEL_REAPED', `reaped: ${why}`),
        });
    }
    if (n) this.opts.onReaped?.(n);
    return n;
  }

  /** Stop the loop. Idempotent. */
  close(): void {
    this.closed = true;
    this.timer?.cancel();
  }
}
