// Conntrack follows the routes (src/dgd/conntrackfollow.ts) against a fake table and fake routes:
// which entries are deleted after a withdrawal and after a restore (those whose source NAT binds
// them to an interface their flow no longer leaves by), which never are (no NAT, a path that did
// not change, no route at all), the key each flow is looked up by, the bound, and the silence when
// conntrack is not loaded. The engine test at the end checks the order: routes first, then entries.
import { FakeClock, MemoryEventLog, MemoryStore } from '../doubles';
import { strict as assert } from 'node:assert';
import { parseConfig } from '../../src/daemon/config';
import {
  ConntrackFollower,
  entryFlowKey,
  multipathPeers,
  type ConntrackFollowSettings,
} from '../../src/dgd/conntrackfollow';
import { DgdEngine } from '../../src/dgd/engine';
import type { FlowKey, GroupJournalEntry, JournalEntry, RouteChoice } from '../../src/dgd/ports';
import { FakeConntrack, FakePorts, ctEntry, multipath, route } from './fakes';

const LAN = 2;
const E0 = 3;
const E1 = 4;
const NAMES: Record<number, string> = { [LAN]: 'lan1', [E0]: 'e0', [E1]: 'e1' };
const HOST = '198.18.10.10';
const GW_LAN = '198.18.10.1';
const E0_ADDR = '198.18.3.10';
const E1_ADDR = '198.18.4.10';
const R1 = '198.18.3.1';
const R2 = '198.18.4.1';
const SERVER = '198.18.2.10';
const R1G = { address: R1, ifindex: E0, ifname: 'e0' };

/** A gateway host: LAN on lan1, uplinks e0 (primary, via r1) and e1 (via r2), each its own subnet. */
class Uplinks {
  e0Up = true;
  lookups: { dst: string; src: string | null; key: FlowKey }[] = [];

  lookupRoute = async (dst: string, src: string | null, key: FlowKey = {}): Promise<RouteChoice> => {
    this.lookups.push({ dst, src, key: { ...key } });
    if (dst === '198.18.9.9') throw Object.assign(new Error('no route'), { code: 'ENETUNREACH' });
    if (dst.startsWith('198.18.10.')) return { gateway: null, ifindex: LAN, ifname: 'lan1' };
    if (dst.startsWith('198.18.3.')) return { gateway: null, ifindex: E0, ifname: 'e0' };
    if (dst.startsWith('198.18.4.')) return { gateway: null, ifindex: E1, ifname: 'e1' };
    return this.e0Up
      ? { gateway: R1, ifindex: E0, ifname: 'e0' }
      : { gateway: R2, ifindex: E1, ifname: 'e1' };
  };
}

function setup(settings: Partial<ConntrackFollowSettings> = {}) {
  const ct = new FakeConntrack();
  ct.addrs = [
    { ifindex: 1, address: '127.0.0.1' },
    { ifindex: LAN, address: GW_LAN },
    { ifindex: E0, address: E0_ADDR },
    { ifindex: E0, address: 'fe80::1' },
    { ifindex: E1, address: E1_ADDR },
  ];
  const up = new Uplinks();
  const log = new MemoryEventLog();
  const peers: Record<string, number[]> = {};
  const follower = new ConntrackFollower({
    ports: ct,
    lookupRoute: up.lookupRoute,
    ifname: (i) => NAMES[i] ?? `if${i}`,
    log,
    clock: new FakeClock(),
    settings: () => ({ follow: true, max_entries: 20_000, ...settings }),
    gatewayInterfaces: () => [E0, E1],
    multipathPeers: (key) => peers[key] ?? [],
  });
  return { ct, up, log, follower, peers };
}

