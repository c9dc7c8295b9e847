// The daemon's lifecycle: load the config (a bad one exits 2 and changes nothing), open the system
// facades, start detection (and the tunnel roles of the config, in a child process), serve the control socket, and
// handle signals: SIGTERM/SIGINT restore every withdrawn route and exit 0 (SIGUSR2, for a package
// upgrade, exits 0 leaving them withdrawn and journaled for the next start); SIGHUP reloads the
// config (a bad new config is refused and the old one stays).
import type { Logger } from 'pino';
import { ConfigError, IpdeadgateError } from '../errors';
import { SystemPorts } from '../dgd/systemports';
import { DgdEngine } from '../dgd/engine';
import { FileStore } from '../dgd/store';
import { FileOwnerStore, RouteOwners } from '../dgd/owners';
import { ownerAdapters } from '../dgd/owner-system';
import { openRtnl, type Rtnl } from '../sys/rtnl';
import { missingCapabilities, readBootId, type CapabilityName } from '../sys/host';
import type { NeighbourSighting } from '../sys/packet';
import type { WireFlowEvent } from '../dgd/ports';
import { peerUidOf } from '../sys/peercred';
import { openServiceNotifier } from '../sys/sdnotify';
import { systemClock } from '../util/clock';
import { defaultConfig, loadConfig, loadTunnelConfig, type Config } from './config';
import { ControlServer } from './control';
import { createLogger, eventLog, type LogFormat } from './log';
import type { EventLog } from '../util/eventlog';
import { EXIT_FAULT, installFaultPolicy } from '../util/faultpolicy';
import { DaemonOps } from './ops';
import { checkStateDir, StateDirLock } from './stateguard';
import { DurableWriter } from '../util/durable';
import { resolveTables } from './tables';
import { TunnelChild } from './tunnelchild';
import type { TunnelConfig } from '../tunnel/config';

export interface DaemonOptions {
  configPath?: string;
  controlPath: string;
  stateDir: string;
  logFormat?: LogFormat;
  /** The gid whose members may use the control socket (mode 0660). */
  controlGroup?: number;
}

export { DEFAULT_STATE_DIR } from './statedir';

/** What each capability the daemon needs is for, in the message that refuses to start without it. */
const NEEDED_CAPABILITIES: Record<CapabilityName, string> = {
  CAP_NET_ADMIN: 'to withdraw and restore routes and purge neighbour entries',
  CAP_NET_RAW: 'to send and capture ARP/NDP',
};

/**
 * Refuse to run blind: without these the daemon would start, log EPERM warnings and protect
 * nothing. Throws one error whose message names each missing capability.
 */
export function requireCapabilities(effective?: bigint): void {
  const missing = missingCapabilities(Object.keys(NEEDED_CAPABILITIES) as CapabilityName[], effective);
  if (missing.length === 0) return;
  throw new IpdeadgateError(
    'ERR_CAPABILITIES',
    `missing ${missing.map((c) => `${c} (${NEEDED_CAPABILITIES[c]})`).join(' and ')}; ` +
      'run as root, or grant them (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)',
  );
}

/** Load the config, or the defaults when there is no config file; a tunnel section is validated too. */
export async function loadDaemonConfig(
  configPath?: string,
): Promise<{ config: Config; tables: number[]; tunnel: TunnelConfig | null }> {
  const config = configPath ? await loadConfig(configPath) : defaultConfig();
  const tunnel =
    configPath && Object.keys(config.tunnel).length > 0 ? await loadTunnelConfig(configPath) : null;
  let tables: number[];
  try {
    tables = resolveTables(config.dgd.tables);
  } catch (err) {
    throw new ConfigError(
      `${configPath ?? '<defaults>'}: ${(err as Error).message}`,
      configPath,
      undefined,
      'dgd.tables',
    );
  }
  return { config, tables, tunnel };
}

