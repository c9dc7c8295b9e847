import { strict as assert } from 'node:assert';
import {
  ARP_REPLY,
  ARP_REQUEST,
  BROADCAST_MAC,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  FrameError,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  ICMPV6_ECHO_REQUEST,
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  ND_NEIGHBOR_ADVERT,
  ND_NEIGHBOR_SOLICIT,
  ND_ROUTER_ADVERT,
  buildArpReply,
  buildArpRequest,
  buildNeighbourAdvertisement,
  buildNeighbourSolicitation,
  decodeArp,
  decodeEthernet,
  decodeIcmpEcho,
  decodeIpv4,
  decodeIpv6,
  decodeNeighbourFrame,
  encodeEthernet,
  encodeIcmpEcho,
  encodeIpv4Header,
  encodeIpv6Header,
  encodeNeighbourSolicitation,
  icmpv6Checksum,
  internetChecksum,
  ipv6MulticastMac,
  solicitedNodeMulticast,
} from '../../src/sys/packet';
import { formatIpv6, ipv6ToBytes, macToBytes, normalizeIp, normalizeMac } from '../../src/sys/ipaddr';

/** tcpdump -xx text to bytes. */
function hex(text: string): Buffer {
  return Buffer.from(text.replace(/0x[0-9a-f]{4}:/g, '').replace(/\s+/g, ''), 'hex');
}

// Known-good frames captured with `tcpdump -xx` between two lab namespaces (Linux 6.x kernel):
// host a = 46:44:24:93:78:31 198.18.0.1 / 2001:db8::1, host b = 26:d2:ea:bc:6a:be 198.18.0.2 / 2001:db8::2.
const KERNEL = {
  arpRequest: hex(`ffff ffff ffff 4644 2493 7831 0806 0001 0800 0604 0001 4644 2493 7831 c612 0001
                   0000 0000 0000 c612 0002`),
  arpReply: hex(`4644 2493 7831 26d2 eabc 6abe 0806 0001 0800 0604 0002 26d2 eabc 6abe c612 0002
                 4644 2493 7831 c612 0001`),
  echoRequest4: hex(`26d2 eabc 6abe 4644 2493 7831 0800 4500 0054 bff4 4000 4001 ee8c c612 0001 c612
                     0002 0800 4160 1d7e 0001 d901 026b 0000 0000 f3e0 0b00 0000 0000 1011 1213 1415
                     1617 1819 1a1b 1c1d 1e1f 2021 2223 2425 2627 2829 2a2b 2c2d 2e2f 3031 3233 3435 3637`),
  echoReply4: hex(`4644 2493 7831 26d2 eabc 6abe 0800 4500 0054 05d3 0000 4001 e8ae c612 0002 c612
                   0001 0000 4960 1d7e 0001 d901 026b 0000 0000 f3e0 0b00 0000 0000 1011 1213 1415
                   1617 1819 1a1b 1c1d 1e1f 2021 2223 2425 2627 2829 2a2b 2c2d 2e2f 3031 3233 3435 3637`),
  ns: hex(`3333 ff00 0002 4644 2493 7831 86dd 6000 0000 0020 3aff 2001 0db8 0000 0000 0000
           0000 0000 0001 ff02 0000 0000 0000 0000 0001 ff00 0002 8700 3b1f 0000 0000 2001
           0db8 0000 0000 0000 0000 0000 0002 0101 4644 2493 7831`),
  na: hex(`4644 2493 7831 26d2 eabc 6abe 86dd 6000 0000 0020 3aff 2001 0db8 0000 0000 0000
           0000 0000 0002 2001 0db8 0000 0000 0000 0000 0000 0001 8800 1026 6000 0000 2001
           0db8 0000 0000 0000 0000 0000 0002 0201 26d2 eabc 6abe`),
  rs: hex(`3333 0000 0002 26d2 eabc 6abe 86dd 6000 0000 0010 3aff fe80 0000 0000 0000 24d2
           eaff febc 6abe ff02 0000 0000 0000 0000 0000 0000 0002 8500 8693 0000 0000 0101 26d2 eabc 6abe`),
  echoRequest6: hex(`26d2 eabc 6abe 4644 2493 7831 86dd 600a d092 0040 3a40 2001 0db8 0000 0000 0000
                     0000 0000 0001 2001 0db8 0000 0000 0000 0000 0000 0002 8000 df52 1d7f 0001 d901
                     026b 0000 0000 81fd 0b00 0000 0000 1011 1213 1415 1617 1819 1a1b 1c1d 1e1f 2021
                     2223 2425 2627 2829 2a2b 2c2d 2e2f 3031 3233 3435 3637`),
};
const A = { mac: '46:44:24:93:78:31', ip4: '198.18.0.1', ip6: '2001:db8::1' };
const B = { mac: '26:d2:ea:bc:6a:be', ip4: '198.18.0.2', ip6: '2001:db8::2' };

