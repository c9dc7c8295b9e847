// The trigger for forwarded traffic, without a kernel: the wire watch's filter, decoding, books
// per next hop and sampling (fake libpcap handles), and the engine's rules for segments sent again
// towards a gateway's MAC (fake ports, fake clock). The same flows through a real gateway host are
// in ./gateway-forwarded.test.ts.
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import { FakeClock, MemoryEventLog, MemoryStore } from '../doubles';
import { parseConfig } from '../../src/daemon/config';
import { DgdEngine } from '../../src/dgd/engine';
import type { WireFlowEvent, WireStatus } from '../../src/dgd/ports';
import {
  WireWatch,
  decodeSegment,
  sampledFlow,
  wireFilter,
  type WireHandle,
  type WireRetransmission,
} from '../../src/sys/packet';
import { ETHERTYPE_IPV4, ETHERTYPE_IPV6, encodeEthernet } from '../../src/sys/packet/ethernet';
import { IPPROTO_TCP, encodeIpv4Header, encodeIpv6Header } from '../../src/sys/packet/ip';
import { TCP_ACK, TCP_SYN, encodeTcp } from '../../src/sys/packet/tcp';
import { FakePorts, route } from './fakes';

const R1 = '198.18.1.1';
const R2 = '198.18.1.2';
const MAC_R1 = '02:00:00:00:01:01';
const MAC_R2 = '02:00:00:00:01:02';
const OURS = '02:00:00:00:00:0a';

function frame(opts: {
  mac?: string;
  family?: 4 | 6;
  sport?: number;
  dport?: number;
  seq: number;
  flags?: number;
  payload?: number;
  cut?: number;
}): Buffer {
  const payload = Buffer.alloc(opts.payload ?? 0, 0x61);
  const tcp = encodeTcp({
    srcPort: opts.sport ?? 40000,
    dstPort: opts.dport ?? 443,
    seq: opts.seq,
    flags: opts.flags ?? TCP_ACK,
    payload,
  });
  const six = opts.family === 6;
  const ip = six
    ? encodeIpv6Header({
        src: '2001:db8:9::5',
        dst: '2001:db8:2::10',
        nextHeader: IPPROTO_TCP,
        payloadLength: tcp.length,
      })
    : encodeIpv4Header({
        src: '198.18.9.5',
        dst: '198.18.2.10',
        protocol: IPPROTO_TCP,
        payloadLength: tcp.length,
      });
  const f = encodeEthernet(
    { dst: opts.mac ?? MAC_R1, src: OURS, ethertype: six ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4 },
    Buffer.concat([ip, tcp]),
  );
  return opts.cut ? f.subarray(0, opts.cut) : f;
}

/** A SYN-ACK from the server (198.18.2.10:443) back to the LAN host, as it comes in. */
function synAck(opts: { dport: number; seq: number; ack: number }): Buffer {
  const tcp = encodeTcp({
    srcPort: 443,
    dstPort: opts.dport,
    seq: opts.seq,
    ack: opts.ack,
    flags: TCP_SYN | TCP_ACK,
  });
  const ip = encodeIpv4Header({
    src: '198.18.2.10',
    dst: '198.18.9.5',
    protocol: IPPROTO_TCP,
    payloadLength: tcp.length,
  });
  return encodeEthernet({ dst: OURS, src: MAC_R2, ethertype: ETHERTYPE_IPV4 }, Buffer.concat([ip, tcp]));
}

class FakeHandle extends EventEmitter implements WireHandle {
  filters: string[] = [];
  closed = false;
  constructor(filter: string) {
    super();
    this.filters.push(filter);
  }
  setFilter(filter: string): void {
    this.filters.push(filter);
  }
  stats() {
    return { received: 0, dropped: 0 };
  }
  close(): void {
    this.closed = true;
  }
  send(data: Buffer): void {
    this.emit('packet', { data, wireLength: data.length, tsMs: 0 });
  }
}

function watch(budget = 2000, synStallMs = 0) {
  let now = 0;
  const handles = new Map<string, FakeHandle>();
  const w = new WireWatch({
    budget,
    synStallMs,
    now: () => now,
    open: (ifname, filter) => {
      const h = new FakeHandle(filter);
      handles.set(ifname, h);
      return h;
    },
  });
  const seen: WireRetransmission[] = [];
  w.on('retransmission', (r: WireRetransmission) => seen.push(r));
  return { w, handles, seen, advance: (ms: number) => (now += ms) };
}

