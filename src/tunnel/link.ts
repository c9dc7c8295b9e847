// Links between nodes: one TCP connection each, TLS 1.3 only, both sides authenticated by a
// certificate from the configured CA, carrying one yamux session. Either side may dial (so each
// firewall can allow one port in one direction); the dialer reconnects with jittered exponential
// backoff. Right after connecting, both sides say who they are and which services they reach on
// a control stream (TFST's WHO/TELL), and tell again whenever that changes. A link's life is the
// state machine of src/tunnel/linklife.ts, a dialer's that of src/tunnel/dialerlife.ts; the TLS
// side (certificates, the addon's context) is in src/tunnel/linktls.ts.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import type * as tls from 'node:tls';
import { IpdeadgateError } from '../errors';
import { systemClock, type Clock } from '../util/clock';
import { formatHostPort, type HostPort } from './config';
import { parseControlLine } from './control';
import { MuxSession, type MuxStream } from './muxsession';
import {
  CONTROL_SERVICE,
  encodeAnswer,
  encodeOpen,
  readAnswer,
  readOpen,
  type ControlMessage,
} from './protocol';
import { DialerLife, type DialerEventType, type DialerLifeHost, type DialerState } from './dialerlife';
import {
  LinkLife,
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
import { AcceptBackoff } from './acceptbackoff';
import { LinkAdmission, type TurnedAway } from './linkadmission';

// What links' users import from here: the machine's names and the TLS helpers.
export type { LinkRefusal, LinkState };
export { backoffDelay } from './dialerlife';
export { parseControlLine } from './control';
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
  /** Close a link on which bytes wait and none leaves for this long (0: never). */
  writeTimeoutMs?: number;
  /** Most bytes that may wait to be sent on a link (MuxOptions.maxUnsent). */
  maxUnsent?: number;
  /** Listener: TLS handshakes in progress at once, in all and from one address. */
  maxHandshakes?: number;
  maxHandshakesPerAddress?: number;
  /** Listener: a connection that sends no byte for this long is closed. */
  firstByteTimeoutMs?: number;
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
      writeTimeoutMs: opts.writeTimeoutMs,
      maxUnsent: opts.maxUnsent,
      holdInboundWindow: true,
    });
    this.session.on('close', (error?: Error) => {
      // In TLS 1.3 the acceptor checks our certificate after our side of the handshake is over:
      // its alert (certificate_expired, unknown_ca, ...) is its refusal of this link.
      const refusedAs = dialer && this.state === 'handshake' ? peerRefusalOf(error) : undefined;
      if (refusedAs)
        this.life.dispatch({
          type: 'bye',
          detail: `the peer refused the link: ${refusedAs}: ${error!.message}`,
        });
      this.life.dispatch({ type: 'closed', error });
    });
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
        try {
          if (req.service === CONTROL_SERVICE) {
            if (this.control || this.dialer) return s.reset();
            s.write(encodeAnswer(0));
            this.attachControl(s);
            // Its window opens now: it has its reader.
            s.openWindow();
            return;
          }
          // Sessions only on a link whose peer is known (up), not while refusing.
          if (this.state !== 'up') return s.reset();
          this.emit('stream', s, req);
        } catch (err) {
          // A fault in handling one stream costs that stream, never the process.
          s.reset(err as Error);
        }
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
      // A fault in handling a control line costs this link (the peer said something we could
      // not take), never the process.
      try {
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          this.onControl(line);
        }
      } catch (err) {
        return this.close(
          new IpdeadgateError(
            'ERR_TUNNEL_INTERNAL',
            `handling a control message failed: ${(err as Error).message}`,
          ),
        );
      }
      if (buf.length > 1024 * 1024)
        return this.close(new IpdeadgateError('ERR_TUNNEL_HANDSHAKE', 'control message too long'));
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
    const ev = parseControlLine(line);
    if (ev instanceof Error) return this.life.dispatch({ type: 'garbled', error: ev });
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

/**
 * Keeps one link to `target` up: dials, and redials with backoff whenever it goes down; its life is
 * the machine in src/tunnel/dialerlife.ts, this class its hands on sockets and links. Events: 'link'
 * (Link, once up), 'refused' (RefusalEvent), 'dial_failed' ({ remote, error, code }), 'invalid'
 * (DialerState, DialerEventType: a pair the machine does not expect, already counted).
 */
export class LinkDialer extends EventEmitter implements DialerLifeHost<Link> {
  readonly life: DialerLife<Link>;
  readonly clock: Clock;
  private tcp: net.Socket | undefined;
  private tls: TlsLinkSocket | undefined;
  private readonly context: TlsLinkContext;

