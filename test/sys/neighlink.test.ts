import { strict as assert } from 'node:assert';
import { UsageError } from '../../src/errors';
import {
  buildArpReply,
  buildNeighbourAdvertisement,
  decodeNeighbourFrame,
  encodeEthernet,
  NeighbourLink,
  NeighbourLinks,
  pickArpSender,
  pickNsSource,
  neighbourFilter,
  type FrameTransport,
  type InterfaceAddresses,
  type NeighbourSighting,
} from '../../src/sys/packet';
import { type Lab, requireRoot } from '../lab/lab';
import { macOf, waitDgdLabReady } from '../fixtures/neigh-lab';
import { nodeAsNobody } from '../fixtures/unprivileged';
import { DGD, dgdLab } from '../lab/topologies';

const FIXTURE = 'dist/test/fixtures/neigh-probe.js';

interface FixtureOut {
  result?: { mac: string; rttMs: number; probesSent: number } | null;
  results?: ({ mac: string; rttMs: number; probesSent: number } | null)[];
  elapsedMs?: number;
  mac?: string;
  stats?: { framesSent: number; droppedMalformed: number; droppedTruncated: number };
  sightings?: NeighbourSighting[];
  error?: { name: string; code: string; message: string };
}

async function fixture(lab: Lab, args: object): Promise<FixtureOut> {
  const r = await lab.node('client', FIXTURE, [JSON.stringify(args)]);
  assert.equal(
    r.stderr.replace(/^Warning: .*This may not actually work\n/m, ''),
    '',
    `fixture stderr: ${r.stderr}`,
  );
  return JSON.parse(r.stdout) as FixtureOut;
}