export class Daemon {
  private engine: DgdEngine | null = null;
  /** Routing daemons told about dead gateways (dgd.owners). */
  private owners: RouteOwners | null = null;
  private ports: SystemPorts | null = null;
  private rtnl: Rtnl | null = null;
  private control: ControlServer | null = null;
  private subscription: { close(): void } | null = null;
  private linkTimer: NodeJS.Timeout | null = null;
  private stopping: Promise<void> | null = null;
  /** Set once start() completed: a failed start logs no daemon_stopped. */
  private running = false;
  private readonly startedAt = new Date();
  private config!: Config;
  private log: Logger;
  /** Flight recorder and metrics (src/daemon/ops.ts): they see detection through its events. */
  private ops: DaemonOps | null = null;
  /** The event log that also counts each event for ipdeadgate_events_total (set by start()). */
  private events: EventLog | null = null;
  /** The tunnel role(s) of the config, in a child process of their own (./tunnelchild.ts). */
  private tunnel: TunnelChild | null = null;
  private tunnelConfig: TunnelConfig | null = null;
  /** Held from start to the process's end: one daemon per state dir. */
  private stateLock: StateDirLock | null = null;
  /** State files written in the background: failures logged, counted, retried (src/util/durable.ts). */
  private writer: DurableWriter | null = null;

  constructor(private readonly opts: DaemonOptions) {
    this.log = createLogger({ format: opts.logFormat ?? 'json' });
  }