  constructor(
    readonly target: HostPort,
    material: TlsMaterial,
    private readonly opts: LinkOptions,
  ) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.context = linkContext(material, false);
    this.life = new DialerLife<Link>(this);
  }

  get address(): string {
    return formatHostPort(this.target);
  }

  get link(): Link | undefined {
    return this.life.current;
  }

  get reconnects(): number {
    return this.life.reconnects;
  }

  get lastError(): string {
    return this.life.lastError;
  }

  start(): void {
    this.life.dispatch({ type: 'start' });
  }

  /** Idempotent; safe from inside the dialer's own callbacks (the event waits for the current one). */
  close(): void {
    this.life.dispatch({ type: 'close' });
  }

  // --- DialerLifeHost: what the machine does to the world ---

  /** @internal */
  random(): number {
    return Math.random();
  }

  /** @internal Connect, then the TLS handshake; only the current dial's callbacks reach the machine. */
  openDial(): void {
    const tcp = net.connect({ host: this.target.host, port: this.target.port });
    this.tcp = tcp;
    this.tls = undefined;
    const failed = (reason: LinkRefusal, detail: string, code?: string): void => {
      if (this.tcp === tcp) this.life.dispatch({ type: 'failed', reason, detail, code });
    };
    const fail = (err: NodeJS.ErrnoException): void =>
      failed(classifyTlsError(err.code, err.message), err.message, err.code);
    tcp.once('error', fail);
    tcp.once('connect', () => {
      tcp.off('error', fail);
      let s: TlsLinkSocket;
      try {
        s = new TlsLinkSocket(tcp, this.context);
      } catch (err) {
        return fail(err as NodeJS.ErrnoException);
      }
      this.tls = s;
      s.once('error', fail);
      s.once('secure', () => {
        s.off('error', fail);
        s.on('error', () => undefined); // the session reports it
        // The server's chain was verified in the handshake (a bad one fails it, with the reason).
        if (!s.authorized)
          return failed('bad_certificate', `${this.address} presented no verified certificate`);
        if (s.alpnProtocol !== LINK_ALPN)
          return failed(
            'protocol_version',
            `${this.address} does not speak ${LINK_ALPN} (ALPN: ${String(s.alpnProtocol)})`,
          );
        if (this.tcp === tcp) this.life.dispatch({ type: 'connected' });
      });
    });
  }

  /** @internal */
  makeLink(): Link {
    const link = new Link(this.tls!, true, this.opts);
    link.on('refused', (ev: RefusalEvent) => this.emit('refused', ev));
    link.once('up', () => this.life.dispatch({ type: 'link_up' }));
    link.once('down', (error?: Error) => this.life.dispatch({ type: 'link_down', error }));
    return link;
  }

  /** @internal */
  destroySocket(): void {
    this.tcp?.destroy();
    this.tls?.destroy();
    this.tcp = this.tls = undefined;
  }

  /** @internal */
  freeContext(): void {
    this.context.free();
  }

  /** @internal */
  announceLink(link: Link): void {
    this.emit('link', link);
  }

  /** @internal A refusal when the failure has a reason's name, else a plain dial failure. */
  announceDialFailure(reason: LinkRefusal, detail: string, code: string | undefined): void {
    if (reason === 'tls_error')
      return void this.emit('dial_failed', { remote: this.address, error: detail, code });
    const ev: RefusalEvent = { remote: this.address, reason, detail, direction: 'dial' };
    this.emit('refused', ev);
  }

  /** @internal */
  announceInvalid(state: DialerState, event: DialerEventType): void {
    this.emit('invalid', state, event);
  }
}

/** A fatal TLS alert about our certificate, as the refusal reason it names; undefined for anything else. */
function peerRefusalOf(err: Error | undefined): LinkRefusal | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (!code || !/^ERR_SSL_.*ALERT/.test(code)) return undefined;
  const reason = classifyTlsError(code, err!.message);
  return reason === 'tls_error' || reason === 'protocol_version' ? undefined : reason;
}

/**
 * Accepts links on `listen`; peers without a certificate from our CA never get a session, and what
 * clients can hold before their link is bounded (src/tunnel/linkadmission.ts).
 */
export class LinkListener extends EventEmitter {
  private readonly server: net.Server;
  private readonly backoff: AcceptBackoff;
  private readonly context: TlsLinkContext;
  private readonly handshaking = new Set<TlsLinkSocket>();
  private readonly admission: LinkAdmission;
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
    this.admission = new LinkAdmission(opts, this.backoff, (remote, reason, detail) => {
      const ev: RefusalEvent = { remote, reason, detail, direction: 'accept' };
      this.emit('refused', ev);
    });
  }

  /** Connections closed before TLS, by why (src/tunnel/linkadmission.ts). */
  get turnedAway(): Readonly<Record<TurnedAway, number>> {
    return this.admission.turnedAway;
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
    this.admission.admit(tcp, this.handshaking.size, (release) => this.startTls(tcp, release));
  }

  private startTls(tcp: net.Socket, release: () => void): void {
    const remote = `${tcp.remoteAddress}:${tcp.remotePort}`;
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
    // The certificate was checked in the handshake (a peer without a good one got the alert that
    // says why and never gets here); its name is bound at the hello.
    let refusal: [LinkRefusal, string] | undefined;
    if (!socket.authorized)
      refusal = ['bad_certificate', `the peer at ${remote} has no verified certificate`];
    else if (socket.alpnProtocol !== LINK_ALPN)
      refusal = [
        'protocol_version',
        `the peer at ${remote} does not offer ${LINK_ALPN} (ALPN: ${String(socket.alpnProtocol)})`,
      ];
    if (refusal) {
      this.handshakeFailures++;
      socket.destroy(); // no mux session for it
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
    this.admission.close();
    for (const s of this.handshaking) s.destroy();
    this.handshaking.clear();
    for (const l of this.links) l.close();
    this.context.free();
  }
}
