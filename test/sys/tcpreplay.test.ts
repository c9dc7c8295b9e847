// Recording and resending TCP segments (src/sys/packet/tcpreplay.ts): the pure parts. The lab test in
// test/dgd/lab.test.ts sends real recorded segments through a real route switch.
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
import { decodeTcpFrame, flowsFilter, replayPacket, tcpChecksum } from '../../src/sys/packet/tcpreplay';

/** A TCP header with options (timestamps, optionally an MD5 signature) and payload. */
function tcp(opts: { tsval?: number; md5?: boolean; payload?: Buffer; flags?: number }): Buffer {
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
  header.writeUInt32BE(0xfffffff0, 4);
  header.writeUInt32BE(12345, 8);
  header[12] = ((20 + options.length) / 4) << 4;
  header[13] = opts.flags ?? 0x18;
  header.writeUInt16BE(502, 14);
  header.writeUInt16BE(0x1234, 16); // what a NIC offload leaves: not the real checksum
  Buffer.from(options).copy(header, 20);
  return Buffer.concat([header, opts.payload ?? Buffer.from('hello!!!')]);
}

function frame4(segment: Buffer): Buffer {
  const ip = encodeIpv4Header({
    src: '198.18.1.10',
    dst: '198.18.2.10',
    protocol: IPPROTO_TCP,
    payloadLength: segment.length,
    dontFragment: true,
  });
  return encodeEthernet(
    { dst: '02:00:00:00:00:01', src: '02:00:00:00:00:02', ethertype: ETHERTYPE_IPV4 },
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

  it('resends with TSval advanced by the elapsed milliseconds and a correct TCP checksum', () => {
    const seg = decodeTcpFrame(frame4(tcp({ tsval: 0xfffffff0 })), 100)!;
    const out = replayPacket(seg, 100 + 40.7);
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

  it('a signed segment (TCP-MD5) is resent unchanged', () => {
    const seg = decodeTcpFrame(frame4(tcp({ tsval: 5, md5: true })), 0)!;
    assert.equal(seg.signed, true);
    assert.deepEqual(replayPacket(seg, 1000), seg.packet);
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

  it('ignores what is not a whole TCP segment', () => {
    const f = frame4(tcp({}));
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