  async start(): Promise<void> {
    const { config, tables, tunnel } = await loadDaemonConfig(this.opts.configPath);
    // A bad config is exit 2 before this; missing capabilities exit 1 before anything is touched.
    requireCapabilities();
    this.config = config;
    this.tunnelConfig = tunnel;
    // --log-format on the command line wins over log.format in the config.
    this.log = createLogger({ format: this.opts.logFormat ?? config.log.format });
    this.log.level = config.log.level;
    // The state dir before anything else: refused when others could write it, locked against a
    // second daemon (which must fail before it touches any route or anyone's control socket).
    await checkStateDir(this.opts.stateDir);
    this.stateLock = StateDirLock.acquire(this.opts.stateDir);
    this.ops = new DaemonOps(this.opts.stateDir, config);
    const events = this.ops.wrapEvents(eventLog(this.log));
    this.events = events;
    this.writer = new DurableWriter(events);

    // The control socket first: a second daemon must fail before it touches any route.
    this.control = new ControlServer(
      this.opts.controlPath,
      peerUidOf,
      undefined,
      this.opts.controlGroup ?? null,
    );
    this.registerCommands(this.control);
    await this.control.listen();

    this.rtnl = await openRtnl();
    this.ports = new SystemPorts(this.rtnl);
    const interfaces = await this.ports.refreshLinks();
    this.owners = new RouteOwners(
      ownerAdapters(config.dgd.owners),
      new FileOwnerStore(this.opts.stateDir, this.writer),
      events,
      config.dgd.keep_last_route,
    );
    this.engine = new DgdEngine({
      config: config.dgd,
      tables,
      ports: this.ports,
      store: new FileStore(this.opts.stateDir, { writer: this.writer, log: events }),
      log: events,
      clock: systemClock,
      owners: this.owners,
      bootId: readBootId(),
    });
    await this.engine.setInterfaces(interfaces);
    const engine = this.engine;
    const ports = this.ports;
    ports.on('sighting', (s: NeighbourSighting, ifname: string) => {
      engine.onSighting(s.ip, ports.ifindexOf(ifname), s.mac);
    });
    ports.on('error', (err: Error) =>
      events.event('error', { during: 'packet capture', error: err.message }, 'warn'),
    );
    // Everything verification needs is opened now, not at the first death: when the descriptors
    // run out later (EMFILE), a verification still runs with what it holds.
    ports.openEchoSockets();
    ports.on('link_closed', (ifname: string, err: Error) =>
      events.event('capture_closed', { interface: ifname, purpose: 'ARP/NDP', error: err.message }, 'warn'),
    );
    ports.on('link_opened', (ifname: string) =>
      events.event('capture_opened', { interface: ifname, purpose: 'ARP/NDP' }),
    );
    ports.on('wire_retransmission', (ev: WireFlowEvent) => engine.onWireRetransmission(ev));
    ports.on('wire_closed', (ifname: string, err: Error) =>
      events.event(
        'capture_closed',
        { interface: ifname, purpose: 'TCP segments', error: err.message },
        'warn',
      ),
    );
    // Link events: the interface list is re-read, detection follows names to new ifindexes, and
    // ARP/NDP handles are reopened on interfaces that came back. One refresh at a time; events
    // that arrive meanwhile fold into one more.
    // Declared before the first link event can call openLinks() (below, hoisted).
    const currentConfig = () => this.config;
    let linkRefresh: Promise<void> | null = null;
    let linkAgain = false;
    const onLinkEvent = () => {
      if (linkRefresh) {
        linkAgain = true;
        return;
      }
      linkRefresh = (async () => {
        do {
          linkAgain = false;
          const list = await ports.refreshLinks();
          await engine.setInterfaces(list);
          openLinks();
        } while (linkAgain);
      })()
        .catch((err: unknown) =>
          events.event('error', { during: 'interface refresh', error: (err as Error).message }, 'warn'),
        )
        .finally(() => (linkRefresh = null));
    };
    this.subscription = await this.rtnl.subscribe(['neighbour', 'route', 'link', 'nexthop'], (ev) => {
      if (ev.kind === 'neighbour' && ev.op === 'new')
        engine.onNeighbour(
          ev.neighbour.address,
          ev.neighbour.ifindex,
          ev.neighbour.state,
          ev.neighbour.lladdr,
        );
      // A nexthop object changed or deleted changes its routes without route events of their own.
      else if (ev.kind === 'route' || ev.kind === 'nexthop') engine.onRoutesChanged();
      else if (ev.kind === 'link') onLinkEvent();
    });
    await engine.start();
    await this.ops.start(engine, ports);
    if (tunnel) {
      // Its events come back through ours: counted in ipdeadgate_events_total.
      this.tunnel = await TunnelChild.start(tunnel, { events });
      const node = this.tunnel;
      this.ops.setTunnelSource(() => node.status());
    }
    // Listen for ARP/NDP on every gateway interface, so a dead gateway announcing itself is seen,
    // and watch the TCP segments leaving on them (the trigger for forwarded traffic).
    function openLinks(): void {
      const up = new Set(
        ports
          .interfaces()
          .filter((l) => l.up)
          .map((l) => l.ifname),
      );
      const status = engine.status();
      const forwarded = currentConfig().dgd.forwarded;
      const uplinks = [...new Set(status.gateways.map((g) => g.interface))].filter((n) => up.has(n));
      ports.watchWire(
        forwarded.enabled && status.enabled ? uplinks : [],
        forwarded.frame_budget,
        currentConfig().dgd.syn_stall,
      );
      for (const g of status.gateways) {
        // A handle cannot open on an interface that is down or gone; it opens when it is back.
        if (!up.has(g.interface)) continue;
        void ports
          .link(g.interface)
          .catch((err: Error) =>
            events.event(
              'error',
              { during: `opening ${g.interface} for ARP/NDP`, error: err.message },
              'warn',
            ),
          );
      }
    }
    openLinks();
    this.linkTimer = setInterval(openLinks, 5000);
    this.linkTimer.unref();
    events.event('daemon_started', {
      pid: process.pid,
      config: this.opts.configPath ?? null,
      control: this.opts.controlPath,
      state_dir: this.opts.stateDir,
    });
    this.running = true;
  }

  private registerCommands(control: ControlServer): void {
    control
      .handle('status', async () => this.status())
      .handle('on', async () => {
        await this.requireEngine().setEnabled(true);
        return { enabled: true };
      })
      .handle('off', async () => {
        await this.requireEngine().setEnabled(false);
        return { enabled: false };
      })
      .handle('withdrawn', async () => this.requireEngine().withdrawnRoutes())
      .handle('reload', async () => {
        await this.reload();
        return { reloaded: true };
      });
  }

  private requireEngine(): DgdEngine {
    if (!this.engine) throw new IpdeadgateError('ERR_STARTING', 'the daemon is still starting; try again');
    return this.engine;
  }

