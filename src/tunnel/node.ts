// A tunnel node: gateway proxy, endpoint proxy or relay (docs/protocol.md says what each does).
// - `services`: what this node dials for a peer, by name; nothing else (no open proxy).
// - `forwards`: local listeners whose connections go to a named service through the tunnel.
// - `listen` / `links`: links accepted and dialed; relays route streams by service name.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { ConfigError, IpdeadgateError } from '../errors';
import { systemClock, type Clock } from '../util/clock';
import type { EventLog } from '../util/eventlog';
import { AcceptBackoff } from './acceptbackoff';
import { CloseGuard, type SocketPorts } from './closeguard';
import { ownCertificateWarning, vetAnnouncement } from './announcetrust';
import {
  formatHostPort,
  matchesAny,
  ownEntry,
  SERVICE_NAME,
  type HostPort,
  type TunnelConfig,
} from './config';
import { preferAtomicMarking } from './gc';
import {
  Link,
  LinkDialer,
  LinkListener,
  loadTls,
  type LinkOptions,
  type LinkState,
  type RefusalEvent,
  type TlsMaterial,
} from './link';
import type { MuxStream } from './muxsession';
import { INITIAL_WINDOW } from './frame';
import { FdBudget } from './fdbudget';
import { EventRateLimit, eventsFromLogger, silent, type TunnelLogger } from './nodeevents';
import { PeerBudget, type SessionHold } from './peerbudget';
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

export { EventRateLimit, eventsFromLogger, type TunnelLogger };

/**
 * Stream buffer threshold of bridged local sockets. With Node's default (16 KiB) a bridge pauses
 * its stream after each 16 KiB TLS record written to the socket, and resumes it a tick later; these
 * buffers fill only while a local peer is slower than the tunnel (the stream's receive window
 * bounds the rest), and an idle session does not allocate them.
 */
const LOCAL_SOCKET_HIGH_WATER = 256 * 1024;

export interface LinkStatus {
  peer: string;
  address: string;
  direction: 'dial' | 'accept';
  /** The link's state, or 'connecting' for a dialer with no link yet (dialing, or waiting to redial). */
  state: LinkState | 'connecting';
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
    /** Sessions whose bytes moved in the addon (tunnel.native_relay), since start. */
    relayed?: number;
    refusals: Record<string, number>;
    refused_by_peer: Record<string, number>;
    accept_errors: number;
  };
  /** Links refused (by us or by the peer), by reason (src/tunnel/linklife.ts LinkRefusal). */
  link_refusals?: Record<string, number>;
  /** Service entries of peers' announcements ignored, by rule ('certificate', 'peers'). */
  announcements_ignored?: Record<string, number>;
  /**
   * Events the machines of links and their dialers did not expect in their state
   * (src/tunnel/linklife.ts, src/tunnel/dialerlife.ts).
   */
  link_invalid_events?: number;
  /** Streams whose handling failed (each reset, the link and the process untouched). */
  stream_faults?: number;
  /** Connections to the link listener closed before TLS: handshake caps, descriptor limit, silence. */
  turned_away?: Record<string, number>;
}

export interface StartOptions {
  /** Where events go (the daemon passes its counting EventLog). */
  events?: EventLog;
  /** A pino-like logger, used when `events` is not given. */
  logger?: TunnelLogger;
  clock?: Clock;
  /** Native socket ports (watcher, TCP_INFO); defaults to src/sys. */
  ports?: SocketPorts;
  /** Turn V8's incremental marking off for the process (src/tunnel/gc.ts; default true). */
  atomicMarking?: boolean;
}

export class TunnelNode extends EventEmitter {
  private readonly events: EventLog;
  private readonly limit: EventRateLimit;
  private readonly linkRefusals: Record<string, number> = {};
  /** Service entries of peers' announcements ignored, by the rule that ignored them. */
  private readonly announcementsIgnored: Record<string, number> = {};
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
  /** (state, event) pairs the links' machines did not expect (src/tunnel/linklife.ts). */
  private invalidLinkEvents = 0;
  private retiredCloseTimeouts = 0;
  private readonly refusals: Record<string, number> = {};
  private readonly refusedByPeer: Record<string, number> = {};
  /** Sessions each peer (by name) has through this node, and how many wait for their service. */
  private readonly perPeer = new PeerBudget();
  /** The forwards' view of the descriptor limit (the link listener keeps its own). */
  private readonly fds = new FdBudget();
  /** Streams whose handling threw: reset, counted here. */
  private streamFaults = 0;
  private closing: Promise<void> | undefined;

