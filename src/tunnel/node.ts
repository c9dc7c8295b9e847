// A tunnel node: gateway proxy, endpoint proxy or relay (DESIGN.md "Tunnel: the semantics").
// - `services`: what this node dials for a peer, by name; nothing else (no open proxy).
// - `forwards`: local listeners whose connections go to a named service through the tunnel.
// - `listen` / `links`: links accepted and dialed; relays route streams by service name.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { systemClock, type Clock } from '../util/clock';
import { AcceptBackoff, CloseGuard, type SocketPorts } from './closeguard';
import { formatHostPort, type HostPort, type TunnelConfig } from './config';
import { preferAtomicMarking } from './gc';
import { Link, LinkDialer, LinkListener, loadTls, type LinkOptions } from './link';
import type { MuxStream } from './muxsession';
import {
  encodeAnswer,
  MAX_HOPS,
  readAnswer,
  RefusedError,
  Refusal,
  refusalName,
  type OpenRequest,
} from './protocol';
import { Router } from './router';
import type { SessionExit, SessionState } from './sessionlife';

/** The subset of pino's API the node logs with. */
export interface TunnelLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/**
 * Stream buffer threshold of bridged local sockets. With Node's default (16 KiB) a bridge pauses
 * its stream after each 16 KiB TLS record written to the socket, and resumes it a tick later; these
 * buffers fill only while a local peer is slower than the tunnel (the stream's receive window
 * bounds the rest), and an idle session does not allocate them.
 */
const LOCAL_SOCKET_HIGH_WATER = 256 * 1024;

const silent: TunnelLogger = { info: () => undefined, warn: () => undefined, error: () => undefined };

export interface LinkStatus {
  peer: string;
  address: string;
  direction: 'dial' | 'accept';
  state: string;
  rtt_ms: number | null;
  bytes_in: number;
  bytes_out: number;
  reconnects: number;
  streams: number;
  services: Record<string, number>;
  last_error?: string;
}

export interface TunnelStatus {
  name: string;
  role: string;
  links: LinkStatus[];
  sessions: {
    count: number;
    opened: number;
    close_timeouts: number;
    /** Open sessions by state (src/tunnel/sessionlife.ts). */
    states?: Partial<Record<SessionState, number>>;
    /** Sessions ended since start, by why. */
    ends?: Partial<Record<SessionExit, number>>;
    reaped: number;
    watcher_resets: number;
    refusals: Record<string, number>;
    refused_by_peer: Record<string, number>;
    accept_errors: number;
  };
}

export interface StartOptions {
  logger?: TunnelLogger;
  clock?: Clock;
  /** Native socket ports (watcher, TCP_INFO); defaults to src/sys. */
  ports?: SocketPorts;
  /** Turn V8's incremental marking off for the process (src/tunnel/gc.ts; default true). */
  atomicMarking?: boolean;
}

export class TunnelNode extends EventEmitter {
  private readonly logger: TunnelLogger;
  private readonly clock: Clock;
  private readonly router: Router<Link>;
  private readonly guard: CloseGuard;
  private readonly dialers: LinkDialer[] = [];
  private listener: LinkListener | undefined;
  private readonly forwards: {
    server: net.Server;
    backoff: AcceptBackoff;
    service: string;
    address: HostPort;
  }[] = [];
  private readonly allLinks = new Set<Link>();
  private opened = 0;
  private retiredCloseTimeouts = 0;
  private readonly refusals: Record<string, number> = {};
  private readonly refusedByPeer: Record<string, number> = {};
  private closing: Promise<void> | undefined;

  private constructor(
    readonly cfg: TunnelConfig,
    opts: StartOptions,
  ) {
    super();
    this.logger = opts.logger ?? silent;
    this.clock = opts.clock ?? systemClock;
    this.router = new Router<Link>(Object.keys(cfg.services), cfg.role === 'relay');
    this.guard = new CloseGuard({
      closeTimeoutMs: cfg.close_timeout,
      dialTimeoutMs: cfg.dial_timeout,
      openTimeoutMs: cfg.open_timeout,
      clock: this.clock,
      ports: opts.ports,
    });
  }

  /** Start listeners and links; rejects (and releases everything) if a listener cannot bind. */
  static async start(cfg: TunnelConfig, opts: StartOptions = {}): Promise<TunnelNode> {
    if (opts.atomicMarking ?? true) preferAtomicMarking();
    const node = new TunnelNode(cfg, opts);
    try {
      await node.startAll();
    } catch (err) {
      await node.close();
      throw err;
    }
    return node;
  }

  private linkOptions(): LinkOptions {
    return {
      localName: this.cfg.name,
      localRole: this.cfg.role,
      heartbeatMs: this.cfg.heartbeat,
      heartbeatMisses: this.cfg.heartbeat_misses,
      closeTimeoutMs: this.cfg.close_timeout,
      clock: this.clock,
      services: (link) => this.router.announceTo(link),
    };
  }

