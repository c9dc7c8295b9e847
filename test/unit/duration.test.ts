import { FakeClock } from '../doubles';
import { strict as assert } from 'node:assert';
import { formatDuration, parseDuration } from '../../src/util/duration';

describe('durations', () => {
  it('parses ms, s, m, h and fractions', () => {
    assert.equal(parseDuration('250ms'), 250);
    assert.equal(parseDuration('2s'), 2000);
    assert.equal(parseDuration('2m'), 120_000);
    assert.equal(parseDuration('1h'), 3_600_000);
    assert.equal(parseDuration('1.5s'), 1500);
  });
  it('rejects text that is not a duration, naming it', () => {
    for (const bad of ['', '2', 'ms', '-1s', '2 days', '1e3ms'])
      assert.throws(
        () => parseDuration(bad),
        (e: Error) => e instanceof RangeError && e.message.includes(`"${bad}"`),
      );
  });
  it('formats for humans', () => {
    assert.equal(formatDuration(250), '250ms');
    assert.equal(formatDuration(2000), '2s');
    assert.equal(formatDuration(120_000), '2m');
  });
});

describe('FakeClock', () => {
  it('fires timers in order only when advanced', async () => {
    const clock = new FakeClock();
    const fired: string[] = [];
    clock.setTimeout(() => fired.push('b'), 200);
    clock.setTimeout(() => fired.push('a'), 100);
    const t = clock.setTimeout(() => fired.push('never'), 150);
    t.cancel();
    await clock.advance(99);
    assert.deepEqual(fired, []);
    await clock.advance(101);
    assert.deepEqual(fired, ['a', 'b']);
    assert.equal(clock.now(), 200);
  });
  it('runs sleeps chained in async code', async () => {
    const clock = new FakeClock();
    const seen: number[] = [];
    const task = (async () => {
      for (let i = 0; i < 3; i++) {
        await clock.sleep(50);
        seen.push(clock.now());
      }
    })();
    await clock.advance(1000);
    await task;
    assert.deepEqual(seen, [50, 100, 150]);
  });
});