describe('neighlink: ARP and NDP on a real link (lab)', function () {
  let lab: Lab;
  let r1mac: string;
  let r2mac: string;

  before(async function () {
    requireRoot(this);
    lab = await dgdLab();
    await waitDgdLabReady(lab);
    r1mac = await macOf(lab, 'r1', 'lan0');
    r2mac = await macOf(lab, 'r2', 'lan0');
  });
  after(async () => {
    await lab?.close();
  });

  it('resolves a live IPv4 gateway by ARP with its real MAC', async () => {
    const out = await fixture(lab, {
      op: 'resolve',
      ifname: 'lan0',
      ip: DGD.r1_4,
      probes: 3,
      intervalMs: 200,
    });
    assert.ok(out.result, JSON.stringify(out));
    assert.equal(out.result.mac, r1mac);
    assert.equal(out.result.probesSent, 1);
    assert.ok(out.result.rttMs >= 0 && out.result.rttMs < 100, `rtt ${out.result.rttMs}`);
    assert.equal(out.mac, await macOf(lab, 'client', 'lan0'));
  });

  it("puts the client's own address in the ARP sender field (the router learns it)", async () => {
    await lab.ip('r2', ['neigh', 'flush', 'dev', 'lan0']);
    const out = await fixture(lab, {
      op: 'resolve',
      ifname: 'lan0',
      ip: DGD.r2_4,
      probes: 2,
      intervalMs: 200,
    });
    assert.equal(out.result?.mac, r2mac);
    const neigh = await lab.ip('r2', ['neigh', 'show', DGD.client4, 'dev', 'lan0']);
    assert.match(neigh, new RegExp(await macOf(lab, 'client', 'lan0')));
  });

  it('resolves a live IPv6 gateway by neighbour solicitation with its real MAC', async () => {
    const out = await fixture(lab, {
      op: 'resolve',
      ifname: 'lan0',
      ip: DGD.r1_6,
      probes: 3,
      intervalMs: 200,
      watchMs: 50,
    });
    assert.ok(out.result, JSON.stringify(out));
    assert.equal(out.result.mac, r1mac);
    assert.equal(out.result.probesSent, 1);
    const na = out.sightings!.find((s) => s.kind === 'na' && s.ip === DGD.r1_6);
    assert.ok(na, JSON.stringify(out.sightings));
    assert.equal(na.unsolicited, false, 'an answer to our NS carries the Solicited flag');
    assert.equal(na.family, 6);
  });

  it('accepts an IPv6 address in any spelling and reports it canonically', async () => {
    const out = await fixture(lab, {
      op: 'resolve',
      ifname: 'lan0',
      ip: '2001:DB8:1:0:0:0:0:2',
      probes: 2,
      intervalMs: 200,
    });
    assert.equal(out.result?.mac, r2mac);
  });

  it('resolves a link-local IPv6 neighbour from our link-local address', async () => {
    const out = await lab.ip('r1', ['-6', '-o', 'addr', 'show', 'dev', 'lan0', 'scope', 'link']);
    const ll = /inet6 (fe80::[0-9a-f:]+)\//.exec(out)![1]!;
    const res = await fixture(lab, {
      op: 'resolve',
      ifname: 'lan0',
      ip: `${ll}%lan0`,
      probes: 3,
      intervalMs: 200,
    });
    assert.equal(res.result?.mac, r1mac);
  });

  it('resolves several neighbours at once on one handle, a missing one to null', async () => {
    const out = await fixture(lab, {
      op: 'concurrent',
      ifname: 'lan0',
      ips: [DGD.r1_4, DGD.r2_6, '198.18.1.99', DGD.r2_4],
      probes: 2,
      intervalMs: 150,
    });
    assert.equal(out.results![0]?.mac, r1mac);
    assert.equal(out.results![1]?.mac, r2mac);
    assert.equal(out.results![2], null);
    assert.equal(out.results![3]?.mac, r2mac);
    assert.ok(out.elapsedMs! >= 290 && out.elapsedMs! < 1000, `elapsed ${out.elapsedMs}`);
  });

  describe('a silently dead gateway', () => {
    before(async () => {
      await lab.killSilently('r1', 'lan0');
    });
    after(async () => {
      await lab.revive('r1', 'lan0');
    });

    it('gets no ARP answer: null after probes x interval, all probes sent', async () => {
      const out = await fixture(lab, {
        op: 'resolve',
        ifname: 'lan0',
        ip: DGD.r1_4,
        probes: 3,
        intervalMs: 100,
      });
      assert.equal(out.result, null, JSON.stringify(out));
      assert.equal(out.stats!.framesSent, 3);
      assert.ok(out.elapsedMs! >= 295 && out.elapsedMs! < 600, `elapsed ${out.elapsedMs}`);
    });

    it('gets no NDP answer either', async () => {
      const out = await fixture(lab, {
        op: 'resolve',
        ifname: 'lan0',
        ip: DGD.r1_6,
        probes: 3,
        intervalMs: 100,
      });
      assert.equal(out.result, null, JSON.stringify(out));
      assert.equal(out.stats!.framesSent, 3);
    });

    it('while the other gateway still answers', async () => {
      const out = await fixture(lab, {
        op: 'resolve',
        ifname: 'lan0',
        ip: DGD.r2_4,
        probes: 3,
        intervalMs: 100,
      });
      assert.equal(out.result?.mac, r2mac);
    });
  });

  it('answers again once the gateway revives', async () => {
    const out = await fixture(lab, {
      op: 'resolve',
      ifname: 'lan0',
      ip: DGD.r1_4,
      probes: 3,
      intervalMs: 100,
    });
    assert.equal(out.result?.mac, r1mac);
  });

  it('without CAP_NET_RAW: EPERM with a hint saying what is needed', async () => {
    const r = await lab.exec('client', nodeAsNobody(FIXTURE, JSON.stringify({ op: 'open', ifname: 'lan0' })));
    const out = JSON.parse(r.stdout) as FixtureOut;
    assert.equal(out.error?.code, 'EPERM', r.stdout + r.stderr);
    assert.match(out.error!.message, /^EPERM: opening lan0 for ARP\/NDP needs .*CAP_NET_RAW \(run as root\)/);
  });

  it('refuses an unknown interface with a UsageError naming it', async () => {
    const out = await fixture(lab, { op: 'open', ifname: 'nosuch0' });
    assert.equal(out.error?.name, 'UsageError');
    assert.match(out.error!.message, /no network interface named "nosuch0"/);
  });
});

// ---------------------------------------------------------------------------------------------
// The same class over a fake transport: decoding defences and timing, without a lab.

const ME: InterfaceAddresses = {
  mac: '02:00:00:00:00:10',
  ipv4: [
    { address: '198.18.9.10', prefixLength: 24 },
    { address: '198.18.1.10', prefixLength: 24 },
  ],
  ipv6: [
    { address: 'fe80::10', prefixLength: 64 },
    { address: '2001:db8:1::10', prefixLength: 64 },
  ],
};
const GW = { mac: '02:00:00:00:00:01', ip4: '198.18.1.1', ip6: '2001:db8:1::1' };