function rejects(fn: () => unknown, code: 'ERR_FRAME_TRUNCATED' | 'ERR_FRAME_MALFORMED'): void {
  assert.throws(fn, (e: unknown) => e instanceof FrameError && e.code === code);
}

describe('frames: addresses', () => {
  it('parses and formats MAC addresses, rejecting others', () => {
    assert.equal(normalizeMac('AA-bb-CC-00-01-02'), 'aa:bb:cc:00:01:02');
    assert.deepEqual([...macToBytes('ff:ff:ff:ff:ff:ff')], [255, 255, 255, 255, 255, 255]);
    for (const bad of ['', 'aa:bb:cc:dd:ee', 'aa:bb:cc:dd:ee:fg', 'aabbccddeeff'])
      assert.throws(() => macToBytes(bad), RangeError);
  });
  it('parses IPv6 text and formats it canonically (RFC 5952)', () => {
    const cases: [string, string][] = [
      ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
      ['::', '::'],
      ['::1', '::1'],
      ['fe80::1%lan0', 'fe80::1'],
      // RFC 5952 5: IPv4-mapped addresses in mixed notation, as inet_ntop and rtnetlink print them.
      ['::ffff:198.18.0.1', '::ffff:198.18.0.1'],
      ['1::', '1::'],
      ['2001:db8::1:2:3:4:5', '2001:db8:0:1:2:3:4:5'],
    ];
    for (const [text, canon] of cases) assert.equal(normalizeIp(text), canon, text);
    assert.equal(normalizeIp('198.18.1.1'), '198.18.1.1');
    for (const bad of ['2001:db8::1::2', '198.18.1', 'gateway', '12345::1'])
      assert.throws(() => ipv6ToBytes(bad), RangeError);
  });
  it('derives solicited-node groups and their multicast MACs (RFC 4291 2.7.1, RFC 2464 7)', () => {
    assert.equal(solicitedNodeMulticast('2001:db8:1::1'), 'ff02::1:ff00:1');
    assert.equal(solicitedNodeMulticast('fe80::24d2:eaff:febc:6abe'), 'ff02::1:ffbc:6abe');
    assert.equal(ipv6MulticastMac('ff02::1:ffbc:6abe'), '33:33:ff:bc:6a:be');
    assert.throws(() => ipv6MulticastMac('2001:db8::1'), RangeError);
  });
});

describe('frames: checksums against packets a kernel sent', () => {
  it('the Internet checksum of a valid IPv4 header and ICMP message is zero (RFC 1071)', () => {
    const b = KERNEL.echoRequest4;
    assert.equal(internetChecksum(b.subarray(14, 34)), 0);
    assert.equal(internetChecksum(b.subarray(34)), 0);
    // RFC 1071 3's worked example: sum of 0001 f203 f4f5 f6f7 is ddf2, checksum 220d.
    assert.equal(internetChecksum(Buffer.from('0001f203f4f5f6f7', 'hex')), 0x220d);
    // Odd length: the last byte is padded with a zero.
    assert.equal(internetChecksum(Buffer.from([0x01])), ~0x0100 & 0xffff);
  });
  it('computes the ICMPv6 checksums the kernel put on NS, NA, RS and echo', () => {
    for (const [name, frame] of Object.entries({
      ns: KERNEL.ns,
      na: KERNEL.na,
      rs: KERNEL.rs,
      echo: KERNEL.echoRequest6,
    })) {
      const ip = decodeIpv6(frame, 14).value;
      const msg = frame.subarray(54, 54 + ip.payloadLength);
      assert.equal(icmpv6Checksum(ip.src, ip.dst, msg), msg.readUInt16BE(2), name);
    }
  });
});

