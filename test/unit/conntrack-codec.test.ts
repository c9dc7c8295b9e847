// ctnetlink requests as bytes (src/sys/conntrack-codec.ts): the dump filters the kernel reads
// (ctnetlink_alloc_filter, net/netfilter/nf_conntrack_netlink.c) and tuples of port-less protocols.
import { strict as assert } from 'node:assert';
import { encodeDelete, encodeDump } from '../../src/sys/conntrack-codec';

interface Attr {
  type: number;
  nested: boolean;
  data: Buffer;
}

/** struct nlattr's in host order (little-endian here, as on every machine the suite runs on). */
function attrs(b: Buffer): Attr[] {
  const out: Attr[] = [];
  for (let off = 0; off + 4 <= b.length;) {
    const len = b.readUInt16LE(off);
    const type = b.readUInt16LE(off + 2);
    out.push({ type: type & 0x3fff, nested: (type & 0x8000) !== 0, data: b.subarray(off + 4, off + len) });
    off += (len + 3) & ~3;
  }
  return out;
}

const CTA_TUPLE_ORIG = 1;
const CTA_TUPLE_REPLY = 2;
const CTA_STATUS = 3;
const CTA_FILTER = 25;
const CTA_STATUS_MASK = 26;

describe('ctnetlink dump filters', () => {
  it('an IPv4 reply destination: CTA_TUPLE_REPLY with the address and CTA_FILTER with the IP_DST flag in host order', () => {
    const b = encodeDump({ replyDst: '198.18.3.10', status: { value: 0x10, mask: 0x10 } });
    assert.equal(b[0], 2, 'AF_INET: the kernel needs the family to parse a tuple filter');
    const top = attrs(b.subarray(4));
    assert.deepEqual(
      top.map((a) => a.type),
      [CTA_STATUS, CTA_STATUS_MASK, CTA_TUPLE_REPLY, CTA_FILTER],
    );
    assert.equal(top[0]!.data.readUInt32BE(0), 0x10);
    assert.equal(top[1]!.data.readUInt32BE(0), 0x10);
    const [ip] = attrs(top[2]!.data);
    assert.ok(ip!.nested);
    assert.deepEqual(attrs(ip!.data), [{ type: 2, nested: false, data: Buffer.from([198, 18, 3, 10]) }]);
    const [flags] = attrs(top[3]!.data);
    assert.equal(flags!.type, 2, 'CTA_FILTER_REPLY_FLAGS');
    assert.equal(flags!.data.readUInt32LE(0), 1 << 1, 'CTA_FILTER_FLAG_CTA_IP_DST, an NLA_U32');
  });

  it('an IPv6 reply destination is encoded too (the facade leaves it out of requests: the kernel inverts it)', () => {
    const b = encodeDump({ replyDst: '2001:db8:3::10' });
    assert.equal(b[0], 10);
    const top = attrs(b.subarray(4));
    const [ip] = attrs(top[0]!.data);
    assert.equal(attrs(ip!.data)[0]!.type, 4, 'CTA_IP_V6_DST');
  });

  it('refuses a status filter without a mask and a family that contradicts the address', () => {
    assert.throws(() => encodeDump({ status: { value: 0, mask: 0 } }), /mask other than 0/);
    assert.throws(() => encodeDump({ family: 6, replyDst: '198.18.3.10' }), /not an IPv6 address/);
  });

  it('a tuple of a protocol without ports (ESP) is deleted by its addresses', () => {
    const b = encodeDelete({ orig: { src: '198.18.10.10', dst: '198.18.2.10', protocol: 50 }, id: 7 });
    const [orig] = attrs(b.subarray(4));
    assert.equal(orig!.type, CTA_TUPLE_ORIG);
    const [, proto] = attrs(orig!.data);
    assert.deepEqual(attrs(proto!.data), [{ type: 1, nested: false, data: Buffer.from([50]) }]);
    assert.throws(
      () => encodeDelete({ orig: { src: '198.18.10.10', dst: '198.18.2.10', protocol: 17 } }),
      /sport must be a port number/,
    );
  });
});
