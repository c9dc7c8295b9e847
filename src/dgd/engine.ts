// The dead gateway detection engine: the composition root of detection's rooms, each with one job
// and one writer per piece of state (docs/architecture.md draws them):
//
//   triggers.ts     socket scan, lookups, neighbour FAILED, sightings -> "g is suspect"
//   activeprobe.ts  opt-in ARP/NDP probing -> "g missed its probes" / "g answers again"
//   verdicts.ts     ARP/NDP verification, the verdict, slow polls, revival; drives gateway.ts
//   gateway.ts      each gateway's life as a handler table (phases, events, entry actions)
//   gateways.ts     the set of gateways and their identities
//   routekeeper.ts  both journals, the kernel view, every route change, in one chain
//   ownerliaison.ts FRR / BIRD told instead of fighting them
//   linktracker.ts  interfaces coming and going, renumbering, interface_wait
//   conntrackfollow.ts  after a route change, NAT'd conntrack entries stranded on an old uplink
//
// The engine owns on/off, the config and the managed tables, and wires events between the rooms.
// It runs only over the ports in ./ports.ts, so every rule is unit-tested with fakes and a fake
// clock. Hand-written: this is the product's core decision logic, after IBM i's dead gateway
// detection (docs/operators-guide.md, "How detection decides").
import { emit } from './events';
import { errorMessage } from '../errors';
import { normalizeIp } from '../sys/ipaddr';
import type { Clock, Timer } from '../util/clock';
import type { EventLog } from '../util/eventlog';
import { ActiveProber } from './activeprobe';
import type { DgdConfig } from './config';
import { isDead, type Gateway } from './gateway';
import { GatewayTable } from './gateways';
import type { InterfaceInfo } from './interfaces';
import { LinkTracker } from './linktracker';
import { OwnerLiaison } from './ownerliaison';
import type { RouteOwners } from './owners';
import type { DgdPorts, DgdStore, KernelRoute, WireFlowEvent } from './ports';
import { ConntrackFollower, multipathPeers } from './conntrackfollow';
import { FlowResumer } from './resume';
import { RouteKeeper } from './routekeeper';
import { gatewayKey, splitKey } from './routeplan';
import { gatewayStatus, type DgdStatus } from './status';
import { Triggers } from './triggers';
import { Verdicts } from './verdicts';

export type { GatewayState, TriggerKind } from './events';
export type { DgdStatus, GatewayRouteStatus } from './status';
export { activeProbeTimeout } from './activeprobe';

/** RTPROT_RA: a route the kernel made from a router advertisement. */
const RTPROT_RA = 9;

export interface EngineOptions {
  config: DgdConfig;
  /** Managed table numbers (config names already resolved). */
  tables: number[];
  ports: DgdPorts;
  store: DgdStore;
  log: EventLog;
  clock: Clock;
  /** This boot's id (/proc/sys/kernel/random/boot_id), recorded with each journal entry. */
  bootId?: string | null;
  /** Routing daemons told about dead gateways through their own interface (dgd.owners). */
  owners?: RouteOwners;
}

export class DgdEngine {
  private cfg: DgdConfig;
  private tables: number[];
  private enabled = true;
  private closed = false;
  private started = false;
  private refreshTimer: Timer | null = null;
  private readonly store: DgdStore;
  private readonly ports: DgdPorts;
  private readonly log: EventLog;
  private readonly clock: Clock;
  private readonly gateways: GatewayTable;
  private readonly links: LinkTracker;
  private readonly liaison: OwnerLiaison;
  private readonly keeper: RouteKeeper;
  private readonly verdicts: Verdicts;
  private readonly triggers: Triggers;
  private readonly prober: ActiveProber;
  /** Resends stuck flows' segments when their gateway's routes are withdrawn (./resume.ts). */
  private readonly flowResumer: FlowResumer | null;
  /** Deletes conntrack entries bound by source NAT to an uplink their flows left (./conntrackfollow.ts). */
  private readonly follower: ConntrackFollower | null;

