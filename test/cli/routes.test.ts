// `ipdeadgate routes`: the real CLI inside a lab namespace, plus the row builder the daemon will
// feed with its withdrawn routes.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { Lab, requireRoot } from '../lab/lab';
import { DGD, dgdLab } from '../lab/topologies';
import { buildRouteRows, formatRouteTable, type RouteRow } from '../../src/cli/routes';
import type { Route } from '../../src/sys/rtnl';

function route(over: Partial<Route>): Route {
  return {
    family: 4,
    dst: '0.0.0.0/0',
    table: 254,
    metric: 0,
    protocol: 3,
    scope: 0,
    type: 1,
    flags: 0,
    tos: 0,
    gateway: null,
    ifindex: 2,
    ifname: 'lan0',
    prefsrc: null,
    nexthops: null,
    metrics: {},
    raw: null,
    ...over,
  };
}

describe('routes rows (no privileges)', () => {
  const viaR1 = route({ metric: 100, gateway: '198.18.1.1' });
  const viaR2 = route({ metric: 200, gateway: '198.18.1.2' });
  const connected = route({ dst: '198.18.1.0/24', protocol: 2, scope: 253, prefsrc: '198.18.1.10' });
  const local = route({ dst: '198.18.1.10/32', table: 255, type: 2, gateway: '198.18.1.1' });
  const hop = (gateway: string, weight: number) => ({
    gateway,
    ifindex: 2,
    ifname: 'lan0',
    weight,
    flags: 0,
  });
  const mp = route({
    dst: '198.19.7.0/24',
    metric: 20,
    protocol: 4,
    ifindex: null,
    ifname: null,
    nexthops: [hop('198.18.1.1', 3), hop('198.18.1.2', 1)],
  });

  it('keeps gateway routes of every table but local, all active', () => {
    const rows = buildRouteRows([viaR1, viaR2, connected, local, mp]);
    assert.deepEqual(
      rows.map((r) => [r.dst, r.table, r.metric, r.gateway, r.interface, r.protocol, r.state]),
      [
        ['0.0.0.0/0', 'main', 100, '198.18.1.1', 'lan0', 'boot', 'active'],
        ['0.0.0.0/0', 'main', 200, '198.18.1.2', 'lan0', 'boot', 'active'],
        ['198.19.7.0/24', 'main', 20, null, null, 'static', 'active'],
      ],
    );
    assert.deepEqual(rows[2]!.nexthops, [
      { gateway: '198.18.1.1', interface: 'lan0', weight: 3 },
      { gateway: '198.18.1.2', interface: 'lan0', weight: 1 },
    ]);
  });

  it('adds withdrawn routes, and only the missing nexthops of a partly withdrawn multipath route', () => {
    const remaining = { ...mp, nexthops: [hop('198.18.1.2', 1)] };
    const rows = buildRouteRows([viaR2, remaining], [viaR1, mp]);
    assert.deepEqual(
      rows.map((r) => [r.dst, r.metric, r.state, r.gateway, r.nexthops?.map((h) => h.gateway) ?? null]),
      [
        ['0.0.0.0/0', 200, 'active', '198.18.1.2', null],
        ['198.19.7.0/24', 20, 'active', null, ['198.18.1.2']],
        ['0.0.0.0/0', 100, 'withdrawn', '198.18.1.1', null],
        ['198.19.7.0/24', 20, 'withdrawn', null, ['198.18.1.1']],
      ],
    );
  });

  it('prints an aligned table, one line per nexthop', () => {
    const text = formatRouteTable(buildRouteRows([viaR1, mp], [viaR2]));
    const lines = text.trimEnd().split('\n');
    assert.match(lines[0]!, /^DST\s+TABLE\s+METRIC\s+GATEWAY\s+INTERFACE\s+PROTOCOL\s+WEIGHT\s+STATE$/);
    const col = (name: string) => lines[0]!.indexOf(name);
    assert.equal(lines[1]!.indexOf('198.18.1.1'), col('GATEWAY'));
    assert.equal(lines[1]!.indexOf('active'), col('STATE'));
    assert.match(lines[2]!, /^198\.19\.7\.0\/24\s+main\s+20\s+198\.18\.1\.1\s+lan0\s+static\s+3\s+active$/);
    assert.equal(lines[3]!.indexOf('198.18.1.2'), col('GATEWAY'));
    assert.match(lines[3]!, /^\s+198\.18\.1\.2\s+lan0\s+1$/);
    assert.equal(lines[3]!.lastIndexOf('1'), col('WEIGHT'));
    assert.match(lines[4]!, /withdrawn$/);
    assert.equal(formatRouteTable([]), 'no routes through a gateway\n');
  });
});

