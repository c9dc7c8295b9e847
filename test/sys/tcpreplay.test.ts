// Recording and resending TCP segments (src/sys/packet/tcpreplay.ts): the codec, the copy, and the
// recorder over a fake capture. The lab tests in test/dgd/resume-lab.test.ts send real recorded
// segments through a real route switch.
import { strict as assert } from 'node:assert';
import {
  ETHERTYPE_IPV4,
  ETHERTYPE_IPV6,
  IPPROTO_TCP,
  encodeEthernet,
  encodeIpv4Header,
  encodeIpv6Header,
  internetChecksum,
  ipv6PseudoHeaderSum,
} from '../../src/sys/packet';
import type { LivePacket } from '../../src/sys/packet/pcap';
import {
  RECORD_SNAPLEN,
  SegmentRecorder,
  WHOLE_SNAPLEN,
  decodeTcpFrame,
  flowsFilter,
  replayPacket,
  tcpChecksum,
  type SegmentSource,
  type TcpSegment,
} from '../../src/sys/packet/tcpreplay';

/** A TCP header with options (timestamps, optionally an MD5 signature) and payload. */
function tcp(opts: {
  tsval?: number;
  md5?: boolean;
  payload?: Buffer;
  flags?: number;
  seq?: number;
}): Buffer {
  const options: number[] = [];
  if (opts.tsval !== undefined) {
    const ts = Buffer.alloc(12);
    ts[0] = 1;
    ts[1] = 1;
    ts[2] = 8;
    ts[3] = 10;
    ts.writeUInt32BE(opts.tsval, 4);
    ts.writeUInt32BE(777, 8);
    options.push(...ts);
  }
  if (opts.md5) options.push(19, 18, ...Buffer.alloc(16, 0xab), 1, 1);
  const header = Buffer.alloc(20 + options.length);
  header.writeUInt16BE(40000, 0);
  header.writeUInt16BE(7000, 2);
  header.writeUInt32BE(opts.seq ?? 0xfffffff0, 4);
  header.writeUInt32BE(12345, 8);
  header[12] = ((20 + options.length) / 4) << 4;
  header[13] = opts.flags ?? 0x18;
  header.writeUInt16BE(502, 14);
  header.writeUInt16BE(0x1234, 16); // what a NIC offload leaves: not the real checksum
  Buffer.from(options).copy(header, 20);
  return Buffer.concat([header, opts.payload ?? Buffer.from('hello!!!')]);
}

const HOST_MAC = '02:00:00:00:00:02';

function frame4(segment: Buffer, ethSrc = HOST_MAC): Buffer {
  const ip = encodeIpv4Header({
    src: '198.18.1.10',
    dst: '198.18.2.10',
    protocol: IPPROTO_TCP,
    payloadLength: segment.length,
    dontFragment: true,
  });
  return encodeEthernet(
    { dst: '02:00:00:00:00:01', src: ethSrc, ethertype: ETHERTYPE_IPV4 },
    Buffer.concat([ip, segment, Buffer.alloc(6)]), // Ethernet padding after the IP packet
  );
}

function frame6(segment: Buffer): Buffer {
  const ip = encodeIpv6Header({
    src: '2001:db8:1::10',
    dst: '2001:db8:2::10',
    nextHeader: IPPROTO_TCP,
    payloadLength: segment.length,
  });
  return encodeEthernet(
    { dst: '02:00:00:00:00:01', src: '02:00:00:00:00:02', ethertype: ETHERTYPE_IPV6 },
    Buffer.concat([ip, segment]),
  );
}

function checksumOk4(p: Buffer): boolean {
  let pseudo = 0;
  for (let i = 12; i < 20; i += 2) pseudo += p.readUInt16BE(i);
  pseudo += IPPROTO_TCP + p.length - 20;
  return internetChecksum(p.subarray(20), pseudo) === 0;
}

