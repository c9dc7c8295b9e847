// Living with other route owners: routes put back through a dead gateway, the bound on
// fights, nexthop objects and groups. Fakes and a fake clock; the lab tests are in lab.test.ts
// and owners-lab.test.ts.
import { FakeClock, MemoryEventLog, MemoryStore } from '../doubles';
import { strict as assert } from 'node:assert';
import { parseConfig } from '../../src/daemon/config';
import { DgdEngine } from '../../src/dgd/engine';
import type { KernelRoute } from '../../src/dgd/ports';
import { FakePorts, nexthopGroup, nexthopObject, route } from './fakes';

const R1 = '198.18.1.1';
const R2 = '198.18.1.2';
const R3 = '198.18.1.3';
const SERVER = '198.18.2.10';

async function setup(routes: KernelRoute[], yaml = '', alive = [R2]) {
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

/** Retransmissions towards SERVER until r1 is declared dead. */
async function killR1(s: S): Promise<void> {
  for (let n = 1; n <= 3; n++) {
    s.ports.setRetransmitting(SERVER, n);
    await s.clock.advance(400);
  }
  await s.clock.advance(1000);
  assert.equal(s.engine.status().gateways.find((g) => g.address === R1)!.state, 'dead');
}

async function revive(s: S, gateway: string): Promise<void> {
  s.ports.alive.add(gateway);
  s.ports.sockets = [];
  await s.clock.advance(125_000);
}

const dhcpDefault = () => route('0.0.0.0/0', R1, 100, { protocol: 16 });

describe('DGD engine and other route owners', () => {
  it('a route put back through a dead gateway is withdrawn again at its route event, journaled once, restored once', async () => {
    const s = await setup([dhcpDefault(), route('0.0.0.0/0', R2, 200)]);
    await killR1(s);
    assert.deepEqual(
      s.ports.routes.map((r) => r.gateway),
      [R2],
    );
    // The DHCP client renews its lease and puts its default route back, as it was.
    await s.ports.addRoute(dhcpDefault());
    s.engine.onRoutesChanged();
    await s.clock.advance(60); // within one scan interval (200 ms)
    assert.deepEqual(
      s.ports.routes.map((r) => r.gateway),
      [R2],
      'withdrawn again',
    );
    const readded = s.log.named('route_readded');
    assert.equal(readded.length, 1);
    assert.equal(readded[0]!.owner, 'dhcp');
    assert.equal(s.store.journal.length, 1, 'journaled once');
    const st = s.engine.status();
    const r1 = st.gateways.find((g) => g.address === R1)!;
    assert.deepEqual(
      r1.routes.map((r) => [r.state, r.owner]),
      [['withdrawn', 'dhcp']],
      'listed once',
    );
    await revive(s, R1);
    assert.equal(s.log.named('routes_restored').length, 1);
    assert.equal(s.ports.routes.filter((r) => r.gateway === R1).length, 1, 'restored once');
    assert.equal(s.store.journal.length, 0);
    await s.engine.stop({ restore: true });
  });

  it('retransmissions through a dead gateway make the engine look again, even without a route event', async () => {
    const s = await setup([dhcpDefault(), route('0.0.0.0/0', R2, 200)]);
    await killR1(s);
    s.ports.routes.unshift(dhcpDefault()); // back, and its event lost (ENOBUFS, say)
    s.ports.setRetransmitting(SERVER, 1, 40001);
    await s.clock.advance(400);
    assert.deepEqual(
      s.ports.routes.map((r) => r.gateway),
      [R2],
    );
    assert.match(
      String(s.log.named('routes_withdrawn').at(-1)!.reason),
      /retransmissions via a dead gateway/,
    );
    await s.engine.stop({ restore: true });
  });

  it('a route that keeps coming back is withdrawn rewithdraw_limit times, then left with one route_fight event', async () => {
    const s = await setup([dhcpDefault(), route('0.0.0.0/0', R2, 200)], 'dgd:\n  rewithdraw_limit: 3\n');
    await killR1(s);
    for (let i = 0; i < 6; i++) {
      if (!s.ports.routes.some((r) => r.gateway === R1)) await s.ports.addRoute(dhcpDefault());
      s.engine.onRoutesChanged();
      await s.clock.advance(500);
    }
    assert.equal(s.log.named('route_readded').length, 3);
    const fights = s.log.named('route_fight');
    assert.equal(fights.length, 1);
    assert.equal(fights[0]!.owner, 'dhcp');
    assert.ok(
      s.ports.routes.some((r) => r.gateway === R1),
      'left in place',
    );
    const r1 = s.engine.status().gateways.find((g) => g.address === R1)!;
    assert.deepEqual(
      r1.routes.map((r) => r.state),
      ['contested'],
    );
    await revive(s, R1);
    assert.equal(s.ports.routes.filter((r) => r.gateway === R1).length, 1);
    assert.equal(s.store.journal.length, 0);
    await s.engine.stop({ restore: true });
  });

  it('a nexthop group loses its dead member (weights kept) and gets it back; its route is untouched', async () => {
    const grpRoute = {
      ...route('0.0.0.0/0', R1, 100),
      gateway: null,
      ifindex: null,
      nhid: 10,
    } as KernelRoute;
    const single = { ...route('198.18.7.0/24', R1, 0), nhid: 1 } as KernelRoute;
    const s = await setup(
      [grpRoute, single, route('198.18.7.0/24', R2, 10), route('0.0.0.0/0', R2, 200)],
      '',
      [R2, R3],
    );
    s.ports.nexthops = [
      nexthopObject(1, R1),
      nexthopObject(2, R3),
      nexthopGroup(
        10,
        [
          [1, 3],
          [2, 1],
        ],
        11,
      ),
    ];
    await s.engine.refreshRoutes();
    await killR1(s);
    assert.deepEqual(s.ports.nexthops.find((n) => n.id === 10)!.group, [{ id: 2, weight: 1 }]);
    assert.ok(
      s.ports.routes.some((r) => r.nhid === 10),
      'the group route stays',
    );
    assert.ok(!s.ports.routes.some((r) => r.nhid === 1), 'the single-object route is withdrawn');
    const st = s.engine.status();
    assert.equal(st.withdrawn_nexthop_members.length, 1);
    assert.equal(st.withdrawn_nexthop_members[0]!.owner, 'zebra');
    // Its owner puts the member back: taken out again.
    await s.ports.replaceNexthop(
      nexthopGroup(
        10,
        [
          [1, 3],
          [2, 1],
        ],
        11,
      ),
    );
    s.engine.onRoutesChanged();
    await s.clock.advance(60);
    assert.deepEqual(s.ports.nexthops.find((n) => n.id === 10)!.group, [{ id: 2, weight: 1 }]);
    await revive(s, R1);
    assert.deepEqual(s.ports.nexthops.find((n) => n.id === 10)!.group, [
      { id: 1, weight: 3 },
      { id: 2, weight: 1 },
    ]);
    assert.ok(
      s.ports.routes.some((r) => r.nhid === 1),
      'the single-object route is back',
    );
    assert.equal(s.store.groups.length, 0);
    await s.engine.stop({ restore: true });
  });
});

describe('DGD engine: the aggregate trigger and one incident per event', () => {
  it('short connections: stalled SYNs across distinct sockets make the gateway suspect; ARP decides (dead)', async () => {
    const s = await setup([route('0.0.0.0/0', R1, 100), route('0.0.0.0/0', R2, 200)]);
    // A client retries every 200 ms with a 1 s connect timeout: no socket ever retransmits.
    for (let i = 0; i < 5; i++) {
      s.ports.sockets = s.ports.sockets.filter((x) => x.srcPort > 50_000 + i - 5);
      for (const x of s.ports.sockets) x.timerExpiresMs = Math.max(0, x.timerExpiresMs - 200);
      s.ports.setConnecting(SERVER, 50_000 + i, 0);
      await s.clock.advance(200);
    }
    await s.clock.advance(1000);
    const trig = s.log.named('trigger');
    assert.equal(trig.length, 1);
    assert.equal(trig[0]!.reason, 'aggregate');
    assert.ok((trig[0]!.sockets as number) >= 3);
    assert.equal(s.engine.status().gateways.find((g) => g.address === R1)!.state, 'dead');
    await s.engine.stop({ restore: true });
  });

  it('short connections to a dead server behind a live gateway: one downstream verdict, nothing moves', async () => {
    const s = await setup([route('0.0.0.0/0', R1, 100), route('0.0.0.0/0', R2, 200)], '', [R1, R2]);
    for (let i = 0; i < 10; i++) {
      for (const x of s.ports.sockets) x.timerExpiresMs = Math.max(0, x.timerExpiresMs - 200);
      s.ports.setConnecting(SERVER, 50_000 + i, 0);
      await s.clock.advance(200);
    }
    assert.equal(s.log.named('trigger').length, 1);
    assert.equal(s.log.named('downstream_problem').length, 1);
    assert.deepEqual(s.ports.ops, []);
    await s.engine.stop({ restore: true });
  });

  it('many sockets retransmitting to a dead server: one trigger with the count and samples, one verdict; each socket at debug level', async () => {
    const s = await setup([route('0.0.0.0/0', R1, 100), route('0.0.0.0/0', R2, 200)], '', [R1, R2]);
    // 60 sockets cross the threshold over 2 s, a few per scan.
    for (let n = 1; n <= 3; n++)
      for (let i = 0; i < 60; i++) {
        s.ports.setRetransmitting(SERVER, n, 40_000 + i);
        if (i % 6 === 5) await s.clock.advance(100);
      }
    await s.clock.advance(1000);
    const info = s.log.events.filter((e) => e.level !== 'debug');
    assert.equal(info.filter((e) => e.event === 'trigger').length, 1);
    assert.equal(info.filter((e) => e.event === 'downstream_problem').length, 1);
    assert.equal(info.filter((e) => e.event === 'verdict').length, 1);
    const down = s.log.named('downstream_problem')[0]!;
    assert.ok((down.sockets as number) >= 1 && (down.samples as unknown[]).length <= 3);
    assert.equal(s.log.named('trigger_socket').length, 60, 'every socket, at debug level');
    assert.deepEqual(s.ports.ops, []);
    await s.engine.stop({ restore: true });
  });
});

describe('DGD engine: an incident does not hide a later death', () => {
  it('a gateway that answered (a dead server behind it) and then dies is found by the next sockets, and its trigger logged', async () => {
    const s = await setup([route('0.0.0.0/0', R1, 100), route('0.0.0.0/0', R2, 200)], '', [R1, R2]);
    // Old flows to a dead server: an incident, r1 answers.
    for (let n = 1; n <= 3; n++) {
      s.ports.setRetransmitting(SERVER, n, 40_000);
      await s.clock.advance(300);
    }
    await s.clock.advance(500);
    assert.equal(s.log.named('downstream_problem').length, 1);
    // r1 dies 1 s later; short connections through it stall.
    s.ports.alive.delete(R1);
    for (let i = 0; i < 8; i++) {
      for (const x of s.ports.sockets)
        if (x.state === 'SYN-SENT') x.timerExpiresMs = Math.max(0, x.timerExpiresMs - 200);
      s.ports.setConnecting(SERVER, 50_000 + i, 0);
      await s.clock.advance(200);
    }
    await s.clock.advance(1500);
    assert.equal(s.engine.status().gateways.find((g) => g.address === R1)!.state, 'dead');
    // Only r1's incident counts here: connections opened after the switch go through r2 (each
    // socket is looked up by its own key) and, the server being dead, make r2 an incident of its own.
    const info = s.log.events.filter((e) => e.level !== 'debug' && e.gateway === R1);
    assert.equal(
      info.filter((e) => e.event === 'trigger').length,
      2,
      "the incident's trigger, and the death's: a death is news even within an incident",
    );
    assert.equal(info.filter((e) => e.event === 'verdict').length, 2, 'the alive verdict, then the dead one');
    await s.engine.stop({ restore: true });
  });
});

describe('DGD engine: nexthop groups across a reboot', () => {
  it('a group journaled in an earlier boot is dropped with an event, never applied to the new objects of that id', async () => {
    const clock = new FakeClock();
    const ports = new FakePorts(clock, [
      { ...route('0.0.0.0/0', R1, 100), gateway: null, ifindex: null, nhid: 10 } as KernelRoute,
      route('0.0.0.0/0', R2, 200),
    ]);
    ports.alive.add(R1).add(R2).add(R3);
    // After the reboot, group 10 is whatever its owner made of it since.
    ports.nexthops = [
      nexthopObject(1, R1),
      nexthopObject(2, R3),
      nexthopGroup(10, [
        [1, 1],
        [2, 1],
      ]),
    ];
    const store = new MemoryStore();
    const entry = {
      id: 10,
      original: nexthopGroup(
        10,
        [
          [1, 3],
          [2, 1],
        ],
        11,
      ),
      members: { '1': `${R1}%2`, '2': `${R3}%2` },
      removed: [`${R1}%2`],
      at: '2026-01-01T00:00:00.000Z',
    };
    store.groups = [{ ...entry, boot_id: 'boot-before' }];
    const log = new MemoryEventLog();
    const engine = new DgdEngine({
      config: parseConfig('').dgd,
      tables: [254],
      ports,
      store,
      log,
      clock,
      bootId: 'boot-now',
    });
    await engine.start();
    assert.equal(log.named('nexthop_group_dropped').length, 1);
    assert.ok(!ports.ops.some((o) => o.startsWith('replace nexthop')), ports.ops.join(', '));
    assert.equal(store.groups.length, 0);
    await engine.stop({ restore: true });
    assert.deepEqual(ports.nexthops.find((n) => n.id === 10)!.group, [
      { id: 1, weight: 1 },
      { id: 2, weight: 1 },
    ]);
  });
});
