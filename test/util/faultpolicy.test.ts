// The process-wide policy for faults nothing handled (src/util/faultpolicy.ts), in a child process:
// a rejection is logged and counted and the process runs on; an uncaught exception stops (as
// SIGTERM would) and exits 70.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const MODULE = path.resolve(__dirname, '..', '..', 'src', 'util', 'faultpolicy.js');

function run(body: string): { code: number | null; lines: string[] } {
  const script = `
    const { installFaultPolicy } = require(${JSON.stringify(MODULE)});
    const say = (x) => process.stdout.write(JSON.stringify(x) + '\\n');
    const p = installFaultPolicy({
      events: { event: (name, fields, level) => say({ name, level, error: fields.error }) },
      stop: async () => { say({ name: 'stopped', counts: p.counts }); },
      graceMs: 2000,
    });
    ${body}
  `;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
  return { code: r.status, lines: r.stdout.trim().split('\n').filter(Boolean) };
}

describe('fault policy: what the process does with a fault nothing handled', () => {
  it('an unhandled rejection is logged and counted; the process runs on', () => {
    const r = run(`
      Promise.reject(new Error('lost continuation'));
      setTimeout(() => { say({ name: 'alive', counts: p.counts }); process.exit(0); }, 100);
    `);
    assert.equal(r.code, 0);
    assert.deepEqual(JSON.parse(r.lines[0]!), {
      name: 'unhandled_rejection',
      level: 'error',
      error: 'lost continuation',
    });
    assert.deepEqual(JSON.parse(r.lines[1]!), {
      name: 'alive',
      counts: { unhandledRejections: 1, uncaughtExceptions: 0 },
    });
  });

  it('an uncaught exception is logged, the process stops as on SIGTERM and exits 70', () => {
    const r = run(`
      setImmediate(() => { throw new Error('half-way'); });
      setTimeout(() => say({ name: 'still running' }), 5000);
    `);
    assert.equal(r.code, 70);
    assert.deepEqual(
      r.lines.map((l) => (JSON.parse(l) as { name: string }).name),
      ['uncaught_exception', 'stopped'],
    );
  });
});
