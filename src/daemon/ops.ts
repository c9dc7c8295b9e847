// The daemon's operations side in one place, so the lifecycle (daemon.ts) wires it with a handful
// of calls: the failover flight recorder and the Prometheus endpoint. Both see detection only
// through its events (a wrapped EventLog) and its status(); the recorder gets frames from the
// NeighbourLinks the detection ports already keep open on every gateway interface.
import type { EventEmitter } from 'node:events';
import * as path from 'node:path';
import type { DgdStatus } from '../dgd/engine';
import type { LinkFrame } from '../sys/packet';
import type { TunnelStatus } from '../tunnel/node';
import type { Config } from './config';
import { FlightRecorder, type CaptureFileInfo, type FlightRecorderSettings } from './flightrec';
import type { EventLog } from './log';
import { DaemonMetrics } from './metrics';
import { IncidentRecorder } from './incidents';
import { IncidentStore } from './incidentstore';

/** The engine as ops sees it. */
export interface OpsEngine {
  status(): DgdStatus;
}

/**
 * The detection ports as ops sees them: the shared ARP/NDP handle of an interface, and (when they
 * are an EventEmitter) the wire watch's 'wire_frame' events, whose TCP headers the recorder keeps.
 */
export interface OpsPorts {
  link(ifname: string): Promise<EventEmitter>;
  on?(
    event: 'wire_frame',
    fn: (ifname: string, p: { data: Buffer; tsMs: number; wireLength?: number }) => void,
  ): unknown;
}

/** How often the recorder learns the gateways and their interfaces from status(). */
const GATEWAY_REFRESH_MS = 2000;

export class DaemonOps {
  readonly metrics: DaemonMetrics;
  readonly recorder: FlightRecorder;
  /** Incident records in the state directory (`ipdeadgate incidents`). */
  readonly incidents: IncidentRecorder;
  private readonly incidentsLoaded: Promise<void>;
  private outer: EventLog | null = null;
  private inner: EventLog | null = null;
  private engine: OpsEngine | null = null;
  private ports: OpsPorts | null = null;
  private tunnel: () => TunnelStatus | null = () => null;
  private readonly attached = new WeakSet<EventEmitter>();
  private timer: NodeJS.Timeout | null = null;
  private listening: string | null = null;
  private closed = false;
  /** Gateways seen at the last refresh: address -> interface. */
  private gateways = new Map<string, string>();

  constructor(
    stateDir: string,
    private config: Config,
  ) {
    this.metrics = new DaemonMetrics({
      dgd: () => this.engine?.status() ?? null,
      tunnel: () => this.tunnel(),
      flightRecorder: () => this.recorder.status(),
    });
    // The recorder logs through the outer log (so its events are counted too); set in wrapEvents.
    const log: EventLog = { event: (n, f, l) => (this.outer ?? this.inner)?.event(n, f, l) };
    this.recorder = new FlightRecorder(path.join(stateDir, 'captures'), recorderSettings(config), log);
    const store = new IncidentStore(stateDir, (err) =>
      log.event('error', { during: 'writing an incident record', error: err.message }, 'warn'),
    );
    this.incidents = new IncidentRecorder(store, this.metrics.incidentObserver());
    // Read back the incidents a previous run left open; events meanwhile wait (bounded).
    this.incidentsLoaded = this.incidents
      .load()
      .catch((err: unknown) =>
        log.event('error', { during: 'reading incident records', error: (err as Error).message }, 'warn'),
      );
  }

  /** The EventLog detection should log through: forwards to `inner`, feeding the recorder and metrics. */
  wrapEvents(inner: EventLog): EventLog {
    this.inner = inner;
    this.outer = this.metrics.wrap(this.recorder.wrap(this.incidents.wrap(inner)));
    return this.outer;
  }

  /** Start serving metrics (if configured) and recording gateway frames. */
  async start(engine: OpsEngine, ports: OpsPorts): Promise<void> {
    this.engine = engine;
    this.ports = ports;
    ports.on?.('wire_frame', (ifname, p) =>
      this.recorder.recordSegment(ifname, p.tsMs, p.data, p.wireLength),
    );
    await this.recorder.load();
    await this.applyListen();
    this.refreshGateways();
    this.timer = setInterval(() => this.refreshGateways(), GATEWAY_REFRESH_MS);
    this.timer.unref();
  }

