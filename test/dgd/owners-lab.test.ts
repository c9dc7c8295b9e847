// Other route owners on real kernels: a route put back through a dead gateway by
// `ip route add` and by a real DHCP client (Debian's dhcpcd, leases from dnsmasq), and routes
// through nexthop objects and groups (IPv4 and IPv6). One lab for all cases; each starts its own
// daemon and leaves r1 alive again.
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLabSpec } from '../lab/topologies';
import { startFlowClient, startFlowServer } from '../lab/flows';

const PORT = 7000;
const FAST = 'dgd:\n  slow_poll_interval: 2s\n';

async function stableRoutes(lab: Lab): Promise<string> {
  const all =
    (await lab.ip('client', ['-d', 'route', 'show', 'table', 'all'])) +
    (await lab.ip('client', ['-d', '-6', 'route', 'show', 'table', 'all']));
  return all
    .split('\n')
    .filter((l) => l && !/expires|cache/.test(l))
    .sort()
    .join('\n');
}

async function defaults(lab: Lab): Promise<string[]> {
  return (await lab.ip('client', ['-4', 'route', 'show', 'default']))
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/\s+/g, ' ').trim());
}

function journalEntries(d: LabDaemon): unknown[] {
  const j = JSON.parse(fs.readFileSync(path.join(d.stateDir, 'withdrawn-routes.json'), 'utf8')) as {
    entries: unknown[];
  };
  return j.entries;
}

