// A bounded TCP flow for the lab: `server PORT` echoes; `client HOST PORT INTERVAL_MS DURATION_MS`
// sends an 8-byte sequence number every INTERVAL_MS for at most DURATION_MS and prints one JSON line
// per echoed number: {"seq":N,"t":epoch_ms}. Bounded in count and time by construction.
import * as net from 'node:net';

function server(port: number): void {
  const srv = net.createServer((s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  srv.listen(port, '::', () => process.stdout.write(JSON.stringify({ listening: port }) + '\n'));
  // A lab server never outlives its lab for long: hard stop after 10 minutes.
  setTimeout(() => process.exit(0), 600_000).unref();
}

function client(host: string, port: number, intervalMs: number, durationMs: number): void {
  const s = net.connect({ host, port });
  const started = Date.now();
  let seq = 0;
  let buf = Buffer.alloc(0);
  s.on('connect', () => {
    process.stdout.write(JSON.stringify({ connected: true, t: Date.now() }) + '\n');
    const timer = setInterval(() => {
      if (Date.now() - started > durationMs) {
        clearInterval(timer);
        s.end();
        return;
      }
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(seq++));
      s.write(b);
    }, intervalMs);
  });
  s.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 8) {
      process.stdout.write(JSON.stringify({ seq: Number(buf.readBigUInt64BE(0)), t: Date.now() }) + '\n');
      buf = buf.subarray(8);
    }
  });
  s.on('error', (e) => process.stdout.write(JSON.stringify({ error: e.message, t: Date.now() }) + '\n'));
  s.on('close', () => process.exit(0));
  setTimeout(() => process.exit(0), durationMs + 5000).unref();
}

const [mode, a, b, c, d] = process.argv.slice(2);
if (mode === 'server') server(Number(a));
else if (mode === 'client') client(a!, Number(b), Number(c ?? 50), Number(d ?? 10_000));
else {
  process.stderr.write('usage: flow server PORT | flow client HOST PORT INTERVAL_MS DURATION_MS\n');
  process.exit(2);
}
