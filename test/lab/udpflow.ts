// A one-port UDP request/response flow for the lab (a VPN, VoIP or game flow keeps its port):
// `server PORT` echoes every datagram (both families); `client HOST PORT SPORT INTERVAL_MS
// DURATION_MS` sends a sequence number from the fixed source port SPORT every INTERVAL_MS and prints
// one JSON line per answer: {"seq":N,"t":epoch_ms}. Bounded in count and time by construction.
// Imported (not run), it exports the helpers that start both in lab hosts.
import type { ChildProcess } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as path from 'node:path';
import { eachJsonLine } from './flows';
import { REPO_ROOT, type Lab } from './lab';

export const UDPFLOW_SCRIPT = path.join(REPO_ROOT, 'dist', 'test', 'lab', 'udpflow.js');

function server(port: number): void {
  for (const type of ['udp4', 'udp6'] as const) {
    const s = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
    s.on('message', (msg, rinfo) => s.send(msg, rinfo.port, rinfo.address));
    s.on('error', () => undefined);
    s.bind(port, type === 'udp4' ? '0.0.0.0' : '::', () =>
      process.stdout.write(JSON.stringify({ listening: port, type }) + '\n'),
    );
  }
  setTimeout(() => process.exit(0), 600_000).unref();
}

function client(host: string, port: number, sport: number, intervalMs: number, durationMs: number): void {
  const s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  const started = Date.now();
  let seq = 0;
  s.on('message', (msg) => {
    if (msg.length >= 8)
      process.stdout.write(JSON.stringify({ seq: Number(msg.readBigUInt64BE(0)), t: Date.now() }) + '\n');
  });
  // Errors (an ICMP unreachable) are reported, never fatal: the flow keeps its port and goes on.
  s.on('error', (e) => process.stdout.write(JSON.stringify({ error: e.message, t: Date.now() }) + '\n'));
  s.bind(sport, () => {
    const timer = setInterval(() => {
      if (Date.now() - started > durationMs) {
        clearInterval(timer);
        s.close();
        return;
      }
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(seq++));
      s.send(b, port, host);
    }, intervalMs);
  });
  setTimeout(() => process.exit(0), durationMs + 2000).unref();
}

export interface UdpFlow {
  child: ChildProcess;
  /** Each answer: its sequence number and arrival time (epoch ms). */
  answers: { seq: number; t: number }[];
  errors: string[];
}

/** The UDP echo server in `host`; resolves once both sockets are bound. */
export async function startUdpServer(lab: Lab, host: string, port: number): Promise<ChildProcess> {
  const child = lab.spawn(host, [process.execPath, UDPFLOW_SCRIPT, 'server', String(port)]);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      out += c;
      if (out.includes('"udp4"') && out.includes('"udp6"')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the UDP server in ${host} exited (${code})`)));
  });
  return child;
}

/** A one-port UDP flow from `host` (source port `sport`) to dst:port. */
export function startUdpFlow(
  lab: Lab,
  host: string,
  dst: string,
  port: number,
  sport: number,
  opts: { intervalMs?: number; durationMs?: number } = {},
): UdpFlow {
  const child = lab.spawn(host, [
    process.execPath,
    UDPFLOW_SCRIPT,
    'client',
    dst,
    String(port),
    String(sport),
    String(opts.intervalMs ?? 100),
    String(opts.durationMs ?? 20_000),
  ]);
  const flow: UdpFlow = { child, answers: [], errors: [] };
  eachJsonLine<{ seq?: number; t: number; error?: string }>(child, (line) => {
    if (line.seq !== undefined) flow.answers.push({ seq: line.seq, t: line.t });
    if (line.error) flow.errors.push(line.error);
  });
  return flow;
}

if (require.main === module) {
  const [mode, ...a] = process.argv.slice(2);
  if (mode === 'server') server(Number(a[0]));
  else if (mode === 'client') client(a[0]!, Number(a[1]), Number(a[2]), Number(a[3]), Number(a[4]));
  else {
    process.stderr.write('usage: udpflow server PORT | client HOST PORT SPORT INTERVAL_MS DURATION_MS\n');
    process.exit(2);
  }
}
