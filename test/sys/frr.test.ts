// FRR as Debian 12 packages it, in a lab namespace: what zebra does with routes (the facts the
// daemon relies on, checked here so a new FRR that behaves differently is noticed), and the FIB filter of
// src/sys/frr.ts failing over and back through zebra's own election.
import { strict as assert } from 'node:assert';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import {
  FRR_STATIC,
  RD,
  haveFrr,
  kernelRoute,
  kernelRoutes,
  routedLabSpec,
  startFrr,
  type FrrInstance,
} from '../lab/routingd';
import { Vtysh, filterCommands, parseBgpNeighbors, parseFilterState } from '../../src/sys/frr';

describe('FRR (zebra + staticd) in the lab', function () {
  this.timeout(60_000);
  let lab: Lab;
  let frr: FrrInstance;
  let vtysh: Vtysh;

  before(async function () {
    requireRoot(this);
    if (!haveFrr()) {
      if (process.env.CI === 'true') throw new Error('frr is not installed (scripts/setup installs it)');
      this.skip();
    }
    lab = await Lab.create(routedLabSpec());
    frr = await startFrr(lab, 'client', { staticd: FRR_STATIC });
    vtysh = new Vtysh({ vtySocket: frr.dir });
    await waitFor(
      async () => /nhid/.test(await kernelRoute(lab, '198.18.3.0/24')),
      10_000,
      'zebra to install',
    );
  });

  after(async () => {
    await frr?.stop();
    await lab?.close();
  });

  it('installs only the best route, as a nexthop object; the distance-20 backup lives only in its RIB', async () => {
    const best = await kernelRoute(lab, '198.18.2.0/24');
    assert.match(
      best,
      new RegExp(`^198\\.18\\.2\\.0/24 nhid \\d+ via ${RD.r1} dev lan0 proto static metric 20$`),
    );
    const pair = (await lab.ip('client', ['route', 'show', '198.18.3.0/24'])).trim();
    assert.match(pair, /nhid \d+/);
    assert.match(pair, new RegExp(`nexthop via ${RD.r1}`));
    assert.match(pair, new RegExp(`nexthop via ${RD.r2}`));
    const nhid = /nhid (\d+)/.exec(pair)![1]!;
    assert.match(await lab.ip('client', ['nexthop', 'show', 'id', nhid]), /group \d+\/\d+ proto zebra/);
    const rib = await vtysh.ipv4Routes();
    const two = rib.filter((r) => r.prefix === '198.18.2.0/24');
    assert.deepEqual(two.map((r) => [r.distance, r.nexthops[0]!.ip, r.selected]).sort(), [
      [10, RD.r1, true],
      [20, RD.r2, false],
    ]);
  });

  it('puts back a route deleted with `ip route del` and a nexthop group replaced with `ip nexthop replace`', async () => {
    const before = await kernelRoute(lab, '198.18.2.0/24');
    await lab.ip('client', ['route', 'del', '198.18.2.0/24']);
    await waitFor(
      async () => (await kernelRoute(lab, '198.18.2.0/24')) === before,
      10_000,
      'zebra to re-add',
    );
    const pair = (await lab.ip('client', ['route', 'show', '198.18.3.0/24'])).trim();
    const nhid = /nhid (\d+)/.exec(pair)![1]!;
    const group = /group (\S+)/.exec(await lab.ip('client', ['nexthop', 'show', 'id', nhid]))![1]!;
    await lab.ip('client', ['nexthop', 'replace', 'id', nhid, 'group', group.split('/')[0]!]);
    await waitFor(
      async () => (await lab.ip('client', ['nexthop', 'show', 'id', nhid])).includes(`group ${group}`),
      10_000,
      'zebra to restore the group',
    );
  });

  it('the FIB filter makes zebra install its backup and the ECMP survivor at once; removing it restores exactly', async () => {
    const before = await kernelRoutes(lab);
    const configBefore = await vtysh.runningConfig();
    const state = await vtysh.applyFilter({ gateways: [RD.r1], keep: [], protocols: ['static'] });
    assert.deepEqual(state.gateways, [RD.r1]);
    assert.deepEqual(state.protocols, ['static']);
    await waitFor(
      async () =>
        (await kernelRoute(lab, '198.18.2.0/24')).includes(`via ${RD.r2}`) &&
        (await kernelRoute(lab, '198.18.3.0/24')).includes(`via ${RD.r2}`),
      3000,
      'zebra to fail over',
    );
    assert.doesNotMatch(await kernelRoutes(lab), new RegExp(`via ${RD.r1.replace(/\./g, '\\.')}`));
    // zebra's own view says so: the distance-20 route selected, the r1 nexthop inactive.
    const shown = await frr.showRoute();
    assert.match(
      shown,
      new RegExp(`S>\\* 198\\.18\\.2\\.0/24 \\[20/0\\] via ${RD.r2.replace(/\./g, '\\.')}`),
    );
    // A second gateway on the list and off again: each change is a switch to the other map name.
    const s2 = await vtysh.applyFilter({ gateways: [RD.r1, RD.absent], keep: [], protocols: ['static'] });
    assert.notEqual(s2.name, state.name);
    assert.equal(s2.objects.filter((o) => o.includes(state.name!)).length, 0, 'the old map is deleted');
    await vtysh.applyFilter({ gateways: [RD.r1], keep: [], protocols: ['static'] });
    // Revival: the filter goes, and the kernel and zebra's config read exactly as before.
    const cleared = await vtysh.applyFilter({ gateways: [], keep: [], protocols: [] });
    assert.deepEqual(cleared.objects, []);
    assert.equal(cleared.name, null);
    await waitFor(async () => (await kernelRoutes(lab)) === before, 3000, 'the routes back exactly');
    assert.equal(await vtysh.runningConfig(), configBefore);
    assert.doesNotMatch(await frr.runningConfig(), /IPDEADGATE/);
  });

  it('keeps the last route to a destination when asked (keep list), and refuses a protocol filtered by another map', async () => {
    const before = await kernelRoutes(lab);
    await vtysh.applyFilter({ gateways: [RD.r1], keep: ['198.18.2.0/24'], protocols: ['static'] });
    await waitFor(
      async () => (await kernelRoute(lab, '198.18.3.0/24')).includes(`via ${RD.r2}`),
      3000,
      'the ECMP route to lose r1',
    );
    assert.match(await kernelRoute(lab, '198.18.2.0/24'), new RegExp(`via ${RD.r1}`));
    await vtysh.applyFilter({ gateways: [], keep: [], protocols: [] });
    await waitFor(async () => (await kernelRoutes(lab)) === before, 3000, 'the routes back exactly');

    await vtysh.run(
      ['configure terminal', 'route-map OPERATOR permit 10', 'exit', 'ip protocol static route-map OPERATOR'],
      {
        daemon: 'zebra',
      },
    );
    try {
      await assert.rejects(
        vtysh.applyFilter({ gateways: [RD.r1], keep: [], protocols: ['static'] }),
        /already filters static routes with route-map OPERATOR/,
      );
    } finally {
      await vtysh.run(
        ['configure terminal', 'no ip protocol static route-map OPERATOR', 'no route-map OPERATOR'],
        {
          daemon: 'zebra',
        },
      );
    }
  });

  it("vtysh reaches zebra with only the unit's capabilities when in groups frr and frrvty (the drop-in of docs/host-integration.md), not without them", async () => {
    // As packaging/ipdeadgate.service runs the daemon: root, bounding set CAP_NET_ADMIN CAP_NET_RAW
    // (no CAP_DAC_OVERRIDE): FRR's run directory (frr:frr 0750) and /etc/frr/vtysh.conf need group
    // frr, the vty sockets in it (frr:frrvty 0770) group frrvty.
    const as = (groups: string) =>
      lab.exec('client', [
        'setpriv',
        '--reuid=0',
        '--regid=0',
        `--groups=${groups}`,
        '--inh-caps=-all,+net_admin,+net_raw',
        '--bounding-set=-all,+net_admin,+net_raw',
        'vtysh',
        '--vty_socket',
        frr.dir,
        '-c',
        'show ip route json',
      ]);
    const ok = await as('frr,frrvty');
    assert.equal(ok.code, 0, ok.stderr + ok.stdout);
    assert.ok(JSON.parse(ok.stdout)['198.18.2.0/24']);
    const denied = await as('root');
    assert.notEqual(denied.code, 0);
  });

  it('reports a vtysh that cannot reach FRR with the socket directory it tried', async () => {
    const wrong = new Vtysh({ vtySocket: `${frr.dir}-nonexistent` });
    await assert.rejects(wrong.ipv4Routes(), /vtysh .*show ip route json/);
  });
});

