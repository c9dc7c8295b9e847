// Prometheus metrics (prom-client), served as the text exposition format on `metrics.listen` (off
// unless configured). Nothing in the detection engine or the tunnel calls a metric: counters and
// histograms are derived from the engine's events, a typed union (DgdEvent, src/dgd/events.ts:
// a wrapped EventLog sees every `verdict`, `state`, `trigger`, `routes_withdrawn`, ...), and
// gauges are read from `status()` at scrape time. The tunnel is read from `TunnelNode.status()` at scrape time through the `tunnel` source,
// which is null while the daemon runs no tunnel node.
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { UsageError, systemError } from '../errors';
import type { DgdStatus } from '../dgd/engine';
import { asDgdEvent } from '../dgd/events';
import type { TunnelStatus } from '../tunnel/node';
import type { FlightRecorderStatus } from './flightrec';
import type { IncidentObserver } from './incidents';
import { defineResumeGauges } from './resumemetrics';
import type { EventLog } from './log';

/** What the scrape reads; each source may be absent or return null (not running). */
export interface MetricsSources {
  dgd?: () => DgdStatus | null;
  tunnel?: () => TunnelStatus | null;
  flightRecorder?: () => FlightRecorderStatus | null;
}

const STATES = ['active', 'suspect', 'dead'] as const;
/** ARP/NDP round trips on a LAN: 50 µs to a second. */
const RTT_BUCKETS = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
];
/** A verification lasts up to verify_probes x verify_timeout (default 750 ms). */
const VERIFY_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30];

/** The text is rendered at most this often; requests in between get the last rendering. */
export const RENDER_INTERVAL_MS = 1000;
/** Connections beyond this are closed when accepted (a scraper needs one or two). */
export const MAX_CONNECTIONS = 32;
const MAX_REQUESTS_PER_SOCKET = 1000;
/** Responses a second, all clients together (Prometheus asks once every 15 s or so). */
export const MAX_RESPONSES_PER_SECOND = 20;
const HEADERS_TIMEOUT_MS = 5000;
const REQUEST_TIMEOUT_MS = 10_000;
const KEEP_ALIVE_TIMEOUT_MS = 5000;
/** A connection that sends nothing for this long is destroyed. */
const IDLE_TIMEOUT_MS = 15_000;

/** Parse "HOST:PORT" / "[V6]:PORT" (validated by the config schema) into listen() arguments. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([\d.]+|localhost)):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[3]) > 65535) throw new UsageError(`metrics.listen must be HOST:PORT, not "${listen}"`);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** Trigger reasons (TriggerKind): each per-gateway counter starts at 0 for all of them. */
const TRIGGER_REASONS = ['retransmit', 'neighbour_failed', 'active_probe', 'sighting'] as const;