  constructor(opts: EngineOptions) {
    this.cfg = opts.config;
    this.tables = opts.tables;
    this.store = opts.store;
    this.ports = opts.ports;
    this.log = opts.log;
    this.clock = opts.clock;
    const { ports, log, clock } = opts;
    const config = () => this.cfg;
    const running = () => this.enabled && !this.closed;
    this.gateways = new GatewayTable({
      ifname: (i) => ports.ifname(i),
      presenceOf: (n) => this.links.presenceOf(n),
      cancelTimers: (g) => this.cancelGatewayTimers(g),
    });
    this.links = new LinkTracker({
      clock,
      log,
      gateways: this.gateways,
      interfaceWaitMs: () => this.cfg.interface_wait,
      onGatewayLink: (g, change) => {
        if (change === 'down')
          this.verdicts.machine.fire(g, { type: 'interface_down' }, `interface ${g.link}`);
        else
          this.verdicts.machine.fire(
            g,
            { type: 'interface_up' },
            `interface ${change === 'up' ? 'up' : 're-created'}`,
          );
      },
    });
    this.liaison = new OwnerLiaison(opts.owners ?? null, log, (fn) => this.keeper.serially(fn), running);
    this.liaison.onAnswered = () =>
      void this.refreshRoutes().catch((err: unknown) =>
        emit(this.log, { event: 'error', during: 'route refresh', error: String(err) }, 'warn'),
      );
    this.keeper = new RouteKeeper({
      ports,
      store: opts.store,
      log,
      clock,
      bootId: opts.bootId ?? null,
      liaison: this.liaison,
      tables: () => this.tables,
      keepLastRoute: () => this.cfg.keep_last_route,
      deadKeys: () => this.gateways.deadKeys(),
      // Decided when the withdrawal's turn comes, not when it was queued: a revival or `off` may
      // have come first.
      mayWithdraw: (g) => isDead(g) && this.enabled && !this.closed,
      placeable: (e) => this.links.placeable(e),
      rewithdraw: { limit: this.cfg.rewithdraw_limit, windowMs: this.cfg.rewithdraw_window },
      routesMoved: async (after, g) => this.follower?.follow({ after, gateway: g }),
    });
    this.follower = ports.conntrack
      ? new ConntrackFollower({
          ports: ports.conntrack,
          lookupRoute: (dst, src, key) => ports.lookupRoute(dst, src, key),
          ifname: (i) => ports.ifname(i),
          log,
          clock,
          settings: () => this.cfg.conntrack,
          gatewayInterfaces: () => this.gateways.list().map((g) => g.ifindex),
          multipathPeers: (key) => multipathPeers(key, this.keeper.entries(), this.keeper.groupEntries()),
        })
      : null;
    this.links.attach(this.keeper);
    const { watchFlows, forgetFlow, resendSegment } = ports;
    this.flowResumer =
      watchFlows && forgetFlow && resendSegment
        ? new FlowResumer(
            {
              lookupRoute: (dst, src, key) => ports.lookupRoute(dst, src, key),
              scanSockets: () => ports.scanSockets({ minRetransmits: 1 }),
              watchFlows: watchFlows.bind(ports),
              forgetFlow: forgetFlow.bind(ports),
              resendSegment: resendSegment.bind(ports),
            },
            log,
            (ms) => clock.sleep(ms),
          )
        : null;
    this.verdicts = new Verdicts({
      ports,
      clock,
      log,
      keeper: this.keeper,
      config,
      running,
      routesSwitched: async (g) => {
        if (this.cfg.resend_on_switch) await this.flowResumer?.routesSwitched(g);
      },
      stillDead: () => this.liaison.retryFailed('slow poll: still dead'),
      store: opts.store,
    });
    // What every trigger room reads: the system, time, the log, the gateways, the config, on/off.
    const room = { ports, clock, log, gateways: this.gateways, config, running };
    this.triggers = new Triggers({
      ...room,
      sink: {
        suspect: (g, kind, detail, quiet) => this.verdicts.suspect(g, kind, detail, quiet),
        speculate: (g, quiet) => this.verdicts.speculate(g, quiet),
        verdictFresh: (g) => this.verdicts.verdictFresh(g),
        freshUntil: (g) => this.verdicts.freshUntil(g),
        deadGatewayUsed: async (g) => {
          // The kernel still sends through a gateway we know is dead: a route through it is back
          // (put there by someone else) and its event was missed or is still to come.
          if (await this.keeper.anythingBackVia(g))
            await this.verdicts.withdrawAgain(g, 'retransmissions via a dead gateway');
        },
        sighted: (g) => this.verdicts.machine.fire(g, { type: 'sighted' }, 'ARP/NDP seen from it'),
      },
      onSockets: (sockets) => {
        if (this.cfg.resend_on_switch) void this.flowResumer?.observe(sockets);
      },
    });
    this.prober = new ActiveProber({
      ...room,
      macTrusted: (g, mac) => this.verdicts.macTrusted(g, mac),
      // Unanswered ARP/NDP probes are the verdict itself (ARP decides).
      missed: (g, missed) => this.verdicts.declareDead(g, `${missed} active probes unanswered`),
      answered: (g) => this.verdicts.revive(g, 'active probe answered'),
    });
  }