describe('frames: encoders reproduce kernel frames byte for byte', () => {
  it('ARP who-has and is-at', () => {
    assert.deepEqual(
      buildArpRequest({ senderMac: A.mac, senderIp: A.ip4, targetIp: B.ip4 }),
      KERNEL.arpRequest,
    );
    assert.deepEqual(
      buildArpReply({ senderMac: B.mac, senderIp: B.ip4, targetMac: A.mac, targetIp: A.ip4 }),
      KERNEL.arpReply,
    );
  });
  it('neighbour solicitation to the solicited-node group with the source link-layer option', () => {
    assert.deepEqual(buildNeighbourSolicitation({ srcMac: A.mac, srcIp: A.ip6, target: B.ip6 }), KERNEL.ns);
  });
  it('solicited neighbour advertisement with the target link-layer option', () => {
    const na = buildNeighbourAdvertisement({
      srcMac: B.mac,
      srcIp: B.ip6,
      dstMac: A.mac,
      dstIp: A.ip6,
      target: B.ip6,
      solicited: true,
      override: true,
    });
    assert.deepEqual(na, KERNEL.na);
  });
  it('IPv4 header and ICMP echo reply', () => {
    const b = KERNEL.echoReply4;
    const payload = b.subarray(42);
    const icmp = encodeIcmpEcho({ type: ICMP_ECHO_REPLY, id: 0x1d7e, seq: 1, payload });
    assert.deepEqual(icmp, b.subarray(34));
    const ip = encodeIpv4Header({
      src: B.ip4,
      dst: A.ip4,
      protocol: IPPROTO_ICMP,
      payloadLength: icmp.length,
      id: 0x05d3,
      ttl: 64,
    });
    assert.deepEqual(ip, b.subarray(14, 34));
  });
  it('ICMPv6 echo: checksum left to the kernel unless addresses are given', () => {
    const b = KERNEL.echoRequest6;
    const payload = b.subarray(62);
    assert.equal(
      encodeIcmpEcho({ type: ICMPV6_ECHO_REQUEST, id: 0x1d7f, seq: 1, payload }).readUInt16BE(2),
      0,
    );
    assert.deepEqual(
      encodeIcmpEcho({ type: ICMPV6_ECHO_REQUEST, id: 0x1d7f, seq: 1, payload }, { src: A.ip6, dst: B.ip6 }),
      b.subarray(54),
    );
  });
  it('a unicast NS goes to the target itself', () => {
    const f = buildNeighbourSolicitation({ srcMac: A.mac, srcIp: A.ip6, target: B.ip6, unicastMac: B.mac });
    const d = decodeNeighbourFrame(f);
    assert.ok(d && d.proto === 'ndp');
    assert.equal(d.eth.dst, B.mac);
    assert.equal(d.ip6.dst, B.ip6);
  });
});

