// The engine's state as one machine: on/off and active probing, a revival that a concurrent
// refresh or re-check cannot split, a re-withdrawal that releases flows like the first withdrawal,
// an earlier incident that never slows the next death's detection, and what the socket scan and
// the route table may make a gateway (half-open sockets, router advertisements). Fakes and a fake
// clock; the lab's side is in enginestate-lab.test.ts.
import { FakeClock, MemoryEventLog, MemoryStore } from '../doubles';
import { strict as assert } from 'node:assert';
import { parseConfig } from '../../src/daemon/config';
import { DgdEngine } from '../../src/dgd/engine';
import { newGateway } from '../../src/dgd/gateway';
import { addEvidence } from '../../src/dgd/incident';
import type { KernelRoute, ScannedSocket } from '../../src/dgd/ports';
import { FakePorts, route } from './fakes';

const R1 = '198.18.1.1';
const R2 = '198.18.1.2';
const R1_6 = '2001:db8:1::1';
const R2_6 = '2001:db8:1::2';
const SERVER = '198.18.2.10';

async function setup(routes: KernelRoute[], yaml = '', alive = [R1, R2, R1_6, R2_6]) {
  const clock = new FakeClock();
  const ports = new FakePorts(clock, routes);
  for (const a of alive) ports.alive.add(a);
  const store = new MemoryStore();
  const log = new MemoryEventLog();
  const engine = new DgdEngine({ config: parseConfig(yaml).dgd, tables: [254], ports, store, log, clock });
  await engine.start();
  return { clock, ports, store, log, engine };
}
type S = Awaited<ReturnType<typeof setup>>;

const twoDefaults = () => [route('0.0.0.0/0', R1, 100), route('0.0.0.0/0', R2, 200)];
const dualStack = () => [
  ...twoDefaults(),
  route('::/0', R1_6, 100, { family: 6 }),
  route('::/0', R2_6, 200, { family: 6 }),
];

function state(s: S, address: string): string {
  const g = s.engine.status().gateways.find((x) => x.address === address);
  assert.ok(g, `gateway ${address} known`);
  return g.state;
}

function via(s: S, family: 4 | 6): string[] {
  return s.ports.routes
    .filter((r) => r.family === family)
    .map((r) => r.gateway!)
    .sort();
}

/** Drive a socket through retransmissions 1..n, one per `stepMs`. */
async function retransmit(s: S, dst: string, upTo: number, port = 40000, stepMs = 200): Promise<void> {
  for (let n = 1; n <= upTo; n++) {
    s.ports.setRetransmitting(dst, n, port);
    await s.clock.advance(stepMs);
  }
}