describe('tcpreplay: recorded segments', () => {
  it('decodes a recorded IPv4 segment: flow, seq, options, the IP packet without Ethernet padding', () => {
    const seg = decodeTcpFrame(frame4(tcp({ tsval: 1000 })), 50)!;
    assert.deepEqual(seg.flow, {
      family: 4,
      src: '198.18.1.10',
      srcPort: 40000,
      dst: '198.18.2.10',
      dstPort: 7000,
    });
    assert.equal(seg.seq, 0xfffffff0);
    assert.equal(seg.payloadLength, 8);
    assert.equal(seg.packet.length, 20 + 32 + 8);
    assert.equal(seg.packet.readUInt32BE(seg.tsvalOffset), 1000);
    assert.equal(seg.signed, false);
  });

  it('resends the whole segment, TSval advanced by the elapsed milliseconds, TCP checksum right', () => {
    const seg = decodeTcpFrame(frame4(tcp({ tsval: 0xfffffff0 })), 100)!;
    const out = replayPacket(seg, 100 + 40.7);
    assert.equal(out.length, 20 + 32 + 8, 'headers and all its data: a part would not restart the socket');
    assert.equal(out.readUInt32BE(seg.tsvalOffset), 0x18, 'wraps modulo 2^32');
    assert.ok(checksumOk4(out), 'checksum verifies');
    assert.equal(out.readUInt16BE(seg.tcpOffset + 16), tcpChecksum(out, 4, seg.tcpOffset));
    // Everything else is the segment as the kernel sent it.
    const a = Buffer.from(out);
    const b = Buffer.from(seg.packet);
    for (const x of [a, b]) {
      x.writeUInt32BE(0, seg.tsvalOffset);
      x.writeUInt16BE(0, seg.tcpOffset + 16);
    }
    assert.deepEqual(a, b);
  });

  it('a signed segment (TCP-MD5) is resent byte for byte with its checksum made right', () => {
    const seg = decodeTcpFrame(frame4(tcp({ tsval: 5, md5: true })), 0)!;
    assert.equal(seg.signed, true);
    const out = replayPacket(seg, 1000);
    assert.ok(checksumOk4(out), 'the NIC-offload partial sum is replaced: the peer would drop it');
    const a = Buffer.from(out);
    const b = Buffer.from(seg.packet);
    for (const x of [a, b]) x.writeUInt16BE(0, seg.tcpOffset + 16);
    assert.deepEqual(a, b, 'the signed bytes (timestamp included) are untouched');
  });

  it('a segment captured cut short is never sent', () => {
    const cut = decodeTcpFrame(frame4(tcp({ md5: true })).subarray(0, 14 + 20 + 40 + 1), 0)!;
    assert.equal(cut.whole, false);
    assert.throws(() => replayPacket(cut, 0), /only be sent again whole/);
  });

  it('IPv6: decodes and checksums over the IPv6 pseudo-header; a SYN without payload', () => {
    const seg = decodeTcpFrame(frame6(tcp({ tsval: 9, flags: 0x02, payload: Buffer.alloc(0) })), 0)!;
    assert.equal(seg.flow.family, 6);
    assert.equal(seg.flow.dst, '2001:db8:2::10');
    assert.equal(seg.flags & 0x02, 2);
    assert.equal(seg.payloadLength, 0);
    const out = replayPacket(seg, 3);
    assert.equal(out.readUInt32BE(seg.tsvalOffset), 12);
    const t = out.subarray(40);
    assert.equal(
      internetChecksum(t, ipv6PseudoHeaderSum('2001:db8:1::10', '2001:db8:2::10', t.length, IPPROTO_TCP)),
      0,
    );
  });

  it('decodes a frame cut at the snap length; ignores one cut inside its headers, and what is not TCP', () => {
    const f = frame4(tcp({}));
    const cut = decodeTcpFrame(f.subarray(0, 14 + 20 + 20 + 1), 0)!;
    assert.equal(cut.whole, false);
    assert.equal(cut.payloadLength, 8, 'the length the IP header declares');
    assert.equal(decodeTcpFrame(f.subarray(0, 40), 0), null, 'cut short');
    const udp = Buffer.from(f);
    udp[14 + 9] = 17;
    assert.equal(decodeTcpFrame(udp, 0), null, 'not TCP');
    assert.equal(decodeTcpFrame(Buffer.alloc(10), 0), null);
  });

  it('filters for exactly the flows asked for, host to peer', () => {
    assert.equal(
      flowsFilter([
        { family: 4, src: '198.18.1.10', srcPort: 1, dst: '198.18.2.10', dstPort: 2 },
        { family: 6, src: '2001:db8:1::10', srcPort: 3, dst: '2001:db8:2::10', dstPort: 4 },
      ]),
      'tcp and ((ip src 198.18.1.10 and ip dst 198.18.2.10 and tcp src port 1 and tcp dst port 2) or ' +
        '(ip6 src 2001:db8:1::10 and ip6 dst 2001:db8:2::10 and tcp src port 3 and tcp dst port 4))',
    );
    assert.throws(
      () => flowsFilter([{ family: 4, src: '2001:db8::1', srcPort: 1, dst: '198.18.2.10', dstPort: 2 }]),
      /not an IPv4 flow/,
    );
  });
});

