// Links between nodes: one TCP connection each, TLS 1.3 only, both sides authenticated by a
// certificate from the configured CA, carrying one yamux session. Either side may dial (so each
// firewall can allow one port in one direction); the dialer reconnects with jittered exponential
// backoff. Right after connecting, both sides say who they are and which services they reach on
// a control stream (TFST's WHO/TELL), and tell again whenever that changes.
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
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
  type ControlMessage,
} from './protocol';
import { AcceptBackoff } from './closeguard';

export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

/** Read the PEM files, naming the one that cannot be read. */
export function loadTls(files: TlsFiles): TlsMaterial {
  const read = (what: keyof TlsFiles): Buffer => {
    try {
      return fs.readFileSync(files[what]);
    } catch (err) {
      throw new IpdeadgateError(
        'ERR_TUNNEL_TLS',
        `tunnel.tls.${what}: cannot read ${files[what]}: ${(err as Error).message}`,
      );
    }
  };
  return { ca: read('ca'), cert: read('cert'), key: read('key') };
}

/**
 * TLS options both ways. TLS 1.3 only; the peer must present a certificate chaining to our CA.
 * Host names are not checked: links are authenticated by the CA (a private CA for the tunnel),
 * and nodes are addressed by IP across firewalls; the peer's node name comes from its hello.
 */
function tlsOptions(m: TlsMaterial): tls.SecureContextOptions & tls.CommonConnectionOptions {
  return {
    ca: m.ca,
    cert: m.cert,
    key: m.key,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    rejectUnauthorized: true,
    // AES-128-GCM first: with AES-NI it is the cheapest AEAD per byte, and a link carries bulk data.
    ciphers: 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256',
  };
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
}

export type LinkState = 'connecting' | 'handshake' | 'up' | 'down';

/**
 * One established TLS connection with its yamux session. Events: 'up' (after the peer's hello),
 * 'tell' (the peer's services changed), 'stream' (MuxStream, OpenRequest already read), 'down' (Error?).
 */
export class Link extends EventEmitter {
  readonly session: MuxSession;
  state: LinkState = 'handshake';
  peerName = '';
  peerRole = '';
  peerCertSubject = '';
  peerServices: Record<string, number> = {};
  private control: MuxStream | undefined;
  private lastTold = '';
  private handshakeTimer: Timer | undefined;
  readonly remote: string;
  private readonly clock: Clock;

  constructor(
    readonly socket: tls.TLSSocket,
    readonly dialer: boolean,
    private readonly opts: LinkOptions,
  ) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    const cert = socket.getPeerCertificate();
    this.peerCertSubject = typeof cert?.subject?.CN === 'string' ? cert.subject.CN : '';
    socket.setNoDelay(true);
    this.session = new MuxSession(socket, {
      role: dialer ? 'client' : 'server',
      clock: this.clock,
      heartbeatMs: opts.heartbeatMs,
      heartbeatMisses: opts.heartbeatMisses,
      closeTimeoutMs: opts.closeTimeoutMs,
    });
    this.session.on('close', (err?: Error) => this.onClose(err));
    this.session.on('stream', (s: MuxStream) => this.onStream(s));
    this.handshakeTimer = this.clock.setTimeout(
      () =>
        this.close(
          new IpdeadgateError('ETIMEDOUT', `link ${this.remote}: no hello within the handshake time`),
        ),
      opts.handshakeTimeoutMs ?? 10_000,
    );
    if (dialer) {
      const c = this.session.open(encodeOpen(CONTROL_SERVICE));
      readAnswer(c).then(
        (a) =>
          a.status === 0
            ? this.attachControl(c)
            : this.close(
                new IpdeadgateError('ERR_TUNNEL_HANDSHAKE', `the peer refused the link: ${a.reason}`),
              ),
        (err: Error) => this.close(err),
      );
    }
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
      return this.close(new IpdeadgateError('ERR_TUNNEL_HANDSHAKE', 'malformed control message'));
    }
    const services = sanitizeServices(m.services);
    if (m.type === 'hello' && this.state === 'handshake') {
      this.peerName = String(m.name).slice(0, 63);
      this.peerRole = String(m.role).slice(0, 32);
      this.peerServices = services;
      this.state = 'up';
      this.handshakeTimer?.cancel();
      this.emit('up');
    } else if (m.type === 'tell' && this.state === 'up') {
      this.peerServices = services;
      this.emit('tell');
    }
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

  private onClose(err?: Error): void {
    if (this.state === 'down') return;
    this.state = 'down';
    this.handshakeTimer?.cancel();
    this.socket.destroy();
    this.emit('down', err);
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
  private socket: tls.TLSSocket | undefined;
  private closed = false;
  private readonly clock: Clock;

  constructor(
    readonly target: HostPort,
    private readonly material: TlsMaterial,
    private readonly opts: LinkOptions,
  ) {
    super();
    this.clock = opts.clock ?? systemClock;
  }

  get address(): string {
    return formatHostPort(this.target);
  }

  start(): void {
    this.dial();
  }

  private dial(): void {
    if (this.closed) return;
    const socket = tls.connect({
      host: this.target.host,
      port: this.target.port,
      ...tlsOptions(this.material),
      checkServerIdentity: () => undefined,
    });
    this.socket = socket;
    const connectTimer = this.clock.setTimeout(
      () => socket.destroy(new IpdeadgateError('ETIMEDOUT', `connecting to ${this.address} timed out`)),
      15_000,
    );
    this.connectTimer = connectTimer;
    const fail = (err: Error): void => {
      connectTimer.cancel();
      this.lastError = err.message;
      this.socket = undefined;
      socket.destroy();
      this.retry();
    };
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      connectTimer.cancel();
      socket.off('error', fail);
      socket.on('error', () => undefined); // the session reports it
      const link = new Link(socket, true, this.opts);
      this.link = link;
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
  }
}

/** Accepts links on `listen`; peers without a certificate from our CA never get a session. */
export class LinkListener extends EventEmitter {
  private readonly server: tls.Server;
  private readonly backoff: AcceptBackoff;
  readonly links = new Set<Link>();
  handshakeFailures = 0;

  constructor(
    readonly address: HostPort,
    material: TlsMaterial,
    private readonly opts: LinkOptions,
  ) {
    super();
    this.server = tls.createServer({
      ...tlsOptions(material),
      requestCert: true,
      honorCipherOrder: true,
      handshakeTimeout: 10_000,
    });
    this.server.on('secureConnection', (socket: tls.TLSSocket) => {
      this.backoff.accepted();
      socket.on('error', () => undefined);
      const link = new Link(socket, false, this.opts);
      this.links.add(link);
      link.once('up', () => this.emit('link', link));
      link.once('down', () => this.links.delete(link));
    });
    this.server.on('tlsClientError', (_err: Error, socket: net.Socket) => {
      this.handshakeFailures++;
      socket.destroy();
    });
    this.backoff = new AcceptBackoff(this.server, address, opts.clock ?? systemClock);
  }

  listen(): Promise<void> {
    return this.backoff.listen();
  }

  get acceptErrors(): number {
    return this.backoff.errors;
  }

  close(): void {
    this.backoff.close();
    for (const l of this.links) l.close();
  }
}