describe('DGD engine state: toggles, revival, re-withdrawal, incidents', () => {
  it('off then on resumes active probing: a silent gateway is declared dead with no traffic at all', async () => {
    const s = await setup(
      twoDefaults(),
      `dgd: { active: [ { gateway: ${R1}, interval: 100ms, misses: 3 } ] }`,
    );
    await s.clock.advance(500);
    await s.engine.setEnabled(false);
    await s.clock.advance(500);
    const whileOff = s.ports.probes.length;
    await s.clock.advance(500);
    assert.equal(s.ports.probes.length, whileOff, 'no probe while off');
    await s.engine.setEnabled(true);
    await s.clock.advance(500);
    assert.ok(s.ports.probes.length > whileOff, 'probing again after on');
    s.ports.alive.delete(R1);
    await s.clock.advance(351);
    assert.equal(state(s, R1), 'dead', 'three missed probes after on are the verdict');
    assert.deepEqual(via(s, 4), [R2]);
    await s.engine.stop({ restore: true });
  });

  it('a revival is one step: a re-check that reads the restored route while the journal is written withdraws nothing', async () => {
    // Dual stack, r1 dies in both families and comes back; meanwhile unrelated routes churn (each
    // change a route event) and a flow keeps retransmitting towards the server (each dump re-checks
    // a dead gateway's routes). The journal write after the restore is slow, as an fsync can be.
    const s = await setup(
      dualStack(),
      'dgd: { slow_poll_interval: 2s, revive_probes: 1, flap_limit: 1000 }',
      [R2, R2_6],
    );
    const save = s.store.saveJournal.bind(s.store);
    s.store.saveJournal = async (entries, groups) => {
      await s.clock.sleep(250);
      await save(entries, groups);
    };
    for (let round = 0; round < 5; round++) {
      s.ports.alive.delete(R1);
      s.ports.alive.delete(R1_6);
      s.engine.onNeighbour(R1, 2, 'FAILED');
      s.engine.onNeighbour(R1_6, 2, 'FAILED');
      await s.clock.advance(1500);
      assert.equal(state(s, R1), 'dead', `round ${round}: r1 dead`);
      assert.equal(state(s, R1_6), 'dead', `round ${round}: r1 (IPv6) dead`);
      s.ports.alive.add(R1);
      s.ports.alive.add(R1_6);
      // Retransmissions through r1 and route churn until well after the poll and the restore.
      for (let t = 0; t < 100; t++) {
        s.ports.setRetransmitting(SERVER, 1 + (t % 2), 40000 + round);
        if (t % 2 === 0) s.ports.routes.push(route(`198.18.${100 + t}.0/24`, R2, 10));
        else s.ports.routes = s.ports.routes.filter((r) => r.dst !== `198.18.${99 + t}.0/24`);
        s.engine.onRoutesChanged();
        await s.clock.advance(25 + (round % 3) * 7);
      }
      s.ports.sockets = [];
      await s.clock.advance(3000);
      assert.equal(state(s, R1), 'active', `round ${round}: r1 alive`);
      assert.equal(state(s, R1_6), 'active', `round ${round}: r1 (IPv6) alive`);
      assert.deepEqual(via(s, 4), [R1, R2], `round ${round}: both IPv4 defaults in the kernel`);
      assert.deepEqual(via(s, 6), [R1_6, R2_6], `round ${round}: both IPv6 defaults in the kernel`);
      assert.equal(s.engine.withdrawnRoutes().length, 0, `round ${round}: nothing journaled`);
    }
    await s.engine.stop({ restore: true });
  });

  for (const [family, r1, r2] of [
    [4, R1, R2],
    [6, R1_6, R2_6],
  ] as const) {
    it(`IPv${family}: a route put back through a dead gateway: withdrawn again and its neighbour entry flushed again (the flows parked in it released)`, async () => {
      const routes = family === 4 ? twoDefaults() : dualStack().slice(2);
      const s = await setup(routes, 'dgd: { slow_poll_interval: 1h }', [r2]);
      s.engine.onNeighbour(r1, 2, 'FAILED');
      await s.clock.advance(1000);
      assert.equal(state(s, r1), 'dead');
      assert.deepEqual(s.ports.flushed, [`${r1}%2`], 'the first withdrawal flushes');
      // Its owner (a DHCP renewal, networkctl reconfigure) puts the route back; a flow sends
      // through it and retransmits.
      await s.ports.addRoute(route(family === 4 ? '0.0.0.0/0' : '::/0', r1, 100, { family, protocol: 16 }));
      const server = family === 4 ? SERVER : '2001:db8:2::10';
      s.ports.setRetransmitting(server, 1, 41000);
      s.engine.onRoutesChanged();
      await s.clock.advance(100);
      assert.deepEqual(via(s, family), [r2], 'withdrawn again');
      assert.deepEqual(s.ports.flushed, [`${r1}%2`, `${r1}%2`], 'the re-withdrawal flushes the entry again');
      assert.ok(s.log.named('neighbour_flushed').length >= 2, 'each flush is an event');
      await s.engine.stop({ restore: true });
    });
  }

  it('a death right after a downstream problem behind the same gateway is verified early, and its trigger logged', async () => {
    const s = await setup(twoDefaults(), 'dgd: { slow_poll_interval: 1h }');
    // A server outage: r1 answers, the problem is beyond it.
    await retransmit(s, SERVER, 5, 40000);
    assert.ok(s.log.named('downstream_problem').length >= 1);
    s.ports.sockets = [];
    await s.clock.advance(3000); // the server is back; the incident's 10 s are not over
    s.ports.alive.delete(R1);
    const at = s.log.events.length;
    await retransmit(s, '198.18.3.10', 2, 40100);
    const after = () => s.log.events.slice(at).map((e) => e.event);
    assert.ok(after().includes('speculative_verify'), `verified early: ${after().join(' ')}`);
    await s.clock.advance(800);
    s.ports.setRetransmitting('198.18.3.10', 3, 40100);
    await s.clock.advance(200);
    assert.equal(state(s, R1), 'dead', 'dead at the threshold, from the early verdict');
    const trig = s.log.events.slice(at).filter((e) => e.event === 'trigger' && e.level !== 'debug');
    assert.equal(trig.length, 1, `the death's trigger is logged, once, above debug: ${after().join(' ')}`);
    await s.engine.stop({ restore: true });
  });
});

