// The link listener: accepts links on `tunnel.listen`, bounds what unauthenticated clients can
// hold before TLS and during it, and hands each authenticated connection to a Link
// (src/tunnel/link.ts).
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { IpdeadgateError } from '../errors';
import { fdOf, tcpInfoByFd } from '../sys/tcpinfo';
import { type TlsLinkContext, TlsLinkSocket } from '../sys/tlslink';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { AcceptBackoff } from './acceptbackoff';
import type { HostPort } from './config';
import { FdBudget } from './fdbudget';
import { Link, type LinkOptions, type RefusalEvent } from './link';
import type { LinkRefusal } from './linklife';
import { classifyTlsError, LINK_ALPN, linkContext, type TlsMaterial } from './linktls';
import { MuxSession, type MuxStream } from './muxsession';
import { CONTROL_SERVICE, encodeAnswer, readOpen, Refusal } from './protocol';

/**
 * A peer refused for its certificate still has a TLS channel to us (Node checks the certificate
 * after the handshake, and cannot send the TLS alert that would say why): answer its control
 * stream with a refusal that names the reason, so the dialer logs it too, and close. Nothing else
 * is read from it; the whole exchange is bounded by one second.
 */
function tellRefusedAndClose(socket: TlsLinkSocket, reason: LinkRefusal, detail: string, clock: Clock): void {
  const m = new MuxSession(socket, { role: 'server', clock, maxStreams: 1, lingerMs: 500 });
  // A peer that opens no control stream (it does not speak the protocol) gets no byte at all.
  const timer = clock.setTimeout(() => socket.destroy(), 1000);
  m.once('close', () => {
    timer.cancel();
    socket.destroy();
  });
  m.once('stream', (s: MuxStream) => {
    readOpen(s, 1000).then(
      (req) => {
        if (req.service !== CONTROL_SERVICE) return void socket.destroy();
        s.resume();
        s.end(encodeAnswer(Refusal.LinkRefused, `${reason}: ${detail}`));
        setImmediate(() => m.close());
      },
      () => socket.destroy(),
    );
  });
}

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

/**
 * Accepts links on `listen`; peers without a certificate from our CA never get a session. What
 * an unauthenticated client can hold is bounded: connections in the TLS handshake (and waiting
 * for their first byte) at once, in all and per source address; a connection whose first byte
 * does not come within first_byte_timeout is closed before any TLS state exists; and near the
 * descriptor limit accepting pauses.
 */
export class LinkListener extends EventEmitter {
  private readonly server: net.Server;
  private readonly backoff: AcceptBackoff;
  private readonly context: TlsLinkContext;
  private readonly handshaking = new Set<TlsLinkSocket>();
  /** Accepted connections that have not sent a byte yet, with when they must have. */
  private readonly waiting = new Map<net.Socket, { deadline: number; go: () => void; fail: () => void }>();
  private waitTimer: Timer | undefined;
  /** Connections before their link (waiting or in the handshake), per source address. */
  private readonly perAddress = new Map<string, number>();
  private readonly fds = new FdBudget();
  readonly links = new Set<Link>();
  handshakeFailures = 0;
  /** Connections closed unheard: over a handshake cap, near the descriptor limit, or no first byte. */
  readonly turnedAway = { handshake_limit: 0, address_limit: 0, fd_limit: 0, first_byte_timeout: 0 };

  constructor(
    readonly address: HostPort,
    material: TlsMaterial,
    private readonly opts: LinkOptions,
  ) {
    super();
    this.context = linkContext(material, true);
    // Not a byte is read by Node: the addon takes the socket over for the TLS handshake.
    this.server = net.createServer({ pauseOnConnect: true }, (tcp) => this.onConnection(tcp));
    this.backoff = new AcceptBackoff(this.server, address, opts.clock ?? systemClock);
  }

  private handshakeFailed(remote: string, err: NodeJS.ErrnoException): void {
    this.handshakeFailures++;
    const ev: RefusalEvent = {
      remote,
      reason: classifyTlsError(err.code, err.message),
      detail: `TLS handshake with ${remote} failed: ${err.message}`,
      direction: 'accept',
    };
    this.emit('refused', ev);
  }

