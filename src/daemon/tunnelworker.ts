// The tunnel half of `ipdeadgate daemon`, in a process of its own (forked by ./tunnelchild.ts):
// its sockets, descriptors, memory and event loop are not detection's, so a busy or attacked
// tunnel cannot starve a failover, nor a failover the tunnel. It speaks to the daemon over the
// IPC channel only: its events go up to be logged and counted there; status, reload and close
// come down. It ends when the channel closes (the daemon is gone), never outliving it.
import { TunnelNode } from '../tunnel/node';
import type { TunnelConfig } from '../tunnel/config';
import type { EventLog } from '../util/eventlog';
import type { ToTunnel, FromTunnel } from './tunnelchild';

const STATUS_EVERY_MS = 1000;

function send(msg: FromTunnel): void {
  if (process.connected) process.send!(msg);
}

const events: EventLog = {
  event: (name, fields = {}, level = 'info') => send({ type: 'event', name, fields, level }),
};

let node: TunnelNode | null = null;
let closing = false;

async function close(code: number): Promise<never> {
  closing = true;
  // Bounded: whatever lingers after the links and sessions are closed gets 3 s.
  setTimeout(() => process.exit(code), 3000).unref();
  await node?.close().catch(() => undefined);
  process.exit(code);
}

async function onMessage(msg: ToTunnel): Promise<void> {
  switch (msg.type) {
    case 'start':
      try {
        node = await TunnelNode.start(msg.config as TunnelConfig, { events });
      } catch (err) {
        const e = err as { code?: unknown; message?: unknown };
        send({
          type: 'start_failed',
          code: typeof e.code === 'string' ? e.code : 'ERR_TUNNEL',
          message: String(e.message ?? err),
        });
        return close(1);
      }
      send({ type: 'started', status: node.status() });
      setInterval(() => {
        if (node && !closing) send({ type: 'status', status: node.status() });
      }, STATUS_EVERY_MS).unref();
      return;
    case 'reload':
      if (!node) return;
      try {
        const changed = await node.reload(msg.config as TunnelConfig);
        send({ type: 'reloaded', id: msg.id, changed, status: node.status() });
      } catch (err) {
        send({ type: 'reload_failed', id: msg.id, message: (err as Error).message });
      }
      return;
    case 'close':
      return close(0);
  }
}

process.on('message', (msg: ToTunnel) => void onMessage(msg));
// The daemon went away (however): the tunnel goes too.
process.on('disconnect', () => void close(0));
// Signals are the daemon's to handle: systemd's SIGTERM reaches the whole cgroup, a Ctrl-C the
// whole process group, and the daemon closes the tunnel in its own order ('close' above).
process.on('SIGTERM', () => undefined);
process.on('SIGINT', () => undefined);
process.on('SIGHUP', () => undefined);