  private async startAll(): Promise<void> {
    const material = loadTls(this.cfg.tls);
    const lo = this.linkOptions();
    if (this.cfg.listen) {
      this.listener = new LinkListener(this.cfg.listen, material, lo);
      this.listener.on('link', (l: Link) => this.onLink(l, 'accept'));
      await this.listener.listen();
      this.logger.info({ listen: formatHostPort(this.cfg.listen) }, 'tunnel: accepting links');
    }
    for (const f of this.cfg.forwards) {
      const server = net.createServer({
        allowHalfOpen: true,
        pauseOnConnect: true,
        highWaterMark: LOCAL_SOCKET_HIGH_WATER,
      });
      const backoff = new AcceptBackoff(server, f.listen, this.clock);
      server.on('connection', (sock: net.Socket) => {
        backoff.accepted();
        this.onForward(sock, f.service);
      });
      this.forwards.push({ server, backoff, service: f.service, address: f.listen });
      await backoff.listen();
      this.logger.info({ listen: formatHostPort(f.listen), service: f.service }, 'tunnel: forwarding');
    }
    for (const l of this.cfg.links) {
      const d = new LinkDialer(l.connect, material, lo);
      d.on('link', (link: Link) => this.onLink(link, 'dial'));
      this.dialers.push(d);
      d.start();
    }
  }

  private onLink(link: Link, direction: 'dial' | 'accept'): void {
    this.allLinks.add(link);
    this.router.add(link);
    this.logger.info(
      { peer: link.peerName, remote: link.remote, direction, services: link.peerServices },
      'tunnel: link up',
    );
    link.on('stream', (s: MuxStream, req: OpenRequest) => this.onStream(link, s, req));
    link.on('tell', () => this.retell());
    link.once('down', (err?: Error) => {
      this.retiredCloseTimeouts += link.session.closeTimeouts;
      this.allLinks.delete(link);
      this.router.remove(link);
      this.logger.warn(
        { peer: link.peerName, remote: link.remote, reason: err?.message ?? 'closed' },
        'tunnel: link down',
      );
      this.retell();
    });
    link.session.ping().catch(() => undefined); // a first RTT for routing and status
    this.retell();
  }

  /** Services changed: tell every link (each link sends only when its view changed). */
  private retell(): void {
    for (const l of this.allLinks) if (l.up) l.tell();
  }

  private refuse(stream: MuxStream, code: Refusal, reason: string): void {
    const name = refusalName(code);
    this.refusals[name] = (this.refusals[name] ?? 0) + 1;
    this.logger.warn({ refusal: name, reason }, 'tunnel: session refused');
    stream.on('error', () => undefined);
    stream.resume(); // discard what the opener pipelined
    stream.end(encodeAnswer(code, reason));
  }

  /** A peer opened a stream for `req.service`. */
  private onStream(from: Link, stream: MuxStream, req: OpenRequest): void {
    if (this.closing) return this.refuse(stream, Refusal.ShuttingDown, `${this.cfg.name} is shutting down`);
    if (req.hops > MAX_HOPS)
      return this.refuse(
        stream,
        Refusal.TooManyHops,
        `more than ${MAX_HOPS} hops to ${req.service} (a routing loop?)`,
      );
    if (this.sessions >= this.cfg.max_sessions)
      return this.refuse(
        stream,
        Refusal.MaxSessions,
        `${this.cfg.name} has max_sessions (${this.cfg.max_sessions}) sessions open`,
      );
    const target = this.cfg.services[req.service];
    if (target) return this.dialService(stream, req.service, target);
    if (this.cfg.role !== 'relay')
      return this.refuse(
        stream,
        Refusal.UnknownService,
        `${this.cfg.name} offers no service named "${req.service}"`,
      );
    const next = this.router.route(req.service, from);
    if (!next)
      return this.refuse(stream, Refusal.NoRoute, `${this.cfg.name} has no live route to "${req.service}"`);
    this.relay(stream, next, req);
  }

  private dialService(stream: MuxStream, service: string, target: HostPort): void {
    this.opened++;
    // net.Socket passes its options on to stream.Duplex, which takes highWaterMark (not in @types/node's NetConnectOpts).
    const connect = (t: HostPort): net.Socket => {
      const opts: net.NetConnectOpts & { highWaterMark: number } = {
        host: t.host,
        port: t.port,
        allowHalfOpen: true,
        highWaterMark: LOCAL_SOCKET_HIGH_WATER,
      };
      return net.connect(opts);
    };
    this.guard.service(
      stream,
      target,
      encodeAnswer(0),
      (st, reason) =>
        this.refuse(
          st,
          Refusal.DialFailed,
          `${this.cfg.name} could not connect to ${service} at ${formatHostPort(target)}: ${reason}`,
        ),
      connect,
    );
  }

