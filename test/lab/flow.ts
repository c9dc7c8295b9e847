// A bounded TCP flow for the lab: `server PORT` echoes; `client HOST PORT INTERVAL_MS DURATION_MS`
// sends an 8-byte sequence number every INTERVAL_MS for at most DURATION_MS and prints one JSON line
// per echoed number: {"seq":N,"t":epoch_ms}. `connect` makes short connections (a new one every
// interval, each with a connect timeout); `many` holds COUNT connections that all send. Bounded in
// count and time by construction.
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

/**
 * Short connections, as an HTTP client or a health check makes them: a new connection every
 * INTERVAL_MS, each given up after TIMEOUT_MS; one JSON line per attempt when it ends:
 * {"attempt":N,"ok":bool,"started":epoch_ms,"t":epoch_ms}. Connected sockets are closed at once.
 */
function connector(
  host: string,
  port: number,
  intervalMs: number,
  timeoutMs: number,
  durationMs: number,
): void {
  const started = Date.now();
  let attempt = 0;
  const timer = setInterval(() => {
    if (Date.now() - started > durationMs) {
      clearInterval(timer);
      setTimeout(() => process.exit(0), timeoutMs + 100);
      return;
    }
    const n = attempt++;
    const t0 = Date.now();
    const s = net.connect({ host, port });
    let done = false;
    const end = (ok: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(giveUp);
      s.destroy();
      process.stdout.write(JSON.stringify({ attempt: n, ok, started: t0, t: Date.now() }) + '\n');
    };
    const giveUp = setTimeout(() => end(false), timeoutMs);
    s.once('connect', () => end(true));
    s.once('error', () => end(false));
  }, intervalMs);
}

/**
 * COUNT connections at once, each sending 8 bytes every INTERVAL_MS for DURATION_MS (what many
 * clients of one server look like). Prints {"connected":COUNT} once all are up.
 */
function many(host: string, port: number, count: number, intervalMs: number, durationMs: number): void {
  let up = 0;
  const sockets: net.Socket[] = [];
  for (let i = 0; i < count; i++) {
    const s = net.connect({ host, port });
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    s.once('connect', () => {
      if (++up === count) process.stdout.write(JSON.stringify({ connected: count, t: Date.now() }) + '\n');
    });
    sockets.push(s);
  }
  const timer = setInterval(() => {
    for (const s of sockets) if (!s.destroyed && s.writable) s.write(Buffer.alloc(8));
  }, intervalMs);
  setTimeout(() => {
    clearInterval(timer);
    for (const s of sockets) s.destroy();
    process.exit(0);
  }, durationMs).unref();
}

const [mode, a, b, c, d, e] = process.argv.slice(2);
if (mode === 'server') server(Number(a));
else if (mode === 'client') client(a!, Number(b), Number(c ?? 50), Number(d ?? 10_000));
else if (mode === 'connect')
  connector(a!, Number(b), Number(c ?? 200), Number(d ?? 1000), Number(e ?? 10_000));
else if (mode === 'many') many(a!, Number(b), Number(c ?? 300), Number(d ?? 200), Number(e ?? 10_000));
else {
  process.stderr.write(
    'usage: flow server PORT | flow client HOST PORT INTERVAL_MS DURATION_MS\n' +
      '       flow connect HOST PORT INTERVAL_MS TIMEOUT_MS DURATION_MS | flow many HOST PORT COUNT INTERVAL_MS DURATION_MS\n',
  );
  process.exit(2);
}