  private constructor(
    public cfg: TunnelConfig,
    opts: StartOptions,
  ) {
    super();
    this.events = opts.events ?? (opts.logger ? eventsFromLogger(opts.logger) : silent);
    this.clock = opts.clock ?? systemClock;
    this.limit = new EventRateLimit(this.clock);
    this.router = new Router<Link>(Object.keys(cfg.services), cfg.role === 'relay');
    this.guard = new CloseGuard({
      closeTimeoutMs: cfg.close_timeout,
      dialTimeoutMs: cfg.dial_timeout,
      openTimeoutMs: cfg.open_timeout,
      clock: this.clock,
      ports: opts.ports,
      nativeRelay: cfg.native_relay,
      relayAfterBytes: cfg.native_relay_after,
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
      handshakeTimeoutMs: this.cfg.handshake_timeout,
      writeTimeoutMs: this.cfg.write_timeout,
      maxUnsent: this.cfg.max_unsent,
      maxHandshakes: this.cfg.max_handshakes,
      maxHandshakesPerAddress: this.cfg.max_handshakes_per_address,
      firstByteTimeoutMs: Math.min(this.cfg.first_byte_timeout, this.cfg.handshake_timeout),
      clock: this.clock,
      services: (link) => this.router.announceTo(link),
      admitPeer: (name) =>
        this.cfg.peers && !ownEntry(this.cfg.peers, name)
          ? `${name} is not in tunnel.peers of ${this.cfg.name}`
          : undefined,
      filterAnnounced: (link, services) => this.filterAnnounced(link, services),
      onInvalidEvent: (link, state, event) => this.invalidLinkEvent(link.peerName, link.remote, state, event),
    };
  }

  /** A link's machine (src/tunnel/linklife.ts) or its dialer's (src/tunnel/dialerlife.ts) got an event it
   * does not expect in its state: counted, and logged at a limited rate. */
  private invalidLinkEvent(peer: string, remote: string, state: string, event: string): void {
    this.invalidLinkEvents++;
    const f = this.limit.admit(`link_invalid_event ${state} ${event}`, {
      peer,
      remote,
      state,
      link_event: event,
    });
    if (f) this.events.event('tunnel_link_invalid_event', f, 'warn');
  }

  private material: TlsMaterial | undefined;
  private lo: LinkOptions | undefined;

  private async startAll(): Promise<void> {
    this.material = loadTls(this.cfg.tls);
    this.lo = this.linkOptions();
    this.warnOwnCertificate();
    const material = this.material;
    const lo = this.lo;
    if (this.cfg.listen) {
      this.listener = new LinkListener(this.cfg.listen, material, lo);
      this.listener.on('link', (l: Link) => this.onLink(l, 'accept'));
      this.listener.on('refused', (ev: RefusalEvent) => this.onLinkRefused(ev));
      await this.listener.listen();
      this.events.event('tunnel_listening', { listen: formatHostPort(this.cfg.listen) });
    }
    for (const f of this.cfg.forwards) await this.startForward(f);
    for (const l of this.cfg.links) this.startDialer(l.connect);
  }

  private async startForward(f: { listen: HostPort; service: string }): Promise<void> {
    const server = net.createServer({
      allowHalfOpen: true,
      pauseOnConnect: true,
      highWaterMark: LOCAL_SOCKET_HIGH_WATER,
    });
    const backoff = new AcceptBackoff(server, f.listen, this.clock);
    server.on('connection', (sock: net.Socket) => {
      backoff.accepted();
      // Near the descriptor limit a flood of local clients waits in its SYN retries, not in ours.
      if (this.fds.nearLimit()) {
        sock.on('error', () => undefined);
        sock.resetAndDestroy();
        backoff.pause();
        this.refusals.fd_limit = (this.refusals.fd_limit ?? 0) + 1;
        return;
      }
      this.onForward(sock, f.service);
    });
    const entry = { server, backoff, service: f.service, address: f.listen };
    this.forwards.push(entry);
    try {
      await backoff.listen();
    } catch (err) {
      this.forwards.splice(this.forwards.indexOf(entry), 1);
      backoff.close();
      throw err;
    }
    this.events.event('tunnel_forwarding', { listen: formatHostPort(f.listen), service: f.service });
  }

  private startDialer(target: HostPort): void {
    const d = new LinkDialer(target, this.material!, this.lo!);
    d.on('link', (link: Link) => this.onLink(link, 'dial'));
    d.on('refused', (ev: RefusalEvent) => this.onLinkRefused(ev));
    d.on('dial_failed', (ev: { remote: string; error: string; code?: string }) => {
      const f = this.limit.admit(`dial_failed ${ev.remote}`, { ...ev });
      if (f) this.events.event('tunnel_link_dial_failed', f, 'warn');
    });
    d.on('invalid', (state: string, event: string) => this.invalidLinkEvent('', d.address, state, event));
    this.dialers.push(d);
    d.start();
  }

  /**
   * Apply a changed config without a restart (SIGHUP). Services, forwards, links, peers and the
   * limits change; sessions the change does not touch go on (a removed forward stops accepting,
   * its sessions continue; a removed link or a peer no longer allowed loses its link and the
   * sessions on it). heartbeat and heartbeat_misses apply to links made after the reload. name,
   * role, listen and tls cannot change (a ConfigError; the running config stays). Returns the keys
   * that changed.
   */
  async reload(next: TunnelConfig): Promise<string[]> {
    if (this.closing) throw new IpdeadgateError('ERR_TUNNEL_STOPPED', 'the tunnel node is stopping');
    const prev = this.cfg;
    for (const k of ['name', 'role', 'listen', 'tls'] as const)
      if (JSON.stringify(prev[k]) !== JSON.stringify(next[k]))
        throw new ConfigError(
          `tunnel.${k} cannot change on reload (restart the process that runs the tunnel, ipdeadgate tunnel or the daemon, for that); the running config stays`,
          undefined,
          undefined,
          `tunnel.${k}`,
        );
    const changed = (Object.keys({ ...prev, ...next }) as (keyof TunnelConfig)[]).filter(
      (k) => JSON.stringify(prev[k]) !== JSON.stringify(next[k]),
    );
    if (!changed.length) return [];
    // New forward listeners first: if one cannot bind, nothing has changed yet.
    const fwdKey = (f: { listen: HostPort; service: string }): string =>
      `${formatHostPort(f.listen)} ${f.service}`;
    const oldFwd = new Set(prev.forwards.map(fwdKey));
    const newFwd = new Set(next.forwards.map(fwdKey));
    const started: (typeof this.forwards)[number][] = [];
    try {
      for (const f of next.forwards)
        if (!oldFwd.has(fwdKey(f))) {
          await this.startForward(f);
          started.push(this.forwards[this.forwards.length - 1]!);
        }
    } catch (err) {
      for (const e of started) {
        e.backoff.close();
        this.forwards.splice(this.forwards.indexOf(e), 1);
      }
      throw err;
    }
    this.cfg = next;
    for (const e of [...this.forwards])
      if (!newFwd.has(fwdKey({ listen: e.address, service: e.service }))) {
        e.backoff.close(); // no new connections; sessions already accepted go on
        this.forwards.splice(this.forwards.indexOf(e), 1);
        this.events.event('tunnel_forward_removed', {
          listen: formatHostPort(e.address),
          service: e.service,
        });
      }
    // Links to dial.
    const newLinks = new Set(next.links.map((l) => formatHostPort(l.connect)));
    const oldLinks = new Set(prev.links.map((l) => formatHostPort(l.connect)));
    for (const d of [...this.dialers])
      if (!newLinks.has(d.address)) {
        d.close();
        this.dialers.splice(this.dialers.indexOf(d), 1);
      }
    for (const l of next.links) if (!oldLinks.has(formatHostPort(l.connect))) this.startDialer(l.connect);
    // Limits: sessions take new bounds at their next state; new links take the rest.
    this.guard.setBounds({
      closeTimeoutMs: next.close_timeout,
      dialMs: next.dial_timeout,
      openMs: next.open_timeout,
    });
    this.guard.setRelaying(next.native_relay, next.native_relay_after);
    Object.assign(this.lo!, {
      heartbeatMs: next.heartbeat,
      heartbeatMisses: next.heartbeat_misses,
      closeTimeoutMs: next.close_timeout,
      handshakeTimeoutMs: next.handshake_timeout,
      writeTimeoutMs: next.write_timeout,
      maxUnsent: next.max_unsent,
      maxHandshakes: next.max_handshakes,
      maxHandshakesPerAddress: next.max_handshakes_per_address,
      firstByteTimeoutMs: Math.min(next.first_byte_timeout, next.handshake_timeout),
    });
    // Services and peers: announce again, filter again, drop peers no longer allowed.
    this.router.setOwnServices(Object.keys(next.services));
    if (changed.includes('services')) this.warnOwnCertificate();
    if (changed.includes('peers'))
      for (const l of [...this.allLinks]) {
        const notAllowed = this.lo!.admitPeer?.(l.peerName);
        if (notAllowed) l.refuse('peer_not_allowed', notAllowed);
        else l.refilter();
      }
    this.retell();
    return changed;
  }

  private onLink(link: Link, direction: 'dial' | 'accept'): void {
    this.allLinks.add(link);
    this.router.add(link);
    this.events.event('tunnel_link_up', {
      peer: link.peerName,
      remote: link.remote,
      direction,
      services: link.peerServices,
    });
    link.on('stream', (s: MuxStream, req: OpenRequest) => this.onStream(link, s, req));
    link.on('tell', () => this.retell());
    link.once('down', (err?: Error) => {
      this.retiredCloseTimeouts += link.session.closeTimeouts;
      this.allLinks.delete(link);
      this.router.remove(link);
      this.events.event(
        'tunnel_link_down',
        { peer: link.peerName, remote: link.remote, reason: err?.message ?? 'closed' },
        'warn',
      );
      this.retell();
    });
    link.session.ping().catch(() => undefined); // a first RTT for routing and status
    this.retell();
  }

  /** A link refused (by us, or ours by the peer): counted always, logged rate-limited. */
  private onLinkRefused(ev: RefusalEvent): void {
    this.linkRefusals[ev.reason] = (this.linkRefusals[ev.reason] ?? 0) + 1;
    const f = this.limit.admit(`link_refused ${ev.reason}`, { ...ev });
    if (f) this.events.event('tunnel_link_refused', f, 'warn');
  }

  /** Keep what a peer may announce (src/tunnel/announcetrust.ts); counted, and an event, for what it may not. */
  private filterAnnounced(link: Link, services: Record<string, number>): Record<string, number> {
    const v = vetAnnouncement(this.cfg.peers, link.peerName, link.peerCert?.subjectaltname, services);
    if (!v.ignored.length) return v.kept;
    this.announcementsIgnored[v.rule] = (this.announcementsIgnored[v.rule] ?? 0) + v.ignored.length;
    const { peerName: peer, remote } = link;
    const fields = { peer, remote, services: v.ignored, rule: v.rule, detail: v.detail };
    const f = this.limit.admit(`announce_ignored ${peer} ${v.ignored.join(',')}`, fields);
    if (f) this.events.event('tunnel_announcement_ignored', f, 'warn');
    return v.kept;
  }

  /** Our own services that peers without tunnel.peers will ignore, as our certificate stands. */
  private warnOwnCertificate(): void {
    const w = ownCertificateWarning(this.material!.cert, this.cfg);
    if (w) this.events.event('tunnel_certificate_names_no_service', w, 'warn');
  }

  /** Services changed: tell every link (each link sends only when its view changed). */
  private retell(): void {
    for (const l of this.allLinks) if (l.up) l.tell();
  }

  private refuse(stream: MuxStream, code: Refusal, reason: string): void {
    const name = refusalName(code);
    this.refusals[name] = (this.refusals[name] ?? 0) + 1;
    const f = this.limit.admit(`session_refused ${name}`, { refusal: name, reason });
    if (f) this.events.event('tunnel_session_refused', f, 'warn');
    stream.on('error', () => undefined);
    stream.resume(); // discard what the opener pipelined
    stream.end(encodeAnswer(code, reason));
  }

  /**
   * A peer opened a stream for `req.service`. Whatever goes wrong in handling it costs that stream
   * (reset, counted and logged), never the link or the process.
   */
  private onStream(from: Link, stream: MuxStream, req: OpenRequest): void {
    try {
      this.takeStream(from, stream, req);
    } catch (err) {
      this.streamFaults++;
      const f = this.limit.admit('stream_fault', {
        peer: from.peerName,
        service: req.service,
        error: (err as Error).message,
      });
      if (f) this.events.event('tunnel_stream_fault', f, 'error');
      stream.reset(err as Error);
    }
  }

  private takeStream(from: Link, stream: MuxStream, req: OpenRequest): void {
    // Names are checked where they enter: only the documented syntax is ever looked up.
    if (!SERVICE_NAME.test(req.service))
      return this.refuse(
        stream,
        Refusal.BadRequest,
        `${JSON.stringify(req.service.slice(0, 80))} is not a service name (1-63 letters, digits, "_", "." or "-")`,
      );
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
    const use = this.perPeer.use(from.peerName);
    if (use.sessions >= this.cfg.peer_max_sessions)
      return this.refuse(
        stream,
        Refusal.MaxSessions,
        `${from.peerName} has ${use.sessions} sessions open through ${this.cfg.name} (tunnel.peer_max_sessions)`,
      );
    if ((use.waiting + 1) * INITIAL_WINDOW > this.cfg.peer_max_buffered)
      return this.refuse(
        stream,
        Refusal.MaxSessions,
        `${from.peerName} has ${use.waiting} sessions waiting for their service on ${this.cfg.name} (tunnel.peer_max_buffered: ${this.cfg.peer_max_buffered} bytes, ${INITIAL_WINDOW} each)`,
      );
    if (this.cfg.peers && !matchesAny(ownEntry(this.cfg.peers, from.peerName)?.open ?? [], req.service))
      return this.refuse(
        stream,
        Refusal.NotAllowed,
        `${from.peerName} may not open "${req.service}" through ${this.cfg.name} (tunnel.peers.${from.peerName}.open)`,
      );
    const target = ownEntry(this.cfg.services, req.service);
    if (target) return this.dialService(stream, req.service, target, this.perPeer.hold(from.peerName));
    if (this.cfg.role !== 'relay')
      return this.refuse(
        stream,
        Refusal.UnknownService,
        `${this.cfg.name} offers no service named "${req.service}"`,
      );
    const next = this.router.route(req.service, from);
    if (!next)
      return this.refuse(stream, Refusal.NoRoute, `${this.cfg.name} has no live route to "${req.service}"`);
    this.relay(stream, next, req, this.perPeer.hold(from.peerName));
  }

  private dialService(stream: MuxStream, service: string, target: HostPort, hold: SessionHold): void {
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
      hold.done,
    ).onBridged = hold.bridged;
  }