  /**
   * The seam for the tunnel half: once the daemon runs a TunnelNode, pass `() => node.status()`
   * and the tunnel metrics appear at the next scrape.
   */
  setTunnelSource(source: (() => TunnelStatus | null) | null): void {
    this.tunnel = source ?? (() => null);
  }

  /**
   * SIGHUP: new recorder bounds; the metrics endpoint moves if metrics.listen changed. The new
   * listener is bound before the old one closes: when it cannot be (an address in use), the old
   * one keeps serving and the failure is logged.
   */
  async reconfigure(config: Config): Promise<void> {
    this.config = config;
    this.recorder.configure(recorderSettings(config));
    try {
      await this.applyListen();
    } catch (err) {
      this.outer?.event(
        'metrics_listen_failed',
        {
          listen: config.metrics.listen ?? null,
          error: (err as Error).message,
          note: this.listening
            ? `the endpoint stays on ${this.listening}`
            : 'the metrics endpoint is off until a reload binds it',
        },
        'error',
      );
    }
  }

  private async applyListen(): Promise<void> {
    const want = this.config.metrics.listen ?? null;
    if (want === this.listening || this.closed) return;
    if (!want) {
      await this.metrics.close();
      this.listening = null;
      return;
    }
    const { host, port } = await this.metrics.listen(want);
    this.listening = want;
    this.outer?.event('metrics_listening', { listen: want, host, port });
  }

  private refreshGateways(): void {
    if (!this.engine || !this.ports || this.closed) return;
    let gateways: DgdStatus['gateways'];
    try {
      gateways = this.engine.status().gateways;
    } catch {
      return; // still starting
    }
    this.recorder.setGateways(gateways.map((g) => g.address));
    this.noteGatewayChanges(gateways);
    // Only interfaces that are up: a handle cannot open on one that is down or gone.
    for (const ifname of new Set(
      gateways.filter((g) => g.link !== 'down' && g.link !== 'absent').map((g) => g.interface),
    )) {
      this.ports.link(ifname).then(
        (link) => {
          if (this.attached.has(link) || this.closed) return;
          this.attached.add(link);
          link.on('frame', (f: LinkFrame) => this.recorder.record(f));
        },
        () => undefined, // the daemon reports links that fail to open
      );
    }
  }

  /**
   * Announce each gateway once when it appears (a route through it was added, or at start) and
   * when it goes (its last route is gone), and give a new one its counters at 0.
   */
  private noteGatewayChanges(gateways: DgdStatus['gateways']): void {
    const now = new Map(gateways.map((g) => [g.address, g.interface]));
    for (const [address, ifname] of now) {
      this.metrics.knowGateway(address);
      if (!this.gateways.has(address))
        this.outer?.event('gateway_appeared', { gateway: address, interface: ifname });
    }
    for (const [address, ifname] of this.gateways)
      if (!now.has(address)) this.outer?.event('gateway_gone', { gateway: address, interface: ifname });
    this.gateways = now;
  }

  /** The newest flight-recorder capture of a gateway. */
  lastCapture(gateway: string): CaptureFileInfo | null {
    return this.recorder.lastCapture(gateway);
  }

  /**
   * Add `last_capture` and `open_incident` (the number of its incident under way, for `incidents
   * ID`) to every gateway of a status, and `flight_recorder` and `incidents` sections.
   */
  decorateStatus<S extends { gateways?: unknown }>(status: S): S {
    const open = new Map(this.incidents.openIncidents().map((r) => [r.gateway, r.id]));
    const gws = Array.isArray(status.gateways) ? (status.gateways as { address?: unknown }[]) : [];
    return {
      ...status,
      gateways: gws.map((g) => ({
        ...g,
        last_capture: typeof g.address === 'string' ? (this.lastCapture(g.address)?.file ?? null) : null,
        open_incident: typeof g.address === 'string' ? (open.get(g.address) ?? null) : null,
      })),
      flight_recorder: this.recorder.status(),
      incidents: { ...this.incidents.store.status(), open: [...open.values()] },
      metrics: { listen: this.listening },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.recorder.close();
    await this.incidentsLoaded;
    await this.incidents.close();
    await this.metrics.close();
  }
}

function recorderSettings(config: Config): FlightRecorderSettings {
  return { ...config.flight_recorder };
}