  /** Load persisted state, reconcile the journal with the kernel, and start scanning. */
  async start(): Promise<void> {
    const persisted = await this.store.loadEnabled();
    this.enabled = persisted ?? this.cfg.enabled;
    await this.verdicts.macs.load();
    const boots = await this.keeper.load();
    const held = await this.liaison.load();
    this.started = true;
    // Interface names decide where journaled routes belong: ifindexes move to the names' indexes now.
    await this.links.apply();
    await this.refreshRoutes();
    if (this.keeper.journalSize > 0 || held.size > 0) {
      emit(this.log, {
        event: 'journal_loaded',
        entries: this.keeper.entries().length,
        nexthop_groups: this.keeper.groupEntries().length,
        ...(held.size > 0 ? { owners: Object.fromEntries(held) } : {}),
        enabled: this.enabled,
        ...boots,
      });
      if (!this.enabled) await this.keeper.restoreAll('disabled at start');
      else {
        // After a restart (kill -9) the journal is the truth: its gateways are dead, polled at once.
        await this.keeper.reconcile((key, ifname) => {
          const [address, ifindex] = splitKey(key);
          this.journalDead(
            this.gateways.ensure(address, ifindex, ifname),
            'withdrawn before restart (journal)',
          );
        });
        await this.liaison.reconcile(held, (address, ifname) => {
          const ifindex = this.links.ifindexOf(ifname);
          if (ifindex === undefined) return false;
          const g = this.gateways.ensure(address, ifindex, ifname);
          this.journalDead(g, 'routing daemon told before restart (journal)');
          return true;
        });
      }
    }
    this.prober.setup();
    this.triggers.schedule(0);
    emit(this.log, {
      event: 'dgd_started',
      enabled: this.enabled,
      tables: this.tables,
      gateways: this.gateways.list().map((g) => `${g.address}%${g.ifname}`),
    });
  }

  private journalDead(g: Gateway, reason: string): void {
    this.verdicts.machine.fire(g, { type: 'journal' }, reason);
  }

