// BIRD 2 as Debian 12 packages it, in a lab namespace: its control socket spoken by
// src/sys/bird.ts, and what `disable` / `enable` of a protocol does to the kernel's routes.
import { strict as assert } from 'node:assert';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import {
  BIRD_STATIC,
  RD,
  haveBird,
  kernelRoute,
  kernelRoutes,
  routedLabSpec,
  startBird,
  type BirdInstance,
} from '../lab/routingd';
import { BirdControl, parseBirdRoutes } from '../../src/sys/bird';

describe('BIRD 2 in the lab', function () {
  this.timeout(60_000);
  let lab: Lab;
  let bird: BirdInstance;
  let ctl: BirdControl;

  before(async function () {
    requireRoot(this);
    if (!haveBird()) {
      if (process.env.CI === 'true') throw new Error('bird2 is not installed (scripts/setup installs it)');
      this.skip();
    }
    lab = await Lab.create(routedLabSpec());
    bird = await startBird(lab, 'client', BIRD_STATIC);
    ctl = new BirdControl(bird.socket);
    await waitFor(
      async () => /nexthop/.test(await kernelRoute(lab, '198.18.3.0/24')),
      10_000,
      'bird to export',
    );
  });

  after(async () => {
    await bird?.stop();
    await lab?.close();
  });

  it('exports only the best route to the kernel (proto bird), ECMP merged into one multipath route', async () => {
    assert.equal(
      await kernelRoute(lab, '198.18.2.0/24'),
      `198.18.2.0/24 via ${RD.r1} dev lan0 proto bird metric 32`,
    );
    const pair = await kernelRoute(lab, '198.18.3.0/24');
    assert.match(pair, new RegExp(`nexthop via ${RD.r1} dev lan0 weight 1 nexthop via ${RD.r2}`));
    const routes = await ctl.routes();
    const two = routes.filter((r) => r.prefix === '198.18.2.0/24');
    assert.deepEqual(two.map((r) => [r.protocol, r.primary, r.preference, r.gateways]).sort(), [
      ['via_r1', true, 200, [RD.r1]],
      ['via_r2', false, 100, [RD.r2]],
    ]);
    const protos = await ctl.protocols();
    assert.deepEqual(
      protos.map((p) => [p.name, p.proto, p.state]),
      [
        ['device1', 'Device', 'up'],
        ['kernel1', 'Kernel', 'up'],
        ['via_r1', 'Static', 'up'],
        ['via_r2', 'Static', 'up'],
        ['via_r2_ecmp', 'Static', 'up'],
      ],
    );
  });

  it("disable of the dead gateway's protocol exports the backup at once; enable restores exactly", async () => {
    const before = await kernelRoutes(lab);
    await ctl.disable('via_r1');
    await waitFor(
      async () =>
        (await kernelRoute(lab, '198.18.2.0/24')).includes(`via ${RD.r2}`) &&
        (await kernelRoute(lab, '198.18.3.0/24')) ===
          `198.18.3.0/24 via ${RD.r2} dev lan0 proto bird metric 32`,
      3000,
      'bird to export the backups',
    );
    assert.match((await bird.birdc('show route')).stdout, new RegExp(`via_r2 .*\\* \\(100\\)`));
    assert.equal((await ctl.protocols()).find((p) => p.name === 'via_r1')!.state, 'down');
    await ctl.enable('via_r1');
    await waitFor(async () => (await kernelRoutes(lab)) === before, 3000, 'the routes back exactly');
  });

  it("the control socket is reachable with only the unit's capabilities in group bird (the drop-in of docs/host-integration.md), not without it", async () => {
    const as = (groups: string) =>
      lab.exec('client', [
        'setpriv',
        '--reuid=0',
        '--regid=0',
        `--groups=${groups}`,
        '--inh-caps=-all,+net_admin,+net_raw',
        '--bounding-set=-all,+net_admin,+net_raw',
        'birdc',
        '-s',
        bird.socket,
        'show',
        'status',
      ]);
    const ok = await as('bird');
    assert.equal(ok.code, 0, ok.stderr + ok.stdout);
    assert.match(ok.stdout, /BIRD 2\.\d+\.\d+ ready/);
    const denied = await as('root');
    assert.notEqual(denied.code, 0);
  });

  it('names the socket and the problem when BIRD is not there, and refuses odd protocol names', async () => {
    const none = new BirdControl(`${bird.socket}-nonexistent`);
    await assert.rejects(none.protocols(), /bird control socket .*-nonexistent: ENOENT/);
    await assert.rejects(ctl.disable('x"; down'), /not a BIRD protocol name/);
    await assert.rejects(ctl.disable('no_such_protocol'), /bird: 'disable "no_such_protocol"' failed/);
  });
});

describe('BIRD route parsing (no BIRD needed)', () => {
  it('parses show route all: tables, alternatives, multipath, BGP lines', () => {
    const lines = [
      'Table master4:',
      '198.18.3.0/24        unicast [static1 00:17:05.777] * (200)',
      '\tvia 198.18.1.1 on lan0 weight 1',
      '\tvia 198.18.1.2 on lan0 weight 1',
      '198.18.5.0/24        unicast [bgp_r1 00:00:01.000 from 198.18.1.1] * (100) [AS65001i]',
      '\tvia 198.18.1.1 on lan0',
      '                     unicast [bgp_r2 00:00:01.000 from 198.18.1.2] (100) [AS65002i]',
      '\tvia 198.18.1.2 on lan0',
    ].map((text) => ({ code: 1007, text }));
    lines.splice(2, 0, { code: 1008, text: '\tType: static univ' });
    assert.deepEqual(parseBirdRoutes(lines), [
      {
        prefix: '198.18.3.0/24',
        table: 'master4',
        protocol: 'static1',
        primary: true,
        preference: 200,
        gateways: ['198.18.1.1', '198.18.1.2'],
      },
      {
        prefix: '198.18.5.0/24',
        table: 'master4',
        protocol: 'bgp_r1',
        primary: true,
        preference: 100,
        gateways: ['198.18.1.1'],
      },
      {
        prefix: '198.18.5.0/24',
        table: 'master4',
        protocol: 'bgp_r2',
        primary: false,
        preference: 100,
        gateways: ['198.18.1.2'],
      },
    ]);
  });
});
