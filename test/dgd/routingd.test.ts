// Routing daemons own their routes: with FRR and BIRD as Debian 12 packages them running
// on the client, a silent death of the preferred gateway under a live flow is failed over by the
// routing daemon itself (told by ipdeadgate through vtysh / BIRD's control socket); revival, `off`,
// SIGTERM and a crash put everything back exactly. Without an adapter, the daemon's withdrawal
// fights zebra: the fight guard stops it after a bounded number of returns, with one event.
import { strict as assert } from 'node:assert';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon, type DaemonEvent } from '../lab/daemon';
import { startFlowClient, startFlowServer, type FlowClient } from '../lab/flows';
import {
  BIRD_BGP,
  BIRD_STATIC,
  FRR_BGP,
  FRR_STATIC,
  RD,
  birdBgpRouter,
  haveBird,
  haveFrr,
  kernelRoute,
  kernelRoutes,
  routedLabSpec,
  startBird,
  startFrr,
  type BirdInstance,
  type FrrInstance,
  asOwnUser,
  atDefaultPaths,
} from '../lab/routingd';
import * as fs from 'node:fs';

/** The real uid of a process (the daemon's, under setpriv). */
function procUid(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

const PORT = 7100;
const esc = (s: string) => s.replace(/\./g, '\\.');

/** Both lab prefixes now leave through r2 only. */
async function failedOver(lab: Lab): Promise<boolean> {
  const a = await kernelRoute(lab, '198.18.2.0/24');
  const b = await kernelRoute(lab, '198.18.3.0/24');
  return a.includes(`via ${RD.r2}`) && b.includes(`via ${RD.r2}`) && !`${a} ${b}`.includes(RD.r1);
}

function flows(lab: Lab, durationMs = 30_000): FlowClient[] {
  return [
    startFlowClient(lab, 'client', RD.server, PORT, { durationMs }),
    startFlowClient(lab, 'client', RD.server3, PORT, { durationMs }),
  ];
}

/**
 * Before a test's flows start: both routers answer the client. A test that ends by reviving r1
 * leaves the client's neighbour entry for it FAILED until something resolves it again, and a
 * connect through a FAILED entry fails at once with EHOSTUNREACH (seen once in five runs).
 */
async function routersAnswer(lab: Lab): Promise<void> {
  for (const r of [RD.r1, RD.r2])
    await waitFor(
      async () => (await lab.exec('client', ['ping', '-c', '1', '-W', '1', r])).code === 0,
      10_000,
      `the client to reach ${r}`,
      100,
    );
}

/** Wait for every flow to carry `n` echoes; on a timeout, say where each one stands. */
async function flowsRunning(lab: Lab, fl: FlowClient[], n: number, timeoutMs = 10_000): Promise<void> {
  try {
    await waitFor(() => fl.every((f) => f.echoes.length >= n), timeoutMs, 'the flows to run');
  } catch (err) {
    const where = fl.map((f) => ({
      connected: f.connectedAt !== null,
      echoes: f.echoes.length,
      errors: f.errors,
    }));
    const neigh = await lab.ip('client', ['neigh', 'show']).catch(() => '');
    throw new Error(
      `${(err as Error).message}: ${JSON.stringify(where)}; routes: ${await kernelRoutes(lab)}; neighbours: ${neigh}`,
    );
  }
}

async function resumedAfter(fs: FlowClient[], t: number, what: string): Promise<void> {
  for (const f of fs) await waitFor(() => f.echoes.some((e) => e.t > t), 15_000, `${what} to resume`);
}

function requireDaemon(ctx: Mocha.Context, have: boolean, pkg: string): void {
  requireRoot(ctx);
  if (have) return;
  if (process.env.CI === 'true') throw new Error(`${pkg} is not installed (scripts/setup installs it)`);
  ctx.skip();
}

describe('routing daemons own their routes: FRR in the lab', function () {
  this.timeout(120_000);
  let lab: Lab;
  let frr: FrrInstance;
  let routesBefore: string;
  let configBefore: string;
  const yaml = () => `dgd:\n  slow_poll_interval: 2s\n  owners:\n    frr:\n      vty_socket: ${frr.dir}\n`;

  before(async function () {
    requireDaemon(this, haveFrr(), 'frr');
    lab = await Lab.create(routedLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    frr = await startFrr(lab, 'client', { staticd: FRR_STATIC });
    await waitFor(async () => /nexthop/.test(await kernelRoute(lab, '198.18.3.0/24')), 10_000, 'zebra');
    routesBefore = await kernelRoutes(lab);
    configBefore = await frr.runningConfig();
  });

  /** Daemons a failed case may have left running (each case stops its own when it passes). */
  const started: LabDaemon[] = [];
  const start = async (yml: string, wrap: string[] = []) => {
    // Its own user gets a state directory of its own (the root daemons' is root's).
    const own = wrap.includes('setpriv') ? ['--state-dir', lab.tempPath('client-state-own')] : [];
    const d = await LabDaemon.start(lab, 'client', yml, own, wrap);
    started.push(d);
    return d;
  };

  afterEach(async () => {
    for (const d of started.splice(0)) await d.stop().catch(() => undefined);
    // Every case leaves r1 alive and FRR as it found it (checked inside the cases).
    await lab?.revive('r1', 'lan0').catch(() => undefined);
  });

  after(async () => {
    await frr?.stop();
    await lab?.close();
  });

  beforeEach(async () => {
    if (lab) await routersAnswer(lab);
  });

  it('static routes with a distance-20 backup and an ECMP pair: zebra fails over under a live flow and back exactly on revival', async () => {
    const d = await LabDaemon.start(lab, 'client', yaml());
    const ready = await d.waitFor((e) => e.event === 'owner_ready', 5000, 'FRR to answer at start');
    assert.match(String(ready.version), /^FRRouting 8\./);
    const fl = flows(lab);
    await flowsRunning(lab, fl, 10);
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const handed = await d.waitFor((e) => e.event === 'routes_handed_over', 15_000, 'routes handed to FRR');
    assert.equal(handed.owner, 'frr');
    assert.equal(handed.ok, true);
    assert.ok(
      Date.parse(handed.time) - t0 < 5000,
      `handed over ${Date.parse(handed.time) - t0} ms after the death`,
    );
    await waitFor(() => failedOver(lab), 3000, 'zebra to install its backups');
    // zebra's own view: the distance-20 route is selected, the ECMP pair has only r2 in the FIB.
    const shown = await frr.showRoute();
    assert.match(shown, new RegExp(`S>\\* 198\\.18\\.2\\.0/24 \\[20/0\\] via ${esc(RD.r2)}`), shown);
    assert.match(shown, new RegExp(`S   198\\.18\\.2\\.0/24 \\[10/0\\] via ${esc(RD.r1)}`), shown);
    assert.match(await frr.runningConfig(), /ip protocol static route-map IPDEADGATE-[AB]/);
    await resumedAfter(fl, Date.parse(handed.time), 'the flows');
    // An operator drops the binding by hand (or FRR restarts): zebra puts r1's routes back, and the
    // daemon tells zebra again.
    const told = d.named('owner_told').length;
    const bound = /ip protocol static route-map (IPDEADGATE-[AB])/.exec(await frr.runningConfig())![1]!;
    await frr.vtysh(['configure terminal', `no ip protocol static route-map ${bound}`]);
    await waitFor(() => d.named('owner_told').length > told, 5000, 'the daemon to tell zebra again');
    await waitFor(() => failedOver(lab), 3000, 'zebra to fail over again');
    const st = await d.status();
    assert.equal(st.gateways.find((g) => g.address === RD.r1)!.state, 'dead');
    const owners = st.route_owners as { owner: string; dead_gateways: string[]; applied: string[] }[];
    assert.equal(owners[0]!.owner, 'frr');
    assert.equal(owners[0]!.dead_gateways[0]!.split('%')[0], RD.r1);
    assert.equal(d.named('routes_withdrawn').filter((e) => (e.routes as string[]).length > 0).length, 0);

    await lab.revive('r1', 'lan0');
    await d.waitFor(
      (e) => e.event === 'routes_restored' && e.gateway === RD.r1,
      20_000,
      'r1 revived and its routes restored',
    );
    await waitFor(
      async () => (await kernelRoutes(lab)) === routesBefore,
      3000,
      'the kernel routes back exactly',
    );
    assert.equal(await frr.runningConfig(), configBefore);
    // And it stays so: zebra's re-installed routes must not make a late refresh tell FRR again (a
    // race seen in the lab: r1 was filtered again after its revival, so its next death went unseen).
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await frr.runningConfig(), configBefore);
    assert.equal(await kernelRoutes(lab), routesBefore);
    assert.equal(await d.stop(), 0);
    assert.equal(await kernelRoutes(lab), routesBefore);
  });

  it('off and SIGTERM undo what FRR was told; after kill -9 the restart reconciles and revival undoes it', async () => {
    let d = await LabDaemon.start(lab, 'client', yaml());
    const fl = flows(lab, 150_000); // bounded; several deaths and revivals, slower under load
    await flowsRunning(lab, fl, 5);
    await lab.killSilently('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_handed_over', 15_000, 'routes handed to FRR');
    await waitFor(() => failedOver(lab), 3000, 'zebra to fail over');

    // off: zebra's filter goes, its routes are as before (through the dead r1: off means off).
    assert.equal((await d.cli(['off'])).code, 0);
    await waitFor(async () => (await kernelRoutes(lab)) === routesBefore, 3000, 'off to restore');
    assert.equal(await frr.runningConfig(), configBefore);
    // on: the flows stall through r1 again, retransmit, and r1 is found dead again.
    const n = d.named('routes_handed_over').length;
    assert.equal((await d.cli(['on'])).code, 0);
    await d.waitFor(
      (e) => e.event === 'routes_handed_over' && d.named('routes_handed_over').indexOf(e) >= n,
      20_000,
      'the second death',
    );
    await waitFor(() => failedOver(lab), 3000, 'zebra to fail over again');

    // SIGTERM: undone before the exit.
    assert.equal(await d.stop(), 0);
    assert.equal(await kernelRoutes(lab), routesBefore);
    assert.equal(await frr.runningConfig(), configBefore);

    // kill -9 while FRR holds r1 as dead: the filter stays (journaled) ...
    d = await LabDaemon.restart(d, yaml());
    await d.waitFor((e) => e.event === 'routes_handed_over', 20_000, 'the third death');
    await waitFor(() => failedOver(lab), 3000, 'zebra to fail over');
    d.child.kill('SIGKILL');
    await waitFor(() => d.exitCode !== null || d.child.signalCode !== null, 5000, 'the daemon to die');
    assert.ok(await failedOver(lab), 'the failover outlives the crash');
    // ... the restart reconciles (r1 is polled at once, still dead: the filter stays) ...
    d = await LabDaemon.restart(d, yaml());
    const loaded = await d.waitFor((e) => e.event === 'journal_loaded', 10_000, 'the journal');
    assert.ok(Object.keys(loaded.owners as object).includes('frr'));
    await d.waitFor((e) => e.event === 'poll' && e.gateway === RD.r1, 10_000, 'r1 polled at start');
    assert.ok(await failedOver(lab));
    // ... and revival undoes it exactly.
    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === RD.r1, 20_000, 'r1 revived');
    await waitFor(async () => (await kernelRoutes(lab)) === routesBefore, 3000, 'the routes back exactly');
    assert.equal(await frr.runningConfig(), configBefore);
    assert.equal(await d.stop(), 0);
  });

  it("with the default config, FRR at its own paths is found and fails over zebra's static route (the daemon as its own user: not root, two capabilities, group frrvty)", async () => {
    // FRR's vty sockets at /run/frr as a host has them (0755: Debian's tmpfiles.d/frr.conf makes it
    // at boot; the sockets in it are frr:frrvty 0770); nothing about FRR in the config.
    fs.chmodSync(frr.dir, 0o755);
    const d = await start('dgd:\n  slow_poll_interval: 2s\n', [
      ...atDefaultPaths({ frr: frr.dir }),
      ...asOwnUser(['frrvty']),
    ]);
    const ready = await d.waitFor((e) => e.event === 'owner_ready', 10_000, 'FRR found at start');
    assert.equal(ready.owner, 'frr');
    assert.equal(ready.mode, 'found');
    assert.equal(d.named('routes_unprotected').length, 0);
    assert.notEqual(procUid(d.child.pid!), 0, 'not root');
    const fl = flows(lab);
    await flowsRunning(lab, fl, 10);
    await lab.killSilently('r1', 'lan0');
    const handed = await d.waitFor((e) => e.event === 'routes_handed_over', 15_000, 'routes handed to FRR');
    assert.equal(handed.owner, 'frr');
    assert.equal(handed.ok, true);
    await waitFor(() => failedOver(lab), 5000, 'zebra to install its backups');
    await resumedAfter(fl, Date.parse(handed.time), 'the flows');
    const st = await d.status();
    const owners = st.route_owners as { owner: string; mode: string; unprotected_routes: string[] }[];
    assert.deepEqual(
      owners.map((o) => [o.owner, o.mode, o.unprotected_routes.length]),
      [['frr', 'found', 0]],
    );
    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === RD.r1, 20_000, 'r1 revived');
    await waitFor(async () => (await kernelRoutes(lab)) === routesBefore, 5000, 'the routes back exactly');
    assert.equal(await frr.runningConfig(), configBefore);
    assert.equal(await d.stop(), 0);
  });

  it("when vtysh cannot reach FRR (its sockets elsewhere), FRR's routes are shown unprotected in status and a start-time warning, with what to set", async () => {
    const d = await start('dgd:\n  slow_poll_interval: 2s\n');
    const warned = await d.waitFor((e) => e.event === 'routes_unprotected', 10_000, 'the warning at start');
    assert.equal(warned.level, 'warn');
    assert.equal(warned.owner, 'frr');
    const routes = (warned.routes as string[]).join(' | ');
    assert.match(routes, /198\.18\.2\.0\/24/);
    assert.match(routes, /198\.18\.3\.0\/24/);
    assert.match(String(warned.error), /vtysh/);
    assert.match(String(warned.hint), /vty_socket/);
    const st = await d.status();
    const frrSt = (
      st.route_owners as { owner: string; mode: string; unprotected_routes: string[]; hint: string }[]
    ).find((o) => o.owner === 'frr')!;
    assert.equal(frrSt.mode, 'unreachable');
    assert.equal(frrSt.unprotected_routes.length, 2, frrSt.unprotected_routes.join(' | '));
    const text = (await d.cli(['status'])).stdout;
    assert.match(text, /routing daemon frr \(found, NOT ANSWERING\)/);
    assert.match(text, /UNPROTECTED .*: 2 route\(s\)\n +198\.18\.2\.0\/24/);
    assert.match(text, /to fix: .*frrvty/);
    assert.equal(await d.stop(), 0);
  });

  it("without an adapter, withdrawing zebra's route is a fight: bounded re-withdrawals, one event, shown in status, never a loop", async () => {
    const limit = 2;
    const d = await LabDaemon.start(
      lab,
      'client',
      `dgd:\n  slow_poll_interval: 2s\n  keep_last_route: false\n  rewithdraw_limit: ${limit}\n  rewithdraw_window: 1m\n  owners:\n    frr: false\n`,
    );
    const fl = flows(lab);
    await flowsRunning(lab, fl, 5);
    await lab.killSilently('r1', 'lan0');
    const isTwo = (e: DaemonEvent) => String(e.route).startsWith('198.18.2.0/24');
    const fight = await d.waitFor(
      (e) => e.event === 'route_fight' && isTwo(e),
      30_000,
      'the fight to be seen',
    );
    assert.equal(fight.routing_daemon, 'frr');
    assert.equal(fight.gateway, RD.r1);
    assert.equal(fight.rewithdrawals, limit);
    // Never a loop: wait through several more of zebra's re-adds; nothing more for that route.
    const rewithdrawn = () => d.named('route_readded').filter(isTwo).length;
    assert.equal(rewithdrawn(), limit);
    await new Promise((r) => setTimeout(r, 4000));
    assert.equal(rewithdrawn(), limit);
    assert.equal(d.named('route_fight').filter(isTwo).length, 1);
    // zebra's route stays through r1 (the fight is given up) and status says why.
    assert.match(await kernelRoute(lab, '198.18.2.0/24'), new RegExp(`via ${esc(RD.r1)}`));
    const contested = async () =>
      (await d.status()).gateways
        .find((g) => g.address === RD.r1)!
        .routes.filter((r) => r.state === 'contested')
        .map((r) => (r as unknown as { dst: string }).dst);
    assert.ok((await contested()).includes('198.18.2.0/24'));
    const text = await d.cli(['status']);
    assert.match(text.stdout, /route 198\.18\.2\.0\/24 (nhid \d+ )?via 198\.18\.1\.1 .*: contested/);
    // Revival ends the fight.
    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === RD.r1, 20_000, 'r1 revived');
    assert.deepEqual(await contested(), []);
    assert.equal(await d.stop(), 0);
    await waitFor(async () => (await kernelRoutes(lab)) === routesBefore, 5000, "zebra's routes as before");
  });
});