describe('dead gateway detection and other route owners, in the lab', function () {
  this.timeout(120_000);
  let lab: Lab;
  let daemon: LabDaemon | null = null;
  const start = async (yaml: string) => (daemon = await LabDaemon.start(lab, 'client', yaml));

  afterEach(async () => {
    // A failed case must not leave its daemon holding the control socket for the next one.
    await daemon?.stop().catch(() => undefined);
    daemon = null;
  });

  before(async function () {
    requireRoot(this);
    lab = await Lab.create(dgdLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    await lab.blockPing('r1');
  });

  after(async () => {
    await lab?.close();
  });

  it('ip route add through a dead gateway: withdrawn again at once, journaled once, restored once', async () => {
    const before = await stableRoutes(lab);
    const d = await start(FAST);
    startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 20_000 });
    await lab.killSilently('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
    assert.deepEqual(
      (await defaults(lab)).map((l) => l.split(' ')[2]),
      [DGD.r2_4],
    );
    // Someone puts the very same route back by hand.
    const t0 = performance.now();
    await lab.ip('client', ['route', 'add', 'default', 'via', DGD.r1_4, 'dev', 'lan0', 'metric', '100']);
    const again = await d.waitFor(
      (e) => e.event === 'routes_withdrawn' && e.reason === 'route added via a dead gateway',
      5000,
      'the route withdrawn again',
    );
    const afterMs = again.seenAt - t0;
    assert.ok(
      afterMs < 200,
      `withdrawn again ${afterMs.toFixed(0)} ms after ip route add (scan interval 200 ms)`,
    );
    assert.deepEqual(
      (await defaults(lab)).map((l) => l.split(' ')[2]),
      [DGD.r2_4],
    );
    const readded = d.named('route_readded');
    assert.equal(readded.length, 1);
    assert.equal(readded[0]!.owner, 'boot', '`ip route add` without proto installs proto boot');
    assert.equal(journalEntries(d).length, 1, 'journaled once');
    const r1 = (await d.status()).gateways.find((g) => g.address === DGD.r1_4)!;
    assert.deepEqual(
      r1.routes.map((r) => r.state),
      ['withdrawn'],
      'listed once, as withdrawn',
    );
    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored', 15_000, 'routes restored');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(d.named('routes_restored').length, 1, 'restored once');
    assert.equal(await stableRoutes(lab), before);
    assert.equal(await d.stop(), 0);
  });

  it('nexthop objects: a route through a single object is withdrawn, a group loses only the dead member; both back exactly (IPv4, IPv6)', async () => {
    const cmds = [
      `nexthop add id 1 via ${DGD.r1_4} dev lan0`,
      `nexthop add id 2 via ${DGD.r2_4} dev lan0`,
      'nexthop add id 10 group 1,3/2 proto zebra',
      'route add 198.18.9.0/24 nhid 10 metric 50',
      'route add 198.18.8.0/24 nhid 1 metric 10',
      `route add 198.18.8.0/24 via ${DGD.r2_4} metric 20`,
      `nexthop add id 4 via ${DGD.r1_6} dev lan0`,
      `nexthop add id 5 via ${DGD.r2_6} dev lan0 proto static`,
      'nexthop add id 11 group 4,2/5',
      '-6 route add 2001:db8:9::/64 nhid 11 metric 50',
      '-6 route add 2001:db8:8::/64 nhid 4 metric 10',
      `-6 route add 2001:db8:8::/64 via ${DGD.r2_6} metric 20`,
    ];
    for (const c of cmds) await lab.ip('client', c.split(' '));
    try {
      await nexthopCase();
    } finally {
      // Whatever happened, the next case gets the lab as it was.
      await lab.revive('r1', 'lan0').catch(() => undefined);
      for (const dst of ['198.18.9.0/24', '198.18.8.0/24', '198.18.8.0/24'])
        await lab.ip('client', ['route', 'del', dst]).catch(() => '');
      for (const dst of ['2001:db8:9::/64', '2001:db8:8::/64', '2001:db8:8::/64'])
        await lab.ip('client', ['-6', 'route', 'del', dst]).catch(() => '');
      await lab.ip('client', ['nexthop', 'flush']);
    }
  });

  async function nexthopCase(): Promise<void> {
    const nexthops = () => lab.ip('client', ['-d', 'nexthop', 'show']);
    const before = `${await nexthops()}\n${await stableRoutes(lab)}`;
    const d = await start(
      `${FAST}  active:\n    - { gateway: ${DGD.r1_4}, interval: 100ms, misses: 3 }\n` +
        `    - { gateway: ${DGD.r1_6}, interval: 100ms, misses: 3 }\n`,
    );
    await lab.killSilently('r1', 'lan0');
    for (const gw of [DGD.r1_4, DGD.r1_6])
      await d.waitFor(
        (e) => e.event === 'routes_withdrawn' && e.gateway === gw,
        10_000,
        `withdrawal via ${gw}`,
      );
    assert.match(await lab.ip('client', ['nexthop', 'show', 'id', '10']), /group 2 /);
    assert.match(await lab.ip('client', ['nexthop', 'show', 'id', '11']), /group 5 /);
    assert.match(await lab.ip('client', ['nexthop', 'show', 'id', '10']), /proto zebra/, 'owner kept');
    const v4 = await lab.ip('client', ['route', 'show']);
    assert.match(v4, /198\.18\.9\.0\/24 nhid 10/, 'the group route stays');
    assert.doesNotMatch(v4, /198\.18\.9\.0\/24 nhid 10[^\n]*198\.18\.1\.1 /);
    assert.doesNotMatch(v4, /198\.18\.8\.0\/24 nhid 1 /, 'the single-object route is withdrawn');
    const v6 = await lab.ip('client', ['-6', 'route', 'show']);
    assert.doesNotMatch(v6, /2001:db8:8::\/64 nhid 4 /);
    // The group's owner puts the dead member back (`ip nexthop replace`, as zebra would): out again,
    // on the nexthop event alone (the kernel sends no route event for it).
    await lab.ip('client', ['nexthop', 'replace', 'id', '10', 'group', '1,3/2', 'proto', 'zebra']);
    const back = await d.waitFor((e) => e.event === 'route_readded', 5000, 'the member taken out again');
    assert.equal(back.owner, 'zebra');
    await waitFor(
      async () => /group 2 /.test(await lab.ip('client', ['nexthop', 'show', 'id', '10'])),
      2000,
      'group 10 without r1 again',
    );
    // The nexthop objects themselves are left alone.
    assert.match(await lab.ip('client', ['nexthop', 'show', 'id', '1']), /via 198\.18\.1\.1/);
    const st = (await d.status()) as unknown as {
      withdrawn_nexthop_members: { id: number; owner: string }[];
    };
    assert.deepEqual(
      st.withdrawn_nexthop_members.map((m) => [m.id, m.owner]).sort(),
      [
        [10, 'zebra'],
        [11, 'unspec'],
      ].sort(),
    );
    await lab.revive('r1', 'lan0');
    for (const gw of [DGD.r1_4, DGD.r1_6])
      await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === gw, 15_000, `restore via ${gw}`);
    assert.equal(`${await nexthops()}\n${await stableRoutes(lab)}`, before);
    assert.equal(await d.stop(), 0);
  }

  it('a real DHCP client (dhcpcd, leases from dnsmasq) renewing its lease puts its default route back: withdrawn again, owner dhcp', async () => {
    // dnsmasq on r2 hands out r1 as the router; T1 4 s, so dhcpcd renews (and re-adds) every 4 s.
    const dnsmasq = lab.spawn('r2', [
      'dnsmasq',
      '--keep-in-foreground',
      '--conf-file=/dev/null',
      '--port=0',
      '--interface=lan0',
      '--bind-interfaces',
      '--dhcp-range=198.18.1.100,198.18.1.150,255.255.255.0,2m',
      `--dhcp-option=option:router,${DGD.r1_4}`,
      '--dhcp-option=option:T1,4',
      '--dhcp-option=option:T2,100',
      `--dhcp-leasefile=${lab.tempPath('dnsmasq.leases')}`,
      `--pid-file=${lab.tempPath('dnsmasq.pid')}`,
      '--user=root',
      '--log-facility=-',
    ]);
    const conf = lab.tempPath('dhcpcd.conf');
    // metric 150: its default route via r1 is preferred over the static one via r2 (200). (dhcpcd
    // takes over the lab's static default via r1 as its own.)
    fs.writeFileSync(conf, 'ipv4only\nnoipv4ll\nnoarp\nmetric 150\n');
    // dhcpcd keeps its lease, pid file and control socket in /var/lib/dhcpcd and /run: give it its
    // own (ip netns exec runs it in a mount namespace of its own), and no hook scripts, so the
    // host's files are never touched.
    const dhcpcd: ChildProcess = lab.spawn('client', [
      'sh',
      '-c',
      'mount -t tmpfs -o mode=0755 tmpfs /var/lib/dhcpcd && mount -t tmpfs -o mode=0755 tmpfs /run && ' +
        `exec dhcpcd --nobackground --ipv4only --config ${conf} --script /bin/true lan0`,
    ]);
    try {
      await waitFor(
        async () => /proto dhcp/.test(await lab.ip('client', ['route', 'show', 'default'])),
        20_000,
        'the DHCP lease and its default route',
      );
      // dhcpcd treats every default route on its interface as its own and deletes the others when
      // it installs its own: the backup via r2 goes over a second link, as on a dual-homed host.
      await lab.ip('client', [
        'link',
        'add',
        'lan2',
        'type',
        'veth',
        'peer',
        'name',
        'lan2',
        'netns',
        lab.ns('r2'),
      ]);
      await lab.ip('client', ['addr', 'add', '198.18.3.10/24', 'dev', 'lan2']);
      await lab.ip('r2', ['addr', 'add', '198.18.3.2/24', 'dev', 'lan2']);
      await lab.ip('client', ['link', 'set', 'lan2', 'up']);
      await lab.ip('r2', ['link', 'set', 'lan2', 'up']);
      await lab.ip('server', ['route', 'add', '198.18.3.0/24', 'via', DGD.r2s4]);
      await lab.ip('client', ['route', 'del', 'default', 'via', DGD.r2_4, 'dev', 'lan0']).catch(() => '');
      await lab.ip('client', [
        'route',
        'add',
        'default',
        'via',
        '198.18.3.2',
        'dev',
        'lan2',
        'metric',
        '200',
      ]);
      const before = await stableRoutes(lab);
      const d = await start(FAST);
      const flow = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 30_000 });
      await waitFor(() => flow.echoes.length >= 5, 5000, 'the flow to run');
      await lab.killSilently('r1', 'lan0');
      const w = await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
      assert.ok(
        (w.routes as string[]).some((r) => / proto dhcp$/.test(r)),
        JSON.stringify(w.routes),
      );
      // The next renewal puts the DHCP default route back; it goes again.
      const readded = await d.waitFor(
        (e) => e.event === 'route_readded',
        12_000,
        'dhcpcd to put its route back',
      );
      assert.equal(readded.owner, 'dhcp');
      await d.waitFor(
        (e) => e.event === 'routes_withdrawn' && e.seenAt >= readded.seenAt,
        2000,
        'the withdrawal of the re-added route',
      );
      assert.deepEqual(
        (await defaults(lab)).map((l) => l.split(' ')[2]),
        ['198.18.3.2'],
      );
      assert.equal(journalEntries(d).length, 1, 'journaled once');
      await lab.revive('r1', 'lan0');
      await d.waitFor((e) => e.event === 'routes_restored', 15_000, 'routes restored');
      assert.equal(await stableRoutes(lab), before);
      assert.equal(d.named('routes_restored').length, 1);
      assert.equal(await d.stop(), 0);
    } finally {
      dhcpcd.kill('SIGKILL');
      dnsmasq.kill('SIGKILL');
    }
  });
});
