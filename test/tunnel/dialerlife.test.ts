// The dialer state machine (src/tunnel/dialerlife.ts) on its own, with a fake clock and a host that
// records what the machine asks of the world: a failed dial backs off and redials, the connect
// bound and the backoff's bounds, a link's life, close from every state, and an unexpected
// (state, event) pair counted and reported.
import { strict as assert } from 'node:assert';
import {
  backoffDelay,
  CONNECT_TIMEOUT_MS,
  DialerLife,
  type DialedLink,
  type DialerEventType,
  type DialerLifeHost,
  type DialerState,
} from '../../src/tunnel/dialerlife';
import type { LinkRefusal } from '../../src/tunnel/linklife';
import { FakeClock } from '../doubles';

class FakeLink implements DialedLink {
  closes = 0;
  /** What the link does when closed: a real Link reports its end (src/tunnel/link.ts). */
  onClose: (() => void) | undefined;
  close(): void {
    this.closes++;
    this.onClose?.();
  }
}

class Host implements DialerLifeHost<FakeLink> {
  readonly calls: string[] = [];
  readonly address = '198.18.0.2:4443';
  readonly links: FakeLink[] = [];
  jitter = 0;
  onLink: ((link: FakeLink) => void) | undefined;
  constructor(readonly clock: FakeClock) {}
  random(): number {
    return this.jitter;
  }
  openDial(): void {
    this.calls.push('dial');
  }
  makeLink(): FakeLink {
    this.calls.push('makeLink');
    const link = new FakeLink();
    this.links.push(link);
    return link;
  }
  destroySocket(): void {
    this.calls.push('destroySocket');
  }
  freeContext(): void {
    this.calls.push('freeContext');
  }
  announceLink(link: FakeLink): void {
    this.calls.push('link');
    this.onLink?.(link);
  }
  announceDialFailure(reason: LinkRefusal, detail: string, code: string | undefined): void {
    this.calls.push(`failure ${reason} ${code ?? '-'} ${detail}`);
  }
  announceInvalid(state: DialerState, event: DialerEventType): void {
    this.calls.push(`invalid ${state} ${event}`);
  }
}

function setup(): { clock: FakeClock; host: Host; life: DialerLife<FakeLink> } {
  const clock = new FakeClock();
  const host = new Host(clock);
  return { clock, host, life: new DialerLife(host) };
}

const refusedDial = {
  type: 'failed',
  reason: 'tls_error',
  detail: 'connect ECONNREFUSED 198.18.0.2:4443',
  code: 'ECONNREFUSED',
} as const;

/** Drive `life` to `state` from a fresh machine. */
async function reach(t: ReturnType<typeof setup>, state: DialerState): Promise<void> {
  if (state === 'idle') return;
  t.life.dispatch({ type: 'start' });
  if (state === 'backoff') t.life.dispatch(refusedDial);
  if (state === 'linked') {
    t.life.dispatch({ type: 'connected' });
    t.life.dispatch({ type: 'link_up' });
  }
  if (state === 'closed') t.life.dispatch({ type: 'close' });
  assert.equal(t.life.state, state);
  await t.clock.advance(0);
}