  /** Relay: open the same request one hop further and join the two streams byte for byte. */
  private relay(up: MuxStream, via: Link, req: OpenRequest): void {
    let down: MuxStream;
    try {
      down = via.openStream(req.service, req.hops + 1);
    } catch (err) {
      return this.refuse(up, Refusal.NoRoute, `${this.cfg.name}: ${(err as Error).message}`);
    }
    this.opened++;
    this.guard.relay(up, down, readAnswer(down, this.cfg.open_timeout), encodeAnswer);
  }

  /** A local connection to a forward listener: open a stream to the service and bridge. */
  private onForward(sock: net.Socket, service: string): void {
    sock.on('error', () => undefined);
    if (this.closing) return void sock.resetAndDestroy();
    if (this.sessions >= this.cfg.max_sessions) {
      this.refusals.max_sessions = (this.refusals.max_sessions ?? 0) + 1;
      this.logger.warn(
        { service },
        `tunnel: max_sessions (${this.cfg.max_sessions}) reached, connection reset`,
      );
      return void sock.resetAndDestroy();
    }
    const link = this.router.route(service);
    if (!link) {
      this.refusals.no_route = (this.refusals.no_route ?? 0) + 1;
      this.logger.warn({ service }, 'tunnel: no live link reaches the service, connection reset');
      return void sock.resetAndDestroy();
    }
    let stream: MuxStream;
    try {
      stream = link.openStream(service, 0);
    } catch {
      this.refusals.no_route = (this.refusals.no_route ?? 0) + 1;
      return void sock.resetAndDestroy();
    }
    this.opened++;
    const answer = readAnswer(stream, this.cfg.open_timeout).then((a) => {
      if (a.status !== 0) {
        const name = refusalName(a.status);
        this.refusedByPeer[name] = (this.refusedByPeer[name] ?? 0) + 1;
        this.logger.warn(
          { service, refusal: name, reason: a.reason },
          'tunnel: the far end refused the session',
        );
        throw new RefusedError(a.status, a.reason);
      }
    });
    this.guard.forward(sock, stream, answer);
  }

  /** Sessions open: the slots in use (the session table's size, so it cannot drift). */
  private get sessions(): number {
    return this.guard.size;
  }

  status(): TunnelStatus {
    const links: LinkStatus[] = [];
    const seen = new Set<Link>();
    const linkStatus = (
      l: Link,
      direction: 'dial' | 'accept',
      reconnects: number,
      address: string,
    ): LinkStatus => {
      const st = l.session.stats();
      return {
        peer: l.peerName,
        address,
        direction,
        state: l.state,
        rtt_ms: st.rttMs === undefined ? null : Math.round(st.rttMs * 1000) / 1000,
        bytes_in: st.bytesIn,
        bytes_out: st.bytesOut,
        reconnects,
        streams: st.streamsOpen,
        services: l.peerServices,
      };
    };
    for (const d of this.dialers) {
      if (d.link) {
        seen.add(d.link);
        links.push(linkStatus(d.link, 'dial', d.reconnects, d.address));
      } else {
        links.push({
          peer: '',
          address: d.address,
          direction: 'dial',
          state: 'connecting',
          rtt_ms: null,
          bytes_in: 0,
          bytes_out: 0,
          reconnects: d.reconnects,
          streams: 0,
          services: {},
          last_error: d.lastError,
        });
      }
    }
    for (const l of this.listener?.links ?? [])
      if (!seen.has(l)) links.push(linkStatus(l, 'accept', 0, l.remote));
    let closeTimeouts = this.retiredCloseTimeouts;
    for (const l of this.allLinks) closeTimeouts += l.session.closeTimeouts;
    return {
      name: this.cfg.name,
      role: this.cfg.role,
      links,
      sessions: {
        count: this.sessions,
        opened: this.opened,
        close_timeouts: closeTimeouts + this.guard.stats.closeTimeouts,
        states: this.guard.byState(),
        ends: { ...this.guard.stats.exits },
        reaped: this.guard.stats.reaped,
        watcher_resets: this.guard.stats.watcherResets,
        refusals: { ...this.refusals },
        refused_by_peer: { ...this.refusedByPeer },
        accept_errors:
          (this.listener?.acceptErrors ?? 0) + this.forwards.reduce((n, f) => n + f.backoff.errors, 0),
      },
    };
  }

  /** Stop everything: listeners, links (and so every session), the reaper. Idempotent. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = (async () => {
      for (const f of this.forwards) f.backoff.close();
      this.listener?.close();
      for (const d of this.dialers) d.close();
      for (const l of this.allLinks) l.close();
      this.guard.close();
      await new Promise((r) => setImmediate(r));
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