  status(): Record<string, unknown> {
    const dgd = this.requireEngine().status();
    const status = {
      ...dgd,
      pid: process.pid,
      started_at: this.startedAt.toISOString(),
      config: this.opts.configPath ?? null,
      state_dir: this.opts.stateDir,
      // Failed writes of state files, and the files whose latest content is not on disk yet.
      state_writes: this.writer?.stats() ?? { failures: 0, pending: [] },
      tunnel: this.tunnel?.status() ?? null,
      // The tunnel runs in a process of its own; null without a tunnel section (or while restarting).
      tunnel_pid: this.tunnel?.pid ?? null,
    };
    return this.ops ? this.ops.decorateStatus(status) : status;
  }

  /** SIGHUP: load the new config; a bad one is refused and the old one stays. */
  async reload(): Promise<void> {
    // The counting log: a refused reload must reach ipdeadgate_events_total{level="error"} (the
    // alert rule on error events), as every other event does.
    const log = this.events ?? eventLog(this.log);
    let next;
    try {
      next = await loadDaemonConfig(this.opts.configPath);
    } catch (err) {
      log.event(
        'config_refused',
        { error: (err as Error).message, note: 'the running config stays' },
        'error',
      );
      throw err;
    }
    // The tunnel part first: binding a new forward can still fail (a port in use), and a reload
    // is all or nothing, so nothing else is applied when it does.
    if (JSON.stringify(next.tunnel) !== JSON.stringify(this.tunnelConfig)) {
      if (this.tunnel && next.tunnel) {
        // The tunnel node applies what it can without a restart (TunnelNode.reload), or nothing.
        try {
          const changed = await this.tunnel.reload(next.tunnel);
          this.tunnelConfig = next.tunnel;
          log.event('tunnel_config_reloaded', { changed });
        } catch (err) {
          log.event(
            'tunnel_config_refused',
            {
              error: (err as Error).message,
              note: 'nothing of the new config was applied; the running config stays',
            },
            'error',
          );
          throw err;
        }
      } else
        log.event(
          'tunnel_config_changed',
          { note: 'adding or removing the tunnel section takes effect when the daemon restarts' },
          'warn',
        );
    }
    this.config = next.config;
    this.log.level = next.config.log.level;
    await this.owners?.configure(ownerAdapters(next.config.dgd.owners), next.config.dgd.keep_last_route);
    await this.requireEngine().reload(next.config.dgd, next.tables);
    await this.ops?.reconfigure(next.config);
  }

  /**
   * SIGTERM: restore every withdrawn route, close everything. Idempotent. With `restore: false`
   * (SIGUSR2, an upgrade) withdrawn routes stay out and journaled: the next start takes them over.
   */
  stop(opts: { restore?: boolean } = {}): Promise<void> {
    const restore = opts.restore ?? true;
    this.stopping ??= (async () => {
      // Every step runs even when one before it failed: a stop always ends with nothing open.
      const failures: string[] = [];
      const step = async (what: string, fn: () => unknown) => {
        try {
          await fn();
        } catch (err) {
          failures.push(`${what}: ${(err as Error).message}`);
        }
      };
      if (this.linkTimer) clearInterval(this.linkTimer);
      // The control socket first: a stopping daemon no longer answers "detection: on".
      await step('closing the control socket', () => this.control?.close());
      await step(restore ? 'restoring routes' : 'stopping detection', () => this.engine?.stop({ restore }));
      await step('closing the tunnel', () => this.tunnel?.close());
      await step('closing metrics and the flight recorder', () => this.ops?.close());
      await step('closing route events', () => this.subscription?.close());
      await step('closing capture handles', () => this.ports?.close());
      await step('closing rtnetlink', () => this.rtnl?.close());
      this.writer?.close();
      const pending = this.writer?.stats().pending ?? [];
      const log = this.events ?? eventLog(this.log);
      if (pending.length > 0)
        log.event(
          'state_not_written',
          {
            files: pending,
            note: 'the disk refused them until the end; the next start reads what is on disk',
          },
          'error',
        );
      this.stateLock?.close();
      if (this.running)
        log.event('daemon_stopped', {
          ...(restore ? {} : { routes_kept: true }),
          ...(failures.length > 0 ? { failures } : {}),
        });
      if (failures.length > 0)
        throw new IpdeadgateError('ERR_STOP', `stopped with failures: ${failures.join('; ')}`);
    })();
    return this.stopping;
  }

