// Route owners' policy over fakes: which FRR protocols get the filter and which destinations are
// kept; which BIRD protocols are disabled, left alone, re-disabled and enabled; the journal first.
import { strict as assert } from 'node:assert';
import { parseConfig } from '../../src/daemon/config';
import { DgdEngine } from '../../src/dgd/engine';
import { FakeClock, MemoryEventLog, MemoryStore } from '../doubles';
import { FakePorts, route } from './fakes';
import { BirdOwnerAdapter, type BirdPort } from '../../src/dgd/owner-bird';
import { planFrrFilter } from '../../src/dgd/owner-frr';
import { ownerAdapters } from '../../src/dgd/owner-system';
import {
  MemoryOwnerStore,
  RouteOwners,
  ownerOfProtocol,
  type OwnerAdapter,
  type RoutingDaemon,
} from '../../src/dgd/owners';
import type { BirdProtocol, BirdRoute } from '../../src/sys/bird';
import type { FrrRoute } from '../../src/sys/frr';

const R1 = '198.18.1.1';
const R2 = '198.18.1.2';

function frr(prefix: string, protocol: string, distance: number, gws: string[]): FrrRoute {
  return {
    prefix,
    protocol,
    distance,
    metric: 0,
    selected: false,
    installed: false,
    nexthops: gws.map((ip) => ({ ip, interfaceName: 'lan0', active: true, fib: true })),
  };
}

class FakeBird implements BirdPort {
  ops: string[] = [];
  constructor(
    public protos: BirdProtocol[],
    public rts: BirdRoute[],
  ) {}
  async protocols() {
    return this.protos;
  }
  async routes() {
    return this.rts.filter((r) => this.protos.find((p) => p.name === r.protocol)?.state === 'up');
  }
  async disable(p: string) {
    this.ops.push(`disable ${p}`);
    this.protos.find((x) => x.name === p)!.state = 'down';
  }
  async version() {
    return 'BIRD 2.0.12';
  }
  async enable(p: string) {
    this.ops.push(`enable ${p}`);
    this.protos.find((x) => x.name === p)!.state = 'up';
  }
}

const proto = (name: string, kind = 'Static'): BirdProtocol => ({
  name,
  proto: kind,
  table: 'master4',
  state: 'up',
  info: '',
});
const broute = (prefix: string, protocol: string, gateways: string[], pref = 200): BirdRoute => ({
  prefix,
  table: 'master4',
  protocol,
  primary: false,
  preference: pref,
  gateways,
});

