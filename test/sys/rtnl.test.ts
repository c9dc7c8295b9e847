// The rtnetlink facade, against real kernels: every privileged call runs in a fixture process
// inside a lab namespace (test/fixtures/rtnl-op.ts), so routes and neighbours change only there.
// Routes cross process boundaries as JSON, as they do through the detection engine's journal.
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { Lab, REPO_ROOT, requireRoot, waitFor } from '../lab/lab';
import { DGD, dgdLab, pairLab } from '../lab/topologies';
import { FWMARK, GW, forwardLab, gatewayFor } from '../lab/gateway-topologies';
import { decodeRoute, encodeRoute, encodeRouteLookup, parseRouteRaw, RTA } from '../../src/sys/rtnl/routes';
import { parseAttrs } from '../../src/sys/rtnl/codec';
import { formatIp, parseCidr, parseIp } from '../../src/sys/ipaddr';
import { decodeNexthop, encodeNexthop, validateNexthop } from '../../src/sys/rtnl/nexthop';
import { routeKey, routeToIpArgs } from '../../src/sys/rtnl';
import type { Link, NexthopObject, Route, RouteLookup } from '../../src/sys/rtnl';

interface CallResult<T = unknown> {
  ok: boolean;
  value: T;
  error?: { name: string; code?: string; errno?: number; syscall?: string; message: string };
}

/** The routes the pair lab is given, each one restored in the tests below. */
const DSTS = [
  '198.19.5.0/24',
  '198.19.6.0/24',
  '198.19.8.0/24',
  '198.19.9.0/24',
  '198.19.7.0/24',
  '2001:db8:5::/64',
  '2001:db8:6::/64',
  '2001:db8:8::/64',
  '2001:db8:9::/64',
  '2001:db8:7::/64',
];

const FIXTURE = 'dist/test/fixtures/rtnl-op.js';
const WATCH = 'dist/test/fixtures/rtnl-watch.js';