describe('routing daemons own their routes: BIRD in the lab', function () {
  this.timeout(120_000);
  let lab: Lab;
  let bird: BirdInstance;

  before(async function () {
    requireDaemon(this, haveBird(), 'bird2');
    lab = await Lab.create(routedLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    bird = await startBird(lab, 'client', BIRD_STATIC);
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

  beforeEach(async () => {
    if (lab) await routersAnswer(lab);
  });

  it('a static protocol per gateway with a lower-preference backup and a merged ECMP pair: BIRD fails over under a live flow; revival and SIGTERM restore exactly', async () => {
    const before = await kernelRoutes(lab);
    const yaml = `dgd:\n  slow_poll_interval: 2s\n  owners:\n    bird:\n      socket: ${bird.socket}\n`;
    const d = await LabDaemon.start(lab, 'client', yaml);
    const ready = await d.waitFor((e) => e.event === 'owner_ready', 5000, 'BIRD to answer at start');
    assert.match(String(ready.version), /^BIRD 2\./);
    const fl = flows(lab, 150_000); // bounded; several deaths and revivals, slower under load
    await flowsRunning(lab, fl, 10);
    await lab.killSilently('r1', 'lan0');
    const handed = await d.waitFor((e) => e.event === 'routes_handed_over', 15_000, 'routes handed to BIRD');
    assert.equal(handed.owner, 'bird');
    assert.deepEqual(handed.applied, [`disable via_r1 (routes via ${RD.r1})`]);
    await waitFor(() => failedOver(lab), 3000, 'BIRD to export its backups');
    assert.match(await kernelRoute(lab, '198.18.2.0/24'), /proto bird/);
    // BIRD's own view: via_r2 is the best route, via_r1 is down.
    const shown = (await bird.birdc('show route')).stdout;
    assert.match(
      shown,
      new RegExp(`198\\.18\\.2\\.0/24\\s+unicast \\[via_r2 [^\\]]*\\] \\* \\(100\\)`),
      shown,
    );
    assert.match((await bird.birdc('show protocols')).stdout, /via_r1\s+Static\s+master4\s+down/);
    await resumedAfter(fl, Date.parse(handed.time), 'the flows');
    // Someone enables the protocol again (or BIRD restarts and forgets): r1's routes come back,
    // and the daemon disables it again.
    const told = d.named('owner_told').length;
    await bird.birdc('enable via_r1');
    await waitFor(() => d.named('owner_told').length > told, 5000, 'the daemon to tell BIRD again');
    await waitFor(() => failedOver(lab), 3000, 'BIRD to fail over again');

    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === RD.r1, 20_000, 'r1 revived');
    await waitFor(async () => (await kernelRoutes(lab)) === before, 3000, 'the routes back exactly');
    assert.match((await bird.birdc('show protocols')).stdout, /via_r1\s+Static\s+master4\s+up/);

    // A second death, then SIGTERM: BIRD's protocol is enabled again before the exit.
    await lab.killSilently('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_handed_over' && e !== handed, 20_000, 'the second death');
    await waitFor(() => failedOver(lab), 3000, 'BIRD to fail over again');
    assert.equal(await d.stop(), 0);
    assert.equal(await kernelRoutes(lab), before);
    assert.match((await bird.birdc('show protocols')).stdout, /via_r1\s+Static\s+master4\s+up/);
    await lab.revive('r1', 'lan0');
  });

  it('with the default config, BIRD at its own socket is found and fails over (the daemon as its own user: not root, two capabilities, group bird)', async () => {
    const before = await kernelRoutes(lab);
    const d = await LabDaemon.start(
      lab,
      'client',
      'dgd:\n  slow_poll_interval: 2s\n',
      ['--state-dir', lab.tempPath('client-state-own')],
      [...atDefaultPaths({ bird: bird.dir }), ...asOwnUser(['bird'])],
    );
    const ready = await d.waitFor((e) => e.event === 'owner_ready', 10_000, 'BIRD found at start');
    assert.equal(ready.owner, 'bird');
    assert.equal(ready.mode, 'found');
    assert.notEqual(procUid(d.child.pid!), 0, 'not root');
    const fl = flows(lab);
    await flowsRunning(lab, fl, 10);
    await lab.killSilently('r1', 'lan0');
    const handed = await d.waitFor((e) => e.event === 'routes_handed_over', 15_000, 'routes handed to BIRD');
    assert.equal(handed.owner, 'bird');
    await waitFor(() => failedOver(lab), 5000, 'BIRD to export its backups');
    await resumedAfter(fl, Date.parse(handed.time), 'the flows');
    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === RD.r1, 20_000, 'r1 revived');
    await waitFor(async () => (await kernelRoutes(lab)) === before, 5000, 'the routes back exactly');
    assert.equal(await d.stop(), 0);
  });

  it('BIRD: off enables the protocol again; after kill -9 the restart keeps it disabled while r1 is dead, and revival enables it', async () => {
    const before = await kernelRoutes(lab);
    const yaml = `dgd:\n  slow_poll_interval: 2s\n  owners:\n    bird:\n      socket: ${bird.socket}\n`;
    let d = await LabDaemon.start(lab, 'client', yaml);
    const fl = flows(lab, 150_000); // bounded; several deaths
    await flowsRunning(lab, fl, 5);
    await lab.killSilently('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_handed_over', 15_000, 'routes handed to BIRD');
    await waitFor(() => failedOver(lab), 3000, 'BIRD to fail over');
    assert.equal((await d.cli(['off'])).code, 0);
    await waitFor(async () => (await kernelRoutes(lab)) === before, 3000, 'off to enable via_r1 again');
    assert.match((await bird.birdc('show protocols')).stdout, /via_r1\s+Static\s+master4\s+up/);
    const n = d.named('routes_handed_over').length;
    assert.equal((await d.cli(['on'])).code, 0);
    await d.waitFor(
      (e) => e.event === 'routes_handed_over' && d.named('routes_handed_over').indexOf(e) >= n,
      20_000,
      'the second death',
    );
    await waitFor(() => failedOver(lab), 3000, 'BIRD to fail over again');
    d.child.kill('SIGKILL');
    await waitFor(() => d.exitCode !== null || d.child.signalCode !== null, 5000, 'the daemon to die');
    d = await LabDaemon.restart(d, yaml);
    const loaded = await d.waitFor((e) => e.event === 'journal_loaded', 10_000, 'the journal');
    assert.ok(Object.keys(loaded.owners as object).includes('bird'));
    await d.waitFor((e) => e.event === 'poll' && e.gateway === RD.r1, 10_000, 'r1 polled at start');
    assert.ok(await failedOver(lab), 'via_r1 stays disabled while r1 is dead');
    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === RD.r1, 20_000, 'r1 revived');
    await waitFor(async () => (await kernelRoutes(lab)) === before, 3000, 'the routes back exactly');
    assert.match((await bird.birdc('show protocols')).stdout, /via_r1\s+Static\s+master4\s+up/);
    assert.equal(await d.stop(), 0);
  });
});

