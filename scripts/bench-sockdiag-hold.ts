// Benchmark helper, run inside a lab namespace: holds many established TCP connections for
// scripts/bench-sockdiag. `bench-sockdiag-hold ADDR FIRST_PORT PORTS` listens on ADDR on PORTS ports
// from FIRST_PORT and reads commands on stdin:
//   grow N   open connections to ADDR (round-robin over the ports) until N are established;
//            both ends live in this namespace, so a dump sees 2N sockets. Prints
//            {"connections": N, "sockets": 2N, "ms": ...} or {"error": ...}.
// Nothing is sent on the connections. Bounded: at most 60 000 connections, exits after 20 minutes
// or when stdin closes. The caller raises RLIMIT_NOFILE (prlimit) for the 2 fds per connection.
import * as net from 'node:net';

const MAX_CONNECTIONS = 60_000;
const IN_FLIGHT = 256;

const [addr, firstPortText, portsText] = process.argv.slice(2);
const firstPort = Number(firstPortText);
const portCount = Number(portsText);
if (!addr || !Number.isInteger(firstPort) || !Number.isInteger(portCount) || portCount < 1) {
  process.stderr.write('usage: bench-sockdiag-hold ADDR FIRST_PORT PORTS\n');
  process.exit(2);
}

const emit = (v: unknown): void => void process.stdout.write(JSON.stringify(v) + '\n');
const clients: net.Socket[] = [];
const accepted: net.Socket[] = [];
let failures = 0;

function listen(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const server = net.createServer({ pauseOnConnect: true }, (s) => {
      s.on('error', () => undefined);
      accepted.push(s);
    });
    server.on('error', reject);
    server.listen({ host: addr, port, backlog: 8192 }, resolve);
  });
}

function connectOne(i: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ host: addr, port: firstPort + (i % portCount) });
    s.once('connect', () => {
      s.pause();
      clients.push(s);
      resolve();
    });
    s.once('error', () => {
      failures++;
      s.destroy();
      resolve();
    });
  });
}

async function grow(target: number): Promise<void> {
  const started = performance.now();
  target = Math.min(target, MAX_CONNECTIONS);
  let next = clients.length;
  const worker = async (): Promise<void> => {
    while (next < target && failures < 100) await connectOne(next++);
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  // The accepting side catches up within a few loop turns.
  const deadline = Date.now() + 10_000;
  while (accepted.length < clients.length && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 10));
  if (failures >= 100 || accepted.length < clients.length) {
    emit({ error: `opened ${clients.length} (accepted ${accepted.length}), ${failures} connects failed` });
    return;
  }
  emit({
    connections: clients.length,
    sockets: clients.length + accepted.length,
    ms: Math.round(performance.now() - started),
  });
}

async function main(): Promise<void> {
  for (let p = 0; p < portCount; p++) await listen(firstPort + p);
  emit({ listening: true });
  let buf = '';
  let queue = Promise.resolve();
  process.stdin.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const [cmd, arg] = buf.slice(0, nl).trim().split(/\s+/);
      buf = buf.slice(nl + 1);
      if (cmd === 'grow') queue = queue.then(() => grow(Number(arg)));
    }
  });
  process.stdin.on('end', () => process.exit(0));
  setTimeout(() => process.exit(0), 20 * 60_000).unref();
}

main().catch((err: unknown) => {
  emit({ error: String(err) });
  process.exit(1);
});
