// One direction of a session's bytes on the JavaScript path: a source's data written to one
// destination, as Readable.pipe() does, without pipe()'s per-pipe closures. pipe() makes about ten
// closures, three once() wrappers and a context for every pipe, and a session has two pipes at
// each proxy: with thousands of idle sessions that was a fifth of a session's heap (heap
// snapshots; docs/BENCHMARKS.md). Here the listeners are shared functions that find the other end
// through a property of the stream they are called on.
//
// What a session needs of pipe() is kept: backpressure (the source pauses while the destination's
// buffer is full and resumes on its 'drain'), the source's end passed on (end() on the
// destination: a yamux FIN, a TCP FIN), the flow stopping when the destination finishes or closes,
// corking a socket destination until the loop's check phase (many small writes leave in one
// writev), and undoing it all synchronously (unflow), which leaves the source paused as unpipe()
// does. Errors are not handled here: each session listens for them on both of its ends.
import type { Readable, Writable } from 'node:stream';

const kTo = Symbol('flow.to');
const kFrom = Symbol('flow.from');
const kPaused = Symbol('flow.paused');
const kCorked = Symbol('flow.corked');

interface Source extends Readable {
  [kTo]?: Destination | undefined;
  /** The flow paused the source for backpressure (only such a pause is undone on 'drain'). */
  [kPaused]?: boolean;
}

interface Destination extends Writable {
  [kFrom]?: Source | undefined;
  /** The destination is corked until the check phase. */
  [kCorked]?: boolean;
}

function write(src: Source, dest: Destination, chunk: Buffer): void {
  if (dest.write(chunk)) return;
  src[kPaused] = true;
  src.pause();
}

function onData(this: Source, chunk: Buffer): void {
  const dest = this[kTo];
  if (dest) write(this, dest, chunk);
}

/** TLS hands a link's bytes over one 16 KiB record at a time, each in its own callback. */
function onDataCorked(this: Source, chunk: Buffer): void {
  const dest = this[kTo];
  if (!dest) return;
  if (!dest[kCorked]) {
    dest[kCorked] = true;
    dest.cork();
    setImmediate(uncork, dest);
  }
  write(this, dest, chunk);
}

function uncork(dest: Destination): void {
  if (!dest[kCorked]) return;
  dest[kCorked] = false;
  dest.uncork();
}

function onDrain(this: Destination): void {
  const src = this[kFrom];
  if (!src?.[kPaused]) return;
  src[kPaused] = false;
  src.resume();
}

function onEnd(this: Source): void {
  const dest = this[kTo];
  if (!dest) return;
  unflow(this);
  dest.end();
}

function onDestGone(this: Destination): void {
  const src = this[kFrom];
  if (src) unflow(src);
}

/**
 * Write what `src` reads to `dest` until `src` ends (then end `dest`), `dest` finishes or closes,
 * or unflow(src). `cork`: gather a loop turn's writes into one (a socket fed by a link).
 */
export function flow(src: Readable, dest: Writable, cork = false): void {
  const s = src as Source;
  const d = dest as Destination;
  if (s[kTo] || d[kFrom]) throw new Error('flow: the source or the destination already flows');
  s[kTo] = d;
  d[kFrom] = s;
  d.on('drain', onDrain);
  d.on('finish', onDestGone);
  d.on('close', onDestGone);
  if (src.readableEnded) {
    process.nextTick(() => onEnd.call(s)); // as pipe(): an ended source still ends its destination
    return;
  }
  src.on('end', onEnd);
  src.on('data', cork ? onDataCorked : onData);
  if (dest.writableNeedDrain) {
    s[kPaused] = true;
    src.pause();
  } else if (!src.readableFlowing) src.resume();
}

/** Stop the flow from `src` (if any), synchronously: `src` is left paused, `dest` uncorked. */
export function unflow(src: Readable): void {
  const s = src as Source;
  const d = s[kTo];
  if (!d) return;
  s[kTo] = undefined;
  d[kFrom] = undefined;
  s[kPaused] = false;
  src.off('data', onData);
  src.off('data', onDataCorked);
  src.off('end', onEnd);
  d.off('drain', onDrain);
  d.off('finish', onDestGone);
  d.off('close', onDestGone);
  uncork(d);
  src.pause();
}

/** Whether `src` flows into something now. */
export function flowing(src: Readable): boolean {
  return (src as Source)[kTo] !== undefined;
}
