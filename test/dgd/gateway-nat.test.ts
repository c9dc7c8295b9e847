// Gateway hosts with NAT per uplink (docs/host-integration.md, "Gateway hosts"): conntrack follows
// the routes (src/dgd/conntrackfollow.ts). In the multi-WAN lab (test/lab/gateway-topologies.ts:
// uplinks e0 to r1 and e1 to r2, each its own subnet, ISPs that drop other sources), r1 dies
// silently and comes back; the switch is made by active probing of r1, so what is measured is NAT
// after the switch, apart from detection.
//   - `snat to` each uplink's address: a one-port UDP flow answers again within 3 s of the switch
//     and of the restore, a new TCP connection works during the outage, and that connection is
//     reset at once after the restore (its peer knows it by e1's address, which e0's ISP drops)
//     instead of hanging; with dgd.conntrack.follow off the UDP flow stays unanswered (the problem).
//   - `masquerade` keeps working; a host without NAT loses no conntrack entry.
//
// Run alone:  node_modules/.bin/mocha dist/test/dgd/gateway-nat.test.js
// Each test is bounded (at most 25 s of traffic, waits of at most 8 s per step) and reports the
// times it measured in its assertion messages.
import { strict as assert } from 'node:assert';
import { requireRoot, waitFor, type Lab } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { startFlowClient, startFlowServer } from '../lab/flows';
import { GW, forwardLab } from '../lab/gateway-topologies';
import { TCP_PORT, UDP_PORT, activeR1, multiWanAfterSwitch, sleep } from '../lab/gateway-steps';
import { startUdpFlow, startUdpServer } from '../lab/udpflow';
import type { ConntrackEntry } from '../../src/sys/conntrack';

describe('gateway hosts: NAT per uplink across a switch and a restore (lab)', function () {
  this.timeout(60_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });

  afterEach(async () => {
    await lab?.close();
    lab = undefined;
  });

  it('snat to each uplink: the one-port UDP flow answers within 3 s of the switch and of the restore; TCP opened in the outage is reset at once after it', async () => {
    const r = await multiWanAfterSwitch('snat', 40_010, (l) => (lab = l));
    const measured = JSON.stringify({ ...r, followed: r.followed.map((e) => [e.after, e.deleted]) });
    assert.deepEqual(r.problems, [], measured);
    assert.ok(r.udpAfterRestoreMs !== null && r.udpAfterRestoreMs <= 3000, measured);
    // The connection opened through e1 is known to the server by e1's address: after the restore
    // its entry is deleted, its next segment is translated to e0's address, and the server answers
    // that unknown connection with a reset, which reaches the client at once.
    const t = r.tcpAfterRestore!;
    assert.equal(t.echoMs, null, measured);
    assert.match(t.error ?? '', /ECONNRESET/, measured);
    assert.ok(t.errorMs !== null && t.errorMs <= 2000, measured);
    const [withdrawal, restore] = r.followed;
    assert.equal(withdrawal?.after, 'withdrawal', measured);
    assert.ok((withdrawal!.deleted as number) >= 1, measured);
    assert.match(
      String((withdrawal!.samples as string[])[0]),
      new RegExp(`udp ${GW.lanhost4}:40010 .* \\(was ${GW.gwE0_4}\\)`),
    );
    assert.equal(restore?.after, 'restore', measured);
    assert.ok((restore!.deleted as number) >= 2, `the UDP flow and the TCP connection: ${measured}`);
  });

  it('[problem] snat to each uplink with dgd.conntrack.follow off: the UDP flow gets no answer after the switch', async () => {
    const r = await multiWanAfterSwitch('snat', 40_013, (l) => (lab = l), {
      dgd: '  conntrack: { follow: false }\n',
      restore: false,
    });
    assert.equal(r.udpAfterSwitchMs, null, JSON.stringify(r));
    assert.deepEqual(r.followed, []);
  });

  it('[guard] masquerade: the one-port UDP flow answers within 3 s of the switch and 5 s of the restore', async () => {
    const r = await multiWanAfterSwitch('masquerade', 40_011, (l) => (lab = l));
    assert.deepEqual(r.problems, [], JSON.stringify(r));
  });

  it('[guard] a host without NAT loses no conntrack entry in a switch', async () => {
    const l = (lab = await forwardLab({ routing: 'metric' }));
    await startFlowServer(l, 'server', TCP_PORT).listening;
    await startUdpServer(l, 'server', UDP_PORT);
    const d = await LabDaemon.start(l, 'gw', activeR1(GW.r1_4));
    await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing to start');
    const tcp = startFlowClient(l, 'lanhost', GW.server4, TCP_PORT, { durationMs: 15_000 });
    const udp = startUdpFlow(l, 'lanhost', GW.server4, UDP_PORT, 40_012, { durationMs: 15_000 });
    await waitFor(() => tcp.echoes.length >= 5 && udp.answers.length >= 5, 5000, 'both flows');
    const dump = async (): Promise<ConntrackEntry[]> => {
      const r = await l.node('gw', 'dist/test/fixtures/conntrack-op.js', [JSON.stringify([{ op: 'dump' }])]);
      const [res] = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
        value: { entries: ConntrackEntry[] };
      }[];
      return res!.value.entries.filter((e) => e.orig.src === GW.lanhost4 && e.orig.protocol !== 1);
    };
    const before = await dump();
    assert.equal(before.length, 2, JSON.stringify(before));
    await l.killSilently('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_withdrawn', 5000, 'the switch');
    const followed = await d.waitFor((e) => e.event === 'conntrack_followed', 2000, 'the follow');
    assert.equal(followed.deleted, 0, JSON.stringify(followed));
    await sleep(1000);
    const after = await dump();
    assert.deepEqual(
      after.map((e) => e.id).sort(),
      before.map((e) => e.id).sort(),
      'the same entries, none deleted and re-created',
    );
    await d.stop();
  });
});