  private turnAway(
    tcp: net.Socket,
    remote: string,
    why: keyof LinkListener['turnedAway'],
    detail: string,
  ): void {
    this.turnedAway[why]++;
    if (!tcp.destroyed) tcp.resetAndDestroy();
    const ev: RefusalEvent = {
      remote,
      reason: why === 'first_byte_timeout' ? 'handshake_timeout' : 'too_many_handshakes',
      detail,
      direction: 'accept',
    };
    this.emit('refused', ev);
  }

  private onConnection(tcp: net.Socket): void {
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
    const maxAll = this.opts.maxHandshakes ?? 256;
    const maxOne = this.opts.maxHandshakesPerAddress ?? 16;
    const pending = this.waiting.size + this.handshaking.size;
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
    const firstByteMs = this.opts.firstByteTimeoutMs ?? 0;
    if (firstByteMs <= 0 || bytesReceived(tcp) !== 0) return this.startTls(tcp, remote, release);
    const clock = this.opts.clock ?? systemClock;
    this.waiting.set(tcp, {
      deadline: clock.now() + firstByteMs,
      go: () => this.startTls(tcp, remote, release),
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
    const clock = this.opts.clock ?? systemClock;
    this.waitTimer = clock.setTimeout(() => {
      this.waitTimer = undefined;
      const now = clock.now();
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

  private startTls(tcp: net.Socket, remote: string, release: () => void): void {
    let socket: TlsLinkSocket;
    try {
      socket = new TlsLinkSocket(tcp, this.context);
    } catch (err) {
      release();
      return this.handshakeFailed(remote, err as NodeJS.ErrnoException);
    }
    this.handshaking.add(socket);
    const clock = this.opts.clock ?? systemClock;
    const timeoutMs = this.opts.handshakeTimeoutMs ?? 10_000;
    const timer = clock.setTimeout(
      () =>
        socket.destroy(
          new IpdeadgateError('ERR_TLS_HANDSHAKE_TIMEOUT', `TLS handshake timeout after ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
    const onError = (err: NodeJS.ErrnoException): void => {
      timer.cancel();
      this.handshaking.delete(socket);
      release();
      this.handshakeFailed(remote, err);
    };
    socket.once('error', onError);
    socket.once('close', () => {
      timer.cancel();
      this.handshaking.delete(socket);
      release();
    });
    socket.once('secure', () => {
      timer.cancel();
      this.handshaking.delete(socket);
      release();
      socket.off('error', onError);
      this.onSecure(socket, remote);
    });
  }

  private onSecure(socket: TlsLinkSocket, remote: string): void {
    this.backoff.accepted();
    socket.on('error', () => undefined);
    const cert = socket.getPeerCertificate();
    let refusal: [LinkRefusal, string] | undefined;
    if (!cert || !Object.keys(cert).length)
      refusal = ['no_certificate', `the peer at ${remote} sent no certificate`];
    else if (!socket.authorized) {
      const code = String(socket.authorizationError ?? '');
      refusal = [
        classifyTlsError(code) === 'tls_error' ? 'bad_certificate' : classifyTlsError(code),
        `the certificate of the peer at ${remote} (CN ${String(cert.subject?.CN)}) was refused: ${code}`,
      ];
    } else if (socket.alpnProtocol !== LINK_ALPN)
      refusal = [
        'protocol_version',
        `the peer at ${remote} does not offer ${LINK_ALPN} (ALPN: ${String(socket.alpnProtocol)})`,
      ];
    if (refusal) {
      this.handshakeFailures++;
      if (refusal[0] === 'protocol_version')
        socket.destroy(); // it does not speak our protocol
      else tellRefusedAndClose(socket, refusal[0], refusal[1], this.opts.clock ?? systemClock);
      const ev: RefusalEvent = { remote, reason: refusal[0], detail: refusal[1], direction: 'accept' };
      this.emit('refused', ev);
      return;
    }
    const link = new Link(socket, false, this.opts);
    this.links.add(link);
    link.on('refused', (ev: RefusalEvent) => this.emit('refused', ev));
    link.once('up', () => this.emit('link', link));
    link.once('down', () => this.links.delete(link));
  }

  listen(): Promise<void> {
    return this.backoff.listen();
  }

  get acceptErrors(): number {
    return this.backoff.errors;
  }

  close(): void {
    this.backoff.close();
    this.waitTimer?.cancel();
    this.waitTimer = undefined;
    for (const tcp of this.waiting.keys()) tcp.destroy();
    this.waiting.clear();
    for (const s of this.handshaking) s.destroy();
    this.handshaking.clear();
    for (const l of this.links) l.close();
    this.context.free();
  }
}
