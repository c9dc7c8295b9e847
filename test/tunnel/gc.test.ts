// The tunnel's garbage-collector tuning (src/tunnel/gc.ts), each case in a fresh node process: the
// flag is process-wide and applied once.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { setsIncrementalMarking } from '../../src/tunnel/gc';

const gcModule = path.resolve(__dirname, '..', '..', 'src', 'tunnel', 'gc.js');

/** Run preferAtomicMarking() twice in a new node process started with `nodeFlags`; its two results. */
function inChild(nodeFlags: string[]): boolean[] {
  const script = `const { preferAtomicMarking } = require(${JSON.stringify(gcModule)}); console.log(JSON.stringify([preferAtomicMarking(), preferAtomicMarking()]));`;
  return JSON.parse(
    execFileSync(process.execPath, [...nodeFlags, '-e', script], { encoding: 'utf8', timeout: 20_000 }),
  ) as boolean[];
}

describe('tunnel: garbage-collector tuning', () => {
  it('turns incremental marking off once per process', () => {
    assert.deepEqual(inChild([]), [true, false]);
  });

  it('leaves an explicit --incremental-marking or --no-incremental-marking of the operator alone', () => {
    assert.deepEqual(inChild(['--incremental-marking']), [false, false]);
    assert.deepEqual(inChild(['--no-incremental-marking']), [false, false]);
  });

  it('recognises the flag in both spellings and only that flag', () => {
    assert.equal(setsIncrementalMarking(['--incremental_marking']), true);
    assert.equal(setsIncrementalMarking(['--no-incremental-marking']), true);
    assert.equal(
      setsIncrementalMarking(['--incremental-marking-soft-trigger=80', '--max-old-space-size=100']),
      false,
    );
  });
});