describe('route owners', () => {
  it('knows owners by protocol number (rtnetlink.h, rt_protos, FRR zebra/rt_netlink.h)', () => {
    assert.deepEqual([2, 3, 4, 9, 11, 12, 16, 186, 188, 196, 250, null].map(ownerOfProtocol), [
      'kernel',
      'boot',
      'static',
      'ra',
      'frr',
      'bird',
      'dhcp',
      'frr',
      'frr',
      'frr',
      'proto-250',
      'unspec',
    ]);
  });

  it('FRR: filters the protocols with routes through dead gateways; keeps destinations with no alternative', () => {
    const rib = [
      frr('198.18.2.0/24', 'static', 10, [R1]),
      frr('198.18.2.0/24', 'static', 20, [R2]),
      frr('198.18.3.0/24', 'static', 1, [R1, R2]),
      frr('198.18.5.0/24', 'ospf', 110, [R1]),
      frr('198.18.1.0/24', 'connected', 0, []),
    ];
    const none = { name: null, gateways: [], keep: [], protocols: [], foreign: {}, objects: [] };
    assert.deepEqual(planFrrFilter(rib, [R1], true, none), {
      gateways: [R1],
      keep: ['198.18.5.0/24'],
      protocols: ['ospf', 'static'],
    });
    assert.deepEqual(planFrrFilter(rib, [R1], false, none).keep, []);
    // ospf already filtered by the operator's own map: left out.
    assert.deepEqual(planFrrFilter(rib, [R1], true, { ...none, foreign: { ospf: 'MINE' } }).protocols, [
      'static',
    ]);
    assert.deepEqual(planFrrFilter(rib, [], true, none), { gateways: [], keep: [], protocols: [] });
  });

  it('BIRD: disables only protocols whose routes all go through dead gateways, journal first; enables exactly those on revival', async () => {
    const bird = new FakeBird(
      [proto('kernel1', 'Kernel'), proto('via_r1'), proto('via_r2'), proto('mixed'), proto('only_r1')],
      [
        broute('198.18.2.0/24', 'via_r1', [R1]),
        broute('198.18.2.0/24', 'via_r2', [R2], 100),
        broute('198.18.4.0/24', 'mixed', [R1]),
        broute('198.18.6.0/24', 'mixed', [R2]),
        broute('198.18.7.0/24', 'only_r1', [R1]),
        broute('198.18.9.0/24', 'kernel1', [R1]),
      ],
    );
    const adapter = new BirdOwnerAdapter(bird);
    const journal: unknown[] = [];
    const persist = async (s: unknown) => {
      journal.push(structuredClone(s));
      bird.ops.push('journal');
    };
    const out = await adapter.converge([R1], { keepLastRoute: true, previous: null, persist });
    assert.deepEqual(bird.ops, ['journal', 'disable via_r1']);
    assert.deepEqual(out.kept, ['198.18.7.0/24']);
    assert.equal(out.problems.length, 1);
    assert.match(out.problems[0]!, /mixed also carries routes through 198\.18\.1\.2/);
    assert.deepEqual(out.state, { disabled: { via_r1: [R1] } });
    // Someone enables it again while R1 is still dead: disabled again.
    await bird.enable('via_r1');
    bird.ops = [];
    const again = await adapter.converge([R1], { keepLastRoute: true, previous: out.state, persist });
    assert.deepEqual(bird.ops, ['journal', 'disable via_r1']);
    // Revival: exactly what was disabled is enabled.
    bird.ops = [];
    const back = await adapter.converge([], { keepLastRoute: true, previous: again.state, persist });
    assert.deepEqual(bird.ops, ['enable via_r1']);
    assert.deepEqual(back.state, { disabled: {} });
  });

  it('RouteOwners: told per daemon, journaled, undone by revival and by restoreAll; a failing adapter is an error event, not a crash', async () => {
    const calls: string[][] = [];
    let fail = false;
    const fake: OwnerAdapter = {
      owner: 'frr',
      async converge(dead, opts) {
        if (fail) throw new Error('vtysh: failed to connect to any daemons');
        await opts.persist({ gateways: dead });
        calls.push(dead);
        return {
          state: { gateways: dead },
          changed: true,
          applied: dead.map((d) => `deny ${d}`),
          kept: [],
          problems: [],
        };
      },
    };
    const store = new MemoryOwnerStore();
    const events: string[] = [];
    const owners = new RouteOwners(new Map([['frr', fake]]), store, { event: (n) => events.push(n) }, true);
    assert.equal(owners.adapterFor(196), 'frr');
    assert.equal(owners.adapterFor(12), null, 'BIRD is not configured');
    assert.equal(owners.adapterFor(16), null);
    await owners.markDead('frr', `${R1}%lan0`, 'test');
    assert.deepEqual(calls, [[R1]]);
    assert.deepEqual(store.journal!.owners.frr!.dead, [`${R1}%lan0`]);
    await owners.markAlive(`${R1}%lan0`, 'revived');
    assert.deepEqual(calls.at(-1), []);
    assert.deepEqual(store.journal!.owners, {});
    await owners.markDead('frr', `${R2}%lan0`, 'test');
    fail = true;
    await owners.markDead('frr', `${R1}%lan0`, 'test');
    assert.equal(owners.status()[0]!.last_error, 'vtysh: failed to connect to any daemons');
    assert.ok(events.includes('error'));
    // The slow poll retries a daemon that could not be told.
    fail = false;
    await owners.retryFailed('slow poll');
    assert.deepEqual(calls.at(-1), [R1, R2]);
    assert.equal(owners.status()[0]!.last_error, null);
    await owners.restoreAll('off');
    assert.deepEqual(calls.at(-1), []);
  });

  it('RouteOwners: at start each daemon is asked its version; one that does not answer is an owner_unreachable event and shows in status', async () => {
    const ok: OwnerAdapter = {
      owner: 'bird',
      check: async () => 'BIRD 2.0.12',
      converge: async () => ({ state: null, changed: false, applied: [], kept: [], problems: [] }),
    };
    const down: OwnerAdapter = {
      owner: 'frr',
      check: async () => {
        throw new Error("vtysh -c 'show version': failed to connect to any daemons");
      },
      converge: async () => ({ state: null, changed: false, applied: [], kept: [], problems: [] }),
    };
    const log = new MemoryEventLog();
    const owners = new RouteOwners(
      new Map<RoutingDaemon, OwnerAdapter>([
        ['bird', ok],
        ['frr', down],
      ]),
      new MemoryOwnerStore(),
      log,
      true,
    );
    await owners.checkAll();
    assert.deepEqual(log.named('owner_ready'), [
      { event: 'owner_ready', level: 'info', owner: 'bird', version: 'BIRD 2.0.12', mode: 'configured' },
    ]);
    assert.equal(log.named('owner_unreachable')[0]!.owner, 'frr');
    assert.match(String(owners.status().find((o) => o.owner === 'frr')!.last_error), /failed to connect/);
  });

  it('dgd.owners: FRR and BIRD are found unless set to false; a configured one is used at once', () => {
    const cfg = (y: string) => parseConfig(y).dgd.owners;
    const kinds = (y: string) =>
      [...ownerAdapters(cfg(y))].map(([o, a]) => `${o}:${a.auto ? 'found' : 'configured'}`);
    assert.deepEqual(kinds('dgd: {}\n'), ['frr:found', 'bird:found']);
    assert.deepEqual(kinds('dgd:\n  owners:\n    frr: false\n'), ['bird:found']);
    assert.deepEqual(kinds('dgd:\n  owners:\n    frr:\n    bird: false\n'), ['frr:configured']);
    assert.throws(
      () => cfg('dgd:\n  owners:\n    frr: true\n'),
      /dgd\.owners\.frr: must be false \(never tell FRR\) or a section/,
    );
    assert.throws(
      () => cfg('dgd:\n  owners:\n    frr:\n      vtysh: 5\n'),
      /dgd\.owners\.frr: vtysh: Expected string/,
    );
  });

  it('RouteOwners: a found daemon is used only once it answers; until then its routes are unprotected, in status with the reason and what to set', async () => {
    let answering = false;
    const told: string[][] = [];
    const found: OwnerAdapter = {
      owner: 'frr',
      auto: true,
      check: async () => {
        if (!answering) throw new Error('vtysh: failed to connect to any daemons');
        return 'FRRouting 10.3';
      },
      converge: async (dead) => {
        told.push(dead);
        return { state: null, changed: false, applied: [], kept: [], problems: [] };
      },
    };
    const log = new MemoryEventLog();
    const owners = new RouteOwners(new Map([['frr', found]]), new MemoryOwnerStore(), log, true);
    await owners.checkAll();
    // Not installed or not reachable: no warning by itself (most hosts have no FRR) ...
    assert.equal(log.named('owner_unreachable').length, 0);
    assert.equal(owners.adapterFor(196), null, 'not used while it does not answer');
    assert.deepEqual(owners.status([]), [], 'nothing to show without its routes');
    // ... but its routes are unprotected, and status says which, why and what to set.
    const routes = [
      { dst: '198.18.2.0/24', protocol: 196 },
      { dst: '198.18.3.0/24', protocol: 4 },
    ];
    const st = owners.status(routes, (r) => r.dst);
    assert.equal(st.length, 1);
    assert.equal(st[0]!.mode, 'unreachable');
    assert.deepEqual(st[0]!.unprotected_routes, ['198.18.2.0/24']);
    assert.match(String(st[0]!.last_error), /failed to connect/);
    assert.match(String(st[0]!.hint), /frrvty/);
    assert.match(String(st[0]!.hint), /dgd\.owners\.frr: false/);
    // Asked again (not more often than every 10 s); once it answers it is used.
    assert.deepEqual(await owners.recheck(['frr'], Date.now() + 20_000), []);
    answering = true;
    assert.deepEqual(await owners.recheck(['frr'], Date.now()), [], 'asked too recently');
    assert.deepEqual(await owners.recheck(['frr'], Date.now() + 20_000), ['frr']);
    assert.equal(log.named('owner_ready')[0]!.mode, 'found');
    assert.equal(owners.adapterFor(196), 'frr');
    assert.deepEqual(owners.status(routes, (r) => r.dst)[0]!.unprotected_routes, []);
    assert.equal(owners.status(routes, (r) => r.dst)[0]!.mode, 'found');
    await owners.markDead('frr', `${R1}%lan0`, 'test');
    assert.deepEqual(told, [[R1]]);
  });

  it('RouteOwners: a daemon taken out of dgd.owners (SIGHUP) is put back first, with its old adapter', async () => {
    const calls: string[][] = [];
    const fake: OwnerAdapter = {
      owner: 'bird',
      async converge(dead) {
        calls.push(dead);
        return { state: { disabled: dead }, changed: true, applied: [], kept: [], problems: [] };
      },
    };
    const store = new MemoryOwnerStore();
    const owners = new RouteOwners(new Map([['bird', fake]]), store, { event: () => undefined }, true);
    await owners.markDead('bird', `${R1}%lan0`, 'test');
    await owners.configure(new Map(), true);
    assert.deepEqual(calls, [[R1], []]);
    assert.deepEqual(store.journal!.owners, {});
    assert.equal(owners.adapterFor(12), null);
  });
});

