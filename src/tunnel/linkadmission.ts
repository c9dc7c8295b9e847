// What an unauthenticated client can hold on the link listener (src/tunnel/link.ts) before its
// link exists: connections waiting for their first byte or in the TLS handshake, at most
// max_handshakes in all and max_handshakes_per_address from one address; a connection whose first
// byte does not come within first_byte_timeout is closed before any TLS state is made for it; and
// near the descriptor limit accepting pauses (src/tunnel/fdbudget.ts). Whatever is turned away is
// reset at once, counted, and reported as a refused link.
import type * as net from 'node:net';
import { fdOf, tcpInfoByFd } from '../sys/tcpinfo';
import { systemClock, type Clock, type Timer } from '../util/clock';
import type { AcceptBackoff } from './acceptbackoff';
import { FdBudget } from './fdbudget';
import type { LinkRefusal } from './linklife';

/** How often connections waiting for their first byte are looked at (TCP_INFO, one getsockopt each). */
const FIRST_BYTE_POLL_MS = 20;

/**
 * Bytes the kernel has received on an accepted socket (TCP_INFO), or undefined when it cannot
 * tell (no addon, an old kernel): then the connection is not held back.
 */
function bytesReceived(tcp: net.Socket): number | undefined {
  try {
    return tcpInfoByFd(fdOf(tcp)).bytesReceived;
  } catch {
    return undefined;
  }
}

export interface AdmissionLimits {
  maxHandshakes?: number;
  maxHandshakesPerAddress?: number;
  firstByteTimeoutMs?: number;
  clock?: Clock;
}

export type TurnedAway = 'handshake_limit' | 'address_limit' | 'fd_limit' | 'first_byte_timeout';

export class LinkAdmission {
  /** Connections closed unheard, by why. */
  readonly turnedAway: Record<TurnedAway, number> = {
    handshake_limit: 0,
    address_limit: 0,
    fd_limit: 0,
    first_byte_timeout: 0,
  };
  /** Accepted connections that have not sent a byte yet, with when they must have. */
  private readonly waiting = new Map<net.Socket, { deadline: number; go: () => void; fail: () => void }>();
  private waitTimer: Timer | undefined;
  /** Connections before their link (waiting or in the handshake), per source address. */
  private readonly perAddress = new Map<string, number>();
  private readonly fds = new FdBudget();

  /**
   * `limits` is read at each connection (a reload changes it in place); `refused` reports a
   * connection turned away (reason, detail).
   */
  constructor(
    private readonly limits: AdmissionLimits,
    private readonly backoff: AcceptBackoff,
    private readonly refused: (remote: string, reason: LinkRefusal, detail: string) => void,
  ) {}

  private get clock(): Clock {
    return this.limits.clock ?? systemClock;
  }

  private turnAway(tcp: net.Socket, remote: string, why: TurnedAway, detail: string): void {
    this.turnedAway[why]++;
    if (!tcp.destroyed) tcp.resetAndDestroy();
    this.refused(remote, why === 'first_byte_timeout' ? 'handshake_timeout' : 'too_many_handshakes', detail);
  }

  /**
   * A new connection, with `inHandshake` connections in their TLS handshake now: `start(release)`
   * when it may go on to TLS (`release()` once its handshake is over, either way), or it is closed.
   */
  admit(tcp: net.Socket, inHandshake: number, start: (release: () => void) => void): void {
    const remote = `${tcp.remoteAddress}:${tcp.remotePort}`;
    const addr = tcp.remoteAddress ?? '';
    if (this.fds.nearLimit()) {
      this.backoff.pause();
      return this.turnAway(
        tcp,
        remote,
        'fd_limit',
        `the process is near its descriptor limit: accepting paused, ${remote} closed`,
      );
    }
    const maxAll = this.limits.maxHandshakes ?? 256;
    const maxOne = this.limits.maxHandshakesPerAddress ?? 16;
    const pending = this.waiting.size + inHandshake;
    if (pending >= maxAll)
      return this.turnAway(
        tcp,
        remote,
        'handshake_limit',
        `${pending} connections are in their TLS handshake (tunnel.max_handshakes ${maxAll}): ${remote} closed`,
      );
    const fromAddr = this.perAddress.get(addr) ?? 0;
    if (fromAddr >= maxOne)
      return this.turnAway(
        tcp,
        remote,
        'address_limit',
        `${fromAddr} connections from ${addr} are in their TLS handshake (tunnel.max_handshakes_per_address ${maxOne}): ${remote} closed`,
      );
    this.perAddress.set(addr, fromAddr + 1);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      const n = (this.perAddress.get(addr) ?? 1) - 1;
      if (n > 0) this.perAddress.set(addr, n);
      else this.perAddress.delete(addr);
    };
    const firstByteMs = this.limits.firstByteTimeoutMs ?? 0;
    if (firstByteMs <= 0 || bytesReceived(tcp) !== 0) return start(release);
    this.waiting.set(tcp, {
      deadline: this.clock.now() + firstByteMs,
      go: () => start(release),
      fail: () => {
        release();
        this.turnAway(
          tcp,
          remote,
          'first_byte_timeout',
          `${remote} sent nothing within ${firstByteMs} ms of connecting (tunnel.first_byte_timeout)`,
        );
      },
    });
    this.pollWaiting();
  }

  /** Hand connections whose first byte came to TLS; close those past their deadline. */
  private pollWaiting(): void {
    if (this.waitTimer || !this.waiting.size) return;
    this.waitTimer = this.clock.setTimeout(() => {
      this.waitTimer = undefined;
      const now = this.clock.now();
      for (const [tcp, w] of [...this.waiting]) {
        const got = tcp.destroyed ? 0 : bytesReceived(tcp);
        if (got !== 0 && !tcp.destroyed) {
          this.waiting.delete(tcp);
          w.go();
        } else if (now >= w.deadline || tcp.destroyed) {
          this.waiting.delete(tcp);
          w.fail();
        }
      }
      this.pollWaiting();
    }, FIRST_BYTE_POLL_MS);
  }

  close(): void {
    this.waitTimer?.cancel();
    this.waitTimer = undefined;
    for (const tcp of this.waiting.keys()) tcp.destroy();
    this.waiting.clear();
  }
}
