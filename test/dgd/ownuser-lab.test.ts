// The daemon as the packaged unit runs it: its own user (not root) with only CAP_NET_ADMIN and
// CAP_NET_RAW, ambient. Everything detection does with the kernel must work so: the socket scan
// (sock_diag), ARP verification through libpcap, ICMP echo on a raw socket, route and nexthop
// object changes over rtnetlink, conntrack, the state directory and the control socket. The
// daemon runs under setpriv (as nobody) in the lab; a permission problem anywhere shows as a
// failed step or as a warning naming EPERM/EACCES, and fails this test.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { startFlowClient, startFlowServer } from '../lab/flows';
import { asOwnUser } from '../lab/routingd';
import { DGD, dgdLabSpec } from '../lab/topologies';

const PORT = 7300;

/** The routes of the client's main table (plus nexthop objects), comparable across a revival. */
async function snapshot(lab: Lab): Promise<string> {
  const routes = await lab.ip('client', ['route', 'show']);
  const nh = await lab.ip('client', ['nexthop', 'show']);
  return `${routes}\n${nh}`
    .split('\n')
    .map((l) => l.replace(/\s+/g, ' ').trim())
    .filter(Boolean)
    .sort()
    .join('\n');
}

function status(pid: number): string {
  return fs.readFileSync(`/proc/${pid}/status`, 'utf8');
}

describe('the daemon as its own user (not root, CAP_NET_ADMIN and CAP_NET_RAW only), in the lab', function () {
  this.timeout(90_000);
  let lab: Lab;

  before(async function () {
    requireRoot(this);
    lab = await Lab.create(dgdLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    // The server's prefix through a nexthop object via r1, with a backup via r2: the daemon
    // withdraws a nhid route (the last route to a prefix would be kept: keep_last_route).
    await lab.ip('client', ['nexthop', 'add', 'id', '61', 'via', DGD.r1_4, 'dev', 'lan0']);
    await lab.ip('client', ['route', 'add', '198.18.2.0/24', 'nhid', '61', 'metric', '50']);
    await lab.ip('client', ['route', 'add', '198.18.2.0/24', 'via', DGD.r2_4, 'metric', '60']);
  });

  after(async () => {
    await lab?.close();
  });

  it('scans sockets, verifies by ARP and ICMP echo, withdraws and restores routes and a nexthop route, with no permission error', async () => {
    const before = await snapshot(lab);
    const d = await LabDaemon.start(
      lab,
      'client',
      'dgd:\n  slow_poll_interval: 2s\n',
      ['--state-dir', lab.tempPath('client-state-own')],
      asOwnUser(),
    );
    try {
      const st = status(d.child.pid!);
      assert.match(st, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m, 'not root');
      assert.match(st, /^CapEff:\s+0000000000003000$/m);
      assert.match(st, /^CapBnd:\s+0000000000003000$/m);
      // Its state directory is its own (0700), as the unit's StateDirectory= makes it.
      const sd = fs.statSync(lab.tempPath('client-state-own'));
      assert.equal(sd.uid, 65534);
      assert.equal(sd.mode & 0o777, 0o700);

      // A live gateway with a dead server behind it: ARP and ICMP echo (a raw socket) both answer.
      const flow = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 60_000 });
      await waitFor(() => flow.echoes.length >= 10, 10_000, 'the flow to run');
      await lab.killSilently('server', 'wan0');
      await d.waitFor((e) => e.event === 'downstream_problem', 15_000, 'the downstream verdict');
      const alive = d.events.find((e) => e.event === 'verdict' && e.alive === true)!;
      assert.equal(typeof alive.arp_rtt_ms, 'number', JSON.stringify(alive));
      assert.equal(typeof alive.echo_rtt_ms, 'number', `ICMP echo as non-root: ${JSON.stringify(alive)}`);
      await lab.revive('server', 'wan0');
      await waitFor(() => flow.echoes.some((e) => e.t > Date.now() - 300), 20_000, 'the flow back');

      // r1 dies: the socket scan triggers, ARP decides, the routes via r1 leave (the nhid one too).
      await lab.killSilently('r1', 'lan0');
      const withdrawn = await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
      const routes = (withdrawn.routes as string[]).join(' | ');
      assert.match(routes, /198\.18\.2\.0\/24/, routes);
      assert.match(routes, /0\.0\.0\.0\/0 via/, routes);
      await waitFor(
        () => flow.echoes.some((e) => e.t > Date.parse(withdrawn.time)),
        15_000,
        'the flow to resume through r2',
      );
      // The control socket answers its own user.
      assert.equal((await d.status()).gateways.find((g) => g.address === DGD.r1_4)!.state, 'dead');

      await lab.revive('r1', 'lan0');
      await d.waitFor((e) => e.event === 'routes_restored', 20_000, 'routes restored');
      await waitFor(async () => (await snapshot(lab)) === before, 5000, 'the routes back exactly');

      const denied = d.events.filter(
        (e) => e.level !== 'info' && /EPERM|EACCES|permission|not permitted/i.test(JSON.stringify(e)),
      );
      assert.deepEqual(denied, [], 'no step was refused for lack of privilege');
      assert.equal(d.named('conntrack_unavailable').length, 0, 'conntrack works with CAP_NET_ADMIN');
      assert.equal(await d.stop(), 0);
      assert.equal(await snapshot(lab), before);
    } finally {
      await d.stop().catch(() => undefined);
    }
  });
});
