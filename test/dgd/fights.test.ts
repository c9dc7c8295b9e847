import { strict as assert } from 'node:assert';
import { FightGuard } from '../../src/dgd/fights';
import { FakeClock } from '../../src/util/clock';

describe('fight guard', () => {
  const info = { route: '198.18.2.0/24 via 198.18.1.1', owner: 'zebra', gateway: '198.18.1.1%2' };

  it('allows `limit` re-withdrawals in the window, stops at the next return and says so once', async () => {
    const clock = new FakeClock();
    const g = new FightGuard({ limit: 3, windowMs: 60_000 }, clock);
    for (let i = 1; i <= 3; i++) {
      const v = g.onReturn('k', info);
      assert.deepEqual(v, { act: true, returns: i });
      await clock.advance(1000);
    }
    const stop = g.onReturn('k', info);
    assert.equal(stop.act, false);
    assert.ok(!stop.act && stop.first);
    assert.ok(!stop.act && stop.fight.returns === 4 && stop.fight.owner === 'zebra');
    const again = g.onReturn('k', info);
    assert.ok(!again.act && !again.first, 'one event per fight');
    assert.ok(g.stopped('k'));
    assert.equal(g.fights().length, 1);
  });

  it('returns spread wider than the window are not a fight', async () => {
    const clock = new FakeClock();
    const g = new FightGuard({ limit: 2, windowMs: 10_000 }, clock);
    for (let i = 0; i < 10; i++) {
      assert.equal(g.onReturn('k', info).act, true);
      await clock.advance(6000);
    }
    assert.equal(g.fights().length, 0);
  });

  it('revival of the gateway ends its fights; other gateways keep theirs', () => {
    const clock = new FakeClock();
    const g = new FightGuard({ limit: 0, windowMs: 10_000 }, clock);
    g.onReturn('a', info);
    g.onReturn('b', { ...info, gateway: '198.18.1.2%2' });
    assert.equal(g.fights().length, 2);
    assert.deepEqual(
      g.forgetGateway('198.18.1.1%2').map((f) => f.key),
      ['a'],
    );
    assert.deepEqual(
      g.fights().map((f) => f.key),
      ['b'],
    );
    assert.equal(g.onReturn('a', info).act, false, 'a fresh count (limit 0: the first return stops)');
    g.clear();
    assert.equal(g.fights().length, 0);
  });
});