  /** Where the daemon's events go (counted for metrics once started). */
  get eventPort(): EventLog {
    return this.events ?? eventLog(this.log);
  }

  get currentConfig(): Config {
    return this.config;
  }
}

/** Run until SIGTERM/SIGINT; returns the exit code. */
export async function runDaemon(opts: DaemonOptions): Promise<number> {
  const daemon = new Daemon(opts);
  // systemd (Type=notify): READY=1 once start() resolved (routes read, control socket listening,
  // tunnel listeners bound), WATCHDOG=1 from the event loop, RELOADING/STOPPING around SIGHUP/TERM.
  const service = openServiceNotifier({
    onError: (err) => process.stderr.write(`ipdeadgate: ${err.message}\n`),
  });

  // Signal handlers come first: a SIGHUP or SIGTERM that arrives while the daemon starts must not
  // take the default action (which kills the process without restoring anything).
  let started = false;
  let hupWhileStarting = false;
  let stopRequested: string | null = null;
  let resolveStop: (code: number) => void = () => undefined;
  const stopped = new Promise<number>((r) => (resolveStop = r));
  const doStop = (sig: string) => {
    process.off('SIGHUP', onHup);
    const restore = sig !== 'SIGUSR2';
    service.notify('STOPPING=1', `STATUS=${restore ? 'restoring' : 'keeping'} withdrawn routes (${sig})`);
    daemon
      .stop({ restore })
      .then(() => resolveStop(faultStop ? EXIT_FAULT : 0))
      .catch((err: unknown) => {
        process.stderr.write(`ipdeadgate: stopping on ${sig}: ${(err as Error).message}\n`);
        resolveStop(1);
      });
  };
  const onStop = (sig: string) => {
    if (!started) stopRequested = sig;
    else doStop(sig);
  };
  const onHup = () => {
    if (!started) hupWhileStarting = true;
    else {
      service.notify('RELOADING=1');
      void daemon
        .reload()
        .catch(() => undefined)
        .finally(() => service.notify('READY=1'));
    }
  };
  const onTerm = () => onStop('SIGTERM');
  const onInt = () => onStop('SIGINT');
  const onUsr2 = () => onStop('SIGUSR2');
  process.once('SIGTERM', onTerm);
  process.once('SIGINT', onInt);
  process.once('SIGUSR2', onUsr2);
  process.on('SIGHUP', onHup);
  // Faults nothing handled (src/util/faultpolicy.ts): a rejection is logged and counted; an
  // uncaught exception stops the daemon the way SIGTERM does (withdrawn routes restored), exit 70.
  let faultStop = false;
  const faults = installFaultPolicy({
    events: { event: (name, fields, level) => daemon.eventPort.event(name, fields, level) },
    stop: () => {
      faultStop = true;
      onStop('SIGTERM');
      return stopped;
    },
  });
  void stopped.then(() => faults.uninstall());
  try {
    await daemon.start();
  } catch (err) {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
    process.off('SIGUSR2', onUsr2);
    process.off('SIGHUP', onHup);
    faults.uninstall();
    await daemon.stop().catch(() => undefined);
    throw err;
  }
  started = true;
  // Whatever still holds the event loop after a stop (a stuck handle), the process ends: a
  // stopped daemon must not linger half-alive.
  void stopped.then(() => setTimeout(() => process.exit(), 3000).unref());
  service.notify('READY=1', `STATUS=serving on ${opts.controlPath}`, `MAINPID=${process.pid}`);
  const stopWatchdog = service.startWatchdog();
  void stopped.then(stopWatchdog);
  if (stopRequested) doStop(stopRequested);
  else if (hupWhileStarting) onHup();
  return stopped;
}
