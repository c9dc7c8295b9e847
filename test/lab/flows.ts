// Bounded TCP flows in the lab (test/lab/flow.ts run in a host): an echo server, and a client that
// sends a sequence number every interval and records each echo's arrival time.
import type { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT, type Lab } from './lab';

export const FLOW_SCRIPT = path.join(REPO_ROOT, 'dist', 'test', 'lab', 'flow.js');

export interface FlowClient {
  child: ChildProcess;
  /** Each echo received: its sequence number and arrival time (epoch ms). */
  echoes: { seq: number; t: number }[];
  /** Socket errors the client reported, and when (epoch ms). */
  errors: string[];
  errorsAt: { error: string; t: number }[];
  connectedAt: number | null;
  connected: Promise<void>;
}

/** An echo server on [::]:port in `host` (both families); `listening` resolves once it accepts. */
export function startFlowServer(
  lab: Lab,
  host: string,
  port: number,
): ChildProcess & { listening: Promise<void> } {
  const child = lab.spawn(host, [process.execPath, FLOW_SCRIPT, 'server', String(port)]);
  const listening = new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      out += c;
      if (out.includes('"listening"')) resolve();
    });
    child.once('exit', (code) =>
      reject(new Error(`the flow server in ${host} exited (${code}) before listening`)),
    );
  });
  listening.catch(() => undefined);
  return Object.assign(child, { listening });
}

/** Each line a helper process prints on stdout, parsed as JSON (the flow scripts print one object a line). */
export function eachJsonLine<T>(child: ChildProcess, fn: (line: T) => void): void {
  createInterface({ input: child.stdout! }).on('line', (line) => fn(JSON.parse(line) as T));
}

/** A client in `host` sending to dst:port every intervalMs for durationMs. */
export function startFlowClient(
  lab: Lab,
  host: string,
  dst: string,
  port: number,
  opts: { intervalMs?: number; durationMs?: number } = {},
): FlowClient {
  const child = lab.spawn(host, [
    process.execPath,
    FLOW_SCRIPT,
    'client',
    dst,
    String(port),
    String(opts.intervalMs ?? 50),
    String(opts.durationMs ?? 20_000),
  ]);
  let onConnect: () => void = () => undefined;
  const flow: FlowClient = {
    child,
    echoes: [],
    errors: [],
    errorsAt: [],
    connectedAt: null,
    connected: new Promise<void>((r) => (onConnect = r)),
  };
  eachJsonLine<{ seq?: number; t: number; connected?: boolean; error?: string }>(child, (line) => {
    if (line.connected) {
      flow.connectedAt = line.t;
      onConnect();
    }
    if (line.seq !== undefined) flow.echoes.push({ seq: line.seq, t: line.t });
    if (line.error) {
      flow.errors.push(line.error);
      flow.errorsAt.push({ error: line.error, t: line.t });
    }
  });
  return flow;
}

export interface ConnectAttempt {
  attempt: number;
  ok: boolean;
  /** Epoch ms when the attempt started and when it ended (connected, refused or given up). */
  started: number;
  t: number;
}

/**
 * Short connections from `host` to dst:port: a new one every intervalMs, each given up after
 * timeoutMs (an HTTP client or a health check with a connect timeout), for durationMs.
 */
export function startConnector(
  lab: Lab,
  host: string,
  dst: string,
  port: number,
  opts: { intervalMs?: number; timeoutMs?: number; durationMs?: number } = {},
): { child: ChildProcess; attempts: ConnectAttempt[] } {
  const child = lab.spawn(host, [
    process.execPath,
    FLOW_SCRIPT,
    'connect',
    dst,
    String(port),
    String(opts.intervalMs ?? 200),
    String(opts.timeoutMs ?? 1000),
    String(opts.durationMs ?? 10_000),
  ]);
  const attempts: ConnectAttempt[] = [];
  eachJsonLine<ConnectAttempt>(child, (a) => attempts.push(a));
  return { child, attempts };
}

/** `count` connections from `host` to dst:port that all send every intervalMs; resolves once all are up. */
export async function startManyFlows(
  lab: Lab,
  host: string,
  dst: string,
  port: number,
  count: number,
  opts: { intervalMs?: number; durationMs?: number } = {},
): Promise<ChildProcess> {
  const child = lab.spawn(host, [
    process.execPath,
    FLOW_SCRIPT,
    'many',
    dst,
    String(port),
    String(count),
    String(opts.intervalMs ?? 200),
    String(opts.durationMs ?? 20_000),
  ]);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      out += c;
      if (out.includes('"connected"')) resolve();
    });
    child.once('exit', (code) =>
      reject(new Error(`${count} flows from ${host} exited (${code}) before connecting`)),
    );
  });
  return child;
}