/** The package's version (package.json at the application's root), for ipdeadgate_build_info. */
function packageVersion(): string {
  try {
    const file = path.join(__dirname, '..', '..', '..', 'package.json');
    return (JSON.parse(readFileSync(file, 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** A counter whose value is copied from a status total at scrape time (after its reset()). */
function setCounter(c: Counter<string>, labels: Record<string, string>, value: number): void {
  c.inc(labels, Math.max(0, value));
}

export class DaemonMetrics {
  readonly registry = new Registry();
  private server: http.Server | null = null;
  /** Responses per second, all clients together. */
  private readonly budget = new TokenBucket(MAX_RESPONSES_PER_SECOND);
  /** The last rendering (a promise, shared by requests that come while it renders). */
  private rendered: { at: number; text: Promise<string> } | null = null;

  // From events.
  private readonly verifications: Counter<'gateway' | 'outcome' | 'speculative'>;
  private readonly rtt: Histogram<'gateway' | 'protocol'>;
  private readonly verifyDuration: Histogram<'gateway'>;
  private readonly triggers: Counter<'gateway' | 'reason'>;
  private readonly deaths: Counter<'gateway'>;
  private readonly revivals: Counter<'gateway'>;
  private readonly transitions: Counter<'gateway' | 'from' | 'to'>;
  private readonly withdrawn: Counter<'gateway'>;
  private readonly handedOver: Counter<'gateway' | 'owner'>;
  private readonly restored: Counter<'gateway'>;
  private readonly downstream: Counter<'gateway'>;
  private readonly events: Counter<'event' | 'level'>;
  private readonly captures: Counter<'gateway'>;
  private readonly conntrackDeleted: Counter<'gateway' | 'after'>;
  /** Gateways whose counters exist (at 0 until something happens). */
  private readonly known = new Set<string>();

  constructor(private readonly sources: MetricsSources = {}) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'ipdeadgate_' });
    new Gauge({
      name: 'ipdeadgate_build_info',
      help: 'Always 1; the labels say which ipdeadgate and Node.js run',
      labelNames: ['version', 'node_version'],
      registers,
    }).set({ version: packageVersion(), node_version: process.versions.node }, 1);
    this.verifications = new Counter({
      name: 'ipdeadgate_verifications_total',
      help: 'ARP/NDP verifications of a gateway by outcome (alive/dead); speculative ones started a retransmission early',
      labelNames: ['gateway', 'outcome', 'speculative'],
      registers,
    });
    this.rtt = new Histogram({
      name: 'ipdeadgate_neighbour_rtt_seconds',
      help: 'ARP (IPv4) / NDP (IPv6) round trip of the reply that proved a gateway alive',
      labelNames: ['gateway', 'protocol'],
      buckets: RTT_BUCKETS,
      registers,
    });
    this.verifyDuration = new Histogram({
      name: 'ipdeadgate_verification_duration_seconds',
      help: 'How long a verification took to reach its verdict',
      labelNames: ['gateway'],
      buckets: VERIFY_BUCKETS,
      registers,
    });
    this.triggers = new Counter({
      name: 'ipdeadgate_triggers_total',
      help: 'Triggers that made a gateway suspect, by reason (retransmissions, neighbour_failed, active_probe)',
      labelNames: ['gateway', 'reason'],
      registers,
    });
    this.deaths = new Counter({
      name: 'ipdeadgate_gateway_deaths_total',
      help: 'Failovers: times a gateway was declared dead and its routes withdrawn',
      labelNames: ['gateway'],
      registers,
    });
    this.revivals = new Counter({
      name: 'ipdeadgate_gateway_revivals_total',
      help: 'Times a dead gateway answered again and its routes were restored',
      labelNames: ['gateway'],
      registers,
    });
    this.transitions = new Counter({
      name: 'ipdeadgate_state_transitions_total',
      help: 'Gateway state transitions',
      labelNames: ['gateway', 'from', 'to'],
      registers,
    });
    this.withdrawn = new Counter({
      name: 'ipdeadgate_routes_withdrawn_total',
      help: 'Routes (or multipath nexthops) withdrawn from the kernel because their gateway died',
      labelNames: ['gateway'],
      registers,
    });
    this.handedOver = new Counter({
      name: 'ipdeadgate_routes_handed_over_total',
      help: 'Routes of a routing daemon (dgd.owners) through a dead gateway, failed over by that daemon when told',
      labelNames: ['gateway', 'owner'],
      registers,
    });
    this.restored = new Counter({
      name: 'ipdeadgate_routes_restored_total',
      help: 'Withdrawn routes put back',
      labelNames: ['gateway'],
      registers,
    });
    this.downstream = new Counter({
      name: 'ipdeadgate_downstream_problems_total',
      help: 'Triggers whose gateway answered ARP/NDP: the problem was beyond it, routes untouched',
      labelNames: ['gateway'],
      registers,
    });
    this.events = new Counter({
      name: 'ipdeadgate_events_total',
      help: 'Log events by name and level',
      labelNames: ['event', 'level'],
      registers,
    });
    this.captures = new Counter({
      name: 'ipdeadgate_flight_recorder_captures_total',
      help: 'pcap files the flight recorder wrote around a gateway death',
      labelNames: ['gateway'],
      registers,
    });
    this.conntrackDeleted = new Counter({
      name: 'ipdeadgate_conntrack_deleted_total',
      help: 'Conntrack entries deleted because source NAT bound them to an uplink their flow no longer leaves by, after a withdrawal or a restore (dgd.conntrack)',
      labelNames: ['gateway', 'after'],
      registers,
    });
    this.defineScrapeGauges(registers);
  }

  private defineScrapeGauges(registers: Registry[]): void {
    const dgd = () => this.sources.dgd?.() ?? null;
    const tunnel = () => this.sources.tunnel?.() ?? null;
    new Gauge({
      name: 'ipdeadgate_dgd_enabled',
      help: '1 while dead gateway detection is on (ipdeadgate on/off)',
      registers,
      collect() {
        const s = dgd();
        this.reset();
        if (s) this.set(s.enabled ? 1 : 0);
      },
    });
    new Gauge({
      name: 'ipdeadgate_gateway_state',
      help: 'Gateway state: 1 for the current one of active, suspect, dead',
      labelNames: ['gateway', 'interface', 'state'],
      registers,
      collect() {
        this.reset();
        for (const g of dgd()?.gateways ?? [])
          for (const st of STATES)
            this.set({ gateway: g.address, interface: g.interface, state: st }, g.state === st ? 1 : 0);
      },
    });
    new Gauge({
      name: 'ipdeadgate_withdrawn_routes',
      help: 'Routes currently withdrawn (journaled, to be restored)',
      registers,
      collect() {
        const s = dgd();
        this.reset();
        if (s) this.set(s.withdrawn_routes.length);
      },
    });
    new Gauge({
      name: 'ipdeadgate_scan_duration_seconds',
      help: 'Duration of the last sock_diag scan of TCP sockets',
      registers,
      collect() {
        const s = dgd();
        this.reset();
        if (s?.last_scan.at) this.set(s.last_scan.duration_ms / 1000);
      },
    });
    new Gauge({
      name: 'ipdeadgate_scan_sockets',
      help: 'TCP sockets seen by the last scan, and how many of them were retransmitting',
      labelNames: ['kind'],
      registers,
      collect() {
        const s = dgd();
        this.reset();
        if (!s?.last_scan.at) return;
        this.set({ kind: 'scanned' }, s.last_scan.sockets);
        this.set({ kind: 'retransmitting' }, s.last_scan.retransmitting);
      },
    });
    defineResumeGauges(registers, dgd);
    // Tunnel: present only while the daemon runs a tunnel node.
    new Gauge({
      name: 'ipdeadgate_tunnel_links',
      help: 'Tunnel links by state',
      labelNames: ['node', 'state'],
      registers,
      collect() {
        this.reset();
        const t = tunnel();
        if (!t) return;
        const by = new Map<string, number>();
        for (const l of t.links) by.set(l.state, (by.get(l.state) ?? 0) + 1);
        for (const [state, n] of by) this.set({ node: t.name, state }, n);
      },
    });
    new Gauge({
      name: 'ipdeadgate_tunnel_link_rtt_seconds',
      help: 'Heartbeat round trip of each tunnel link',
      labelNames: ['node', 'peer', 'address'],
      registers,
      collect() {
        this.reset();
        const t = tunnel();
        for (const l of t?.links ?? [])
          if (l.rtt_ms !== null)
            this.set({ node: t!.name, peer: l.peer, address: l.address }, l.rtt_ms / 1000);
      },
    });
    new Counter({
      name: 'ipdeadgate_tunnel_link_bytes_total',
      help: 'Bytes carried by each tunnel link (flow in/out, TLS payload)',
      labelNames: ['node', 'peer', 'address', 'flow'],
      registers,
      collect() {
        this.reset();
        const t = tunnel();
        for (const l of t?.links ?? []) {
          setCounter(this, { node: t!.name, peer: l.peer, address: l.address, flow: 'in' }, l.bytes_in);
          setCounter(this, { node: t!.name, peer: l.peer, address: l.address, flow: 'out' }, l.bytes_out);
        }
      },
    });
    new Counter({
      name: 'ipdeadgate_tunnel_link_reconnects_total',
      help: 'Reconnections of each dialled tunnel link',
      labelNames: ['node', 'peer', 'address'],
      registers,
      collect() {
        this.reset();
        for (const l of tunnel()?.links ?? [])
          setCounter(this, { peer: l.peer, address: l.address }, l.reconnects);
      },
    });
    new Gauge({
      name: 'ipdeadgate_tunnel_sessions',
      help: 'Tunnel sessions open now',
      labelNames: ['node'],
      registers,
      collect() {
        this.reset();
        const t = tunnel();
        if (t) this.set({ node: t.name }, t.sessions.count);
      },
    });
    const sessionCounter = (name: string, help: string, pick: (s: TunnelStatus['sessions']) => number) =>
      new Counter({
        name,
        help,
        labelNames: ['node'],
        registers,
        collect() {
          this.reset();
          const t = tunnel();
          if (t) setCounter(this, { node: t.name }, pick(t.sessions));
        },
      });
    sessionCounter('ipdeadgate_tunnel_sessions_opened_total', 'Tunnel sessions opened', (s) => s.opened);
    sessionCounter(
      'ipdeadgate_tunnel_close_timeouts_total',
      'Tunnel streams closed because their life after a FIN exceeded close_timeout',
      (s) => s.close_timeouts,
    );
    sessionCounter(
      'ipdeadgate_tunnel_reaped_sockets_total',
      'Sockets found in CLOSE_WAIT by the reaper and closed (each one a leak that was stopped)',
      (s) => s.reaped,
    );
    sessionCounter(
      'ipdeadgate_tunnel_accept_errors_total',
      'Accept errors (EMFILE/ENFILE back-offs included)',
      (s) => s.accept_errors,
    );
    // Counters by reason, copied from the tunnel's status at scrape time.
    for (const [name, help, pick] of [
      [
        'ipdeadgate_tunnel_refusals_total',
        'Streams this node refused, by reason',
        (t: TunnelStatus) => t.sessions.refusals,
      ],
      [
        'ipdeadgate_tunnel_refused_by_peer_total',
        'Streams peers refused, by reason',
        (t: TunnelStatus) => t.sessions.refused_by_peer,
      ],
      [
        'ipdeadgate_tunnel_session_ends_total',
        'Tunnel sessions ended, by why (completed, local_reset, dial_failed, close_timeout, ...)',
        (t: TunnelStatus) => t.sessions.ends ?? {},
      ],
      [
        'ipdeadgate_tunnel_link_refusals_total',
        'Tunnel links refused (by this node or by its peer), by reason (cert_expired, unknown_ca, name_mismatch, ...)',
        (t: TunnelStatus) => t.link_refusals ?? {},
      ],
      [
        'ipdeadgate_tunnel_announcements_ignored_total',
        "Service entries of peers' announcements ignored, by the rule (certificate, peers)",
        (t: TunnelStatus) => t.announcements_ignored ?? {},
      ],
    ] as const)
      new Counter({
        name,
        help,
        labelNames: ['node', 'reason'],
        registers,
        collect() {
          this.reset();
          const t = tunnel();
          if (!t) return;
          for (const [reason, n] of Object.entries(pick(t))) setCounter(this, { node: t.name, reason }, n);
        },
      });
    const recorder = () => this.sources.flightRecorder?.() ?? null;
    new Gauge({
      name: 'ipdeadgate_flight_recorder_ring',
      help: 'Frames held by the flight recorder ring (packets, bytes)',
      labelNames: ['unit'],
      registers,
      collect() {
        this.reset();
        const f = recorder();
        if (!f) return;
        this.set({ unit: 'packets' }, f.ring_packets);
        this.set({ unit: 'bytes' }, f.ring_bytes);
      },
    });
  }

  /**
   * Create a gateway's counters at 0 the moment it is known, so that `increase(...[10m]) > 0`
   * fires on its first death too (a series that appears at 1 has no increase). Idempotent.
   */
  knowGateway(gateway: string): void {
    if (this.known.has(gateway)) return;
    this.known.add(gateway);
    for (const outcome of ['alive', 'dead'])
      for (const speculative of ['true', 'false'])
        this.verifications.inc({ gateway, outcome, speculative }, 0);
    for (const reason of TRIGGER_REASONS) this.triggers.inc({ gateway, reason }, 0);
    for (const c of [
      this.deaths,
      this.revivals,
      this.withdrawn,
      this.restored,
      this.downstream,
      this.captures,
    ])
      c.inc({ gateway }, 0);
    for (const after of ['withdrawal', 'restore']) this.conntrackDeleted.inc({ gateway, after }, 0);
  }

  /** Count what one event says. Public for tests; the daemon feeds it through wrap(). */
  observe(name: string, f: Record<string, unknown>, level = 'info'): void {
    this.events.inc({ event: name, level });
    // The events that counters follow are a typed union (src/dgd/events.ts): fields are read as
    // what the engine emitted, not guessed; anything else is only counted by name above.
    const ev = asDgdEvent(name, f);
    if (!ev) return;
    const gateway = ev.gateway ?? 'none';
    switch (ev.event) {
      case 'verdict': {
        this.verifications.inc({
          gateway,
          outcome: ev.alive ? 'alive' : 'dead',
          speculative: ev.speculative ? 'true' : 'false',
        });
        if (ev.alive && ev.arp_rtt_ms !== null)
          this.rtt.observe(
            { gateway, protocol: gateway.includes(':') ? 'ndp' : 'arp' },
            ev.arp_rtt_ms / 1000,
          );
        if (num(ev.duration_ms) !== null) this.verifyDuration.observe({ gateway }, ev.duration_ms / 1000);
        break;
      }
      case 'trigger':
        this.triggers.inc({ gateway, reason: ev.reason });
        break;
      case 'state':
        this.transitions.inc({ gateway, from: ev.from, to: ev.to });
        if (ev.to === 'dead') this.deaths.inc({ gateway });
        if (ev.from === 'dead') this.revivals.inc({ gateway });
        break;
      case 'routes_withdrawn':
        this.withdrawn.inc({ gateway }, ev.routes.length);
        break;
      case 'routes_handed_over':
        this.handedOver.inc({ gateway, owner: ev.owner }, ev.routes.length);
        break;
      case 'routes_restored':
        this.restored.inc({ gateway }, ev.routes.length);
        break;
      case 'downstream_problem':
        this.downstream.inc({ gateway });
        break;
      case 'capture_written':
        this.captures.inc({ gateway });
        break;
      case 'conntrack_followed':
        this.conntrackDeleted.inc({ gateway, after: ev.after }, ev.deleted);
        break;
    }
  }

  private incidentMetrics: IncidentObserver | null = null;

  /**
   * What incident records (./incidents.ts) report: time to switch and time to resume per gateway,
   * incidents by outcome. Created on first use, in this registry.
   */
  incidentObserver(): IncidentObserver {
    if (this.incidentMetrics) return this.incidentMetrics;
    const registers = [this.registry];
    const buckets = [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60];
    const toSwitch = new Histogram({
      name: 'ipdeadgate_incident_switch_seconds',
      help: "From an incident's first trigger to its routes switched (withdrawn, or handed to a routing daemon)",
      labelNames: ['gateway'],
      buckets,
      registers,
    });
    const toResume = new Histogram({
      name: 'ipdeadgate_incident_resume_seconds',
      help: "From an incident's first trigger to the first segment of a triggering flow through another next hop (flight recorder)",
      labelNames: ['gateway'],
      buckets,
      registers,
    });
    const outcomes = new Counter({
      name: 'ipdeadgate_incidents_total',
      help: 'Incidents ended, by outcome (failover, nothing_moved, downstream_problem, unverified)',
      labelNames: ['outcome'],
      registers,
    });
    for (const outcome of ['failover', 'nothing_moved', 'downstream_problem', 'unverified'])
      outcomes.inc({ outcome }, 0);
    this.incidentMetrics = {
      switched: (gateway, seconds) => toSwitch.observe({ gateway }, seconds),
      resumed: (gateway, seconds) => toResume.observe({ gateway }, seconds),
      ended: (outcome) => outcomes.inc({ outcome }),
    };
    return this.incidentMetrics;
  }

  /** An EventLog that forwards to `inner` and counts every event. */
  wrap(inner: EventLog): EventLog {
    return {
      event: (name, fields = {}, level = 'info') => {
        inner.event(name, fields, level);
        try {
          this.observe(name, fields, level);
        } catch {
          /* a metric must never break logging or detection */
        }
      },
    };
  }

  /** The exposition text, rendered now (tests; GET /metrics serves render()). */
  scrape(): Promise<string> {
    // Gateways learnt since the last refresh have their zeroes before this scrape reads them.
    try {
      for (const g of this.sources.dgd?.()?.gateways ?? []) this.knowGateway(g.address);
    } catch {
      /* still starting */
    }
    return this.registry.metrics();
  }

  /**
   * What GET /metrics serves: rendered at most once per RENDER_INTERVAL_MS and shared by every
   * request meanwhile, so however often the endpoint is asked, detection's event loop renders the
   * text at most once a second.
   */
  render(): Promise<string> {
    const now = performance.now();
    if (this.rendered && now - this.rendered.at < RENDER_INTERVAL_MS) return this.rendered.text;
    const text = this.scrape();
    this.rendered = { at: now, text };
    // A failed render is not kept: the next request tries again.
    text.catch(() => {
      if (this.rendered?.text === text) this.rendered = null;
    });
    return text;
  }

  /**
   * Serve GET /metrics on HOST:PORT. Throws a clear error if the address cannot be bound; a
   * listener already serving keeps serving until the new one is bound (a reload that moves the
   * endpoint to an address in use keeps the old one).
   */
  async listen(listen: string): Promise<{ host: string; port: number }> {
    const { host, port } = parseListen(listen);
    const old = this.server;
    let server: http.Server;
    try {
      server = await this.bind(listen, host, port);
    } catch (err) {
      // The same port on another address of this host may be taken by the old listener itself.
      if (!old || (err as { code?: string }).code !== 'EADDRINUSE') throw err;
      const oldAddr = old.address();
      if (typeof oldAddr !== 'object' || !oldAddr || oldAddr.port !== port) throw err;
      await closeServer(old);
      this.server = null;
      try {
        server = await this.bind(listen, host, port);
      } catch (err2) {
        // Put the old endpoint back, as it was.
        this.server = await this.bind(
          `${oldAddr.address}:${oldAddr.port}`,
          oldAddr.address,
          oldAddr.port,
        ).catch(() => null);
        throw err2;
      }
    }
    this.server = server;
    if (old && old !== server) await closeServer(old);
    const addr = server.address();
    return { host, port: typeof addr === 'object' && addr ? addr.port : port };
  }

  private async bind(listen: string, host: string, port: number): Promise<http.Server> {
    const server = http.createServer(
      {
        // A slow or idle client cannot hold a connection (and its file descriptor) for long.
        headersTimeout: HEADERS_TIMEOUT_MS,
        requestTimeout: REQUEST_TIMEOUT_MS,
        keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
        maxHeaderSize: 8192,
      },
      (req, res) => this.serve(req, res),
    );
    // Connections beyond the cap are closed as soon as they are accepted: whoever holds many
    // cannot take the descriptors detection needs (raw sockets, netlink, the journal's files).
    server.maxConnections = MAX_CONNECTIONS;
    server.maxRequestsPerSocket = MAX_REQUESTS_PER_SOCKET;
    server.timeout = IDLE_TIMEOUT_MS;
    server.on('timeout', (s: import('node:net').Socket) => s.destroy());
    server.on('clientError', (_err, s: import('node:net').Socket) => s.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(systemError(err, 'listen', `serving metrics on ${listen} (metrics.listen)`)),
      );
      server.listen(port, host, () => resolve());
    });
    server.on('error', () => undefined);
    return server;
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    // Beyond the budget a request gets a short refusal and its connection is closed: a client
    // asking back to back (or pipelining) cannot keep the event loop writing for it.
    if (!this.budget.take()) {
      res.shouldKeepAlive = false;
      res
        .writeHead(429, { 'content-type': 'text/plain', 'retry-after': '1', connection: 'close' })
        .end('too many requests: scrape at most a few times a second\n');
      return;
    }
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url === '/metrics') {
      this.render().then(
        (body) => {
          if (res.destroyed) return;
          res
            .writeHead(200, { 'content-type': this.registry.contentType })
            .end(req.method === 'HEAD' ? '' : body);
        },
        (err: Error) => {
          if (res.destroyed) return;
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`scrape failed: ${err.message}\n`);
        },
      );
      return;
    }
    if (url === '/') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ipdeadgate: metrics at /metrics\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
  }

  /** Stop serving (idempotent). */
  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await closeServer(s);
  }
}

/** At most `rate` takes per second, with bursts up to `rate`. */
class TokenBucket {
  private tokens: number;
  private at = performance.now();
  constructor(private readonly rate: number) {
    this.tokens = rate;
  }
  take(): boolean {
    const now = performance.now();
    this.tokens = Math.min(this.rate, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

function closeServer(s: http.Server): Promise<void> {
  s.closeAllConnections();
  return new Promise<void>((resolve) => s.close(() => resolve()));
}
