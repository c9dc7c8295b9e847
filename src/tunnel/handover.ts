// When a bridged session's bytes go from the JavaScript path (./flow.ts) to the native relay
// (./nativebridge.ts): at its bridging (native_relay_after 0), or once it has moved
// native_relay_after bytes, and again after a drain or a timer while something is in flight. The
// session (./sessionlife.ts) keeps its state and makes the switch; this only decides when to try.
import type * as net from 'node:net';
import { flow, unflow } from './flow';
import type { MuxStream } from './muxstream';

/** Bytes a bridged session moves on the JavaScript path before it is handed to the native relay. */
export const RELAY_AFTER_BYTES = 256 * 1024;
/** A session not handed to the native relay when first tried is tried again this often at most... */
const RELAY_RETRIES = 12;
/** ...after a drain, or after this (doubling to 64 times it), while the JavaScript path carries it. */
const RELAY_RETRY_MS = 10;

/** What a session lends the handover. */
export interface HandoverTarget {
  readonly stream: MuxStream;
  /** Tries made so far (the session holds the count: no object per session here). */
  relayTries: number;
  /** Bridged, not relayed yet, relaying allowed, both ends open. */
  handoverDue(local: net.Socket): boolean;
  /** Hand the bytes to the addon now; true when it took them (or the try ended the session). */
  startNativeRelay(local: net.Socket): boolean;
  /** The stream has carried the bytes watchMoved() asked for. */
  movedPast(): void;
}

/**
 * A session just bridged: the addon takes it now (`after` 0), or the JavaScript path carries it
 * until it has moved `after` bytes (undefined: for good, relaying is off).
 */
export function bridgeBytes(s: HandoverTarget, local: net.Socket, after: number | undefined): void {
  if (after === 0 && s.startNativeRelay(local)) return;
  flow(s.stream, local, true); // yamux FIN -> local.end() -> TCP FIN
  if (after === 0) retryHandover(s, local);
  else if (after !== undefined) s.stream.watchMoved(after, s);
}

/**
 * Try the handover again after a drain (a write in flight refuses it) or a doubling timer, a few
 * times. The check and the switch are synchronous: no byte moves between the two paths.
 */
export function retryHandover(s: HandoverTarget, local: net.Socket): void {
  if (s.relayTries >= RELAY_RETRIES) return;
  const delay = RELAY_RETRY_MS * 2 ** Math.min(s.relayTries, 6);
  s.relayTries++;
  const now = (): void => {
    if (!s.handoverDue(local)) return;
    unflow(s.stream);
    if (s.startNativeRelay(local)) return;
    flow(s.stream, local, true);
    retryHandover(s, local);
  };
  const attempt = (): void => {
    clearTimeout(timer);
    s.stream.off('drain', attempt);
    local.off('drain', attempt);
    // A window update's 'drain' comes while its read is handled: the handover waits for its end.
    if (s.stream.inRead) setImmediate(now);
    else now();
  };
  const timer = setTimeout(attempt, delay);
  timer.unref();
  s.stream.once('drain', attempt);
  local.once('drain', attempt);
}