function synRecv(i: number, retrans = 3): ScannedSocket {
  return {
    family: 4,
    src: '198.18.1.10',
    srcPort: 80,
    dst: `198.19.${Math.floor(i / 250)}.${i % 250}`,
    dstPort: 1024 + i,
    state: 'SYN-RECV',
    inode: 0,
    timer: 1,
    timerRetransmits: retrans,
    timerExpiresMs: 500,
  };
}

describe('DGD engine: what the socket scan and the route table may make a gateway', () => {
  it('3 000 half-open sockets from spoofed SYNs are no evidence: no lookup, no trigger, no verification', async () => {
    const s = await setup(twoDefaults(), '', [R2]);
    s.ports.sockets = Array.from({ length: 3000 }, (_, i) => synRecv(i));
    s.ports.retransSegs += 3000;
    await s.clock.advance(1000);
    assert.ok(s.ports.dumps.length > 0, 'the scan ran');
    assert.equal(s.ports.lookups.filter((l) => l.dst.startsWith('198.19.')).length, 0, 'no route lookup');
    assert.equal(s.ports.verifications.length, 0);
    assert.deepEqual(s.log.named('trigger'), []);
    assert.equal(state(s, R1), 'active');
    await s.engine.stop({ restore: true });
  });

  it('aggregate evidence costs the same per socket however many there are (linear per scan)', () => {
    let steps = 0;
    /** A Map that counts the entries every walk over it visits. */
    class CountingMap<K, V> extends Map<K, V> {
      override entries(): MapIterator<[K, V]> {
        const it = super.entries();
        return (function* () {
          for (const e of it) {
            steps++;
            yield e;
          }
        })() as unknown as MapIterator<[K, V]>;
      }
      override [Symbol.iterator](): MapIterator<[K, V]> {
        return this.entries();
      }
      override keys(): MapIterator<K> {
        const it = this.entries();
        return (function* () {
          for (const [k] of it) yield k;
        })() as unknown as MapIterator<K>;
      }
      override values(): MapIterator<V> {
        const it = this.entries();
        return (function* () {
          for (const [, v] of it) yield v;
        })() as unknown as MapIterator<V>;
      }
    }
    const cost = (n: number) => {
      const g = newGateway(R1, 2, 'lan0', 'up');
      g.aggregate = new CountingMap();
      steps = 0;
      for (let i = 0; i < n; i++) {
        const sample = { src: 'a', dst: `b${i}`, state: 'ESTABLISHED', retransmits: 2 };
        addEvidence(g, `k${i}`, sample, i / n, 1000);
      }
      assert.equal(g.aggregate.size, n);
      return steps;
    };
    const small = cost(1000);
    const large = cost(3000);
    assert.ok(large <= 3 * small + 10, `3x the sockets cost ${large} steps, 1x ${small}: not linear`);
    // Old evidence still leaves the window.
    const g = newGateway(R1, 2, 'lan0', 'up');
    const sample = { src: 'a', dst: 'b', state: 'ESTABLISHED', retransmits: 2 };
    addEvidence(g, 'old', sample, 0, 1000);
    assert.equal(addEvidence(g, 'new', sample, 2000, 1000), 1, 'the old one left the window');
  });

  it('a route learned from a router advertisement (a forged one, say) adds no tracked gateway', async () => {
    const ra = route('::/0', 'fe80::bad', 1024, { family: 6, protocol: 9 });
    const s = await setup([...twoDefaults(), ra]);
    assert.deepEqual(
      s.engine
        .status()
        .gateways.map((g) => g.address)
        .sort(),
      [R1, R2],
    );
    // The kernel learns another one while running.
    s.ports.routes.push(route('2001:db8:77::/64', 'fe80::bad:2', 1024, { family: 6, protocol: 9 }));
    s.engine.onRoutesChanged();
    await s.clock.advance(100);
    assert.deepEqual(
      s.engine
        .status()
        .gateways.map((g) => g.address)
        .sort(),
      [R1, R2],
    );
    await s.engine.stop({ restore: true });
    // Configured: router_advertisements: true, or the gateway named in dgd.gateways.
    const on = await setup([...twoDefaults(), ra], 'dgd: { router_advertisements: true }');
    assert.ok(on.engine.status().gateways.some((g) => g.address === 'fe80::bad'));
    await on.engine.stop({ restore: true });
    const named = await setup([...twoDefaults(), ra], `dgd: { gateways: [${R1}, 'fe80::bad'] }`);
    assert.ok(named.engine.status().gateways.some((g) => g.address === 'fe80::bad'));
    await named.engine.stop({ restore: true });
  });
});