class FakeTransport implements FrameTransport {
  sent: Buffer[] = [];
  filters: string[] = [];
  setFilter(filter: string): void {
    this.filters.push(filter);
  }
  closed = 0;
  receiver: ((frame: Buffer, truncated: boolean) => void) | null = null;
  /** Called for every frame sent; may answer by calling deliver(). */
  responder: ((frame: Buffer) => void) | null = null;
  send(frame: Buffer): void {
    this.sent.push(Buffer.from(frame));
    this.responder?.(frame);
  }
  onFrame(receiver: (frame: Buffer, truncated: boolean) => void): void {
    this.receiver = receiver;
  }
  close(): void {
    this.closed++;
  }
  /** Deliver through one reused buffer, as cap does. */
  private readonly shared = Buffer.alloc(2048);
  deliver(frame: Buffer, truncated = false): void {
    frame.copy(this.shared);
    this.receiver!(this.shared.subarray(0, frame.length), truncated);
    this.shared.fill(0xee);
  }
}

describe('neighlink: decoding and timing over a fake transport', () => {
  let t: FakeTransport;
  let link: NeighbourLink;
  beforeEach(() => {
    t = new FakeTransport();
    link = NeighbourLink.withTransport('fake0', t, ME);
  });
  afterEach(() => link.close());

  it('picks the sender address on the target subnet (ARP) and prefix (NS)', () => {
    assert.equal(pickArpSender(ME, '198.18.1.1'), '198.18.1.10');
    assert.equal(pickArpSender(ME, '198.18.200.1'), '198.18.9.10');
    assert.equal(pickArpSender({ ...ME, ipv4: [] }, '198.18.1.1'), '0.0.0.0');
    assert.equal(pickNsSource(ME, '2001:db8:1::1'), '2001:db8:1::10');
    assert.equal(pickNsSource(ME, 'fe80::1'), 'fe80::10');
    assert.equal(pickNsSource({ ...ME, ipv6: [] }, '2001:db8:1::1'), '::');
    link.sendArpRequest(GW.ip4);
    const d = decodeNeighbourFrame(t.sent[0]!);
    assert.ok(d?.proto === 'arp');
    assert.equal(d.arp.senderIp, '198.18.1.10');
    assert.equal(d.eth.dst, 'ff:ff:ff:ff:ff:ff');
    link.sendNeighbourSolicitation(GW.ip6, { unicastMac: GW.mac });
    const n = decodeNeighbourFrame(t.sent[1]!);
    assert.ok(n?.proto === 'ndp');
    assert.equal(n.eth.dst, GW.mac);
    assert.equal(n.ip6.src, '2001:db8:1::10');
  });

  it('emits sightings with copied values and classifies them', () => {
    const seen: NeighbourSighting[] = [];
    link.on('sighting', (s: NeighbourSighting) => seen.push(s));
    t.deliver(
      buildArpReply({ senderMac: GW.mac, senderIp: GW.ip4, targetMac: ME.mac, targetIp: '198.18.1.10' }),
    );
    t.deliver(
      buildArpReply({
        senderMac: GW.mac,
        senderIp: GW.ip4,
        targetMac: 'ff:ff:ff:ff:ff:ff',
        targetIp: GW.ip4,
      }),
    );
    t.deliver(
      buildNeighbourAdvertisement({
        srcMac: GW.mac,
        srcIp: GW.ip6,
        dstMac: '33:33:00:00:00:01',
        dstIp: 'ff02::1',
        target: GW.ip6,
        solicited: false,
      }),
    );
    // Our own outgoing request is seen on the wire and ignored.
    link.sendArpRequest(GW.ip4);
    t.deliver(t.sent[0]!);
    assert.deepEqual(
      seen.map((s) => [s.kind, s.ip, s.mac, s.unsolicited]),
      [
        ['arp-reply', GW.ip4, GW.mac, false],
        ['garp', GW.ip4, GW.mac, true],
        ['na', GW.ip6, GW.mac, true],
      ],
    );
    assert.equal(link.stats.ignored, 1);
  });

  it('counts and drops truncated and malformed frames; a throwing listener does not escape', () => {
    const good = buildArpReply({
      senderMac: GW.mac,
      senderIp: GW.ip4,
      targetMac: ME.mac,
      targetIp: '198.18.1.10',
    });
    const bad = Buffer.from(good);
    bad.writeUInt16BE(9, 20); // ARP op 9
    const errors: Error[] = [];
    link.on('error', (e: Error) => errors.push(e));
    link.on('sighting', () => {
      throw new Error('listener bug');
    });
    assert.doesNotThrow(() => {
      t.deliver(good.subarray(0, 30));
      t.deliver(Buffer.alloc(0));
      t.deliver(bad);
      t.deliver(good, true);
      t.deliver(good);
    });
    assert.equal(link.stats.droppedTruncated, 3);
    assert.equal(link.stats.droppedMalformed, 1);
    assert.equal(link.stats.sightings, 1);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.message, /listener bug/);
  });

  it('resolve: answered on the second probe, RTT from the latest probe', async () => {
    t.responder = (frame) => {
      if (t.sent.length === 2)
        setTimeout(
          () =>
            t.deliver(
              buildArpReply({
                senderMac: GW.mac,
                senderIp: GW.ip4,
                targetMac: ME.mac,
                targetIp: '198.18.1.10',
              }),
            ),
          5,
        );
      void frame;
    };
    const started = performance.now();
    const r = await link.resolve(GW.ip4, { probes: 3, intervalMs: 40 });
    assert.ok(r);
    assert.equal(r.probesSent, 2);
    assert.ok(r.rttMs >= 4 && r.rttMs < 30, `rtt ${r.rttMs}`);
    assert.ok(performance.now() - started >= 44);
  });

  it('resolve: a reply from another address or an NS from the target does not count', async () => {
    t.responder = () => {
      t.deliver(
        buildArpReply({
          senderMac: '02:00:00:00:00:02',
          senderIp: '198.18.1.2',
          targetMac: ME.mac,
          targetIp: '198.18.1.10',
        }),
      );
    };
    assert.equal(await link.resolve(GW.ip4, { probes: 2, intervalMs: 10 }), null);
    assert.equal(t.sent.length, 2);
  });

  it('resolve: aborts with AbortError, rejects after close, validates its options', async () => {
    const ac = new AbortController();
    const p = link.resolve(GW.ip6, { probes: 5, intervalMs: 50, signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(p, (e: Error & { code?: string }) => e.code === 'ABORT_ERR');
    const q = link.resolve(GW.ip4, { probes: 5, intervalMs: 50 });
    link.close();
    await assert.rejects(q, (e: Error & { code?: string }) => e.code === 'ERR_CLOSED');
    assert.equal(t.closed, 1);
    link.close();
    assert.equal(t.closed, 1, 'close is idempotent');
    assert.throws(() => link.sendArpRequest(GW.ip4), /closed/);
    const l2 = NeighbourLink.withTransport('fake1', new FakeTransport(), ME);
    assert.throws(() => l2.resolve(GW.ip4, { probes: 0, intervalMs: 10 }), RangeError);
    assert.throws(() => l2.resolve('gateway', { probes: 1, intervalMs: 10 }), RangeError);
    assert.throws(() => l2.sendArpRequest(GW.ip6), TypeError);
    l2[Symbol.dispose]();
  });

  it('NeighbourLinks opens one link per interface and does not cache a failed open', async () => {
    let opened = 0;
    const links = new NeighbourLinks(async (ifname) => {
      opened++;
      if (ifname === 'bad0') throw new UsageError('no network interface named "bad0"');
      return NeighbourLink.withTransport(ifname, new FakeTransport(), ME);
    });
    const [a, b] = await Promise.all([links.get('x0'), links.get('x0')]);
    assert.equal(a, b);
    await assert.rejects(links.get('bad0'), UsageError);
    await assert.rejects(links.get('bad0'), UsageError);
    assert.equal(opened, 3);
    await links.close();
    assert.equal(a.isClosed, true);
  });

  describe('only answers to our own questions count', () => {
    const OTHER = '02:00:00:00:00:66';
    const replyToUs = (o: Partial<{ senderMac: string; targetMac: string; targetIp: string }> = {}) =>
      buildArpReply({
        senderMac: o.senderMac ?? GW.mac,
        senderIp: GW.ip4,
        targetMac: o.targetMac ?? ME.mac,
        targetIp: o.targetIp ?? '198.18.1.10',
      });
    const sightings = () => {
      const seen: NeighbourSighting[] = [];
      link.on('sighting', (s: NeighbourSighting) => seen.push(s));
      return seen;
    };

    it('a frame for another MAC (flooded by a bridge) is dropped undecoded, as the kernel drops it', () => {
      const seen = sightings();
      const f = replyToUs({ targetMac: OTHER });
      f.write('020000000066', 0, 'hex'); // Ethernet destination: the unknown unicast MAC
      t.deliver(f);
      assert.equal(seen.length, 0);
      assert.equal(link.stats.notForUs, 1);
    });

    it('an ARP reply counts only to our MAC and address, from its own sender MAC', () => {
      const seen = sightings();
      t.deliver(replyToUs());
      const spoofedSource = replyToUs();
      spoofedSource.write('020000000066', 6, 'hex'); // Ethernet source differs from the ARP sender
      t.deliver(spoofedSource);
      t.deliver(replyToUs({ targetIp: '198.18.77.7' })); // to an address that is not ours
      const toOtherMacInside = replyToUs();
      toOtherMacInside.write('020000000066', 14 + 18, 'hex'); // ARP target MAC not ours
      t.deliver(toOtherMacInside);
      assert.deepEqual(
        seen.map((s) => s.answer),
        [true, false, false, false],
      );
    });

    it('a gratuitous ARP and an unsolicited NA are sightings, never answers', () => {
      const seen = sightings();
      t.deliver(
        buildArpReply({
          senderMac: GW.mac,
          senderIp: GW.ip4,
          targetMac: 'ff:ff:ff:ff:ff:ff',
          targetIp: GW.ip4,
        }),
      );
      const na = (o: { solicited: boolean; dstIp?: string; withTargetMac?: boolean }) =>
        buildNeighbourAdvertisement({
          srcMac: GW.mac,
          srcIp: GW.ip6,
          dstMac: ME.mac,
          dstIp: o.dstIp ?? '2001:db8:1::10',
          target: GW.ip6,
          solicited: o.solicited,
          withTargetMac: o.withTargetMac ?? true,
        });
      t.deliver(na({ solicited: false }));
      t.deliver(na({ solicited: true, dstIp: '2001:db8:1::77' }));
      t.deliver(na({ solicited: true, withTargetMac: false }));
      t.deliver(na({ solicited: true }));
      assert.deepEqual(
        seen.map((s) => [s.kind, s.answer]),
        [
          ['garp', false],
          ['na', false],
          ['na', false],
          ['na', false],
          ['na', true],
        ],
      );
    });

    it('resolve with an expected MAC listens on past another MAC and reports both', async () => {
      t.responder = () => {
        if (t.sent.length === 1) {
          t.deliver(replyToUs({ senderMac: OTHER }));
          setTimeout(() => t.deliver(replyToUs()), 5);
        }
      };
      const r = await link.resolve(GW.ip4, {
        probes: 3,
        intervalMs: 30,
        untilDeadline: true,
        expectMac: GW.mac,
      });
      assert.ok(r);
      assert.equal(r.mac, GW.mac);
      assert.deepEqual(
        r.answers.map((a) => a.mac),
        [OTHER, GW.mac],
      );
    });

    it('resolve with only another MAC answering waits for the deadline and returns what it heard', async () => {
      t.responder = () => t.deliver(replyToUs({ senderMac: OTHER }));
      const started = performance.now();
      const r = await link.resolve(GW.ip4, {
        probes: 2,
        intervalMs: 20,
        untilDeadline: true,
        expectMac: GW.mac,
      });
      assert.ok(performance.now() - started >= 39);
      assert.ok(r);
      assert.equal(r.mac, OTHER);
      assert.equal(r.answers[0]!.count, 2);
      assert.equal(t.sent.length, 2);
    });

    it('echo terms are in the kernel filter only while a gateway is resolved', async () => {
      assert.doesNotMatch(neighbourFilter(ME.mac), /icmp-echo|== 128/);
      assert.match(neighbourFilter(ME.mac), /ether dst 02:00:00:00:00:10 or ether multicast/);
      const quiet = t.filters.length;
      await link.resolve(GW.ip4, { probes: 1, intervalMs: 5 });
      assert.equal(t.filters.length, quiet, 'an active probe does not touch the filter');
      const p = link.resolve(GW.ip4, { probes: 1, intervalMs: 10, watchEcho: true });
      assert.match(t.filters.at(-1)!, new RegExp(`icmp and host ${GW.ip4.replace(/\./g, '\\.')}`));
      await p;
      assert.doesNotMatch(t.filters.at(-1)!, /icmp-echo/);
    });
  });

  it('ignores frames of other protocols', () => {
    t.deliver(encodeEthernet({ dst: ME.mac, src: GW.mac, ethertype: 0x88cc }, Buffer.alloc(46)));
    assert.equal(link.stats.ignored, 1);
  });
});
