// What rides inside yamux streams: the open header naming the service, the acceptor's answer, and
// the control stream's announcements (TFST's WHO/TELL).
//
// Open request (the first bytes the opener writes, in the same flight as the SYN):
//   u8 magic 0xD7, u8 version 1, u8 hops, u8 name length, name (ASCII, SERVICE_NAME or "@control")
// Answer (the first bytes the acceptor writes):
//   u8 status (0 OK, else a Refusal code), u8 reason length, reason (UTF-8, <= 255 bytes)
// After OK both directions carry the session's bytes untouched. After a refusal the acceptor ends
// its side and the opener resets the stream. Relays forward the request with hops + 1 and pass
// the far end's answer back unchanged; a request past MAX_HOPS is refused (a routing loop).
import type { Readable } from 'node:stream';
import { IpdeadgateError } from '../errors';

export const OPEN_MAGIC = 0xd7;
export const OPEN_VERSION = 1;
export const MAX_HOPS = 8;
export const CONTROL_SERVICE = '@control';

/** Refusal reasons: stable names used in status counters and messages. */
export enum Refusal {
  UnknownService = 1,
  MaxSessions = 2,
  DialFailed = 3,
  NoRoute = 4,
  TooManyHops = 5,
  BadRequest = 6,
  ShuttingDown = 7,
  /** The opener's node may not open this service here (tunnel.peers.NAME.open). */
  NotAllowed = 8,
  /** (On the control stream) the link itself is refused; the reason says why (cert_expired: ...). */
  LinkRefused = 9,
}

export const REFUSAL_NAMES: Record<Refusal, string> = {
  [Refusal.UnknownService]: 'unknown_service',
  [Refusal.MaxSessions]: 'max_sessions',
  [Refusal.DialFailed]: 'dial_failed',
  [Refusal.NoRoute]: 'no_route',
  [Refusal.TooManyHops]: 'too_many_hops',
  [Refusal.BadRequest]: 'bad_request',
  [Refusal.ShuttingDown]: 'shutting_down',
  [Refusal.NotAllowed]: 'not_allowed',
  [Refusal.LinkRefused]: 'link_refused',
};

export function refusalName(code: number): string {
  return REFUSAL_NAMES[code as Refusal] ?? `refusal_${code}`;
}

/** A stream open was refused by the far end (or a relay), with its reason. */
export class RefusedError extends IpdeadgateError {
  constructor(
    readonly refusal: number,
    readonly reason: string,
  ) {
    super('ERR_TUNNEL_REFUSED', `the tunnel refused the session (${refusalName(refusal)}): ${reason}`);
  }
}

export function encodeOpen(service: string, hops = 0): Buffer {
  const name = Buffer.from(service, 'ascii');
  if (name.length === 0 || name.length > 255)
    throw new RangeError(`service name "${service}" must be 1-255 bytes`);
  return Buffer.concat([Buffer.from([OPEN_MAGIC, OPEN_VERSION, hops, name.length]), name]);
}

export function encodeAnswer(status: number, reason = ''): Buffer {
  let r = Buffer.from(reason, 'utf8');
  if (r.length > 255) r = r.subarray(0, 255);
  return Buffer.concat([Buffer.from([status, r.length]), r]);
}

/**
 * Read exactly the bytes `parse` asks for from the start of a stream, then put back what came
 * after them. `need(buf)` returns how many bytes the header needs in total given what is there
 * (or -1 when it is malformed). Rejects on end, error or the time bound.
 */
function readHeader(
  s: Readable,
  need: (buf: Buffer) => number,
  timeoutMs: number,
  what: string,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const done = (err: Error | undefined, header?: Buffer): void => {
      clearTimeout(timer);
      s.off('readable', onReadable);
      s.off('end', onEnd);
      s.off('error', onError);
      s.off('close', onEnd);
      if (err) reject(err);
      else resolve(header!);
    };
    const onReadable = (): void => {
      for (;;) {
        const chunk = s.read() as Buffer | null;
        if (chunk === null) return;
        buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
        const n = need(buf);
        if (n < 0) return done(new IpdeadgateError('ERR_TUNNEL_BAD_HEADER', `malformed ${what}`));
        if (buf.length >= n) {
          if (buf.length > n) s.unshift(buf.subarray(n));
          return done(undefined, buf.subarray(0, n));
        }
      }
    };
    const onEnd = (): void =>
      done(new IpdeadgateError('ERR_TUNNEL_BAD_HEADER', `the stream ended before its ${what}`));
    const onError = (err: Error): void => done(err);
    const timer = setTimeout(
      () => done(new IpdeadgateError('ETIMEDOUT', `no ${what} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    s.on('readable', onReadable);
    s.once('end', onEnd);
    s.once('close', onEnd);
    s.once('error', onError);
    onReadable();
  });
}

export interface OpenRequest {
  service: string;
  hops: number;
}

export async function readOpen(s: Readable, timeoutMs = 10_000): Promise<OpenRequest> {
  const h = await readHeader(
    s,
    (b) => {
      if (b.length >= 1 && b[0] !== OPEN_MAGIC) return -1;
      if (b.length >= 2 && b[1] !== OPEN_VERSION) return -1;
      if (b.length >= 4 && b[3] === 0) return -1;
      return b.length >= 4 ? 4 + b[3]! : 4;
    },
    timeoutMs,
    'service request',
  );
  return { hops: h[2]!, service: h.subarray(4).toString('ascii') };
}

export async function readAnswer(
  s: Readable,
  timeoutMs = 15_000,
): Promise<{ status: number; reason: string }> {
  const h = await readHeader(
    s,
    (b) => (b.length >= 2 ? 2 + b[1]! : 2),
    timeoutMs,
    'answer to the service request',
  );
  return { status: h[0]!, reason: h.subarray(2).toString('utf8') };
}

/** Control stream messages, one JSON object per line. */
export type ControlMessage =
  | { type: 'hello'; name: string; role: string; services: Record<string, number> }
  | { type: 'tell'; services: Record<string, number> }
  | { type: 'bye'; reason: string; detail: string; services?: undefined };
