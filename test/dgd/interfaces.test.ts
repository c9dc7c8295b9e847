// Interfaces coming and going, over fakes and a fake clock: journal entries and gateways follow
// interface names to new ifindexes, nothing is verified on a link that is down, routes of an
// interface gone longer than interface_wait are dropped. (The same on real kernels: field.test.ts.)
import { FakeClock, MemoryEventLog, MemoryStore } from '../doubles';
import { strict as assert } from 'node:assert';
import { parseConfig } from '../../src/daemon/config';
import { DgdEngine } from '../../src/dgd/engine';
import type { InterfaceInfo } from '../../src/dgd/interfaces';
import type { JournalEntry, KernelRoute } from '../../src/dgd/ports';
import { routeIdentity } from '../../src/dgd/routeplan';
import { FakePorts, route } from './fakes';

const R1 = '198.18.1.1';
const R2 = '198.18.1.2';

function journaled(r: KernelRoute, bootId?: string): JournalEntry {
  return {
    key: routeIdentity(r),
    original: r,
    removed: [`${r.gateway!}%${r.ifindex!}`],
    at: '2026-01-01T00:00:00Z',
    ...(bootId ? { boot_id: bootId } : {}),
  };
}

async function start(opts: {
  routes: KernelRoute[];
  journal?: JournalEntry[];
  links: InterfaceInfo[];
  alive?: string[];
  yaml?: string;
}) {
  const clock = new FakeClock();
  const ports = new FakePorts(clock, opts.routes, () => undefined);
  for (const a of opts.alive ?? []) ports.alive.add(a);
  const store = new MemoryStore();
  store.journal = structuredClone(opts.journal ?? []);
  const log = new MemoryEventLog();
  const config = parseConfig(opts.yaml ?? 'dgd: { slow_poll_interval: 1h }').dgd;
  const engine = new DgdEngine({ config, tables: [254], ports, store, log, clock, bootId: 'boot-now' });
  await engine.setInterfaces(opts.links);
  await engine.start();
  const gateway = (address: string) => engine.status().gateways.find((g) => g.address === address);
  return { clock, ports, store, log, engine, gateway };
}

