// Links between nodes: one TCP connection each, TLS 1.3 only, both sides authenticated by a
// certificate from the configured CA, carrying one yamux session. Either side may dial (so each
// firewall can allow one port in one direction); the dialer reconnects with jittered exponential
// backoff. Right after connecting, both sides say who they are and which services they reach on
// a control stream (TFST's WHO/TELL), and tell again whenever that changes. A link's life is the
// state machine of src/tunnel/linklife.ts; its TLS side (certificates, the addon's context) is in
// src/tunnel/linktls.ts.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import type * as tls from 'node:tls';
import { IpdeadgateError } from '../errors';
import { systemClock, type Clock, type Timer } from '../util/clock';
import { formatHostPort, type HostPort } from './config';
import { MuxSession, type MuxStream } from './muxsession';
import {
  CONTROL_SERVICE,
  encodeAnswer,
  encodeOpen,
  readAnswer,
  readOpen,
  Refusal,
  type ControlMessage,
} from './protocol';
import { AcceptBackoff } from './acceptbackoff';
import {
  LinkLife,
  type LinkEvent,
  type LinkEventType,
  type LinkLifeHost,
  type LinkRefusal,
  type LinkState,
} from './linklife';
import {
  certificateNames,
  certificateVouchesFor,
  classifyTlsError,
  LINK_ALPN,
  linkContext,
  type TlsMaterial,
} from './linktls';
import { type TlsLinkContext, TlsLinkSocket } from '../sys/tlslink';

// What links' users import from here: the machine's names and the TLS helpers.
export type { LinkRefusal, LinkState };
export {
  certificateNames,
  certificateVouchesFor,
  classifyTlsError,
  LINK_ALPN,
  loadTls,
  type TlsFiles,
  type TlsMaterial,
} from './linktls';

/** A link refused, with the reason's stable name and what exactly was wrong. */
export class LinkRefusedError extends IpdeadgateError {
  constructor(
    readonly reason: LinkRefusal,
    message: string,
  ) {
    super('ERR_TUNNEL_LINK_REFUSED', message);
  }
}

/** What a refusal event carries (Link, LinkListener and LinkDialer emit 'refused' with it). */
export interface RefusalEvent {
  remote: string;
  reason: LinkRefusal;
  detail: string;
  /** 'accept': we refused a peer that connected to us; 'dial': the link we dialed was refused. */
  direction: 'accept' | 'dial';
}

export interface LinkOptions {
  localName: string;
  localRole: string;
  heartbeatMs: number;
  heartbeatMisses: number;
  closeTimeoutMs: number;
  clock?: Clock;
  /** What we announce on a link (service -> hops). */
  services: (link: Link) => Record<string, number>;
  handshakeTimeoutMs?: number;
  /** After the hello (name already bound to the certificate): may this peer link at all? A reason when not. */
  admitPeer?: (name: string) => string | undefined;
  /** Keep the services this peer may announce; report the ones it may not. */
  filterAnnounced?: (link: Link, services: Record<string, number>) => Record<string, number>;
  /** A (state, event) pair the link's machine does not expect (src/tunnel/linklife.ts): already counted. */
  onInvalidEvent?: (link: Link, state: LinkState, event: LinkEventType) => void;
}

/** What the peer says on the control stream, one JSON object a line (docs/protocol.md). */
function controlEvent(m: ControlMessage): LinkEvent | undefined {
  switch (m.type) {
    case 'bye':
      return {
        type: 'bye',
        detail: `the peer refused the link (${String(m.reason ?? '').slice(0, 64)}): ${String(m.detail ?? '').slice(0, 512)}`,
      };
    case 'hello':
      return {
        type: 'hello',
        name: String(m.name).slice(0, 63),
        role: String(m.role).slice(0, 32),
        services: sanitizeServices(m.services),
      };
    case 'tell':
      return { type: 'tell', services: sanitizeServices(m.services) };
  }
  return undefined; // a message type from a later version: not ours to judge
}

/**
 * One established TLS connection with its yamux session, its life the machine in
 * src/tunnel/linklife.ts. Events: 'up' (after the peer's hello), 'tell' (the peer's services
 * changed), 'stream' (MuxStream, OpenRequest already read), 'refused' (RefusalEvent), 'down' (Error?).
 */
