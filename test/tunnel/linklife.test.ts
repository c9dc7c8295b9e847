// The link state machine (src/tunnel/linklife.ts) on its own, with a fake clock and a host that
// records what the machine asks of the world: every transition, each state's entry actions, the
// handshake bound, and an unexpected (state, event) pair counted and reported.
import { strict as assert } from 'node:assert';
import { LinkLife, type LinkLifeHost, type LinkRefusal } from '../../src/tunnel/linklife';
import { FakeClock } from '../doubles';

class Host implements LinkLifeHost {
  readonly calls: string[] = [];
  readonly remote = '198.18.0.2:4443';
  readonly handshakeTimeoutMs = 10_000;
  refuseName: string | undefined;
  constructor(readonly clock: FakeClock) {}
  vetPeer(name: string): { reason: LinkRefusal; detail: string } | undefined {
    return name === this.refuseName
      ? { reason: 'peer_not_allowed', detail: `${name} not allowed` }
      : undefined;
  }
  filterAnnounced(services: Record<string, number>): Record<string, number> {
    const { secret: _drop, ...kept } = services;
    return kept;
  }
  sendBye(reason: LinkRefusal): void {
    this.calls.push(`bye ${reason}`);
  }
  closeAfterFlush(reason: LinkRefusal): void {
    this.calls.push(`closeAfterFlush ${reason}`);
  }
  close(error: Error): void {
    this.calls.push(`close ${error.message}`);
  }
  destroyTransport(): void {
    this.calls.push('destroy');
  }
  announceUp(): void {
    this.calls.push('up');
  }
  announceTell(): void {
    this.calls.push('tell');
  }
  announceRefused(reason: LinkRefusal): void {
    this.calls.push(`refused ${reason}`);
  }
  announceDown(error: Error | undefined): void {
    this.calls.push(`down ${error?.message ?? ''}`);
  }
  announceInvalid(state: string, event: string): void {
    this.calls.push(`invalid ${state} ${event}`);
  }
}

describe('tunnel: the link state machine', () => {
  it('handshake -> up -> down: hello binds the peer, tells update it, the close ends it', () => {
    const clock = new FakeClock();
    const host = new Host(clock);
    const life = new LinkLife(host);
    assert.equal(life.state, 'handshake');
    life.dispatch({ type: 'hello', name: 'gw1', role: 'gateway', services: { web: 0, secret: 1 } });
    assert.equal(life.state, 'up');
    assert.equal(life.peerName, 'gw1');
    assert.deepEqual(life.peerServices, { web: 0 }, 'filtered by the host');
    assert.deepEqual(life.announced, { web: 0, secret: 1 });
    life.dispatch({ type: 'tell', services: { web: 0, db: 2 } });
    assert.deepEqual(life.peerServices, { web: 0, db: 2 });
    life.dispatch({ type: 'rules_changed' });
    life.dispatch({ type: 'closed', error: new Error('link lost') });
    assert.equal(life.state, 'down');
    life.dispatch({ type: 'closed', error: undefined }); // idempotent
    assert.deepEqual(host.calls, ['up', 'tell', 'tell', 'destroy', 'down link lost']);
    assert.equal(life.invalid, 0);
  });

  it('handshake is bounded: no hello within handshake_timeout refuses the link, telling the peer', async () => {
    const clock = new FakeClock();
    const host = new Host(clock);
    const life = new LinkLife(host);
    await clock.advance(9_999);
    assert.equal(life.state, 'handshake');
    await clock.advance(1);
    assert.equal(life.state, 'refusing');
    assert.deepEqual(host.calls, [
      'bye handshake_timeout',
      'refused handshake_timeout',
      'closeAfterFlush handshake_timeout',
    ]);
    life.dispatch({ type: 'hello', name: 'late', role: 'relay', services: {} }); // moot once refusing
    life.dispatch({ type: 'closed', error: undefined });
    assert.equal(life.state, 'down');
    assert.equal(life.invalid, 0);
  });

  it('a hello the host vets out refuses the link; a bye from the peer refuses without a bye back', () => {
    const clock = new FakeClock();
    const host = new Host(clock);
    host.refuseName = 'intruder';
    const a = new LinkLife(host);
    a.dispatch({ type: 'hello', name: 'intruder', role: 'relay', services: {} });
    assert.equal(a.state, 'refusing');
    assert.equal(a.peerName, '', 'a refused name is never bound');
    const b = new LinkLife(host);
    b.dispatch({ type: 'bye', detail: 'the peer refused the link (unknown_ca): ...' });
    b.dispatch({ type: 'refuse', reason: 'name_mismatch', detail: 'second reason', tellPeer: true }); // first stands
    assert.equal(b.state, 'refusing');
    assert.deepEqual(host.calls, [
      'bye peer_not_allowed',
      'refused peer_not_allowed',
      'closeAfterFlush peer_not_allowed',
      'refused refused_by_peer',
      'closeAfterFlush refused_by_peer',
    ]);
  });

  it('a garbled control message closes the link, except once it is refusing', () => {
    const clock = new FakeClock();
    const host = new Host(clock);
    const life = new LinkLife(host);
    life.dispatch({ type: 'garbled', error: new Error('malformed control message') });
    assert.deepEqual(host.calls, ['close malformed control message']);
    life.dispatch({ type: 'refuse', reason: 'peer_not_allowed', detail: 'reload', tellPeer: false });
    life.dispatch({ type: 'garbled', error: new Error('malformed control message') });
    assert.equal(host.calls.filter((c) => c.startsWith('close ')).length, 1);
  });

  it('an unexpected (state, event) pair is counted and reported, never dropped silently', async () => {
    const clock = new FakeClock();
    const host = new Host(clock);
    const life = new LinkLife(host);
    life.dispatch({ type: 'tell', services: { web: 0 } }); // a tell before the hello
    assert.equal(life.invalid, 1);
    assert.equal(life.state, 'handshake', 'the pair changes nothing else');
    assert.deepEqual(life.peerServices, {});
    life.dispatch({ type: 'hello', name: 'gw1', role: 'gateway', services: {} });
    life.dispatch({ type: 'hello', name: 'gw2', role: 'gateway', services: {} }); // a second hello
    assert.equal(life.invalid, 2);
    assert.equal(life.peerName, 'gw1', 'the name is bound once');
    await clock.advance(60_000); // up has no bound in time: the handshake timer was cancelled
    assert.equal(life.state, 'up');
    assert.deepEqual(
      host.calls.filter((c) => c.startsWith('invalid')),
      ['invalid handshake tell', 'invalid up hello'],
    );
  });
});
