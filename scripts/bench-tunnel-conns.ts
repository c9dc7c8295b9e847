// Helpers for scripts/bench-tunnel, run inside lab namespaces. One JSON line per result.
//   echo-server HOST PORT              echo every byte (latency target)
//   hold-server HOST PORT              echo the first byte of each connection, then hold it open
//   latency HOST PORT N                N sequential sessions: connect, 1 byte, its echo, close
//   hold HOST PORT N SECONDS           open N sessions (each answered end to end), print "ready", hold
import * as net from 'node:net';

const [mode, host, portText, ...rest] = process.argv.slice(2);
const port = Number(portText);
const out = (v: unknown): void => void process.stdout.write(JSON.stringify(v) + '\n');
setTimeout(() => process.exit(0), 15 * 60_000).unref(); // bounded life

function server(hold: boolean): void {
  const srv = net.createServer((s) => {
    s.on('error', () => undefined);
    if (hold) s.once('data', (d: Buffer) => s.write(d.subarray(0, 1)));
    else s.pipe(s);
  });
  srv.maxConnections = 50_000;
  srv.listen(port, host, 4096, () => out({ listening: true }));
}

function oneByteSession(keep: boolean): Promise<{ ms: number; sock: net.Socket }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = net.connect({ host: host!, port });
    s.setNoDelay(true);
    s.once('error', reject);
    s.once('connect', () => s.write('x'));
    s.once('data', () => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (!keep) s.destroy();
      resolve({ ms, sock: s });
    });
  });
}

async function latency(n: number): Promise<void> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) ms.push((await oneByteSession(false)).ms);
  ms.sort((a, b) => a - b);
  out({ n, median_ms: ms[Math.floor(n / 2)], p90_ms: ms[Math.floor(n * 0.9)], min_ms: ms[0] });
}

async function hold(n: number, seconds: number): Promise<void> {
  const socks: net.Socket[] = [];
  let next = 0;
  let failed = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      try {
        const { sock } = await oneByteSession(true);
        sock.on('error', () => undefined);
        socks.push(sock);
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: 100 }, worker));
  out({ ready: socks.length, failed });
  await new Promise((r) => setTimeout(r, seconds * 1000));
  for (const s of socks) s.destroy();
  out({ released: socks.length });
}

switch (mode) {
  case 'echo-server':
    server(false);
    break;
  case 'hold-server':
    server(true);
    break;
  case 'latency':
    void latency(Number(rest[0])).then(() => process.exit(0));
    break;
  case 'hold':
    void hold(Number(rest[0]), Number(rest[1])).then(() => process.exit(0));
    break;
  default:
    process.stderr.write(`unknown mode ${mode}\n`);
    process.exit(2);
}
