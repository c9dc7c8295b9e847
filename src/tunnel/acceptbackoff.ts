// Accepting under descriptor exhaustion, for every listening socket of the tunnel (the link
// listener in src/tunnel/link.ts, the forwards in src/tunnel/node.ts): running out of descriptors
// (EMFILE/ENFILE) slows accepting down, it never crashes the process or spins.
import type * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import { systemClock, type Clock, type Timer } from '../util/clock';
import type { HostPort } from './config';

/**
 * A listening server that survives EMFILE/ENFILE. libuv already survives most of them (it closes a
 * reserve descriptor, accepts and closes the pending connections, and reports nothing); when an
 * EMFILE/ENFILE does reach the server as an 'error' (no reserve descriptor, or listening again
 * fails), accepting is paused: the server stops listening and
 * listens again after a backoff (100 ms doubling to 5 s), so a process out of descriptors slows
 * down instead of spinning or crashing, and recovers when descriptors are freed.
 */
export class AcceptBackoff {
  errors = 0;
  /** Times accepting was paused (descriptor shortage, or near the limit). */
  pauses = 0;
  private delay = 100;
  private timer: Timer | undefined;
  private closed = false;
  private paused = false;

  constructor(
    private readonly server: net.Server,
    private readonly address: HostPort,
    private readonly clock: Clock = systemClock,
  ) {
    server.on('error', (err: NodeJS.ErrnoException) => this.onError(err));
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onErr = (err: Error): void =>
        reject(
          new IpdeadgateError(
            'ERR_TUNNEL_LISTEN',
            `cannot listen on ${this.address.host}:${this.address.port}: ${err.message}`,
          ),
        );
      this.server.once('error', onErr);
      this.server.listen(this.address.port, this.address.host, 1024, () => {
        this.server.off('error', onErr);
        resolve();
      });
    });
  }

  /** A connection was accepted: the descriptor shortage, if any, is over. */
  accepted(): void {
    this.delay = 100;
  }

  private onError(err: NodeJS.ErrnoException): void {
    if (this.closed || this.paused) return;
    if (err.code !== 'EMFILE' && err.code !== 'ENFILE') return; // listen errors are reported by listen()
    this.errors++;
    this.pause();
  }

  /**
   * Stop accepting for a while (the backoff's delay), e.g. when the process nears its descriptor
   * limit (src/tunnel/fdbudget.ts): a flood waits in the peers' SYN retries, not in our descriptors.
   */
  pause(): void {
    if (this.closed || this.paused) return;
    this.pauses++;
    this.paused = true;
    this.server.close();
    const again = (): void => {
      if (this.closed) return;
      // Listening again may itself fail with EMFILE: that error comes back here and backs off more.
      this.paused = false;
      this.server.listen(this.address.port, this.address.host, 1024);
    };
    this.timer = this.clock.setTimeout(again, this.delay);
    this.delay = Math.min(this.delay * 2, 5000);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer?.cancel();
    this.server.close();
  }
}