describe('tunnel: the dialer state machine', () => {
  it('a failed dial drops its socket, is reported, backs off and redials', async () => {
    const { clock, host, life } = setup();
    assert.equal(life.state, 'idle');
    assert.deepEqual(host.calls, [], 'nothing happens before start');
    life.dispatch({ type: 'start' });
    assert.equal(life.state, 'dialing');
    life.dispatch(refusedDial);
    assert.equal(life.state, 'backoff');
    assert.equal(life.lastError, refusedDial.detail);
    assert.equal(life.reconnects, 1);
    assert.equal(life.attempts, 1);
    assert.deepEqual(host.calls, [
      'dial',
      'destroySocket',
      'failure tls_error ECONNREFUSED connect ECONNREFUSED 198.18.0.2:4443',
    ]);
    await clock.advance(124); // jitter 0: the first delay is 250 / 2 ms
    assert.equal(life.state, 'backoff');
    await clock.advance(1);
    assert.equal(life.state, 'dialing');
    assert.equal(host.calls.filter((c) => c === 'dial').length, 2);

    // A refusal with a reason's name (the server's certificate) is reported as such.
    life.dispatch({ type: 'failed', reason: 'unknown_ca', detail: 'unable to verify', code: 'X' });
    assert.equal(life.state, 'backoff');
    assert.equal(host.calls.at(-1), 'failure unknown_ca X unable to verify');
    assert.equal(life.reconnects, 2);
    assert.equal(life.invalid, 0);
  });

  it(`dialing is bounded by ${CONNECT_TIMEOUT_MS} ms, then the dial fails with ETIMEDOUT`, async () => {
    const { clock, host, life } = setup();
    life.dispatch({ type: 'start' });
    await clock.advance(CONNECT_TIMEOUT_MS - 1);
    assert.equal(life.state, 'dialing');
    await clock.advance(1);
    assert.equal(life.state, 'backoff');
    assert.equal(life.lastError, 'connecting to 198.18.0.2:4443 timed out');
    assert.deepEqual(host.calls, [
      'dial',
      'destroySocket',
      'failure tls_error ETIMEDOUT connecting to 198.18.0.2:4443 timed out',
    ]);
    assert.equal(clock.pending(), 1, 'only the backoff timer: the connect timer is gone');
  });

  it('backoff waits [d/2, d], d doubling from 250 ms to the 30 s cap', async () => {
    for (const jitter of [0, 1]) {
      const { clock, host, life } = setup();
      host.jitter = jitter;
      life.dispatch({ type: 'start' });
      const waits: number[] = [];
      for (let attempt = 0; attempt < 10; attempt++) {
        life.dispatch(refusedDial);
        const d = Math.min(30_000, 250 * 2 ** attempt);
        const wait = jitter === 0 ? d / 2 : d;
        assert.equal(
          backoffDelay(attempt, undefined, undefined, () => jitter),
          wait,
        );
        await clock.advance(wait - 1);
        assert.equal(life.state, 'backoff', `attempt ${attempt}: still waiting at ${wait - 1} ms`);
        await clock.advance(1);
        assert.equal(life.state, 'dialing', `attempt ${attempt}: redialed at ${wait} ms`);
        waits.push(wait);
      }
      assert.ok(
        waits.every((w) => w >= 125 && w <= 30_000),
        JSON.stringify(waits),
      );
      assert.equal(waits.at(-1), jitter === 0 ? 15_000 : 30_000, 'capped');
      assert.equal(life.reconnects, 10);
    }
  });

  it('a link that comes up resets the backoff; its end backs off from the base again', async () => {
    const { clock, host, life } = setup();
    life.dispatch({ type: 'start' });
    life.dispatch(refusedDial);
    await clock.advance(125);
    life.dispatch(refusedDial);
    await clock.advance(250);
    assert.equal(life.attempts, 2);
    life.dispatch({ type: 'connected' });
    assert.equal(life.state, 'linked');
    assert.equal(life.current, host.links[0]);
    assert.equal(clock.pending(), 0, 'linked has no bound in time of its own');
    assert.equal(life.attempts, 2, 'a link not up yet does not reset the backoff');
    life.dispatch({ type: 'link_up' });
    assert.equal(life.attempts, 0);
    assert.equal(host.calls.at(-1), 'link');
    life.dispatch({ type: 'link_down', error: new Error('heartbeat lost') });
    assert.equal(life.state, 'backoff');
    assert.equal(life.current, undefined);
    assert.equal(life.lastError, 'heartbeat lost');
    assert.equal(life.reconnects, 3);
    await clock.advance(125);
    assert.equal(life.state, 'dialing', 'from the base delay again');
    assert.equal(life.invalid, 0);
  });

  for (const state of ['idle', 'dialing', 'linked', 'backoff', 'closed'] as const) {
    it(`close from ${state}: timer cancelled, link closed, socket destroyed, context freed once`, async () => {
      const t = setup();
      await reach(t, state);
      const link = t.host.links[0];
      // A real link reports its end as it closes: the machine is mid-dispatch then.
      if (link) link.onClose = () => t.life.dispatch({ type: 'link_down', error: new Error('closed by us') });
      const before = t.host.calls.length;
      t.life.dispatch({ type: 'close' });
      t.life.dispatch({ type: 'close' }); // idempotent
      assert.equal(t.life.state, 'closed');
      assert.equal(t.clock.pending(), 0, 'no timer keeps the process alive');
      assert.equal(t.host.calls.filter((c) => c === 'freeContext').length, 1);
      if (state !== 'closed') assert.deepEqual(t.host.calls.slice(before), ['destroySocket', 'freeContext']);
      if (link) {
        assert.equal(link.closes, 1);
        assert.equal(t.life.current, undefined, 'the closed link is forgotten once it reports its end');
        assert.equal(t.life.lastError, 'closed by us');
      }
      // What was already on its way when it closed has nothing to act on.
      for (const type of ['start', 'connected', 'link_up', 'timer'] as const) t.life.dispatch({ type });
      t.life.dispatch(refusedDial);
      await t.clock.advance(60_000);
      assert.equal(t.life.state, 'closed');
      assert.equal(t.host.calls.filter((c) => c === 'dial').length, state === 'idle' ? 0 : 1);
      assert.equal(t.life.invalid, 0);
    });
  }

  it('closing from inside its own callback is safe: the close waits for the current event', () => {
    const { host, life } = setup();
    host.onLink = () => life.dispatch({ type: 'close' });
    life.dispatch({ type: 'start' });
    life.dispatch({ type: 'connected' });
    life.dispatch({ type: 'link_up' });
    assert.equal(life.state, 'closed');
    assert.equal(host.links[0]!.closes, 1);
    assert.equal(life.attempts, 0);
  });

  it('an unexpected (state, event) pair is counted and reported, and changes nothing', async () => {
    const { clock, host, life } = setup();
    life.dispatch({ type: 'link_up' }); // idle: no link
    life.dispatch({ type: 'start' });
    life.dispatch({ type: 'start' }); // dialing: one dial at a time
    life.dispatch(refusedDial);
    life.dispatch({ type: 'link_down', error: undefined }); // backoff: no link
    assert.equal(life.state, 'backoff');
    assert.equal(life.invalid, 3);
    assert.deepEqual(
      host.calls.filter((c) => c.startsWith('invalid')),
      ['invalid idle link_up', 'invalid dialing start', 'invalid backoff link_down'],
    );
    assert.equal(host.calls.filter((c) => c === 'dial').length, 1);
    await clock.advance(125);
    assert.equal(life.state, 'dialing', 'the backoff went on as before');
  });
});
