// The body of `ipdeadgate tunnel` (./tunnel.ts registers it): loaded only when the command runs,
// so the tunnel's modules do not slow every other command's start.
import { UsageError } from '../errors';
import { loadTunnelConfig } from '../daemon/config';
import { ControlServer } from '../daemon/control';
import { createLogger, eventLog } from '../daemon/log';
import { peerUidOf } from '../sys/peercred';
import { openServiceNotifier } from '../sys/sdnotify';
import { loadTls } from '../tunnel/link';
import { TunnelNode } from '../tunnel/node';
import { installFaultPolicy } from '../util/faultpolicy';

export async function runTunnel(opts: {
  config: string;
  control?: string;
  logFormat: string;
}): Promise<number> {
  if (opts.logFormat !== 'json' && opts.logFormat !== 'text')
    throw new UsageError(`--log-format must be json or text, not "${opts.logFormat}"`);
  const cfg = await loadTunnelConfig(opts.config);
  const service = openServiceNotifier();
  const logger = createLogger({ format: opts.logFormat });
  const events = eventLog(logger);
  const node = await TunnelNode.start(cfg, { events });
  // Faults nothing handled (src/util/faultpolicy.ts): a rejection is logged and the node
  // runs on; an uncaught exception closes the node and exits 70 (systemd restarts it).
  installFaultPolicy({ events, stop: () => node.close() });
  let control: ControlServer | undefined;
  if (opts.control) {
    control = new ControlServer(opts.control, peerUidOf).handle('status', async () => ({
      tunnel: node.status(),
    }));
    try {
      await control.listen();
    } catch (err) {
      await node.close();
      throw err;
    }
  }
  logger.info({ event: 'tunnel_started', name: cfg.name, role: cfg.role, pid: process.pid });
  // systemd (ipdeadgate-tunnel@.service, Type=notify): ready once listeners are bound.
  service.notify('READY=1', `STATUS=tunnel ${cfg.role} ${cfg.name}`, `MAINPID=${process.pid}`);
  const stopWatchdog = service.startWatchdog();
  return new Promise<number>((resolve) => {
    const stop = (): void => {
      service.notify('STOPPING=1');
      stopWatchdog();
      // Bounded shutdown: links and sessions are closed at once; whatever still lingers
      // (a TLS close_notify to a dead peer) gets 3 s.
      setTimeout(() => process.exit(process.exitCode ?? 0), 3000).unref();
      void (async () => {
        await node.close();
        await control?.close();
        logger.info({ event: 'tunnel_stopped', name: cfg.name });
        resolve(0);
      })();
    };
    // SIGHUP: reload the file. A bad file (or a change that needs a restart) is refused
    // with an event and the running config stays; sessions the change does not touch go on.
    let reloading = Promise.resolve();
    const reload = (): void => {
      reloading = reloading.then(async () => {
        service.notify('RELOADING=1');
        try {
          const next = await loadTunnelConfig(opts.config);
          loadTls(next.tls); // the files as a start would check them
          const changed = await node.reload(next);
          logger.info({ event: 'config_reloaded', file: opts.config, changed });
        } catch (err) {
          logger.error({
            event: 'config_refused',
            file: opts.config,
            error: (err as Error).message,
            note: 'the running config stays',
          });
        }
        service.notify('READY=1');
      });
    };
    process.on('SIGHUP', reload);
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}
