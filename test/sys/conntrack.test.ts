// The conntrack facade (src/sys/conntrack.ts) against the real kernel table, inside lab namespaces
// (test/fixtures/conntrack-op.ts runs the calls there): flows forwarded and source-NAT'd through
// the multi-WAN lab's gw are dumped with their tuples, state and counters, one is deleted by its
// tuple and is gone (cross-checked with conntrack(8)), dumps filtered by the address entries are
// translated to keep only those, errors carry errno code and syscall, dumps are
// bounded, events arrive, and a namespace that never loaded conntrack has an empty table.
import { strict as assert } from 'node:assert';
import { requireRoot, type Lab } from '../lab/lab';
import { GW, multiWanLab } from '../lab/gateway-topologies';
import { startFlowClient, startFlowServer } from '../lab/flows';
import { startUdpFlow, startUdpServer } from '../lab/udpflow';
import { natOf, type ConntrackEntry } from '../../src/sys/conntrack';

const FIXTURE = 'dist/test/fixtures/conntrack-op.js';
const TCP_PORT = 7000;
const UDP_PORT = 7001;
const UDP_SPORT = 40_001;

type Result<T> =
  | { ok: true; value: T }
  | { ok: false; error: { code: string; errno: number; syscall: string; message: string } };

async function ctOps(lab: Lab, host: string, calls: unknown[]): Promise<Result<unknown>[]> {
  const r = await lab.node(host, FIXTURE, [JSON.stringify(calls)]);
  assert.equal(r.code, 0, `conntrack-op in ${host} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Result<unknown>[];
}

function value<T>(r: Result<unknown> | undefined): T {
  assert.ok(r?.ok, `call failed: ${JSON.stringify(r)}`);
  return r.value as T;
}

describe('conntrack over nfnetlink (lab)', function () {
  this.timeout(60_000);
  let lab: Lab;

  before(async function () {
    requireRoot(this);
    lab = await multiWanLab({ nat: 'snat', acct: true });
    await startFlowServer(lab, 'server', TCP_PORT).listening;
    await startUdpServer(lab, 'server', UDP_PORT);
  });

  after(async () => {
    await lab?.close();
  });

  it('dumps forwarded, source-NATed flows with tuples, TCP state, status, counters and timeout', async () => {
    const tcp = startFlowClient(lab, 'lanhost', GW.server4, TCP_PORT, { intervalMs: 50, durationMs: 8000 });
    const udp = startUdpFlow(lab, 'lanhost', GW.server6, UDP_PORT, UDP_SPORT, { durationMs: 8000 });
    const deadline = Date.now() + 5000;
    while ((tcp.echoes.length < 5 || udp.answers.length < 5) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    assert.ok(tcp.echoes.length >= 5 && udp.answers.length >= 5, 'both flows run through gw');
    const [all, v6] = await ctOps(lab, 'gw', [{ op: 'dump' }, { op: 'dump', args: [{ family: 6 }] }]);
    const entries = value<{ entries: ConntrackEntry[] }>(all).entries;
    const t = entries.find((e) => e.orig.protocol === 6 && e.orig.dport === TCP_PORT);
    assert.ok(t, JSON.stringify(entries));
    assert.equal(t.family, 4);
    assert.equal(t.orig.src, GW.lanhost4);
    assert.equal(t.orig.dst, GW.server4);
    assert.equal(t.reply.src, GW.server4);
    assert.equal(t.reply.dst, GW.gwE0_4, 'the reply goes to the uplink address the entry is bound to');
    assert.deepEqual(natOf(t), { snat: GW.gwE0_4 });
    assert.equal(t.tcpState, 'ESTABLISHED');
    for (const f of ['CONFIRMED', 'SEEN_REPLY', 'ASSURED', 'SRC_NAT'] as const)
      assert.ok(t.flags.includes(f), f);
    assert.ok(t.countersOrig!.packets >= 5 && t.countersReply!.packets >= 5, JSON.stringify(t));
    assert.ok(t.timeout! > 0 && typeof t.id === 'number');
    assert.equal(t.mark, 0);
    assert.equal(t.zone, 0);
    const u = value<{ entries: ConntrackEntry[] }>(v6).entries;
    assert.ok(u.length >= 1 && u.every((e) => e.family === 6), 'a family filter is applied by the kernel');
    const ue = u.find((e) => e.orig.protocol === 17 && e.orig.sport === UDP_SPORT);
    assert.ok(ue, JSON.stringify(u));
    assert.equal(ue.reply.dst, GW.gwE0_6);
    assert.equal(ue.tcpState, undefined);
    // conntrack(8) sees the same entry.
    const cli = await lab.execOk('gw', [
      'conntrack',
      '-L',
      '-f',
      'ipv6',
      '-p',
      'udp',
      '--orig-port-src',
      String(UDP_SPORT),
    ]);
    assert.match(cli, new RegExp(`id=${ue.id}|src=${GW.lanhost6}`));
    tcp.child.kill();
    udp.child.kill();
  });

  it('dumps only the entries translated to one address: IPv4 filtered by the kernel, IPv6 by the facade', async () => {
    const v4 = startUdpFlow(lab, 'lanhost', GW.server4, UDP_PORT, 40_002, { durationMs: 3000 });
    const v6 = startUdpFlow(lab, 'lanhost', GW.server6, UDP_PORT, 40_003, { durationMs: 3000 });
    const deadline = Date.now() + 5000;
    while ((v4.answers.length < 2 || v6.answers.length < 2) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    const srcNat = { value: 0x10, mask: 0x10 };
    const results = await ctOps(
      lab,
      'gw',
      [GW.gwE0_4, GW.gwE1_4, GW.gwE0_6, GW.gwE1_6].map((a) => ({
        op: 'dump',
        args: [{ replyDst: a, status: srcNat }],
      })),
    );
    const [e0v4, e1v4, e0v6, e1v6] = results.map((r) =>
      value<{ entries: ConntrackEntry[]; examined: number }>(r),
    );
    const ports = (d: { entries: ConntrackEntry[] }) => d.entries.map((e) => e.orig.sport);
    assert.ok(ports(e0v4!).includes(40_002), JSON.stringify(e0v4));
    assert.ok(e0v4!.entries.every((e) => e.reply.dst === GW.gwE0_4 && e.flags.includes('SRC_NAT')));
    assert.equal(e0v4!.examined, e0v4!.entries.length, 'the kernel sent only those');
    assert.deepEqual(e1v4!.entries, []);
    assert.ok(ports(e0v6!).includes(40_003), JSON.stringify(e0v6));
    assert.ok(e0v6!.entries.every((e) => e.reply.dst === GW.gwE0_6));
    assert.deepEqual(e1v6!.entries, []);
    v4.child.kill();
    v6.child.kill();
  });

  it('deletes one entry by its tuple, and a second delete fails with ENOENT', async () => {
    // An entry made by hand, so nothing re-creates it while we look.
    const orig = { src: '198.19.7.7', dst: GW.server4, protocol: 17, sport: 5555, dport: 9 };
    const reply = { src: GW.server4, dst: '198.19.7.7', protocol: 17, sport: 9, dport: 5555 };
    const keep = { ...orig, sport: 5556 };
    const keepReply = { ...reply, dport: 5556 };
    const [created, created2, before, del, after, again] = await ctOps(lab, 'gw', [
      { op: 'create', args: [{ orig, reply, timeout: 60 }] },
      { op: 'create', args: [{ orig: keep, reply: keepReply, timeout: 60 }] },
      { op: 'dump', args: [{ family: 4 }] },
      { op: 'delete', args: [{ orig }] },
      { op: 'dump', args: [{ family: 4 }] },
      { op: 'delete', args: [{ orig }] },
    ]);
    value(created);
    value(created2);
    const has = (r: Result<unknown> | undefined, sport: number) =>
      value<{ entries: ConntrackEntry[] }>(r).entries.some(
        (e) => e.orig.src === orig.src && e.orig.sport === sport,
      );
    assert.ok(has(before, 5555) && has(before, 5556));
    value(del);
    assert.ok(!has(after, 5555), 'the deleted entry is gone');
    assert.ok(has(after, 5556), 'its neighbour is not');
    assert.ok(!again!.ok);
    assert.equal(again.error.code, 'ENOENT');
    assert.equal(again.error.errno, 2);
    assert.equal(again.error.syscall, 'ctnetlink_del');
    const cli = await lab.exec('gw', ['conntrack', '-L', '-s', orig.src]);
    assert.doesNotMatch(cli.stdout, /sport=5555/);
    assert.match(cli.stdout, /sport=5556/);
  });

  it('bounds a dump: past the limit, entries are counted, not kept', async () => {
    const [fill, dump] = await ctOps(lab, 'gw', [
      { op: 'fill', args: [300] },
      { op: 'dump', args: [{ limit: 100 }] },
    ]);
    assert.equal(value<{ created: number }>(fill).created, 300);
    const d = value<{ entries: unknown[]; dropped: number }>(dump);
    assert.equal(d.entries.length, 100);
    assert.ok(d.dropped >= 200, `dropped ${d.dropped}`);
  });

  it('rejects bad tuples before they reach the kernel', async () => {
    const [bad] = await ctOps(lab, 'gw', [
      {
        op: 'delete',
        args: [{ orig: { src: '198.18.2.300', dst: GW.server4, protocol: 17, sport: 1, dport: 2 } }],
      },
    ]);
    assert.ok(!bad!.ok);
    assert.match(bad.error.message, /not an IPv4 address/);
  });

  it('reports new and destroyed entries as events', async () => {
    const events = lab.node('gw', FIXTURE, [JSON.stringify([{ op: 'events', args: [1500] }])]);
    await new Promise((r) => setTimeout(r, 500));
    await lab.exec('lanhost', ['ping', '-c1', '-W1', GW.server4]);
    await lab.exec('gw', ['conntrack', '-D', '-p', 'icmp', '-s', GW.lanhost4]);
    const r = await events;
    const seen = value<{ type: string; entry: ConntrackEntry }[]>(
      (JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Result<unknown>[])[0],
    ).filter((e) => e.entry.orig.protocol === 1 && e.entry.orig.src === GW.lanhost4);
    assert.ok(
      seen.some((e) => e.type === 'new'),
      JSON.stringify(seen),
    );
    assert.ok(
      seen.some((e) => e.type === 'destroy'),
      JSON.stringify(seen),
    );
  });

  it('a namespace where conntrack was never needed has an empty table', async () => {
    // r1 forwards the same flows (stateless filter only): nothing is tracked there.
    const [d] = await ctOps(lab, 'r1', [{ op: 'dump' }]);
    assert.deepEqual(value<{ entries: unknown[] }>(d).entries, []);
  });
});