  /** Relay: open the same request one hop further and join the two streams byte for byte. */
  private relay(up: MuxStream, via: Link, req: OpenRequest, hold: SessionHold): void {
    let down: MuxStream;
    try {
      down = via.openStream(req.service, req.hops + 1);
    } catch (err) {
      hold.done();
      return this.refuse(up, Refusal.NoRoute, `${this.cfg.name}: ${(err as Error).message}`);
    }
    this.opened++;
    this.guard.relay(up, down, readAnswer(down, this.cfg.open_timeout), encodeAnswer, hold.done).onBridged =
      hold.bridged;
  }

  /** A local connection to a forward listener: open a stream to the service and bridge. */
  private onForward(sock: net.Socket, service: string): void {
    sock.on('error', () => undefined);
    if (this.closing) return void sock.resetAndDestroy();
    if (this.sessions >= this.cfg.max_sessions) {
      this.refusals.max_sessions = (this.refusals.max_sessions ?? 0) + 1;
      const f = this.limit.admit('forward_refused max_sessions', {
        service,
        refusal: 'max_sessions',
        reason: `max_sessions (${this.cfg.max_sessions}) reached, connection reset`,
      });
      if (f) this.events.event('tunnel_forward_refused', f, 'warn');
      return void sock.resetAndDestroy();
    }
    const link = this.router.route(service);
    if (!link) {
      this.refusals.no_route = (this.refusals.no_route ?? 0) + 1;
      const f = this.limit.admit(`forward_refused no_route ${service}`, {
        service,
        refusal: 'no_route',
        reason: 'no live link reaches the service, connection reset',
      });
      if (f) this.events.event('tunnel_forward_refused', f, 'warn');
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
        const f = this.limit.admit(`refused_by_peer ${name}`, { service, refusal: name, reason: a.reason });
        if (f) this.events.event('tunnel_refused_by_peer', f, 'warn');
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
        relayed: this.guard.stats.relayed,
        refusals: { ...this.refusals },
        refused_by_peer: { ...this.refusedByPeer },
        accept_errors:
          (this.listener?.acceptErrors ?? 0) + this.forwards.reduce((n, f) => n + f.backoff.errors, 0),
      },
      link_refusals: { ...this.linkRefusals },
      announcements_ignored: { ...this.announcementsIgnored },
      link_invalid_events: this.invalidLinkEvents,
      stream_faults: this.streamFaults,
      turned_away: this.listener ? { ...this.listener.turnedAway } : {},
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