describe('frames: decoders', () => {
  it('decode kernel ARP and ND frames', () => {
    const req = decodeNeighbourFrame(KERNEL.arpRequest);
    assert.deepEqual(req, {
      proto: 'arp',
      eth: { dst: BROADCAST_MAC, src: A.mac, ethertype: ETHERTYPE_ARP },
      arp: {
        op: ARP_REQUEST,
        senderMac: A.mac,
        senderIp: A.ip4,
        targetMac: '00:00:00:00:00:00',
        targetIp: B.ip4,
      },
    });
    const rep = decodeNeighbourFrame(KERNEL.arpReply);
    assert.ok(rep?.proto === 'arp' && rep.arp.op === ARP_REPLY && rep.arp.senderMac === B.mac);
    const ns = decodeNeighbourFrame(KERNEL.ns);
    assert.ok(ns?.proto === 'ndp');
    assert.deepEqual(ns.ndp, { type: ND_NEIGHBOR_SOLICIT, target: B.ip6, sourceMac: A.mac });
    assert.equal(ns.ip6.dst, 'ff02::1:ff00:2');
    const na = decodeNeighbourFrame(KERNEL.na);
    assert.ok(na?.proto === 'ndp');
    assert.deepEqual(na.ndp, {
      type: ND_NEIGHBOR_ADVERT,
      target: B.ip6,
      router: false,
      solicited: true,
      override: true,
      targetMac: B.mac,
    });
  });
  it('return null for well-formed frames that are not ARP or ND', () => {
    assert.equal(decodeNeighbourFrame(KERNEL.echoRequest4), null);
    assert.equal(decodeNeighbourFrame(KERNEL.echoRequest6), null);
    assert.equal(decodeNeighbourFrame(KERNEL.rs), null); // router solicitation: hosts asking, not neighbours answering
  });
  it('decode a router advertisement with its source link-layer option', () => {
    const src = 'fe80::24d2:eaff:febc:6abe';
    const body = Buffer.alloc(16);
    body[0] = ND_ROUTER_ADVERT;
    body[4] = 64;
    body[5] = 0x80;
    body.writeUInt16BE(1800, 6);
    const opt = Buffer.concat([Buffer.from([1, 1]), macToBytes(B.mac)]);
    const msg = Buffer.concat([body, opt]);
    msg.writeUInt16BE(icmpv6Checksum(src, 'ff02::1', msg), 2);
    const ip = encodeIpv6Header({
      src,
      dst: 'ff02::1',
      nextHeader: IPPROTO_ICMPV6,
      payloadLength: msg.length,
      hopLimit: 255,
    });
    const frame = encodeEthernet(
      { dst: '33:33:00:00:00:01', src: B.mac, ethertype: 0x86dd },
      Buffer.concat([ip, msg]),
    );
    const d = decodeNeighbourFrame(frame);
    assert.ok(d?.proto === 'ndp' && d.ndp.type === ND_ROUTER_ADVERT);
    assert.equal(d.ndp.sourceMac, B.mac);
    assert.equal(d.ndp.routerLifetime, 1800);
    assert.equal(d.ndp.managed, true);
    assert.equal(d.ip6.src, src);
  });
  it('decode an 802.1Q-tagged ARP frame', () => {
    const tagged = encodeEthernet(
      { dst: BROADCAST_MAC, src: A.mac, ethertype: ETHERTYPE_ARP, vlan: 42 },
      KERNEL.arpRequest.subarray(14),
    );
    const d = decodeNeighbourFrame(tagged);
    assert.ok(d?.proto === 'arp');
    assert.equal(d.eth.vlan, 42);
    assert.equal(d.arp.targetIp, B.ip4);
  });
  it('accept Ethernet padding after a 28-byte ARP packet', () => {
    const padded = Buffer.concat([KERNEL.arpReply, Buffer.alloc(18)]);
    assert.equal(decodeNeighbourFrame(padded)?.proto, 'arp');
  });
  it('decode IPv4 headers and ICMP echo, verifying checksums', () => {
    const { value, payloadOffset } = decodeIpv4(KERNEL.echoRequest4, 14);
    assert.equal(value.src, A.ip4);
    assert.equal(value.protocol, IPPROTO_ICMP);
    assert.equal(value.flags, 2); // DF
    const e = decodeIcmpEcho(KERNEL.echoRequest4, payloadOffset);
    assert.equal(e.type, ICMP_ECHO_REQUEST);
    assert.equal(e.id, 0x1d7e);
    assert.equal(e.seq, 1);
    assert.equal(e.payload.length, 56);
  });
  it('decoded values are copies, safe after the capture buffer is reused', () => {
    const buf = Buffer.from(KERNEL.echoReply4);
    const e = decodeIcmpEcho(buf, 34);
    buf.fill(0);
    assert.equal(e.payload[16], 0x10);
  });
});