describe('the engine with a routing daemon configured (fakes)', () => {
  const SERVER = '198.18.2.10';
  /** A zebra-like adapter over the fake kernel: told R1 is dead, it swaps its route for the backup. */
  function zebraLike(ports: FakePorts, onConverge: (dead: string[]) => void): OwnerAdapter {
    const viaR1 = route('0.0.0.0/0', R1, 20, { protocol: 196 });
    const viaR2 = route('0.0.0.0/0', R2, 20, { protocol: 196 });
    return {
      owner: 'frr',
      async converge(dead, opts) {
        await opts.persist({ gateways: dead });
        ports.routes = ports.routes.filter((r) => r.dst !== '0.0.0.0/0');
        ports.routes.push(dead.includes(R1) ? viaR2 : viaR1);
        onConverge(dead);
        return { state: { gateways: dead }, changed: true, applied: [], kept: [], problems: [] };
      },
    };
  }

  it("hands the routing daemon's routes to it instead of withdrawing them; a refresh racing the revival does not tell it again", async () => {
    const clock = new FakeClock();
    const ports = new FakePorts(clock, [route('0.0.0.0/0', R1, 20, { protocol: 196 })]);
    ports.alive.add(R2);
    const calls: string[][] = [];
    let engine: DgdEngine | null = null;
    const adapter = zebraLike(ports, (dead) => {
      calls.push(dead);
      // zebra re-installs r1's route as soon as it is told; its route event refreshes the engine
      // while the revival is still being applied (the gateway not yet active).
      if (dead.length === 0) void engine!.refreshRoutes();
    });
    const owners = new RouteOwners(
      new Map([['frr', adapter]]),
      new MemoryOwnerStore(),
      { event: () => undefined },
      true,
    );
    const log = new MemoryEventLog();
    engine = new DgdEngine({
      config: parseConfig('dgd:\n  slow_poll_interval: 2s\n').dgd,
      tables: [254],
      ports,
      store: new MemoryStore(),
      log,
      clock,
      owners,
    });
    await engine.start();
    for (let n = 1; n <= 3; n++) {
      ports.setRetransmitting(SERVER, n);
      await clock.advance(400);
    }
    await clock.advance(1000);
    assert.deepEqual(calls, [[R1]]);
    assert.equal(log.named('routes_withdrawn').flatMap((e) => e.routes as string[]).length, 0);
    assert.equal(log.named('routes_handed_over').length, 1);
    assert.deepEqual(
      ports.routes.map((r) => r.gateway),
      [R2],
      'the routing daemon installed its backup',
    );
    ports.alive.add(R1);
    ports.sockets = [];
    await clock.advance(10_000);
    assert.deepEqual(calls, [[R1], []], 'told once of the death, once of the revival, and no more');
    assert.deepEqual(
      ports.routes.map((r) => r.gateway),
      [R1],
    );
    assert.equal(engine.status().gateways.find((g) => g.address === R1)!.state, 'active');
    await engine.stop({ restore: true });
  });
});