describe('routing daemons own their routes: BGP sessions with two routers in the lab (FRR, then BIRD, on the client)', function () {
  this.timeout(120_000);
  let lab: Lab;
  let frr: FrrInstance;

  before(async function () {
    requireDaemon(this, haveFrr() && haveBird(), 'frr and bird2');
    lab = await Lab.create(routedLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    await startBird(lab, 'r1', birdBgpRouter(RD.r1, 65001, false));
    await startBird(lab, 'r2', birdBgpRouter(RD.r2, 65002, true));
    frr = await startFrr(lab, 'client', { bgpd: FRR_BGP });
    await waitFor(
      async () => /via 198\.18\.1\.1 .*proto bgp/.test(await kernelRoute(lab, '198.18.2.0/24')),
      20_000,
      'BGP to install the route through r1',
      200,
    );
  });

  after(async () => {
    await frr?.stop();
    await lab?.close();
  });

  it("a route learned from r1 and r2: r1 dies silently under a live flow, bgpd drops the session and installs r2's path; revival brings back exactly the same", async () => {
    const before = await kernelRoutes(lab);
    const configBefore = await frr.runningConfig();
    const d = await LabDaemon.start(
      lab,
      'client',
      `dgd:\n  slow_poll_interval: 2s\n  owners:\n    frr:\n      vty_socket: ${frr.dir}\n`,
    );
    const fl = startFlowClient(lab, 'client', RD.server, PORT, { durationMs: 60_000 });
    await waitFor(() => fl.echoes.length >= 10, 5000, 'the flow to run');
    await lab.killSilently('r1', 'lan0');
    const handed = await d.waitFor((e) => e.event === 'routes_handed_over', 15_000, 'routes handed to FRR');
    assert.deepEqual(handed.applied, [`router bgp 65000: neighbor ${RD.r1} shutdown`]);
    await waitFor(
      async () => /via 198\.18\.1\.2 .*proto bgp/.test(await kernelRoute(lab, '198.18.2.0/24')),
      5000,
      "bgpd to install r2's path",
    );
    // FRR's own view: the BGP route through r2 selected, the session with r1 administratively down.
    const shown = await frr.showRoute();
    assert.match(shown, new RegExp(`B>\\* 198\\.18\\.2\\.0/24 \\[20/0\\] via ${esc(RD.r2)}`), shown);
    const summary = (await frr.vtysh(['show bgp summary'])).stdout;
    assert.match(summary, new RegExp(`${esc(RD.r1)} .*Idle \\(Admin\\)`), summary);
    await waitFor(() => fl.echoes.some((e) => e.t > Date.parse(handed.time)), 15_000, 'the flow to resume');

    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === RD.r1, 20_000, 'r1 revived');
    assert.equal(await frr.runningConfig(), configBefore);
    await waitFor(
      async () => (await kernelRoutes(lab)) === before,
      30_000,
      'the session and route back',
      200,
    );
    assert.equal(await d.stop(), 0);
  });

  it("the same routers with BIRD on the client: the dead neighbour's BGP protocol is disabled, r2's path exported; revival enables it again", async () => {
    await frr.stop();
    const bird = await startBird(lab, 'client', BIRD_BGP);
    await waitFor(
      async () => /via 198\.18\.1\.1 .*proto bird/.test(await kernelRoute(lab, '198.18.2.0/24')),
      30_000,
      'BIRD to export the route learned from r1',
      200,
    );
    const before = await kernelRoutes(lab);
    const d = await LabDaemon.start(
      lab,
      'client',
      `dgd:\n  slow_poll_interval: 2s\n  owners:\n    bird:\n      socket: ${bird.socket}\n`,
    );
    const fl = startFlowClient(lab, 'client', RD.server, PORT, { durationMs: 60_000 });
    await waitFor(() => fl.echoes.length >= 10, 5000, 'the flow to run');
    await lab.killSilently('r1', 'lan0');
    const handed = await d.waitFor((e) => e.event === 'routes_handed_over', 15_000, 'routes handed to BIRD');
    assert.deepEqual(handed.applied, [`disable bgp_r1 (routes via ${RD.r1})`]);
    await waitFor(
      async () => /via 198\.18\.1\.2 .*proto bird/.test(await kernelRoute(lab, '198.18.2.0/24')),
      5000,
      "BIRD to export r2's path",
    );
    assert.match((await bird.birdc('show protocols')).stdout, /bgp_r1\s+BGP\s+---\s+down/);
    await waitFor(() => fl.echoes.some((e) => e.t > Date.parse(handed.time)), 15_000, 'the flow to resume');
    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === RD.r1, 20_000, 'r1 revived');
    await waitFor(
      async () => (await kernelRoutes(lab)) === before,
      30_000,
      'the session and route back',
      200,
    );
    assert.equal(await d.stop(), 0);
    await bird.stop();
  });
});