describe('frames: malformed and truncated input is rejected, never half-read', () => {
  it('every truncation of every known frame throws FrameError or is recognised as foreign', () => {
    for (const frame of Object.values(KERNEL)) {
      for (let len = 0; len < frame.length; len++) {
        const cut = frame.subarray(0, len);
        try {
          decodeNeighbourFrame(cut);
        } catch (err) {
          assert.ok(err instanceof FrameError, `length ${len}: ${String(err)}`);
        }
      }
    }
    rejects(() => decodeNeighbourFrame(KERNEL.arpReply.subarray(0, 41)), 'ERR_FRAME_TRUNCATED');
    rejects(() => decodeNeighbourFrame(KERNEL.na.subarray(0, 85)), 'ERR_FRAME_TRUNCATED');
    rejects(() => decodeNeighbourFrame(KERNEL.ns.subarray(0, 10)), 'ERR_FRAME_TRUNCATED');
    rejects(() => decodeIcmpEcho(KERNEL.echoReply4.subarray(0, 40), 34), 'ERR_FRAME_TRUNCATED');
  });
  it('random bytes never throw anything but FrameError', () => {
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff;
    for (let i = 0; i < 3000; i++) {
      const base = Object.values(KERNEL)[i % Object.keys(KERNEL).length]!;
      const f = Buffer.from(base);
      // Corrupt a few bytes of a real frame, so decoding goes deep before failing.
      for (let k = 0; k < 3; k++) f[rnd() % f.length] = rnd();
      try {
        decodeNeighbourFrame(f.subarray(0, rnd() % (f.length + 1)));
      } catch (err) {
        assert.ok(err instanceof FrameError, String(err));
      }
    }
  });
  it('ARP with other hardware/protocol types or operations is malformed', () => {
    const f = Buffer.from(KERNEL.arpReply);
    f.writeUInt16BE(6, 14); // htype IEEE 802
    rejects(() => decodeNeighbourFrame(f), 'ERR_FRAME_MALFORMED');
    const g = Buffer.from(KERNEL.arpReply);
    g.writeUInt16BE(3, 20); // RARP request
    rejects(() => decodeArp(g, 14), 'ERR_FRAME_MALFORMED');
  });
  it('ND with a bad checksum, hop limit below 255, code != 0, multicast target or a zero-length option is malformed', () => {
    const flip = (off: number, v: number) => {
      const f = Buffer.from(KERNEL.na);
      f[off] = v;
      return f;
    };
    rejects(() => decodeNeighbourFrame(flip(56, 0)), 'ERR_FRAME_MALFORMED'); // checksum
    rejects(() => decodeNeighbourFrame(flip(21, 64)), 'ERR_FRAME_MALFORMED'); // hop limit 64: forwarded, off-link
    rejects(() => decodeNeighbourFrame(flip(55, 1)), 'ERR_FRAME_MALFORMED'); // code 1
    const zeroOpt = Buffer.from(KERNEL.na);
    zeroOpt[79] = 0; // option length 0 (checksum also fixed below so only the option is wrong)
    const ip = decodeIpv6(zeroOpt, 14).value;
    zeroOpt.writeUInt16BE(icmpv6Checksum(ip.src, ip.dst, zeroOpt.subarray(54)), 56);
    rejects(() => decodeNeighbourFrame(zeroOpt), 'ERR_FRAME_MALFORMED');
    const mcastTarget = encodeNeighbourSolicitation({
      src: A.ip6,
      dst: 'ff02::1',
      target: '::',
      sourceMac: A.mac,
    });
    mcastTarget[8] = 0xff;
    mcastTarget.writeUInt16BE(icmpv6Checksum(A.ip6, 'ff02::1', mcastTarget), 2);
    const ip6 = encodeIpv6Header({
      src: A.ip6,
      dst: 'ff02::1',
      nextHeader: IPPROTO_ICMPV6,
      payloadLength: mcastTarget.length,
      hopLimit: 255,
    });
    rejects(
      () =>
        decodeNeighbourFrame(
          encodeEthernet(
            { dst: '33:33:00:00:00:01', src: A.mac, ethertype: 0x86dd },
            Buffer.concat([ip6, mcastTarget]),
          ),
        ),
      'ERR_FRAME_MALFORMED',
    );
  });
  it('an IPv6 payload length beyond the captured bytes is truncated', () => {
    const f = Buffer.from(KERNEL.ns);
    f.writeUInt16BE(200, 18);
    rejects(() => decodeNeighbourFrame(f), 'ERR_FRAME_TRUNCATED');
  });
  it('IPv4: bad version, bad header length, bad checksum', () => {
    const ip = Buffer.from(KERNEL.echoRequest4.subarray(14));
    const v = Buffer.from(ip);
    v[0] = 0x65;
    rejects(() => decodeIpv4(v), 'ERR_FRAME_MALFORMED');
    const ihl = Buffer.from(ip);
    ihl[0] = 0x44;
    rejects(() => decodeIpv4(ihl), 'ERR_FRAME_MALFORMED');
    const sum = Buffer.from(ip);
    sum[8] = 1; // ttl changed, checksum not updated
    rejects(() => decodeIpv4(sum), 'ERR_FRAME_MALFORMED');
    rejects(() => decodeIcmpEcho(Buffer.from([8, 0, 0, 0, 0, 0, 0, 1]), 0), 'ERR_FRAME_MALFORMED');
  });
  it('802.3 length frames and a truncated VLAN tag are rejected', () => {
    const llc = Buffer.from(KERNEL.arpRequest);
    llc.writeUInt16BE(0x0026, 12);
    rejects(() => decodeEthernet(llc), 'ERR_FRAME_MALFORMED');
    const vlan = Buffer.from(KERNEL.arpRequest.subarray(0, 16));
    vlan.writeUInt16BE(0x8100, 12);
    rejects(() => decodeEthernet(vlan), 'ERR_FRAME_TRUNCATED');
    assert.equal(decodeEthernet(KERNEL.echoRequest4).value.ethertype, ETHERTYPE_IPV4);
  });
  it('encoders refuse bad input with RangeError', () => {
    assert.throws(
      () => buildArpRequest({ senderMac: A.mac, senderIp: '198.18.0.300', targetIp: B.ip4 }),
      RangeError,
    );
    assert.throws(
      () => buildNeighbourSolicitation({ srcMac: A.mac, srcIp: A.ip6, target: '198.18.0.2' }),
      RangeError,
    );
    assert.equal(formatIpv6(ipv6ToBytes('::')), '::');
  });
});