describe('ipdeadgate routes in the lab', function () {
  this.timeout(60_000);
  let lab: Lab;
  let noDaemon: string;
  before(async function () {
    requireRoot(this);
    lab = await dgdLab();
    noDaemon = lab.tempPath('no-daemon.sock');
    await lab.ip('client', [
      'route',
      'add',
      '198.19.7.0/24',
      'proto',
      'static',
      'metric',
      '20',
      'table',
      '100',
      'nexthop',
      'via',
      DGD.r1_4,
      'dev',
      'lan0',
      'weight',
      '3',
      'nexthop',
      'via',
      DGD.r2_4,
      'dev',
      'lan0',
      'weight',
      '1',
    ]);
  });
  after(async () => {
    await lab?.close();
  });

  it('--json lists both default routes with their metrics, and multipath nexthops with weights', async () => {
    const r = await lab.cli('client', ['routes', '--json', '--control', noDaemon]);
    assert.equal(r.code, 0, r.stderr);
    const rows = JSON.parse(r.stdout) as RouteRow[];
    const defaults4 = rows.filter((x) => x.dst === '0.0.0.0/0');
    assert.deepEqual(
      defaults4.map((x) => ({ ...x })),
      [
        {
          family: 4,
          dst: '0.0.0.0/0',
          table: 'main',
          metric: 100,
          gateway: DGD.r1_4,
          interface: 'lan0',
          protocol: 'boot',
          nexthops: null,
          state: 'active',
        },
        {
          family: 4,
          dst: '0.0.0.0/0',
          table: 'main',
          metric: 200,
          gateway: DGD.r2_4,
          interface: 'lan0',
          protocol: 'boot',
          nexthops: null,
          state: 'active',
        },
      ],
    );
    const defaults6 = rows.filter((x) => x.dst === '::/0');
    assert.deepEqual(
      defaults6.map((x) => [x.metric, x.gateway, x.interface]),
      [
        [100, DGD.r1_6, 'lan0'],
        [200, DGD.r2_6, 'lan0'],
      ],
    );
    const mp = rows.find((x) => x.dst === '198.19.7.0/24')!;
    assert.deepEqual(
      [mp.table, mp.metric, mp.protocol, mp.nexthops],
      [
        '100',
        20,
        'static',
        [
          { gateway: DGD.r1_4, interface: 'lan0', weight: 3 },
          { gateway: DGD.r2_4, interface: 'lan0', weight: 1 },
        ],
      ],
    );
    // Connected routes and the local table have no gateway and are not listed.
    assert.ok(rows.every((x) => x.gateway !== null || x.nexthops !== null));
    assert.ok(!rows.some((x) => x.table === 'local'));
  });

  it('prints an aligned table', async () => {
    const r = await lab.cli('client', ['routes', '--control', noDaemon]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^DST\s+TABLE\s+METRIC\s+GATEWAY\s+INTERFACE\s+PROTOCOL\s+WEIGHT\s+STATE$/);
    assert.ok(
      lines.some((l) => /^0\.0\.0\.0\/0\s+main\s+100\s+198\.18\.1\.1\s+lan0\s+boot\s+active$/.test(l)),
      r.stdout,
    );
    assert.ok(
      lines.some((l) => /^::\/0\s+main\s+200\s+2001:db8:1::2\s+lan0\s+boot\s+active$/.test(l)),
      r.stdout,
    );
  });

  it('bad usage exits 2 with a message and no stack trace', async () => {
    for (const args of [
      ['routes', '--bogus'],
      ['routes', 'extra'],
    ]) {
      const r = await lab.cli('client', args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /error: (unknown option '--bogus'|too many arguments)/);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    }
  });

  it('shows the routes a running daemon has withdrawn, asked over its control socket', async () => {
    // What the daemon does when r1 dies: journal the route, delete it from the kernel.
    const listed = await lab.node('client', 'dist/test/fixtures/rtnl-op.js', [
      JSON.stringify([{ op: 'listRoutes', args: [{ family: 4, table: 254 }] }]),
    ]);
    const [res] = JSON.parse(listed.stdout) as { value: Route[] }[];
    const viaR1 = res!.value.find((r) => r.gateway === DGD.r1_4)!;
    await lab.ip('client', ['route', 'del', 'default', 'via', DGD.r1_4, 'metric', '100']);
    // A stand-in for the daemon's control socket (JSON lines: {cmd,args} -> {ok,result}).
    const sockPath = lab.tempPath('ctl.sock');
    const asked: string[] = [];
    const server = net.createServer((c) => {
      let buf = '';
      c.on('data', (d) => {
        buf += d.toString();
        if (!buf.includes('\n')) return;
        const req = JSON.parse(buf.slice(0, buf.indexOf('\n'))) as { cmd: string };
        asked.push(req.cmd);
        c.end(
          JSON.stringify(
            req.cmd === 'withdrawn'
              ? { ok: true, result: [viaR1] }
              : { ok: false, error: { code: 'ERR_UNKNOWN', message: 'no' } },
          ) + '\n',
        );
      });
    });
    await new Promise<void>((resolve) => server.listen(sockPath, resolve));
    try {
      const r = await lab.cli('client', ['routes', '--json', '--control', sockPath]);
      assert.equal(r.code, 0, r.stderr);
      const rows = (JSON.parse(r.stdout) as RouteRow[]).filter((x) => x.dst === '0.0.0.0/0');
      assert.deepEqual(
        rows.map((x) => [x.metric, x.gateway, x.state]),
        [
          [200, DGD.r2_4, 'active'],
          [100, DGD.r1_4, 'withdrawn'],
        ],
      );
      assert.deepEqual(asked, ['withdrawn']);
    } finally {
      server.close();
      await lab.ip('client', ['route', 'add', 'default', 'via', DGD.r1_4, 'dev', 'lan0', 'metric', '100']);
    }
  });
});