  /** Stop every timer; with restore, put every withdrawn route back first (SIGTERM). */
  async stop(opts: { restore: boolean }): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.triggers.stop();
    this.flowResumer?.stop();
    this.refreshTimer?.cancel();
    this.links.close();
    for (const g of this.gateways.values()) this.cancelGatewayTimers(g);
    if (opts.restore) await this.keeper.restoreAll('daemon stopping');
    // What follows the last change (conntrack) finishes before the ports close.
    await this.keeper.settled();
  }

  isEnabled(): boolean {
    return this.enabled;
  }

  /** `ipdeadgate on` / `off`: off restores every withdrawn route and stops all triggers; persisted. */
  async setEnabled(enabled: boolean): Promise<void> {
    await this.store.saveEnabled(enabled);
    if (enabled === this.enabled) return;
    this.enabled = enabled;
    emit(this.log, { event: enabled ? 'dgd_on' : 'dgd_off' });
    if (!enabled) {
      this.flowResumer?.stop();
      // Every trigger stops whole (the scan, active probing, the polls), so that `on` can start
      // each again from nothing.
      this.triggers.stop();
      this.prober.stopAll();
      for (const g of this.gateways.values()) this.cancelGatewayTimers(g);
      // The routes come back and every gateway counts as active in one step of the route chain:
      // no withdrawal queued behind it finds a gateway still dead.
      await this.keeper.restoreAll('ipdeadgate off', () => {
        for (const g of this.gateways.values())
          this.verdicts.machine.fire(g, { type: 'off' }, 'ipdeadgate off');
      });
    } else {
      this.triggers.forgetLookups();
      this.prober.setup();
      this.triggers.schedule(0);
    }
  }

  /** SIGHUP: a new, already validated config. */
  async reload(cfg: DgdConfig, tables: number[]): Promise<void> {
    this.cfg = cfg;
    this.tables = tables;
    this.keeper.configure({ limit: cfg.rewithdraw_limit, windowMs: cfg.rewithdraw_window });
    // Recorders left open would capture for nothing: resend off, or detection off.
    if (!cfg.resend_on_switch || !this.enabled) this.flowResumer?.stop();
    this.triggers.forgetLookups();
    await this.refreshRoutes();
    this.prober.stopAll();
    this.prober.setup();
    emit(this.log, { event: 'config_reloaded', tables });
  }

  // ---------------------------------------------------------------------------------------------
  // Inputs from the daemon's rtnetlink and capture watchers

  onNeighbour(address: string, ifindex: number, state: string, lladdr: string | null = null): void {
    // The known MAC follows the kernel's entry (a VRRP takeover moves it): before any trigger acts.
    const g = this.gateways.find(address, ifindex);
    if (g) this.verdicts.kernelNeighbour(g, state, lladdr);
    this.triggers.onNeighbour(address, ifindex, state);
  }

  onSighting(address: string, ifindex: number | undefined, mac: string): void {
    this.triggers.onSighting(address, ifindex, mac);
  }

  /** A TCP segment left again towards a gateway's MAC (forwarded traffic, or local). */
  onWireRetransmission(ev: WireFlowEvent): void {
    if (this.cfg.forwarded.enabled) this.triggers.onWire(ev);
  }

  /** Debounced refresh after rtnetlink route events. */
  onRoutesChanged(): void {
    this.triggers.forgetLookups();
    if (this.refreshTimer || this.closed) return;
    // Short enough that a route put back through a dead gateway is gone again within one scan
    // interval of its event; long enough to take a burst of events (a table flush) as one.
    this.refreshTimer = this.clock.setTimeout(
      () => {
        this.refreshTimer = null;
        this.refreshRoutes().catch((err: unknown) =>
          emit(this.log, { event: 'error', during: 'route refresh', error: errorMessage(err) }, 'error'),
        );
      },
      Math.min(50, Math.floor(this.cfg.scan_interval / 4)),
    );
  }

  /**
   * The namespace's interfaces now (at start and after every rtnetlink link event). Journal
   * entries and gateways follow their interface's name to its current ifindex; gateways on an
   * interface that is down or gone stop being verified, and are polled at once when it is back.
   */
  async setInterfaces(list: readonly InterfaceInfo[]): Promise<void> {
    this.links.set(list);
    if (!this.started || this.closed) return;
    await this.links.apply();
    this.triggers.forgetLookups();
    // While detection is off, routes that waited for their interface go back as soon as it is up.
    if (!this.enabled && this.keeper.entries().some((e) => this.links.placeable(e)))
      await this.keeper.restoreAll('interface back while detection is off');
  }

  /** Re-read the managed tables and update the set of gateways. Called on route events. */
  async refreshRoutes(): Promise<void> {
    const routes = await this.keeper.refresh();
    this.triggers.forgetLookups();
    this.updateGateways(routes);
    // Whatever anyone added (or put back) through a gateway that is already dead is withdrawn too:
    // a DHCP client renewing its lease, a network manager, `ip route add`, a routing daemon.
    for (const g of this.gateways.list()) {
      if (!isDead(g) || !this.enabled) continue;
      if (this.keeper.routesBackVia(g, routes).length > 0)
        await this.verdicts.withdrawAgain(g, 'route added via a dead gateway');
    }
    this.liaison.watchUnprotected(routes);
    if (this.enabled) await this.liaison.retell(this.gateways.list().filter(isDead), routes);
  }

  /** The gateways of the managed routes and of the journals; gone, unused ones are forgotten. */
  private updateGateways(routes: readonly KernelRoute[]): void {
    // Config and kernel may spell an address differently (2001:DB8::1, 2001:db8:0::1).
    const filter = new Set(this.cfg.gateways.map(normalizeIp));
    const seen = new Set<string>();
    const consider = (address: string | null, ifindex: number, ifname?: string | null) => {
      if (!address) return;
      if (filter.size > 0 && !filter.has(normalizeIp(address))) return;
      seen.add(gatewayKey(address, ifindex));
      this.gateways.ensure(address, ifindex, ifname ?? undefined);
    };
    const considerRoute = (route: KernelRoute, fromKernel = false) => {
      // Any station on the LAN can send a router advertisement: a route it made (proto ra) makes
      // no tracked gateway unless the config asks for them or names that gateway.
      if (fromKernel && route.protocol === RTPROT_RA && !this.cfg.router_advertisements) {
        const named = (a: string | null) => a !== null && filter.has(normalizeIp(a));
        if (!named(route.gateway) && !(route.nexthops ?? []).some((nh) => named(nh.gateway))) return;
      }
      if (route.nexthops && route.nexthops.length > 0)
        for (const nh of route.nexthops) consider(nh.gateway, nh.ifindex, nh.ifname);
      else if (route.gateway && route.ifindex !== null) consider(route.gateway, route.ifindex, route.ifname);
    };
    for (const r of routes) considerRoute(r, true);
    for (const e of this.keeper.entries()) considerRoute(e.original);
    for (const e of this.keeper.groupEntries())
      for (const key of Object.values(e.members)) if (key) consider(...splitKey(key));
    for (const g of this.gateways.list()) {
      g.present = seen.has(g.key);
      // A gateway whose interface is down or absent stays listed (status shows why its routes are gone).
      if (!g.present && g.state === 'active' && !g.active && !g.inflight && g.link === 'up')
        this.gateways.forget(g);
    }
  }

  /** A gateway forgotten or replaced: its poll and its active probing end. */
  private cancelGatewayTimers(g: Gateway): void {
    this.verdicts.cancelPoll(g);
    this.prober.stop(g);
  }

  // ---------------------------------------------------------------------------------------------

  /** Everything `ipdeadgate status` shows about detection. */
  status(): DgdStatus {
    const scan = this.triggers.scanStatus();
    const journal = this.keeper.entries();
    return {
      enabled: this.enabled,
      tables: this.tables,
      gateways: this.gateways.list().map((g) =>
        gatewayStatus(g, {
          kernelRoutes: this.keeper.routes(),
          journal,
          isContested: (r) => this.keeper.isContested(r),
          now: this.clock.now(),
        }),
      ),
      ...this.keeper.withdrawnStatus(),
      route_owners: this.liaison.status(this.keeper.routes()),
      conntrack: this.follower?.status() ?? null,
      last_scan: {
        at: scan.at ? new Date(scan.at).toISOString() : null,
        duration_ms: Math.round(scan.durationMs * 10) / 10,
        sockets: scan.sockets,
        retransmitting: scan.retransmitting,
        dumps: scan.dumps,
      },
      forwarded: this.forwardedStatus(),
      flow_resume: {
        on: this.cfg.resend_on_switch && this.enabled && this.flowResumer !== null,
        recorded_flows: this.flowResumer?.watching ?? 0,
        recorders: Object.entries(this.ports.recorderStats?.() ?? {}).map(([ifname, r]) => ({
          interface: ifname,
          ...r,
        })),
      },
    };
  }

  private forwardedStatus(): DgdStatus['forwarded'] {
    const interfaces = this.ports.wireStatus?.() ?? [];
    const on = this.cfg.forwarded.enabled && this.enabled && interfaces.length > 0;
    return { method: on ? 'capture' : 'off', interfaces: on ? interfaces : [] };
  }

  /** Withdrawn routes (originals) for `ipdeadgate routes`. */
  withdrawnRoutes(): KernelRoute[] {
    return this.keeper.entries().map((e) => e.original);
  }
}