describe('FRR filter commands (no FRR needed)', () => {
  it("reads the default VRF's BGP neighbours (not a VRF's, not peer-groups or interfaces)", () => {
    const cfg = [
      'router bgp 65000',
      ' neighbor 198.18.1.1 remote-as 65001',
      ' neighbor 198.18.1.1 shutdown',
      ' neighbor 2001:db8:1::2 remote-as 65002',
      ' neighbor lan0 interface remote-as external',
      ' neighbor GROUP peer-group',
      'exit',
      '!',
      'router bgp 65000 vrf blue',
      ' neighbor 198.18.9.1 remote-as 65009',
      'exit',
    ].join('\n');
    assert.deepEqual(parseBgpNeighbors(cfg), [
      { asn: '65000', address: '198.18.1.1', shutdown: true },
      { asn: '65000', address: '2001:db8:1::2', shutdown: false },
    ]);
  });

  it('reads its own filter back from a running config and leaves foreign bindings alone', () => {
    const cfg = [
      'ip prefix-list IPDEADGATE-B-DEAD seq 5 permit 198.18.1.1/32',
      'route-map IPDEADGATE-B deny 10',
      ' match ip next-hop prefix-list IPDEADGATE-B-DEAD',
      'route-map IPDEADGATE-B permit 20',
      'ip protocol static route-map IPDEADGATE-B',
      'ip protocol bgp route-map OPERATOR',
    ].join('\n');
    const s = parseFilterState(cfg);
    assert.equal(s.name, 'IPDEADGATE-B');
    assert.deepEqual(s.gateways, ['198.18.1.1']);
    assert.deepEqual(s.protocols, ['static']);
    assert.deepEqual(s.foreign, { bgp: 'OPERATOR' });
    const cmds = filterCommands(s, { gateways: ['198.18.1.1'], keep: [], protocols: ['static', 'ospf'] });
    assert.ok(cmds.includes('ip protocol static route-map IPDEADGATE-A'));
    assert.ok(cmds.includes('ip protocol ospf route-map IPDEADGATE-A'));
    assert.ok(cmds.includes('no route-map IPDEADGATE-B'));
    assert.deepEqual(filterCommands(s, { gateways: ['198.18.1.1'], keep: [], protocols: ['static'] }), []);
    assert.throws(
      () => filterCommands(s, { gateways: ['198.18.1.1'], keep: [], protocols: ['bgp'] }),
      /OPERATOR/,
    );
    assert.deepEqual(filterCommands(s, { gateways: [], keep: [], protocols: [] }), [
      'no ip protocol static route-map IPDEADGATE-B',
      'no ip prefix-list IPDEADGATE-B-DEAD',
      'no route-map IPDEADGATE-B',
    ]);
  });
});