describe('conntrack follows the routes', () => {
  it('after a withdrawal: entries translated to the dead uplink whose flow now leaves by another are deleted, the rest kept', async () => {
    const s = setup();
    const moved = ctEntry(HOST, 40_000, SERVER, 7001, E0_ADDR);
    const moved2 = ctEntry('198.18.10.11', 40_001, SERVER, 443, E0_ADDR);
    const onLink = ctEntry(HOST, 40_002, '198.18.3.77', 53, E0_ADDR); // e0's own subnet: still e0
    const noNat = ctEntry(HOST, 40_003, SERVER, 7001);
    const unroutable = ctEntry(HOST, 40_004, '198.18.9.9', 7001, E0_ADDR);
    const onE1 = ctEntry(HOST, 40_005, SERVER, 7001, E1_ADDR);
    s.ct.entries = [moved, moved2, onLink, noNat, unroutable, onE1];
    s.up.e0Up = false;
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.deepEqual(
      s.ct.dumps,
      [E0_ADDR],
      "only the dead uplink's address (not its link-local one) is dumped",
    );
    assert.deepEqual(s.ct.deleted, [
      `ct delete ${HOST}:40000 -> ${E0_ADDR}`,
      `ct delete 198.18.10.11:40001 -> ${E0_ADDR}`,
    ]);
    const ev = s.log.named('conntrack_followed');
    assert.equal(ev.length, 1);
    assert.deepEqual(
      { ...ev[0], samples: undefined, level: undefined },
      {
        event: 'conntrack_followed',
        gateway: R1,
        interface: 'e0',
        after: 'withdrawal',
        interfaces: ['e0'],
        examined: 4,
        deleted: 2,
        kept: 2,
        truncated: false,
        ms: 0,
        samples: undefined,
        level: undefined,
      },
    );
    assert.deepEqual(ev[0]!.samples, [
      `udp ${HOST}:40000 -> ${SERVER}:7001 (was ${E0_ADDR})`,
      `udp 198.18.10.11:40001 -> ${SERVER}:443 (was ${E0_ADDR})`,
    ]);
    const { last, ...totals } = s.follower.status();
    assert.deepEqual(totals, {
      follow: true,
      available: true,
      follows: 1,
      examined: 4,
      deleted: 2,
      truncated: 0,
    });
    assert.deepEqual(
      { ...last, at: undefined },
      { at: undefined, gateway: R1, after: 'withdrawal', examined: 4, deleted: 2, ms: 0 },
    );
  });

  it('looks a forwarded flow up by its whole key, coming in on the interface towards its source; a local one without', async () => {
    const s = setup();
    const fwd = ctEntry(HOST, 40_000, SERVER, 7001, E0_ADDR, 7);
    const local = ctEntry(GW_LAN, 40_001, SERVER, 7001, E0_ADDR);
    // DNAT'd as well: routed to the translated destination and port (the reply's source).
    const dnat = ctEntry(HOST, 40_002, '198.18.2.99', 80, E0_ADDR);
    dnat.reply.src = SERVER;
    dnat.reply.sport = 8080;
    s.ct.entries = [fwd, local, dnat];
    s.up.e0Up = false;
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.deepEqual(entryFlowKey(fwd), {
      dst: SERVER,
      src: HOST,
      key: { proto: 17, sport: 40_000, dport: 7001, mark: 7 },
    });
    // A batch is looked up together: in any order.
    const flowLookups = s.up.lookups
      .filter((l) => l.src !== null)
      .sort((a, b) => (a.key.sport ?? 0) - (b.key.sport ?? 0));
    assert.deepEqual(flowLookups, [
      { dst: SERVER, src: HOST, key: { proto: 17, sport: 40_000, dport: 7001, mark: 7, iif: LAN } },
      { dst: SERVER, src: GW_LAN, key: { proto: 17, sport: 40_001, dport: 7001 } },
      { dst: SERVER, src: HOST, key: { proto: 17, sport: 40_002, dport: 8080, iif: LAN } },
    ]);
    assert.equal(
      s.up.lookups.filter((l) => l.src === null && l.dst === HOST).length,
      1,
      'the way back to a source is looked up once',
    );
    assert.equal(s.ct.deleted.length, 3);
  });

  it('after a restore: the other uplinks are examined, not the revived one; flows back on it are deleted', async () => {
    const s = setup();
    const back = ctEntry(HOST, 40_000, SERVER, 7001, E1_ADDR);
    const stays = ctEntry(HOST, 40_001, '198.18.4.50', 7001, E1_ADDR); // e1's own subnet
    const onE0 = ctEntry(HOST, 40_002, SERVER, 7001, E0_ADDR);
    s.ct.entries = [back, stays, onE0];
    await s.follower.follow({ after: 'restore', gateway: R1G });
    assert.deepEqual(s.ct.dumps, [E1_ADDR]);
    assert.deepEqual(s.ct.deleted, [`ct delete ${HOST}:40000 -> ${E1_ADDR}`]);
    const ev = s.log.named('conntrack_followed')[0]!;
    assert.equal(ev.after, 'restore');
    assert.deepEqual(ev.interfaces, ['e1']);
    // Every route restored at once (off, stop): every uplink.
    await s.follower.follow({ after: 'restore', gateway: null });
    assert.deepEqual(s.ct.dumps, [E1_ADDR, E0_ADDR, E1_ADDR]);
  });

  it('a withdrawal examines the paths that shared a multipath route with the dead gateway', async () => {
    const s = setup();
    s.peers[`${R1}%${E0}`] = [E0, E1];
    s.ct.entries = [ctEntry(HOST, 40_000, SERVER, 7001, E1_ADDR)];
    s.up.e0Up = false;
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.deepEqual(s.ct.dumps, [E0_ADDR, E1_ADDR]);
    const entries: JournalEntry[] = [
      {
        key: 'k',
        original: multipath(
          '0.0.0.0/0',
          [
            [R1, 1],
            [R2, 1],
          ],
          0,
        ),
        removed: [`${R1}%2`],
        at: '',
      },
      { key: 'k2', original: route('198.18.5.0/24', R1, 0, { ifindex: 9 }), removed: [`${R1}%2`], at: '' },
    ];
    entries[0]!.original.nexthops![1]!.ifindex = 5;
    const groups: GroupJournalEntry[] = [
      {
        id: 10,
        original: {} as GroupJournalEntry['original'],
        members: { '1': `${R1}%2`, '2': `${R2}%6`, '3': null },
        removed: [`${R1}%2`],
        at: '',
      },
    ];
    assert.deepEqual(multipathPeers(`${R1}%2`, entries, groups).sort(), [2, 5, 6]);
    assert.deepEqual(multipathPeers(`${R2}%2`, entries, groups), []);
  });

  it('a host without NAT loses no entry, and nothing is looked up', async () => {
    const s = setup();
    s.ct.entries = [ctEntry(HOST, 40_000, SERVER, 7001), ctEntry(HOST, 40_001, SERVER, 443)];
    s.up.e0Up = false;
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.deepEqual(s.ct.deleted, []);
    assert.deepEqual(s.up.lookups, []);
    assert.equal(s.log.named('conntrack_followed')[0]!.examined, 0);
  });

  it('conntrack not loaded: nothing is asked of the kernel, and it is said once', async () => {
    const s = setup();
    s.ct.count = null;
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    await s.follower.follow({ after: 'restore', gateway: R1G });
    assert.deepEqual(s.ct.dumps, []);
    assert.equal(s.log.named('conntrack_unavailable').length, 1);
    assert.equal(s.log.named('conntrack_followed').length, 0);
    assert.equal(s.follower.status().available, false);
    // An empty table: nothing to do, nothing dumped.
    s.ct.count = 0;
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.deepEqual(s.ct.dumps, []);
  });

  it('dgd.conntrack.follow off: nothing is looked at', async () => {
    const s = setup({ follow: false });
    s.ct.entries = [ctEntry(HOST, 40_000, SERVER, 7001, E0_ADDR)];
    s.up.e0Up = false;
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.deepEqual(s.ct.dumps, []);
    assert.equal(s.ct.entries.length, 1);
    assert.equal(s.follower.status().follow, false);
  });

  it('bounded by max_entries: the rest is left and the event says so; an entry gone meanwhile is no error', async () => {
    const s = setup({ max_entries: 3 });
    for (let i = 0; i < 5; i++) s.ct.entries.push(ctEntry(HOST, 41_000 + i, SERVER, 7001, E0_ADDR));
    s.ct.vanishing.add(41_001);
    s.up.e0Up = false;
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    const ev = s.log.named('conntrack_followed')[0]!;
    assert.equal(ev.examined, 3);
    assert.equal(ev.deleted, 2);
    assert.equal(ev.gone, 1);
    assert.equal(ev.truncated, true);
    assert.equal(s.ct.entries.length, 3);
    assert.equal(s.log.named('error').length, 0);
    assert.equal(s.follower.status().truncated, 1);
  });

  it('a failing table never fails the route change: an error event instead', async () => {
    const s = setup();
    s.ct.natEntries = () => Promise.reject(Object.assign(new Error('EPERM: no'), { code: 'EPERM' }));
    s.ct.entries = [ctEntry(HOST, 40_000, SERVER, 7001, E0_ADDR)];
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.equal(s.log.named('error')[0]!.during, 'conntrack follow (dump)');
    s.ct.addresses = () => Promise.reject(new Error('rtnetlink gone'));
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.equal(s.log.named('error')[1]!.during, 'conntrack follow');
    s.ct.natEntries = () =>
      Promise.reject(Object.assign(new Error('no ctnetlink'), { code: 'EPROTONOSUPPORT' }));
    s.ct.addresses = async () => [{ ifindex: E0, address: E0_ADDR }];
    await s.follower.follow({ after: 'withdrawal', gateway: R1G });
    assert.equal(s.log.named('conntrack_unavailable').length, 1);
  });
});