/** Run facade calls in `host`'s namespace; one result per call. */
async function rtnl(
  lab: Lab,
  host: string,
  calls: { op: string; args?: unknown[] }[],
): Promise<CallResult[]> {
  const r = await lab.node(host, FIXTURE, [JSON.stringify(calls)]);
  assert.equal(r.code, 0, `fixture failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as CallResult[];
}

/** One call that must succeed. */
async function call<T>(lab: Lab, host: string, op: string, ...args: unknown[]): Promise<T> {
  const [res] = await rtnl(lab, host, [{ op, args }]);
  assert.ok(res!.ok, `${op} failed: ${res!.error?.message}`);
  return res!.value as T;
}

/** What the exact-restore promise is measured by. */
async function snapshot(lab: Lab, host: string): Promise<string> {
  const v4 = await lab.ip(host, ['-d', 'route', 'show', 'table', 'all']);
  const v6 = await lab.ip(host, ['-d', '-6', 'route', 'show', 'table', 'all']);
  return `${v4}\n--- IPv6 ---\n${v6}`;
}

const byDst = (routes: Route[], dst: string): Route => {
  const r = routes.find((x) => x.dst === dst);
  assert.ok(r, `no route to ${dst} in ${routes.map((x) => x.dst).join(' ')}`);
  return r;
};

/** Collects a child's stdout lines from the start, so no line is missed between waits. */
class LineLog {
  readonly lines: string[] = [];
  private partial = '';
  exited = false;
  constructor(readonly child: ChildProcess) {
    child.stdout!.on('data', (chunk: Buffer) => {
      const parts = (this.partial + chunk.toString()).split('\n');
      this.partial = parts.pop()!;
      this.lines.push(...parts);
    });
    child.once('exit', () => (this.exited = true));
  }
  /** The first line matching `pred`, waiting at most `ms`. */
  async wait(pred: (line: string) => boolean, ms: number, what: string): Promise<string> {
    return waitFor<string | undefined>(
      () => {
        const hit = this.lines.find(pred);
        if (!hit && this.exited)
          throw new Error(`watcher exited before ${what}; output:\n${this.lines.join('\n')}`);
        return hit;
      },
      ms,
      `${what}; output so far:\n${this.lines.join('\n')}`,
    ) as Promise<string>;
  }
}

describe('rtnl codec (no privileges)', () => {
  it('formats and parses IPv4 and IPv6 addresses like inet_ntop', () => {
    for (const a of [
      '198.18.0.1',
      '2001:db8::1',
      '::',
      '::1',
      '2001:db8:0:1:0:0:0:1',
      'fe80::dcbd:d5ff:fe74:1062',
      '::ffff:198.18.0.1',
      '2001:db8:1:2:3:4:5:6',
    ])
      assert.equal(formatIp(parseIp(a, 'a').bytes), a === '2001:db8:0:1:0:0:0:1' ? '2001:db8:0:1::1' : a);
    assert.equal(formatIp(parseIp('2001:db8:0:0:1:0:0:1', 'a').bytes), '2001:db8::1:0:0:1');
    assert.throws(
      () => parseIp('198.18.0.256', 'gateway'),
      (e: Error & { code?: string }) =>
        e instanceof RangeError &&
        e.code === 'ERR_INVALID_ARG_VALUE' &&
        /gateway "198\.18\.0\.256" is not an IP address/.test(e.message),
    );
    assert.throws(() => parseCidr('198.18.0.0/33', 'dst'), RangeError);
    assert.throws(() => parseIp(42, 'gateway'), TypeError);
  });

  it('encodes a lookup with the flow key: u8 protocol, big-endian ports, u32 mark, uid, iif and oif', () => {
    const dst = parseIp('198.18.2.10', 'dst');
    const msg = encodeRouteLookup(
      dst,
      { proto: 6, sport: 40_001, dport: 7000, mark: 0x10001, uid: 1000, iif: 3, oif: 4 },
      parseIp('198.18.1.10', 'src').bytes,
    );
    const attrs = new Map(parseAttrs(msg.subarray(12)).map((a) => [a.type, a.data]));
    assert.equal(msg[1], 32);
    assert.equal(msg[2], 32);
    assert.deepEqual(attrs.get(27), Buffer.from([6]));
    assert.deepEqual(attrs.get(28), Buffer.from([0x9c, 0x41]));
    assert.deepEqual(attrs.get(29), Buffer.from([0x1b, 0x58]));
    assert.equal(attrs.get(16)!.readUInt32LE(0), 0x10001);
    assert.equal(attrs.get(25)!.readUInt32LE(0), 1000);
    assert.equal(attrs.get(3)!.readUInt32LE(0), 3);
    assert.equal(attrs.get(4)!.readUInt32LE(0), 4);
    // No key: only the destination, as before.
    assert.deepEqual(
      parseAttrs(encodeRouteLookup(dst).subarray(12)).map((a) => a.type),
      [RTA.DST],
    );
  });

  it('encodes a multipath route with metrics and decodes it back unchanged', () => {
    const route: Route = {
      family: 4,
      dst: '198.19.7.0/24',
      table: 1000,
      metric: 20,
      protocol: 4,
      scope: 0,
      type: 1,
      flags: 0,
      tos: 0,
      gateway: null,
      ifindex: null,
      ifname: null,
      prefsrc: '198.18.0.1',
      nexthops: [
        { gateway: '198.18.0.2', ifindex: 2, ifname: 'eth0', weight: 3, flags: 4 },
        { gateway: '2001:db8::3', ifindex: 3, ifname: 'eth1', weight: 256, flags: 0 },
      ],
      metrics: { mtu: 1400, advmss: 1360, lock: 4 },
      raw: { srcLen: 0, attrs: [[RTA.FLOW, '07000000']] },
    };
    const payload = encodeRoute(
      {
        route,
        dst: { bytes: parseCidr(route.dst, 'dst').bytes, prefix: 24 },
        ifindex: null,
        nexthopIfindexes: [2, 3],
      },
      'new',
    );
    const names: Record<number, string> = { 2: 'eth0', 3: 'eth1' };
    const back = decodeRoute(payload, (i) => names[i] ?? '');
    assert.deepEqual(JSON.parse(JSON.stringify(back)), route);
  });

  it('encodes nexthop objects (a group with 16-bit weights, a gateway, a blackhole) and decodes them back', () => {
    const names: Record<number, string> = { 2: 'eth0' };
    const base = {
      family: null,
      protocol: 11,
      scope: 0,
      flags: 0,
      gateway: null,
      ifindex: null,
      ifname: null,
      blackhole: false,
      fdb: false,
      group: null,
      groupType: null,
      raw: null,
    };
    const objects: NexthopObject[] = [
      {
        ...base,
        id: 10,
        group: [
          { id: 1, weight: 3 },
          { id: 2, weight: 1000 },
        ],
        groupType: 'mpath',
      },
      { ...base, id: 1, family: 6, gateway: '2001:db8::2', ifindex: 2, ifname: 'eth0', flags: 4 },
      { ...base, id: 20, blackhole: true },
    ];
    for (const nh of objects)
      assert.deepEqual(
        decodeNexthop(encodeNexthop(nh, nh.ifindex), (i) => names[i] ?? ''),
        nh,
      );
    assert.throws(
      () => validateNexthop({ ...base, id: 5, group: [{ id: 1, weight: 0 }] }),
      /weight must be from 1/,
    );
    assert.throws(() => validateNexthop({ ...base, id: 5, gateway: '198.18.0.256' }), /not an IP address/);
  });

  it('reads raw attributes back from JSON in any of the shapes JSON.stringify leaves a Buffer in', () => {
    const hex = parseRouteRaw({ srcLen: 48, attrs: [[RTA.SRC, '20010db8aaaa00000000000000000000']] });
    const arr = parseRouteRaw({
      srcLen: 48,
      attrs: [[RTA.SRC, [...Buffer.from('20010db8aaaa00000000000000000000', 'hex')]]],
    });
    const node = parseRouteRaw(
      JSON.parse(
        JSON.stringify({
          srcLen: 48,
          attrs: [[RTA.SRC, Buffer.from('20010db8aaaa00000000000000000000', 'hex')]],
        }),
      ),
    );
    for (const p of [arr, node]) assert.deepEqual(p.attrs, hex.attrs);
    assert.equal(hex.srcLen, 48);
    // Attributes that must never be sent back (e.g. RTA_CACHEINFO) are dropped, not replayed.
    assert.deepEqual(parseRouteRaw({ srcLen: 0, attrs: [[RTA.CACHEINFO, '00']] }).attrs, []);
    assert.throws(() => parseRouteRaw({ attrs: [[RTA.SRC, 'zz']] }), TypeError);
  });

  it('names a route by family, table, dst, tos and metric, and prints the ip argv that recreates it', () => {
    const r: Route = {
      family: 4,
      dst: '0.0.0.0/0',
      table: 254,
      metric: 100,
      protocol: 3,
      scope: 0,
      type: 1,
      flags: 4,
      tos: 0,
      gateway: '198.18.1.1',
      ifindex: 2,
      ifname: 'lan0',
      prefsrc: null,
      nexthops: null,
      metrics: { mtu: 1400 },
      raw: null,
    };
    assert.equal(routeKey(r), 'ipv4/254/0.0.0.0/0/tos0/metric100');
    assert.deepEqual(routeToIpArgs(r), [
      'route',
      'add',
      'default',
      'via',
      '198.18.1.1',
      'dev',
      'lan0',
      'onlink',
      'table',
      'main',
      'proto',
      'boot',
      'scope',
      'global',
      'metric',
      '100',
      'mtu',
      '1400',
    ]);
    const mp: Route = {
      ...r,
      family: 6,
      dst: '2001:db8:7::/64',
      table: 100,
      metric: 30,
      flags: 0,
      gateway: null,
      ifindex: null,
      ifname: null,
      metrics: {},
      pref: 1,
      nexthops: [
        { gateway: '2001:db8::2', ifindex: 2, ifname: 'eth0', weight: 2, flags: 0 },
        { gateway: '2001:db8::3', ifindex: 2, ifname: 'eth0', weight: 5, flags: 0 },
      ],
    };
    assert.equal(
      routeToIpArgs(mp).join(' '),
      '-6 route add 2001:db8:7::/64 table 100 proto boot metric 30 pref high ' +
        'nexthop via 2001:db8::2 dev eth0 weight 2 nexthop via 2001:db8::3 dev eth0 weight 5',
    );
  });
});

describe('rtnl facade in the lab', function () {
  this.timeout(120_000);
  before(function () {
    requireRoot(this);
  });

  describe('routes on a pair of hosts', () => {
    let lab: Lab;
    before(async () => {
      lab = await pairLab();
      // Routes with everything an exact restore must keep: a non-main table, protocol, metric,
      // locked mtu, advmss, hoplimit, onlink, prefsrc, link scope, blackhole, IPv6 pref, a
      // source-specific IPv6 route (RTA_SRC, kept in raw), and multipath with weights.
      const v4: string[][] = [
        [
          'route',
          'add',
          '198.19.5.0/24',
          'via',
          '198.18.0.2',
          'dev',
          'eth0',
          'metric',
          '50',
          'mtu',
          'lock',
          '1400',
          'advmss',
          '1360',
          'proto',
          '99',
          'table',
          '100',
        ],
        ['route', 'add', '198.19.6.0/24', 'via', '198.19.250.1', 'dev', 'eth0', 'onlink', 'proto', 'static'],
        [
          'route',
          'add',
          '198.19.8.0/24',
          'dev',
          'eth0',
          'scope',
          'link',
          'src',
          '198.18.0.1',
          'metric',
          '7',
          'hoplimit',
          '9',
        ],
        ['route', 'add', 'blackhole', '198.19.9.0/24', 'table', '100', 'metric', '3'],
        [
          'route',
          'add',
          '198.19.7.0/24',
          'proto',
          'static',
          'metric',
          '20',
          'nexthop',
          'via',
          '198.18.0.2',
          'dev',
          'eth0',
          'weight',
          '3',
          'nexthop',
          'via',
          '198.18.0.3',
          'dev',
          'eth0',
          'weight',
          '1',
          'nexthop',
          'via',
          '198.18.0.4',
          'dev',
          'eth0',
          'weight',
          '2',
        ],
      ];
      const v6: string[][] = [
        [
          '-6',
          'route',
          'add',
          '2001:db8:5::/64',
          'via',
          '2001:db8::2',
          'dev',
          'eth0',
          'metric',
          '77',
          'mtu',
          '1300',
          'pref',
          'high',
          'table',
          '100',
          'proto',
          'static',
        ],
        ['-6', 'route', 'add', '2001:db8:6::/64', 'via', '2001:db8:ff::1', 'dev', 'eth0', 'onlink'],
        [
          '-6',
          'route',
          'add',
          '2001:db8:8::/64',
          'dev',
          'eth0',
          'hoplimit',
          '7',
          'advmss',
          '1200',
          'pref',
          'low',
        ],
        [
          '-6',
          'route',
          'add',
          '2001:db8:9::/64',
          'from',
          '2001:db8:aaaa::/48',
          'via',
          '2001:db8::2',
          'dev',
          'eth0',
        ],
        [
          '-6',
          'route',
          'add',
          '2001:db8:7::/64',
          'metric',
          '30',
          'nexthop',
          'via',
          '2001:db8::2',
          'dev',
          'eth0',
          'weight',
          '2',
          'nexthop',
          'via',
          '2001:db8::3',
          'dev',
          'eth0',
          'weight',
          '5',
        ],
      ];
      for (const cmd of [...v4, ...v6]) await lab.ip('a', cmd);
    });
    after(async () => {
      await lab?.close();
    });

    it('lists routes with tables, metrics, protocol, flags, metrics and multipath weights', async () => {
      const routes = await call<Route[]>(lab, 'a', 'listRoutes');
      const r5 = byDst(routes, '198.19.5.0/24');
      assert.deepEqual(
        {
          table: r5.table,
          metric: r5.metric,
          protocol: r5.protocol,
          gateway: r5.gateway,
          ifname: r5.ifname,
          mtu: r5.metrics.mtu,
          advmss: r5.metrics.advmss,
          lock: r5.metrics.lock,
        },
        {
          table: 100,
          metric: 50,
          protocol: 99,
          gateway: '198.18.0.2',
          ifname: 'eth0',
          mtu: 1400,
          advmss: 1360,
          lock: 1 << 2,
        },
      );
      assert.equal(byDst(routes, '198.19.6.0/24').flags & 4, 4, 'onlink flag');
      const r8 = byDst(routes, '198.19.8.0/24');
      assert.deepEqual([r8.scope, r8.prefsrc, r8.gateway, r8.metrics.hoplimit], [253, '198.18.0.1', null, 9]);
      assert.equal(byDst(routes, '198.19.9.0/24').type, 6);
      const mp = byDst(routes, '198.19.7.0/24');
      assert.deepEqual(
        mp.nexthops!.map((h) => [h.gateway, h.ifname, h.weight]),
        [
          ['198.18.0.2', 'eth0', 3],
          ['198.18.0.3', 'eth0', 1],
          ['198.18.0.4', 'eth0', 2],
        ],
      );
      const mp6 = byDst(routes, '2001:db8:7::/64');
      assert.deepEqual(
        mp6.nexthops!.map((h) => [h.gateway, h.weight]),
        [
          ['2001:db8::2', 2],
          ['2001:db8::3', 5],
        ],
      );
      const r65 = byDst(routes, '2001:db8:5::/64');
      assert.deepEqual([r65.family, r65.table, r65.metric, r65.pref, r65.metrics.mtu], [6, 100, 77, 1, 1300]);
      // Filters: table and family.
      const t100 = await call<Route[]>(lab, 'a', 'listRoutes', { table: 100 });
      assert.deepEqual(t100.map((r) => r.dst).sort(), ['198.19.5.0/24', '198.19.9.0/24', '2001:db8:5::/64']);
      const only6 = await call<Route[]>(lab, 'a', 'listRoutes', { family: 6, table: 254 });
      assert.ok(only6.length > 0 && only6.every((r) => r.family === 6 && r.table === 254));
    });

    it('deletes each route exactly and adds it back from JSON in another process: ip -d route identical', async () => {
      const before = await snapshot(lab, 'a');
      const routes = await call<Route[]>(lab, 'a', 'listRoutes');
      const dsts = DSTS;
      for (const dst of dsts) {
        // The journal's path: serialise, write, read back, parse.
        const fromJournal = JSON.parse(JSON.stringify(byDst(routes, dst))) as Route;
        await call(lab, 'a', 'deleteRoute', fromJournal);
        const gone = await snapshot(lab, 'a');
        assert.notEqual(gone, before, `${dst} still there after deleteRoute`);
        assert.ok(
          !gone.includes(` ${dst.replace('/64', '/64 ').replace('/24', '/24 ')}`),
          `${dst} still listed:\n${gone}`,
        );
        await call(lab, 'a', 'addRoute', fromJournal);
        assert.equal(await snapshot(lab, 'a'), before, `after restoring ${dst}`);
      }
      // All at once, then all back (the daemon's "ipdeadgate off").
      for (const dst of dsts) await call(lab, 'a', 'deleteRoute', byDst(routes, dst));
      for (const dst of [...dsts].reverse()) await call(lab, 'a', 'addRoute', byDst(routes, dst));
      assert.equal(await snapshot(lab, 'a'), before);
    });

    it('routeToIpArgs gives the ip command that recreates each route exactly', async () => {
      const before = await snapshot(lab, 'a');
      const routes = await call<Route[]>(lab, 'a', 'listRoutes');
      for (const dst of DSTS) {
        const r = byDst(routes, dst);
        await call(lab, 'a', 'deleteRoute', r);
        await lab.ip('a', routeToIpArgs(r));
        assert.equal(await snapshot(lab, 'a'), before, `ip ${routeToIpArgs(r).join(' ')}`);
      }
    });

    it('replaces a route in place and back', async () => {
      const before = await snapshot(lab, 'a');
      const r5 = byDst(await call<Route[]>(lab, 'a', 'listRoutes', { table: 100 }), '198.19.5.0/24');
      await call(lab, 'a', 'replaceRoute', { ...r5, gateway: '198.18.0.9', metrics: { mtu: 1280 } });
      const changed = await lab.ip('a', ['route', 'show', 'table', '100', '198.19.5.0/24']);
      assert.match(changed, /via 198\.18\.0\.9 dev eth0 proto (99|openr) metric 50 mtu 1280/);
      await call(lab, 'a', 'addRoute', r5, { replace: true });
      assert.equal(await snapshot(lab, 'a'), before);
    });

    it('multipath: withdraws one nexthop by replace and puts it back, IPv4 and IPv6', async () => {
      const before = await snapshot(lab, 'a');
      const routes = await call<Route[]>(lab, 'a', 'listRoutes');
      const mp4 = byDst(routes, '198.19.7.0/24');
      await call(lab, 'a', 'replaceRoute', {
        ...mp4,
        nexthops: mp4.nexthops!.filter((h) => h.gateway !== '198.18.0.3'),
      });
      const shown4 = await lab.ip('a', ['route', 'show', '198.19.7.0/24']);
      assert.doesNotMatch(shown4, /198\.18\.0\.3/);
      assert.match(
        shown4,
        /nexthop via 198\.18\.0\.2 dev eth0 weight 3\s+nexthop via 198\.18\.0\.4 dev eth0 weight 2/,
      );
      await call(lab, 'a', 'replaceRoute', mp4);
      assert.equal(await snapshot(lab, 'a'), before, 'IPv4 multipath restored');

      // IPv6: two nexthops down to one (a plain route) and back to two.
      const mp6 = byDst(routes, '2001:db8:7::/64');
      await call(lab, 'a', 'replaceRoute', {
        ...mp6,
        nexthops: mp6.nexthops!.filter((h) => h.gateway !== '2001:db8::2'),
      });
      const shown6 = await lab.ip('a', ['-6', 'route', 'show', '2001:db8:7::/64']);
      assert.doesNotMatch(shown6, /2001:db8::2 /);
      assert.match(shown6, /2001:db8::3/);
      await call(lab, 'a', 'replaceRoute', mp6);
      assert.equal(await snapshot(lab, 'a'), before, 'IPv6 multipath restored');
    });

    it('reports kernel errors with errno code, syscall and a message naming the operation and the route', async () => {
      const r5 = byDst(await call<Route[]>(lab, 'a', 'listRoutes', { table: 100 }), '198.19.5.0/24');
      const missing = { ...r5, dst: '198.19.55.0/24' };
      const [exists, gone, badGw, badIf, notIp] = await rtnl(lab, 'a', [
        { op: 'addRoute', args: [r5] },
        { op: 'deleteRoute', args: [missing] },
        { op: 'addRoute', args: [{ ...r5, dst: '198.19.56.0/24', gateway: '198.20.0.1' }] },
        { op: 'addRoute', args: [{ ...r5, dst: '198.19.57.0/24', ifname: 'nope0' }] },
        { op: 'addRoute', args: [{ ...r5, gateway: 'not-an-ip' }] },
      ]);
      assert.equal(exists!.ok, false);
      assert.deepEqual(
        [exists!.error!.name, exists!.error!.code, exists!.error!.errno, exists!.error!.syscall],
        ['SystemError', 'EEXIST', 17, 'RTM_NEWROUTE'],
      );
      assert.equal(
        exists!.error!.message,
        'EEXIST: adding route 198.19.5.0/24 via 198.18.0.2 table 100 metric 50: the route already exists',
      );
      assert.deepEqual([gone!.error!.code, gone!.error!.syscall], ['ESRCH', 'RTM_DELROUTE']);
      assert.match(
        gone!.error!.message,
        /^ESRCH: deleting route 198\.19\.55\.0\/24 via 198\.18\.0\.2 table 100 metric 50: no such route$/,
      );
      assert.equal(badGw!.error!.code, 'ENETUNREACH');
      assert.match(badGw!.error!.message, /gateway is not on a directly connected network/);
      assert.deepEqual([badIf!.error!.name, badIf!.error!.code], ['RangeError', 'ERR_INVALID_ARG_VALUE']);
      assert.match(badIf!.error!.message, /unknown interface "nope0"/);
      assert.deepEqual([notIp!.error!.name, notIp!.error!.code], ['RangeError', 'ERR_INVALID_ARG_VALUE']);
      assert.match(notIp!.error!.message, /route\.gateway "not-an-ip" is not an IP address/);
    });

    it('close() is idempotent and rejects a request still in flight', async () => {
      const [res] = await rtnl(lab, 'a', [{ op: 'closeWhilePending' }]);
      assert.equal(res!.ok, false);
      assert.deepEqual([res!.error!.name, res!.error!.code, res!.error!.errno], ['SystemError', 'EBADF', 9]);
      assert.match(res!.error!.message, /^EBADF: listing IPv4 routes: the rtnetlink socket is closed$/);
    });

    it('links and addresses', async () => {
      const [byName, byIndex, none, links, addrs] = await rtnl(lab, 'a', [
        { op: 'linkByName', args: ['eth0'] },
        { op: 'linkByIndex', args: [1] },
        { op: 'linkByName', args: ['nope0'] },
        { op: 'listLinks' },
        { op: 'listAddresses', args: [{ family: 4 }] },
      ]);
      const eth0 = byName!.value as {
        ifindex: number;
        ifname: string;
        mac: string;
        up: boolean;
        running: boolean;
        mtu: number;
      };
      assert.equal(eth0.ifname, 'eth0');
      assert.match(eth0.mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
      assert.deepEqual([eth0.up, eth0.running, eth0.mtu], [true, true, 1500]);
      assert.equal((byIndex!.value as { ifname: string }).ifname, 'lo');
      assert.equal(none!.value, null);
      assert.deepEqual((links!.value as { ifname: string }[]).map((l) => l.ifname).sort(), ['eth0', 'lo']);
      assert.deepEqual(
        (addrs!.value as { ifname: string; address: string; prefixLength: number }[]).map(
          (a) => `${a.ifname} ${a.address}/${a.prefixLength}`,
        ),
        ['lo 127.0.0.1/8', 'eth0 198.18.0.1/24'],
      );
    });
  });

  describe('nexthop objects and groups (linux/nexthop.h) on a pair of hosts', () => {
    let lab: Lab;
    /** What exactness is measured by: ip -d nexthop and ip -d route of both families. */
    const nhSnapshot = async () =>
      `${await lab.ip('a', ['-d', 'nexthop', 'show'])}\n${await snapshot(lab, 'a')}`;
    before(async () => {
      lab = await pairLab();
      const cmds = [
        'nexthop add id 1 via 198.18.0.2 dev eth0',
        'nexthop add id 2 via 198.18.0.3 dev eth0 proto static',
        'nexthop add id 3 via 2001:db8::2 dev eth0',
        'nexthop add id 4 via 2001:db8::3 dev eth0 proto 11',
        'nexthop add id 10 group 1,3/2 proto 11',
        'nexthop add id 11 group 3/4,2',
        'nexthop add id 12 group 1/2 type resilient buckets 8 idle_timer 60',
        'nexthop add id 20 blackhole',
        'route add 198.19.20.0/24 nhid 10 metric 5',
        'route add 198.19.21.0/24 nhid 1 proto static',
        'route add 198.19.22.0/24 nhid 12',
        'route add 2001:db8:20::/64 nhid 11 metric 7',
        'route add 2001:db8:21::/64 nhid 3',
      ];
      for (const c of cmds) await lab.ip('a', c.split(' '));
    });
    after(async () => {
      await lab?.close();
    });

    it('lists objects with gateway, interface, protocol, groups with weights and type; routes carry nhid', async () => {
      const nhs = await call<NexthopObject[]>(lab, 'a', 'listNexthops');
      const byId = (id: number) => nhs.find((n) => n.id === id)!;
      assert.deepEqual(
        { ...byId(1), scope: 0 },
        {
          id: 1,
          family: 4,
          protocol: 0,
          scope: 0,
          flags: 0,
          gateway: '198.18.0.2',
          ifindex: byId(1).ifindex,
          ifname: 'eth0',
          blackhole: false,
          fdb: false,
          group: null,
          groupType: null,
          raw: null,
        },
      );
      assert.equal(byId(2).protocol, 4);
      assert.equal(byId(4).family, 6);
      assert.deepEqual(byId(10).group, [
        { id: 1, weight: 3 },
        { id: 2, weight: 1 },
      ]);
      assert.equal(byId(10).protocol, 11, 'a group owned by zebra says so');
      assert.equal(byId(10).groupType, 'mpath');
      assert.equal(byId(12).groupType, 'resilient');
      assert.equal(byId(20).blackhole, true);
      const one = await call<NexthopObject | null>(lab, 'a', 'getNexthop', 11);
      assert.deepEqual(one!.group, [
        { id: 3, weight: 1 },
        { id: 4, weight: 2 },
      ]);
      assert.equal(await call(lab, 'a', 'getNexthop', 99), null);
      const routes = await call<Route[]>(lab, 'a', 'listRoutes');
      const grp = byDst(routes, '198.19.20.0/24');
      assert.equal(grp.nhid, 10);
      // nexthop_compat_mode: the kernel reports the group's paths with the route.
      assert.deepEqual(
        grp.nexthops?.map((h) => [h.gateway, h.weight]),
        [
          ['198.18.0.2', 3],
          ['198.18.0.3', 1],
        ],
      );
      assert.equal(byDst(routes, '198.19.21.0/24').nhid, 1);
      assert.equal(byDst(routes, '198.19.21.0/24').gateway, '198.18.0.2');
      assert.equal(byDst(routes, '2001:db8:20::/64').nhid, 11);
    });

    it('a group loses a member by replace and gets it back with its weights: ip -d nexthop and ip -d route identical (IPv4, IPv6, resilient)', async () => {
      const before = await nhSnapshot();
      const nhs = await call<NexthopObject[]>(lab, 'a', 'listNexthops');
      for (const [id, drop] of [
        [10, 1],
        [11, 4],
        [12, 2],
      ] as const) {
        const grp = nhs.find((n) => n.id === id)!;
        await call(lab, 'a', 'replaceNexthop', { ...grp, group: grp.group!.filter((m) => m.id !== drop) });
        const shown = await lab.ip('a', ['nexthop', 'show', 'id', String(id)]);
        assert.doesNotMatch(shown, new RegExp(`group (.*/)?${drop}(,|/| |$)`), shown);
      }
      const r20 = await lab.ip('a', ['route', 'show', '198.19.20.0/24']);
      assert.doesNotMatch(r20, /198\.18\.0\.2 /, 'the route follows its group');
      assert.notEqual(await nhSnapshot(), before);
      for (const id of [10, 11, 12])
        await call(
          lab,
          'a',
          'replaceNexthop',
          nhs.find((n) => n.id === id)!,
        );
      assert.equal(await nhSnapshot(), before);
    });

    it('a route through an object is deleted and added back from JSON exactly; a single object too', async () => {
      const before = await nhSnapshot();
      const routes = await call<Route[]>(lab, 'a', 'listRoutes');
      const victims = ['198.19.20.0/24', '198.19.21.0/24', '2001:db8:20::/64'].map((d) => byDst(routes, d));
      for (const r of victims) await call(lab, 'a', 'deleteRoute', r);
      assert.doesNotMatch(await lab.ip('a', ['route', 'show']), /198\.19\.2[01]\./);
      for (const r of victims) await call(lab, 'a', 'addRoute', JSON.parse(JSON.stringify(r)));
      assert.equal(await nhSnapshot(), before);
      await lab.ip('a', [
        'nexthop',
        'add',
        'id',
        '30',
        'via',
        '198.18.0.4',
        'dev',
        'eth0',
        'onlink',
        'proto',
        'bird',
      ]);
      const withObj = await nhSnapshot();
      const n30 = (await call<NexthopObject | null>(lab, 'a', 'getNexthop', 30))!;
      assert.equal(n30.protocol, 12);
      await call(lab, 'a', 'deleteNexthop', 30);
      assert.equal(await call(lab, 'a', 'getNexthop', 30), null);
      await call(lab, 'a', 'addNexthop', JSON.parse(JSON.stringify(n30)));
      assert.equal(await nhSnapshot(), withObj);
      const [dup, missing, bad] = await rtnl(lab, 'a', [
        { op: 'addNexthop', args: [n30] },
        {
          op: 'replaceNexthop',
          args: [
            { ...n30, id: 31, gateway: null, ifindex: null, ifname: null, group: [{ id: 77, weight: 1 }] },
          ],
        },
        { op: 'addNexthop', args: [{ ...n30, id: 0 }] },
      ]);
      assert.equal(dup!.error?.code, 'EEXIST');
      assert.match(
        dup!.error!.message,
        /nexthop id 30 via 198\.18\.0\.4 dev eth0: a nexthop object with that id already exists/,
      );
      assert.equal(missing!.ok, false);
      assert.match(missing!.error!.message, /nexthop id 31 group 77/);
      assert.equal(bad!.error?.name, 'RangeError');
      await call(lab, 'a', 'deleteNexthop', 30);
    });

    it('reports nexthop objects replaced and deleted as events', async () => {
      const watcher = lab.spawn('a', [process.execPath, path.join(REPO_ROOT, WATCH), 'nexthop', '10000']);
      const log = new LineLog(watcher);
      await log.wait((l) => l.includes('"ready":true'), 10_000, 'the subscription');
      await lab.ip('a', ['nexthop', 'add', 'id', '40', 'via', '198.18.0.5', 'dev', 'eth0']);
      await lab.ip('a', ['nexthop', 'del', 'id', '40']);
      await log.wait(
        (l) => l.includes('"kind":"nexthop"') && l.includes('"op":"del"') && l.includes('"id":40'),
        5000,
        'the deletion',
      );
      const added = log.lines.find((l) => l.includes('"op":"new"') && l.includes('"id":40'));
      assert.ok(added, log.lines.join('\n'));
      assert.match(added, /"gateway":"198\.18\.0\.5"/);
      watcher.kill();
    });
  });

  describe('lookups and neighbours in the dead-gateway lab', () => {
    let lab: Lab;
    before(async () => {
      lab = await dgdLab();
    });
    after(async () => {
      await lab?.close();
    });

    it('many requests at once on one socket all succeed (dumps and lookups are queued, never EBUSY)', async () => {
      const inner = [
        { op: 'listRoutes' },
        ...Array.from({ length: 8 }, () => ({ op: 'lookupRoute', args: [DGD.server4] })),
        { op: 'listLinks' },
        { op: 'listNeighbours' },
        { op: 'listAddresses' },
        ...Array.from({ length: 4 }, () => ({ op: 'lookupRoute', args: [DGD.server6] })),
        { op: 'listRoutes', args: [{ family: 6 }] },
      ];
      const [res] = await rtnl(lab, 'client', [{ op: 'concurrent', args: inner }]);
      assert.deepEqual(
        res!.value,
        inner.map(() => ({ ok: true })),
      );
    });

    it('lookupRoute picks the lower-metric gateway and the interface; a connected destination has no gateway', async () => {
      const [v4, v6, direct4, direct6, unreachable] = await rtnl(lab, 'client', [
        { op: 'lookupRoute', args: [DGD.server4] },
        { op: 'lookupRoute', args: [DGD.server6] },
        { op: 'lookupRoute', args: [DGD.r2_4] },
        { op: 'lookupRoute', args: [DGD.r2_6] },
        { op: 'lookupRoute', args: ['not-an-address'] },
      ]);
      assert.deepEqual(v4!.value, {
        gateway: DGD.r1_4,
        ifindex: (v4!.value as { ifindex: number }).ifindex,
        ifname: 'lan0',
        table: 254,
        prefsrc: DGD.client4,
        dst: DGD.server4,
      });
      assert.ok((v4!.value as { ifindex: number }).ifindex > 1);
      assert.deepEqual(
        [(v6!.value as { gateway: string }).gateway, (v6!.value as { ifname: string }).ifname],
        [DGD.r1_6, 'lan0'],
      );
      assert.equal((direct4!.value as { gateway: string | null }).gateway, null);
      assert.equal((direct6!.value as { gateway: string | null }).gateway, null);
      assert.equal(unreachable!.error!.name, 'RangeError');

      // Withdraw the metric-100 route: the kernel falls back to r2; restore it: back to r1.
      const routes = await call<Route[]>(lab, 'client', 'listRoutes', { family: 4, table: 254 });
      const viaR1 = routes.find((r) => r.gateway === DGD.r1_4)!;
      const [, after, , restored] = await rtnl(lab, 'client', [
        { op: 'deleteRoute', args: [viaR1] },
        { op: 'lookupRoute', args: [DGD.server4] },
        { op: 'addRoute', args: [viaR1] },
        { op: 'lookupRoute', args: [DGD.server4] },
      ]);
      assert.equal((after!.value as { gateway: string }).gateway, DGD.r2_4);
      assert.equal((restored!.value as { gateway: string }).gateway, DGD.r1_4);
    });

    it('gets and deletes neighbour entries; deleting a missing one resolves', async () => {
      await lab.execOk('client', ['ping', '-c1', '-W2', DGD.r2_4]);
      const lan0 = await call<{ ifindex: number }>(lab, 'client', 'linkByName', 'lan0');
      const [got, list, del, after, again, none, bad] = await rtnl(lab, 'client', [
        { op: 'getNeighbour', args: [lan0.ifindex, DGD.r2_4] },
        { op: 'listNeighbours', args: [{ family: 4, ifindex: lan0.ifindex }] },
        { op: 'deleteNeighbour', args: [lan0.ifindex, DGD.r2_4] },
        { op: 'getNeighbour', args: [lan0.ifindex, DGD.r2_4] },
        { op: 'deleteNeighbour', args: [lan0.ifindex, DGD.r2_4] },
        { op: 'deleteNeighbour', args: [lan0.ifindex, '198.18.1.99'] },
        { op: 'deleteNeighbour', args: [lan0.ifindex, 'nope'] },
      ]);
      const n = got!.value as {
        address: string;
        ifname: string;
        lladdr: string;
        state: string;
        family: number;
      };
      assert.deepEqual([n.family, n.address, n.ifname], [4, DGD.r2_4, 'lan0']);
      assert.match(n.lladdr, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
      assert.ok(['REACHABLE', 'STALE', 'DELAY', 'PROBE'].includes(n.state), n.state);
      assert.ok((list!.value as { address: string }[]).some((x) => x.address === DGD.r2_4));
      assert.ok(del!.ok && again!.ok && none!.ok, JSON.stringify([del, again, none]));
      assert.equal(after!.value, null);
      assert.equal(bad!.error!.name, 'RangeError');
    });

    for (const family of [4, 6] as const) {
      it(`sees the neighbour entry of a silently dead gateway turn FAILED as an event (IPv${family})`, async () => {
        const gw = family === 4 ? DGD.r1_4 : DGD.r1_6;
        const far = family === 4 ? DGD.server4 : DGD.server6;
        // Resolution gives up after mcast_solicit (3) probes, retrans_time apart: 3 x 200 ms here.
        const sysctl = `net.ipv${family}.neigh.lan0.retrans_time_ms=200`;
        await lab.execOk('client', ['sysctl', '-qw', sysctl]);
        await lab.execOk('client', ['ping', `-${family}`, '-c1', '-W2', gw]);
        const lan0 = await call<{ ifindex: number }>(lab, 'client', 'linkByName', 'lan0');
        const watcher = lab.spawn('client', [
          process.execPath,
          path.join(REPO_ROOT, WATCH),
          'neighbour',
          '20000',
        ]);
        const log = new LineLog(watcher);
        const isGw = (l: string) => l.includes(`"address":"${gw}"`);
        const isFailed = (l: string) => isGw(l) && l.includes('"op":"new"') && l.includes('"state":"FAILED"');
        try {
          await log.wait((l) => l.includes('"ready":true'), 10_000, 'the subscription');
          await lab.killSilently('r1', 'lan0');
          // Our own purge is reported as a deletion, never as FAILED (the kernel's FAILED-then-del is folded).
          await call(lab, 'client', 'deleteNeighbour', lan0.ifindex, gw);
          await log.wait((l) => isGw(l) && l.includes('"op":"del"'), 5_000, `the deletion of ${gw}`);
          await new Promise((r) => setTimeout(r, 200));
          assert.ok(!log.lines.some(isFailed), `a purge was reported as FAILED:\n${log.lines.join('\n')}`);
          // One bounded packet makes the kernel resolve the gateway again; it never answers.
          const started = Date.now();
          await lab.exec('client', ['ping', `-${family}`, '-c1', '-W1', far]);
          const line = await log.wait(isFailed, 10_000, `${gw} turning FAILED`);
          const ev = JSON.parse(line) as {
            kind: string;
            op: string;
            neighbour: { family: number; ifname: string; state: string };
          };
          assert.deepEqual(
            [ev.kind, ev.op, ev.neighbour.family, ev.neighbour.ifname, ev.neighbour.state],
            ['neighbour', 'new', family, 'lan0', 'FAILED'],
          );
          assert.ok(Date.now() - started < 10_000);
        } finally {
          watcher.kill('SIGKILL');
          await lab.revive('r1', 'lan0').catch(() => undefined);
        }
      });
    }
  });

  describe('lookups by the flow key on a gateway host (ECMP with an L4 hash, policy rules)', () => {
    const DPORT = 7000;
    let lab: Lab | undefined;
    afterEach(async () => {
      await lab?.close();
      lab = undefined;
    });

    const via = (r: CallResult | undefined): string | null => {
      assert.ok(r?.ok, `lookup failed: ${r?.error?.message}`);
      return (r.value as RouteLookup).gateway;
    };

    for (const family of [4, 6] as const) {
      it(`IPv${family} ECMP, fib_multipath_hash_policy=1: two source ports resolve to the two members, as ip route get says`, async () => {
        const l = (lab = await forwardLab({ routing: 'ecmp', conntrack: false }));
        const [dst, from, r1, r2] =
          family === 4 ? [GW.server4, GW.gwUp4, GW.r1_4, GW.r2_4] : [GW.server6, GW.gwUp6, GW.r1_6, GW.r2_6];
        const ports = Array.from({ length: 32 }, (_, i) => 40_000 + i);
        const keyOf = (sport: number) => ({ src: from, proto: 6, sport, dport: DPORT });
        const ours = await rtnl(
          l,
          'gw',
          ports.map((sport) => ({ op: 'lookupRoute', args: [dst, keyOf(sport)] })),
        );
        const kernel: (string | null)[] = [];
        for (const sport of ports)
          kernel.push(await gatewayFor(l, 'gw', { dst, from, proto: 'tcp', sport, dport: DPORT }));
        assert.deepEqual(ours.map(via), kernel, 'every port: the same member as ip route get');
        const viaR1 = ports.find((_, i) => kernel[i] === r1);
        const viaR2 = ports.find((_, i) => kernel[i] === r2);
        assert.ok(viaR1 !== undefined && viaR2 !== undefined, `both members among ${kernel.join(' ')}`);
        // The same ports over UDP are hashed too (the protocol is part of the key).
        const udp = await rtnl(l, 'gw', [{ op: 'lookupRoute', args: [dst, { ...keyOf(viaR1), proto: 17 }] }]);
        assert.equal(
          via(udp[0]),
          await gatewayFor(l, 'gw', { dst, from, proto: 'udp', sport: viaR1, dport: DPORT }),
        );
        // A protocol RTM_GETROUTE does not take never reaches the kernel.
        const [bad] = await rtnl(l, 'gw', [{ op: 'lookupRoute', args: [dst, { proto: 132 }] }]);
        assert.equal(bad!.error?.name, 'RangeError');
      });

      it(`IPv${family} policy routing: fwmark and uidrange rules, output and input (iif) lookups`, async () => {
        const l = (lab = await forwardLab({ routing: 'fwmark', conntrack: false }));
        const v = family === 4 ? '-4' : '-6';
        const [dst, r1, r2, lanhost] =
          family === 4
            ? [GW.server4, GW.r1_4, GW.r2_4, GW.lanhost4]
            : [GW.server6, GW.r1_6, GW.r2_6, GW.lanhost6];
        await l.ip('gw', [
          v,
          'rule',
          'add',
          'uidrange',
          '1000-1000',
          'lookup',
          String(FWMARK.table),
          'priority',
          '90',
        ]);
        const links = await call<Link[]>(l, 'gw', 'listLinks');
        const lan1 = links.find((k) => k.ifname === 'lan1')!.ifindex;
        const res = await rtnl(l, 'gw', [
          { op: 'lookupRoute', args: [dst] },
          { op: 'lookupRoute', args: [dst, { mark: FWMARK.mark }] },
          { op: 'lookupRoute', args: [dst, { uid: 1000 }] },
          { op: 'lookupRoute', args: [dst, { uid: 1001 }] },
          { op: 'lookupRoute', args: [dst, { src: lanhost, iif: lan1 }] },
          { op: 'lookupRoute', args: [dst, { src: lanhost, iif: lan1, mark: FWMARK.mark }] },
        ]);
        assert.deepEqual(res.map(via), [r2, r1, r1, r2, r2, r1]);
        assert.equal(await gatewayFor(l, 'gw', { dst, mark: FWMARK.mark }), r1);
        assert.equal(await gatewayFor(l, 'gw', { dst, from: lanhost, iif: 'lan1', mark: FWMARK.mark }), r1);
      });
    }
  });
});