export class Link extends EventEmitter implements LinkLifeHost {
  readonly session: MuxSession;
  readonly life: LinkLife;
  peerCertSubject = '';
  private readonly peerCert: tls.PeerCertificate | undefined;
  private control: MuxStream | undefined;
  private lastTold = '';
  readonly remote: string;
  readonly clock: Clock;
  readonly handshakeTimeoutMs: number;

  constructor(
    readonly socket: TlsLinkSocket,
    readonly dialer: boolean,
    private readonly opts: LinkOptions,
  ) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 10_000;
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    this.peerCert = socket.getPeerCertificate();
    const cn = this.peerCert?.subject?.CN;
    this.peerCertSubject = typeof cn === 'string' ? cn : '';
    this.session = new MuxSession(socket, {
      role: dialer ? 'client' : 'server',
      clock: this.clock,
      heartbeatMs: opts.heartbeatMs,
      heartbeatMisses: opts.heartbeatMisses,
      closeTimeoutMs: opts.closeTimeoutMs,
    });
    this.session.on('close', (error?: Error) => this.life.dispatch({ type: 'closed', error }));
    this.session.on('stream', (s: MuxStream) => this.onStream(s));
    this.life = new LinkLife(this);
    if (dialer) {
      const c = this.session.open(encodeOpen(CONTROL_SERVICE));
      readAnswer(c).then(
        (a) =>
          a.status === 0
            ? this.attachControl(c)
            : this.life.dispatch({ type: 'bye', detail: `the peer refused the link: ${a.reason}` }),
        (err: Error) => this.close(err),
      );
    }
  }

  get state(): LinkState {
    return this.life.state;
  }

  get peerName(): string {
    return this.life.peerName;
  }

  get peerRole(): string {
    return this.life.peerRole;
  }

  get peerServices(): Record<string, number> {
    return this.life.peerServices;
  }

  private onStream(s: MuxStream): void {
    readOpen(s).then(
      (req) => {
        if (req.service === CONTROL_SERVICE) {
          if (this.control || this.dialer) return s.reset();
          s.write(encodeAnswer(0));
          this.attachControl(s);
          return;
        }
        // Sessions only on a link whose peer is known (up), not while refusing.
        if (this.state !== 'up') return s.reset();
        this.emit('stream', s, req);
      },
      () => s.reset(),
    );
  }

  private attachControl(c: MuxStream): void {
    this.control = c;
    let buf = '';
    c.setEncoding('utf8');
    c.on('data', (text: string) => {
      buf += text;
      if (buf.length > 1024 * 1024)
        return this.close(new IpdeadgateError('ERR_TUNNEL_HANDSHAKE', 'control message too long'));
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        this.onControl(line);
      }
    });
    c.on('end', () =>
      this.close(new IpdeadgateError('ERR_TUNNEL_LINK_CLOSED', 'the peer closed the control stream')),
    );
    c.on('close', () =>
      this.close(new IpdeadgateError('ERR_TUNNEL_LINK_CLOSED', 'the control stream closed')),
    );
    const services = this.opts.services(this);
    this.lastTold = JSON.stringify(services);
    this.send({ type: 'hello', name: this.opts.localName, role: this.opts.localRole, services });
  }

  private send(m: ControlMessage): void {
    this.control?.write(JSON.stringify(m) + '\n');
  }

  private onControl(line: string): void {
    let m: ControlMessage;
    try {
      m = JSON.parse(line) as ControlMessage;
    } catch {
      const error = new IpdeadgateError('ERR_TUNNEL_HANDSHAKE', 'malformed control message');
      return this.life.dispatch({ type: 'garbled', error });
    }
    const ev = controlEvent(m);
    if (ev) this.life.dispatch(ev);
  }

  /** The rules changed (a reload): filter what the peer announced again. */
  refilter(): void {
    this.life.dispatch({ type: 'rules_changed' });
  }

  /**
   * Refuse the link: tell the peer why on the control stream when there is one (so the other
   * side logs the reason too), report it ('refused'), and close.
   */
  refuse(reason: LinkRefusal, detail: string, tellPeer = true): void {
    this.life.dispatch({ type: 'refuse', reason, detail, tellPeer });
  }

  get up(): boolean {
    return this.state === 'up';
  }

  get rttMs(): number | undefined {
    return this.session.rttMs;
  }

  /** Announce our services again if they changed since the last announcement. */
  tell(): void {
    if (this.state !== 'up' && !this.control) return;
    const services = this.opts.services(this);
    const text = JSON.stringify(services);
    if (text === this.lastTold) return;
    this.lastTold = text;
    this.send({ type: 'tell', services });
  }

  /** Open a session stream to a service through this link. */
  openStream(service: string, hops: number): MuxStream {
    return this.session.open(encodeOpen(service, hops));
  }

  close(err?: Error): void {
    this.session.close(err);
  }

  // --- LinkLifeHost: what the machine does to the world ---

  /** @internal Identity: the name a peer gives must be one its certificate vouches for, or any peer
   * with a certificate from the CA could pose as any node and draw its traffic. */
  vetPeer(name: string): { reason: LinkRefusal; detail: string } | undefined {
    if (!certificateVouchesFor(this.peerCert, name))
      return {
        reason: 'name_mismatch',
        detail: `the peer at ${this.remote} says it is "${name}" but its certificate is for ${JSON.stringify(certificateNames(this.peerCert))}`,
      };
    const notAllowed = this.opts.admitPeer?.(name);
    return notAllowed ? { reason: 'peer_not_allowed', detail: notAllowed } : undefined;
  }

  /** @internal */
  filterAnnounced(services: Record<string, number>): Record<string, number> {
    return this.opts.filterAnnounced?.(this, services) ?? services;
  }

  /** @internal */
  sendBye(reason: LinkRefusal, detail: string): void {
    this.send({ type: 'bye', reason, detail });
  }

  /** @internal Let the bye go out before the session's go-away and close. */
  closeAfterFlush(reason: LinkRefusal, detail: string): void {
    setImmediate(() => this.close(new LinkRefusedError(reason, detail)));
  }

  /** @internal */
  destroyTransport(): void {
    this.socket.destroy();
  }

  /** @internal */
  announceUp(): void {
    this.emit('up');
  }

  /** @internal */
  announceTell(): void {
    this.emit('tell');
  }

  /** @internal */
  announceRefused(reason: LinkRefusal, detail: string): void {
    const ev: RefusalEvent = {
      remote: this.remote,
      reason,
      detail,
      direction: this.dialer ? 'dial' : 'accept',
    };
    this.emit('refused', ev);
  }

  /** @internal */
  announceDown(error: Error | undefined): void {
    this.emit('down', error);
  }

  /** @internal */
  announceInvalid(state: LinkState, event: LinkEventType): void {
    this.opts.onInvalidEvent?.(this, state, event);
  }
}