class FakeSource implements SegmentSource {
  closed = false;
  private packet: ((p: LivePacket) => void) | null = null;
  private down: ((err: Error) => void) | null = null;
  constructor(
    readonly filter: string,
    readonly snaplen: number,
  ) {}
  on(event: 'packet' | 'down', listener: ((p: LivePacket) => void) | ((err: Error) => void)): this {
    if (event === 'packet') this.packet = listener as (p: LivePacket) => void;
    else this.down = listener as (err: Error) => void;
    return this;
  }
  feed(frame: Buffer, snaplen = this.snaplen): void {
    const data = frame.subarray(0, snaplen);
    this.packet!({ data, wireLength: frame.length, tsMs: 0 });
  }
  goDown(): void {
    this.closed = true;
    this.down!(new Error('ENETDOWN: lan0 went down'));
  }
  close(): void {
    this.closed = true;
  }
}

describe('tcpreplay: the recorder', () => {
  const flow = { family: 4 as const, src: '198.18.1.10', srcPort: 40000, dst: '198.18.2.10', dstPort: 7000 };
  function recorder() {
    const opened: FakeSource[] = [];
    const errors: string[] = [];
    let clock = 0;
    const r = new SegmentRecorder(
      'lan0',
      () => HOST_MAC,
      (e) => errors.push(e.message),
      (_i, filter, snaplen) => {
        if (filter === 'fail') throw new Error('no');
        const s = new FakeSource(filter, snaplen);
        opened.push(s);
        return s;
      },
      () => clock,
    );
    return { r, opened, errors, tick: (ms: number) => (clock += ms) };
  }
  const seg = (x: TcpSegment | string): TcpSegment => {
    assert.equal(typeof x, 'object', String(x));
    return x as TcpSegment;
  };

  it('captures only what this host sends from its own MAC, a standard frame at most', () => {
    const { r, opened } = recorder();
    r.watch([flow]);
    assert.equal(opened.length, 1);
    assert.equal(opened[0]!.snaplen, RECORD_SNAPLEN);
    assert.match(opened[0]!.filter, /^ether src 02:00:00:00:00:02 and tcp and /);
    assert.equal(RECORD_SNAPLEN, 14 + 4 + 1500);
  });

  it('a forged segment (another Ethernet source) is never kept, whatever its sequence number', () => {
    const { r, opened } = recorder();
    r.watch([flow]);
    opened[0]!.feed(frame4(tcp({ seq: 1000 })));
    opened[0]!.feed(frame4(tcp({ seq: 5, payload: Buffer.from('evil') }), '02:66:66:66:66:66'));
    assert.equal(seg(r.segment(flow)).seq, 1000);
    assert.equal(r.stats().foreign, 1);
  });

  it('keeps the lowest data/SYN/FIN segment; a pure ACK or a reset is never the one', () => {
    const { r, opened } = recorder();
    r.watch([flow]);
    opened[0]!.feed(frame4(tcp({ seq: 1000, flags: 0x10, payload: Buffer.alloc(0) })));
    assert.equal(r.segment(flow), 'only pure ACKs or resets of it were seen');
    opened[0]!.feed(frame4(tcp({ seq: 900, flags: 0x04, payload: Buffer.alloc(0) })));
    assert.equal(r.segment(flow), 'only pure ACKs or resets of it were seen');
    opened[0]!.feed(frame4(tcp({ seq: 2000 })));
    opened[0]!.feed(frame4(tcp({ seq: 1500 })));
    opened[0]!.feed(frame4(tcp({ seq: 3000 })));
    opened[0]!.feed(frame4(tcp({ seq: 999, flags: 0x10, payload: Buffer.alloc(0) })));
    assert.equal(seg(r.segment(flow)).seq, 1500, 'the lowest');
    r.forget(flow);
    opened[0]!.feed(frame4(tcp({ seq: 16 })));
    opened[0]!.feed(frame4(tcp({ seq: 0xfffffff0 })));
    assert.equal(seg(r.segment(flow)).seq, 0xfffffff0, 'in serial-number order, across the 2^32 wrap');
    r.forget(flow);
    assert.match(String(r.segment(flow)), /nothing of it was seen leaving/);
  });

  it('a flow seen cut short (a jumbo frame) is captured whole from then on; until then nothing is sent', async () => {
    const { r, opened } = recorder();
    r.watch([flow]);
    opened[0]!.feed(frame4(tcp({ md5: true, payload: Buffer.alloc(100, 1) })), 100);
    assert.equal(r.segment(flow), 'it was not yet captured whole (larger than a standard frame)');
    await new Promise((res) => setImmediate(res));
    assert.equal(opened.length, 2);
    assert.equal(opened[0]!.closed, true);
    assert.equal(opened[1]!.snaplen, WHOLE_SNAPLEN);
    opened[1]!.feed(frame4(tcp({ md5: true, payload: Buffer.alloc(100, 1) })));
    const whole = seg(r.segment(flow));
    assert.equal(whole.whole, true);
    assert.equal(replayPacket(whole, 0).length, 20 + 20 + 20 + 100);
  });

  it('follows an interface flap: a capture that went down is opened again by a later watch, once a second at most', () => {
    const { r, opened, errors, tick } = recorder();
    r.watch([flow]);
    opened[0]!.goDown();
    assert.deepEqual(errors, ['ENETDOWN: lan0 went down']);
    assert.equal(r.stats().open, false);
    r.watch([flow]);
    assert.equal(opened.length, 1, 'not again at once');
    tick(1000);
    r.watch([flow]);
    assert.equal(opened.length, 2, 'opened again');
    assert.equal(r.stats().open, true);
    opened[1]!.feed(frame4(tcp({ seq: 7 })));
    assert.equal(seg(r.segment(flow)).seq, 7);
  });

  it('closes its capture when no flow is left, and reopens only when the set changes', () => {
    const { r, opened } = recorder();
    const other = { ...flow, srcPort: 40001 };
    r.watch([flow, other]);
    r.watch([flow, other]);
    assert.equal(opened.length, 1, 'the same flows: the same capture');
    r.watch([flow]);
    assert.equal(opened.length, 2, 'a flow that recovered leaves the filter');
    assert.equal(opened[0]!.closed, true);
    r.watch([]);
    assert.equal(opened[1]!.closed, true);
    assert.equal(r.stats().open, false);
  });
});