describe('conntrack follows the routes: in the engine', () => {
  it('a withdrawal deletes the stranded entries after the routes changed, a restore the ones that moved back', async () => {
    const clock = new FakeClock();
    const order: string[] = [];
    const e0 = { ifindex: E0, ifname: 'e0' };
    const e1 = { ifindex: E1, ifname: 'e1' };
    const ports = new FakePorts(
      clock,
      [route('0.0.0.0/0', R1, 10, e0), route('0.0.0.0/0', R2, 20, e1)],
      (op) => order.push(op),
    );
    ports.alive.add(R2);
    ports.alive.add(R1);
    const up = new Uplinks();
    // The fake kernel's answer follows its routes: the best default route's interface.
    ports.lookupRoute = async (dst: string, src: string | null = null, key?: FlowKey) => {
      up.e0Up = ports.routes.some((r) => r.gateway === R1);
      return up.lookupRoute(dst, src, key);
    };
    ports.ifname = (i?: number) => NAMES[i ?? 0] ?? 'lan0';
    const ct = new FakeConntrack((op) => order.push(op));
    ct.addrs = [
      { ifindex: E0, address: E0_ADDR },
      { ifindex: E1, address: E1_ADDR },
      { ifindex: LAN, address: GW_LAN },
    ];
    ct.entries = [ctEntry(HOST, 40_000, SERVER, 7001, E0_ADDR)];
    ports.conntrack = ct;
    const log = new MemoryEventLog();
    const cfg = parseConfig('dgd: { slow_poll_interval: 5s, revive_probes: 1 }').dgd;
    const engine = new DgdEngine({ config: cfg, tables: [254], ports, store: new MemoryStore(), log, clock });
    await engine.start();
    ports.alive.delete(R1);
    engine.onNeighbour(R1, E0, 'FAILED');
    await clock.advance(1000);
    assert.deepEqual(order, [
      `delete 0.0.0.0/0 via ${R1} metric 10`,
      `ct delete ${HOST}:40000 -> ${E0_ADDR}`,
    ]);
    const names = log.events.map((e) => e.event);
    assert.ok(names.indexOf('routes_withdrawn') < names.indexOf('conntrack_followed'), names.join(' '));
    // The flow's next packet is translated on e1; then r1 answers again.
    ct.entries.push(ctEntry(HOST, 40_000, SERVER, 7001, E1_ADDR));
    ports.alive.add(R1);
    await clock.advance(6000);
    assert.deepEqual(order.slice(2), [
      `add 0.0.0.0/0 via ${R1} metric 10`,
      `ct delete ${HOST}:40000 -> ${E1_ADDR}`,
    ]);
    const last = log.named('conntrack_followed').at(-1)!;
    assert.equal(last.after, 'restore');
    assert.equal(last.deleted, 1);
    assert.deepEqual(engine.status().conntrack?.deleted, 2);
    // Off: every route back; nothing is left to move, nothing deleted.
    await engine.stop({ restore: true });
    assert.equal(ct.deleted.length, 2);
  });
});
