// Garbage-collector tuning for a process that relays bulk data through the tunnel.
//
// A relay allocates a fresh Buffer for every socket read and every TLS record it decrypts (Node
// gives no way to read an accepted or a TLS server socket into a reused buffer), a few hundred
// MB/s at line rate, while its live heap stays small (about 10 MB). With such a heap, V8's
// heuristics for starting incremental marking fire again right after each full collection: with
// the young generation grown to its maximum (16 MB semi-spaces), the room left under the old
// generation's limit is smaller than the young generation's capacity, which is V8's signal to
// start marking (Heap::IncrementalMarkingLimitReached, src/heap/heap.cc). Measured in
// scripts/bench-tunnel's lab: 20-60 mark-compacts per second per proxy, and a third of the
// proxies' CPU time in marking and sweeping threads competing with the data path for the cores.
//
// Without incremental marking, V8 runs a full collection only when the old generation actually
// reaches its limit (a few per minute under the same load here), as one atomic pause of about
// 10 ms for a heap of this size; young collections are unchanged. The detection loop's timers
// (hundreds of ms) do not notice such pauses.
import * as v8 from 'node:v8';

let applied = false;

/** Whether a node command line sets incremental marking either way (`node --incremental-marking …`). */
export function setsIncrementalMarking(execArgv: readonly string[]): boolean {
  return execArgv.some((arg) => /^--(no-)?incremental[-_]marking(=|$)/.test(arg));
}

/**
 * Turn V8's incremental marking off for this process, once, unless node was started with an
 * explicit `--incremental-marking` or `--no-incremental-marking`: that is how an operator keeps
 * V8's default (`node --incremental-marking bin/ipdeadgate …`). Returns whether it was set now.
 */
export function preferAtomicMarking(execArgv: readonly string[] = process.execArgv): boolean {
  if (applied) return false;
  applied = true;
  if (setsIncrementalMarking(execArgv)) return false;
  v8.setFlagsFromString('--no-incremental-marking');
  return true;
}