describe('DGD engine: interfaces come and go', () => {
  it('after a reboot the journal follows interface names to their new ifindexes, never an old index', async () => {
    // Before: lan0 was ifindex 2 and r1's route was withdrawn. Now lan1 has index 2, lan0 has 7.
    const old = route('0.0.0.0/0', R1, 100, { ifindex: 2, ifname: 'lan0' });
    const s = await start({
      routes: [route('0.0.0.0/0', R2, 200, { ifindex: 2, ifname: 'lan1' })],
      journal: [journaled(old, 'boot-before')],
      links: [
        { ifindex: 2, ifname: 'lan1', up: true },
        { ifindex: 7, ifname: 'lan0', up: true },
      ],
      alive: [R2],
    });
    // The boot counts (other fields of the event belong to other features).
    const loaded = s.log.named('journal_loaded')[0]!;
    assert.deepEqual(
      {
        entries: loaded.entries,
        enabled: loaded.enabled,
        this_boot: loaded.this_boot,
        earlier_boot: loaded.earlier_boot,
        unknown_boot: loaded.unknown_boot,
      },
      { entries: 1, enabled: true, this_boot: 0, earlier_boot: 1, unknown_boot: 0 },
    );
    assert.deepEqual(s.log.named('interface_renumbered')[0]?.ifindex, 7);
    const entry = s.store.journal[0]!;
    assert.equal(entry.original.ifindex, 7);
    assert.deepEqual(entry.removed, [`${R1}%7`]);
    const g = s.gateway(R1)!;
    assert.deepEqual([g.interface, g.ifindex, g.state, g.link], ['lan0', 7, 'dead', 'up']);
    // The poll at start asks on lan0, and its answer restores the route there.
    s.ports.alive.add(R1);
    await s.clock.advance(1000);
    assert.equal(s.gateway(R1)!.state, 'active');
    const back = s.ports.routes.find((r) => r.gateway === R1)!;
    assert.deepEqual([back.ifindex, back.ifname], [7, 'lan0']);
    assert.ok(s.ports.verifications.every((v) => v.ifname === 'lan0' && v.ifindex === 7));
    await s.engine.stop({ restore: true });
  });

  it('a journal written before boot ids (none recorded) is read by names; an entry naming no interface is dropped, not guessed', async () => {
    const nameless = route('0.0.0.0/0', R1, 100, { ifname: null });
    const named = route('198.18.5.0/24', R1, 100, { ifindex: 3, ifname: 'lan0' });
    const s = await start({
      routes: [route('0.0.0.0/0', R2, 200)],
      journal: [journaled(nameless), journaled(named)],
      links: [{ ifindex: 2, ifname: 'lan0', up: true }],
      alive: [R2],
    });
    assert.equal(s.log.named('route_dropped').length, 1);
    assert.equal(s.log.named('journal_loaded')[0]!.unknown_boot, 1);
    assert.deepEqual(
      s.store.journal.map((e) => [e.original.dst, e.original.ifindex]),
      [['198.18.5.0/24', 2]],
      'the named entry moved to lan0 as it is now',
    );
    assert.equal(s.ports.routes.length, 1, 'nothing restored: r1 is dead');
    await s.engine.stop({ restore: true });
  });

  it('nothing is verified on a link that is down; a dead gateway is polled the moment its link is up', async () => {
    const s = await start({
      routes: [route('0.0.0.0/0', R1, 100), route('0.0.0.0/0', R2, 200)],
      journal: [],
      links: [{ ifindex: 2, ifname: 'lan0', up: true }],
      alive: [R2],
    });
    await s.engine.setInterfaces([{ ifindex: 2, ifname: 'lan0', up: false }]);
    assert.equal(s.gateway(R1)!.link, 'down');
    s.engine.onNeighbour(R1, 2, 'FAILED');
    await s.clock.advance(2000);
    assert.equal(s.ports.verifications.length, 0, 'no verification on a down link');
    assert.equal(s.gateway(R1)!.state, 'active', 'a link going down is no verdict');
    await s.engine.setInterfaces([{ ifindex: 2, ifname: 'lan0', up: true }]);
    s.engine.onNeighbour(R1, 2, 'FAILED');
    await s.clock.advance(2000);
    assert.equal(s.gateway(R1)!.state, 'dead');
    await s.engine.setInterfaces([{ ifindex: 2, ifname: 'lan0', up: false }]);
    s.ports.alive.add(R1);
    await s.clock.advance(5000);
    assert.equal(s.gateway(R1)!.state, 'dead', 'no poll while the link is down');
    await s.engine.setInterfaces([{ ifindex: 2, ifname: 'lan0', up: true }]);
    await s.clock.advance(1000);
    assert.equal(
      s.gateway(R1)!.state,
      'active',
      'polled at once when the link is up (slow_poll_interval is 1h)',
    );
    assert.equal(s.ports.routes.filter((r) => r.gateway === R1).length, 1);
    await s.engine.stop({ restore: true });
  });

  it('routes of an interface gone longer than interface_wait are dropped with an event; off keeps waiting ones', async () => {
    const onLan9 = route('198.18.9.0/24', R1, 100, { ifindex: 9, ifname: 'lan9' });
    const s = await start({
      routes: [route('0.0.0.0/0', R2, 200)],
      journal: [journaled(onLan9)],
      links: [{ ifindex: 2, ifname: 'lan0', up: true }],
      yaml: 'dgd: { slow_poll_interval: 1h, interface_wait: 5s }',
    });
    assert.equal(s.gateway(R1)!.link, 'absent');
    await s.engine.setEnabled(false); // cannot restore onto a missing interface: it waits
    assert.equal(s.store.journal.length, 1);
    const restored = s.log.named('routes_restored').at(-1)!;
    assert.equal((restored.waiting_for_interface as string[]).length, 1);
    await s.clock.advance(4000);
    assert.equal(s.log.named('route_dropped').length, 0);
    await s.clock.advance(1500);
    const dropped = s.log.named('route_dropped');
    assert.equal(dropped.length, 1);
    assert.equal(dropped[0]!.interface, 'lan9');
    assert.equal(s.store.journal.length, 0);
    assert.equal(s.gateway(R1), undefined, 'the gateway of the vanished interface is forgotten');
    await s.engine.stop({ restore: true });
  });
});