function sanitizeServices(v: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  if (!v || typeof v !== 'object') return out;
  for (const [k, h] of Object.entries(v as Record<string, unknown>)) {
    if (
      /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(k) &&
      typeof h === 'number' &&
      Number.isInteger(h) &&
      h >= 0 &&
      h < 64
    )
      out[k] = h;
  }
  return out;
}

/** Jittered exponential backoff: a random delay in [d/2, d] with d doubling from base to cap. */
export function backoffDelay(
  attempt: number,
  baseMs = 250,
  capMs = 30_000,
  random: () => number = Math.random,
): number {
  const d = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 20));
  return d / 2 + random() * (d / 2);
}

/** Keeps one link to `target` up: dials, and redials with backoff whenever it goes down. */
export class LinkDialer extends EventEmitter {
  link: Link | undefined;
  reconnects = 0;
  attempts = 0;
  lastError = '';
  private timer: Timer | undefined;
  private connectTimer: Timer | undefined;
  private socket: net.Socket | TlsLinkSocket | undefined;
  private closed = false;
  private readonly clock: Clock;
  private readonly context: TlsLinkContext;

  constructor(
    readonly target: HostPort,
    material: TlsMaterial,
    private readonly opts: LinkOptions,
  ) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.context = linkContext(material, false);
  }

  get address(): string {
    return formatHostPort(this.target);
  }

  start(): void {
    this.dial();
  }

  private dial(): void {
    if (this.closed) return;
    const tcp = net.connect({ host: this.target.host, port: this.target.port });
    let socket: TlsLinkSocket | undefined;
    this.socket = tcp;
    const connectTimer = this.clock.setTimeout(
      () =>
        (socket ?? tcp).destroy(new IpdeadgateError('ETIMEDOUT', `connecting to ${this.address} timed out`)),
      15_000,
    );
    this.connectTimer = connectTimer;
    let failed = false;
    const fail = (err: NodeJS.ErrnoException): void => {
      if (failed) return;
      failed = true;
      connectTimer.cancel();
      this.lastError = err.message;
      this.socket = undefined;
      tcp.destroy();
      socket?.destroy();
      const reason = classifyTlsError(err.code, err.message);
      if (reason !== 'tls_error') this.emitRefused(reason, err.message);
      else this.emit('dial_failed', { remote: this.address, error: err.message, code: err.code });
      this.retry();
    };
    tcp.once('error', fail);
    tcp.once('connect', () => {
      tcp.off('error', fail);
      try {
        socket = new TlsLinkSocket(tcp, this.context);
      } catch (err) {
        return fail(err as NodeJS.ErrnoException);
      }
      const s = socket;
      this.socket = s;
      s.once('error', fail);
      s.once('secure', () => {
        connectTimer.cancel();
        s.off('error', fail);
        s.on('error', () => undefined); // the session reports it
        if (s.authorizationError) {
          // As Node's TLS client with rejectUnauthorized: the server's chain does not verify.
          const err = new IpdeadgateError(
            s.authorizationError,
            s.authorizationMessage ?? s.authorizationError,
          ) as NodeJS.ErrnoException;
          return fail(err);
        }
        if (s.alpnProtocol !== LINK_ALPN) {
          const detail = `${this.address} does not speak ${LINK_ALPN} (ALPN: ${String(s.alpnProtocol)})`;
          this.lastError = detail;
          this.socket = undefined;
          s.destroy();
          this.emitRefused('protocol_version', detail);
          return this.retry();
        }
        const link = new Link(s, true, this.opts);
        this.link = link;
        link.on('refused', (ev: RefusalEvent) => this.emit('refused', ev));
        link.once('up', () => {
          this.attempts = 0;
          this.emit('link', link);
        });
        link.once('down', (err?: Error) => {
          this.lastError = err?.message ?? 'closed';
          this.link = undefined;
          this.socket = undefined;
          this.retry();
        });
      });
    });
  }

  private emitRefused(reason: LinkRefusal, detail: string): void {
    const ev: RefusalEvent = { remote: this.address, reason, detail, direction: 'dial' };
    this.emit('refused', ev);
  }

  private retry(): void {
    if (this.closed) return;
    const delay = backoffDelay(this.attempts++);
    this.reconnects++;
    this.timer = this.clock.setTimeout(() => this.dial(), delay);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.timer?.cancel();
    this.connectTimer?.cancel(); // a dial in progress must not keep the process alive
    this.link?.close();
    this.socket?.destroy();
    this.context.free();
  }
}

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

/** Accepts links on `listen`; peers without a certificate from our CA never get a session. */
export class LinkListener extends EventEmitter {
  private readonly server: net.Server;
  private readonly backoff: AcceptBackoff;
  private readonly context: TlsLinkContext;
  private readonly handshaking = new Set<TlsLinkSocket>();
  readonly links = new Set<Link>();
  handshakeFailures = 0;

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

  private onConnection(tcp: net.Socket): void {
    const remote = `${tcp.remoteAddress}:${tcp.remotePort}`;
    let socket: TlsLinkSocket;
    try {
      socket = new TlsLinkSocket(tcp, this.context);
    } catch (err) {
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
      this.handshakeFailed(remote, err);
    };
    socket.once('error', onError);
    socket.once('close', () => {
      timer.cancel();
      this.handshaking.delete(socket);
    });
    socket.once('secure', () => {
      timer.cancel();
      this.handshaking.delete(socket);
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
    for (const s of this.handshaking) s.destroy();
    this.handshaking.clear();
    for (const l of this.links) l.close();
    this.context.free();
  }
}