describe('wire watch: TCP segments leaving towards gateways', () => {
  it('the kernel filter keeps SYNs and segments with data of outbound unicast TCP, and samples by port hash', () => {
    const all = wireFilter(1);
    assert.match(all, /^\(outbound and not ether multicast/);
    assert.match(all, /tcp\[13\] & 2/);
    assert.doesNotMatch(all, /\^/, 'no sampling clause at 1');
    assert.match(wireFilter(8), /\(\(\(tcp\[0:2\] \^ tcp\[2:2\]\) \* 40503\) & 0xffff\) >> 13 = 0/);
    assert.match(wireFilter(8), /\(\(\(ip6\[40:2\] \^ ip6\[42:2\]\) \* 40503\) & 0xffff\) >> 13 = 0/);
    assert.throws(() => wireFilter(3), RangeError);
    assert.throws(() => wireFilter(2048), RangeError);
  });

  it("samples without bias: a server's flows from Linux clients (even source ports, one server port) split by the share asked", () => {
    const ports = Array.from({ length: 4000 }, (_, i) => 32768 + 2 * i);
    for (const sampling of [2, 8, 64]) {
      const kept = ports.filter((p) => sampledFlow(p, 443, sampling)).length / ports.length;
      assert.ok(Math.abs(kept - 1 / sampling) < 0.5 / sampling, `1 in ${sampling}: kept ${kept}`);
    }
    assert.ok(ports.every((p) => sampledFlow(p, 443, 1)));
  });

  it('decodes a frame cut at the snap length: the payload length comes from the IP header', () => {
    const s4 = decodeSegment(frame({ seq: 1000, payload: 1400, cut: 160 }))!;
    assert.equal(s4.tcp.payloadLength, 1400);
    assert.equal(s4.mac, MAC_R1);
    assert.equal(s4.family, 4);
    const s6 = decodeSegment(frame({ family: 6, seq: 1000, payload: 1200, cut: 160 }))!;
    assert.equal(s6.tcp.payloadLength, 1200);
    assert.equal(s6.family, 6);
    assert.equal(s6.src, '2001:db8:9::5');
  });

  it("a segment or SYN sent again to the same MAC is a retransmission; sent to another MAC it is that router's first copy", () => {
    const t = watch();
    t.w.setInterfaces(['up0']);
    const h = t.handles.get('up0')!;
    h.send(frame({ seq: 1000, payload: 100 }));
    h.send(frame({ seq: 1100, payload: 100 }));
    h.send(frame({ seq: 1100, payload: 100 }));
    h.send(frame({ seq: 1100, payload: 100 }));
    assert.deepEqual(
      t.seen.map((r) => [r.count, r.syn, r.mac, r.src, r.dst, r.srcPort, r.dstPort]),
      [
        [1, false, MAC_R1, '198.18.9.5', '198.18.2.10', 40000, 443],
        [2, false, MAC_R1, '198.18.9.5', '198.18.2.10', 40000, 443],
      ],
    );
    // After a switch the same segment leaves towards R2: not R2's retransmission.
    h.send(frame({ seq: 1100, payload: 100, mac: MAC_R2 }));
    assert.equal(t.seen.length, 2);
    h.send(frame({ sport: 40001, seq: 7, flags: TCP_SYN }));
    h.send(frame({ sport: 40001, seq: 7, flags: TCP_SYN }));
    assert.deepEqual(
      t.seen.slice(2).map((r) => [r.count, r.syn, r.srcPort]),
      [[1, true, 40001]],
    );
    assert.deepEqual(
      t.w.status().map((s) => [s.interface, s.sampling, s.frames, s.retransmissions]),
      [['up0', 1, 7, 3]],
    );
  });

  it('past the frame budget the filter samples flows, halving the share until the rate fits; it widens again after 30 s quiet', () => {
    const t = watch(100);
    t.w.setInterfaces(['up0']);
    const h = t.handles.get('up0')!;
    for (let i = 0; i < 350; i++) h.send(frame({ sport: 40000 + (i % 50), seq: i * 10, payload: 10 }));
    // 101 frames in one second: sampling doubles each time the budget is passed.
    assert.equal(t.w.status()[0]!.sampling, 8);
    assert.deepEqual(
      h.filters.map((f) => />> (\d+) = 0/.exec(f)?.[1] ?? 'all'),
      ['all', '15', '14', '13'],
    );
    // Quiet: one step wider per 30 s, down to every flow again.
    for (let s = 0; s < 120; s++) {
      t.advance(1000);
      (t.w as unknown as { widen(): void }).widen();
    }
    assert.equal(t.w.status()[0]!.sampling, 1);
    t.w.close();
    assert.ok(h.closed);
  });

  it('a SYN with no SYN-ACK for syn_stall is reported once (count 0); one answered, or answered with the wrong ack, is not / is', () => {
    const t = watch(2000, 500);
    t.w.setInterfaces(['up0']);
    const h = t.handles.get('up0')!;
    h.send(frame({ sport: 41000, seq: 100, flags: TCP_SYN }));
    h.send(frame({ sport: 41001, seq: 200, flags: TCP_SYN }));
    h.send(frame({ sport: 41002, seq: 300, flags: TCP_SYN }));
    // The answers come in (from whichever router: the MAC of an inbound frame is ours).
    const answer = (sport: number, ack: number) => h.send(synAck({ dport: sport, seq: 9000, ack }));
    answer(41001, 201);
    answer(41002, 999); // not an answer to this SYN
    t.advance(400);
    (t.w as unknown as { expireSyns(): void }).expireSyns();
    assert.equal(t.seen.length, 0);
    t.advance(200);
    (t.w as unknown as { expireSyns(): void }).expireSyns();
    assert.deepEqual(
      t.seen.map((r) => [r.srcPort, r.syn, r.count, r.unansweredMs]),
      [
        [41000, true, 0, 600],
        [41002, true, 0, 600],
      ],
    );
    t.advance(1000);
    (t.w as unknown as { expireSyns(): void }).expireSyns();
    assert.equal(t.seen.length, 2, 'once each');
    assert.match(wireFilter(1), /inbound and \(\(ip and tcp and \(tcp\[13\] & 0x12\) = 0x12\)/);
    t.w.close();
  });

  it('an interface that went down is dropped with a closed event and opened again by the next setInterfaces', () => {
    const t = watch();
    const closed: string[] = [];
    t.w.on('closed', (ifname: string) => closed.push(ifname));
    t.w.setInterfaces(['up0', 'up1']);
    t.handles.get('up1')!.emit('down', new Error('ENETDOWN'));
    assert.deepEqual(closed, ['up1']);
    assert.deepEqual(
      t.w.status().map((s) => s.interface),
      ['up0'],
    );
    t.w.setInterfaces(['up0', 'up1']);
    assert.deepEqual(
      t.w.status().map((s) => s.interface),
      ['up0', 'up1'],
    );
    t.w.close();
  });
});

// ---------------------------------------------------------------------------------------------

class WirePorts extends FakePorts {
  wire: WireStatus[] = [];
  wireStatus(): WireStatus[] {
    return this.wire;
  }
}

async function engineWith(yaml = '', alive: string[] = [R2]) {
  const clock = new FakeClock();
  const ports = new WirePorts(clock, [route('198.18.2.0/24', R1, 10), route('198.18.2.0/24', R2, 20)]);
  for (const a of alive) ports.alive.add(a);
  const log = new MemoryEventLog();
  const engine = new DgdEngine({
    config: parseConfig(yaml).dgd,
    tables: [254],
    ports,
    store: new MemoryStore(),
    log,
    clock,
  });
  await engine.start();
  return { clock, ports, log, engine };
}

function wireEvent(over: Partial<WireFlowEvent>): WireFlowEvent {
  return {
    ifindex: 2,
    family: 4,
    src: '198.18.9.5',
    srcPort: 40000,
    dst: '198.18.2.10',
    dstPort: 443,
    syn: false,
    count: 1,
    nextHops: [R1],
    ...over,
  };
}

const stateOf = (e: DgdEngine, a: string) => e.status().gateways.find((g) => g.address === a)!.state;

describe('DGD engine: forwarded flows seen on the wire', () => {
  it('SYNs of three forwarded flows sent again towards R1 within the window: the aggregate; ARP decides R1 dead and its route goes', async () => {
    const s = await engineWith();
    for (let i = 0; i < 3; i++) {
      s.engine.onWireRetransmission(wireEvent({ srcPort: 41000 + i, syn: true, count: 1 }));
      await s.clock.advance(100);
    }
    await s.clock.advance(2000);
    const trig = s.log.named('trigger');
    assert.equal(trig.length, 1);
    assert.equal(trig[0]!.reason, 'aggregate');
    assert.equal((trig[0]!.samples as { wire?: boolean }[])[0]!.wire, true);
    assert.equal(stateOf(s.engine, R1), 'dead');
    assert.equal(stateOf(s.engine, R2), 'active');
    assert.ok(s.ports.routes.every((r) => r.gateway !== R1));
    await s.engine.stop({ restore: true });
  });

  it('short connections: three forwarded SYNs unanswered for syn_stall within the window are the aggregate', async () => {
    const s = await engineWith();
    for (let i = 0; i < 3; i++) {
      s.engine.onWireRetransmission(
        wireEvent({ srcPort: 43000 + i, syn: true, count: 0, unansweredMs: 520 }),
      );
      await s.clock.advance(200);
    }
    await s.clock.advance(2000);
    assert.equal(s.log.named('trigger')[0]?.reason, 'aggregate');
    assert.equal(stateOf(s.engine, R1), 'dead');
    await s.engine.stop({ restore: true });
    // Under syn_stall it is no evidence.
    const t = await engineWith();
    for (let i = 0; i < 5; i++)
      t.engine.onWireRetransmission(
        wireEvent({ srcPort: 43100 + i, syn: true, count: 0, unansweredMs: 300 }),
      );
    await t.clock.advance(2000);
    assert.equal(t.log.named('trigger').length, 0);
    await t.engine.stop({ restore: true });
  });

  it('one forwarded stream: nothing before the threshold (no speculative purge that would hide the flow), the trigger at it', async () => {
    const s = await engineWith('dgd:\n  aggregate_sockets: 0\n');
    s.engine.onWireRetransmission(wireEvent({ count: 1 }));
    await s.clock.advance(300);
    s.engine.onWireRetransmission(wireEvent({ count: 2 }));
    await s.clock.advance(300);
    assert.equal(s.log.named('speculative_verify').length, 0);
    assert.equal(s.ports.verifications.length, 0);
    assert.equal(stateOf(s.engine, R1), 'active');
    s.engine.onWireRetransmission(wireEvent({ count: 3 }));
    await s.clock.advance(2000);
    assert.equal(s.log.named('trigger')[0]!.reason, 'retransmit');
    assert.equal(stateOf(s.engine, R1), 'dead');
    await s.engine.stop({ restore: true });
  });

  it('a dead server behind a live gateway: 300 flows failing through R1 give no verdict of dead and few ARP verifications', async () => {
    const s = await engineWith('', [R1, R2]);
    // 300 flows, each sending its SYN again at 1 s, 3 s, 7 s and 15 s (Linux's backoff).
    for (const at of [1000, 3000, 7000, 15000]) {
      for (let i = 0; i < 300; i++)
        s.engine.onWireRetransmission(
          wireEvent({ srcPort: 30000 + i, syn: true, count: [1000, 3000, 7000, 15000].indexOf(at) + 1 }),
        );
      await s.clock.advance(at === 1000 ? 1000 : at / 2);
    }
    await s.clock.advance(5000);
    assert.equal(stateOf(s.engine, R1), 'active');
    assert.ok(s.log.named('downstream_problem').length >= 1);
    assert.equal(s.log.named('routes_withdrawn').length, 0);
    assert.ok(s.ports.verifications.length <= 4, `${s.ports.verifications.length} verifications`);
    await s.engine.stop({ restore: true });
  });

  it('ignored: a MAC of no managed gateway, the other family, and everything with dgd.forwarded.enabled false', async () => {
    const s = await engineWith();
    for (let i = 0; i < 5; i++) {
      s.engine.onWireRetransmission(wireEvent({ srcPort: 42000 + i, syn: true, nextHops: ['198.18.1.77'] }));
      s.engine.onWireRetransmission(wireEvent({ srcPort: 42100 + i, syn: true, family: 6 }));
    }
    await s.clock.advance(3000);
    assert.equal(s.log.named('trigger').length, 0);
    await s.engine.stop({ restore: true });

    const off = await engineWith('dgd:\n  forwarded:\n    enabled: false\n');
    for (let i = 0; i < 5; i++) off.engine.onWireRetransmission(wireEvent({ srcPort: 42000 + i, syn: true }));
    await off.clock.advance(3000);
    assert.equal(off.log.named('trigger').length, 0);
    assert.equal(off.engine.status().forwarded.method, 'off');
    await off.engine.stop({ restore: true });
  });

  it('status names the method in use and the watch per interface', async () => {
    const s = await engineWith();
    assert.deepEqual(s.engine.status().forwarded, { method: 'off', interfaces: [] });
    s.ports.wire = [
      { interface: 'lan0', sampling: 1, frames: 10, retransmissions: 2, kernel_dropped: 0, flows: 3 },
    ];
    assert.equal(s.engine.status().forwarded.method, 'capture');
    assert.equal(s.engine.status().forwarded.interfaces[0]!.interface, 'lan0');
    await s.engine.setEnabled(false);
    assert.equal(s.engine.status().forwarded.method, 'off');
    await s.engine.stop({ restore: true });
  });
});
