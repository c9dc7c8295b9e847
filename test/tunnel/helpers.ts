// Shared helpers for the tunnel's unit tests: loopback TCP pairs, hashing, bounded waits.
import { createHash } from 'node:crypto';
import * as net from 'node:net';
import type { Readable } from 'node:stream';
import type { EventLog } from '../../src/util/eventlog';

/** The socket drained or closed (listeners removed either way: a long write loop adds none). */
export function drainedOrClosed(s: net.Socket): Promise<void> {
  return new Promise((r) => {
    const go = (): void => {
      s.off('drain', go).off('close', go);
      r();
    };
    s.on('drain', go).on('close', go);
  });
}

/** A connected pair of TCP sockets on 127.0.0.1: [client (dialer), server (acceptor)]. */
export async function tcpPair(allowHalfOpen = false): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ allowHalfOpen });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect({ port, host: '127.0.0.1', allowHalfOpen });
  await new Promise<void>((r, j) => client.once('connect', r).once('error', j));
  const s = await accepted;
  server.close();
  return [client, s];
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** Read a stream to its end, with a time bound. */
export function readAll(s: Readable, timeoutMs = 20_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const t = setTimeout(() => reject(new Error(`readAll: no end after ${timeoutMs} ms`)), timeoutMs);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('end', () => {
      clearTimeout(t);
      resolve(Buffer.concat(chunks));
    });
    s.once('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
  });
}

/** Resolve with the first error a stream emits (or reject after the bound). */
export function nextError(s: NodeJS.EventEmitter, timeoutMs = 5000): Promise<Error & { code?: string }> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no error within ${timeoutMs} ms`)), timeoutMs);
    s.once('error', (e: Error) => {
      clearTimeout(t);
      resolve(e);
    });
  });
}

export function once<T = unknown>(e: NodeJS.EventEmitter, name: string, timeoutMs = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no '${name}' within ${timeoutMs} ms`)), timeoutMs);
    e.once(name, (v: T) => {
      clearTimeout(t);
      resolve(v);
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}

type Ev = { event: string; level: string } & Record<string, unknown>;

/** An EventLog that keeps every event, for tests that read what a node reported. */
export class Events implements EventLog {
  readonly all: Ev[] = [];
  event(name: string, fields: Record<string, unknown> = {}, level = 'info'): void {
    this.all.push({ event: name, level, ...fields });
  }
  named(name: string): Ev[] {
    return this.all.filter((e) => e.event === name);
  }
}

/** Poll fn every 20 ms until it holds; throws naming `what` after ms. */
export async function until(fn: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
