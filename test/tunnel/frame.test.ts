import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import {
  encodeFrame,
  Flag,
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  ProtocolError,
  type Frame,
} from '../../src/tunnel/frame';

/** A deterministic PRNG (mulberry32) so a failing fuzz case can be replayed from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomFrame(rnd: () => number): Frame {
  const type = Math.floor(rnd() * 4) as FrameType;
  const flags = Math.floor(rnd() * 16);
  if (type === FrameType.Data) {
    const n = Math.floor(rnd() * 3000);
    return { type, flags, streamId: 1 + Math.floor(rnd() * 1000), length: n, data: randomBytes(n) };
  }
  if (type === FrameType.WindowUpdate)
    return { type, flags, streamId: 1 + Math.floor(rnd() * 1000), length: Math.floor(rnd() * 2 ** 32) };
  return { type, flags, streamId: 0, length: Math.floor(rnd() * 2 ** 32) };
}

/** Split a buffer into random chunk sizes (1..n bytes each). */
function chop(buf: Buffer, rnd: () => number): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  while (at < buf.length) {
    const n = 1 + Math.floor(rnd() * Math.min(64, buf.length - at));
    out.push(buf.subarray(at, at + n));
    at += n;
  }
  return out;
}

describe('tunnel: yamux frame codec', () => {
  it('encodes the 12-byte big-endian header exactly as spec.md says', () => {
    const b = encodeFrame({
      type: FrameType.WindowUpdate,
      flags: Flag.SYN | Flag.ACK,
      streamId: 0x01020304,
      length: 0x0a0b0c0d,
    });
    assert.deepEqual([...b], [0, 1, 0, 3, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
    const d = encodeFrame({
      type: FrameType.Data,
      flags: Flag.FIN,
      streamId: 3,
      length: 0,
      data: Buffer.from('hi'),
    });
    assert.deepEqual([...d], [0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2, 0x68, 0x69]);
  });

  it('decodes any chunking of a frame sequence back to the same frames', () => {
    const rnd = prng(42);
    for (let round = 0; round < 50; round++) {
      const frames = Array.from({ length: 20 }, () => randomFrame(rnd));
      const wire = Buffer.concat(frames.map(encodeFrame));
      const dec = new FrameDecoder({ maxFrameSize: 4096 });
      const got: Frame[] = [];
      for (const c of chop(wire, rnd)) {
        const r = dec.push(c);
        assert.equal(r.error, undefined);
        got.push(...r.frames);
      }
      assert.equal(got.length, frames.length);
      for (let i = 0; i < frames.length; i++) {
        const a = frames[i]!;
        const b = got[i]!;
        assert.equal(b.type, a.type);
        assert.equal(b.flags, a.flags);
        assert.equal(b.streamId, a.streamId);
        assert.equal(b.length, a.length);
        if (a.type === FrameType.Data) assert.ok(b.data!.equals(a.data!));
      }
      assert.equal(dec.pendingBytes, 0);
    }
  });

  it('streaming mode delivers payload pieces as they arrive: same bytes, SYN on the first piece, FIN on the last', () => {
    const rnd = prng(9);
    const frames = Array.from({ length: 30 }, () => randomFrame(rnd));
    const wire = Buffer.concat(frames.map(encodeFrame));
    const dec = new FrameDecoder({ maxFrameSize: 4096, streamData: true });
    const got: Frame[] = [];
    for (const c of chop(wire, rnd)) got.push(...dec.push(c).frames);
    let i = 0;
    for (const want of frames) {
      if (want.type !== FrameType.Data || want.length === 0) {
        const g = got[i++]!;
        assert.equal(g.type, want.type);
        assert.equal(g.flags, want.flags);
        continue;
      }
      const pieces: Frame[] = [];
      let n = 0;
      while (n < want.length) {
        const g = got[i++]!;
        assert.equal(g.streamId, want.streamId);
        pieces.push(g);
        n += g.data!.length;
      }
      assert.ok(Buffer.concat(pieces.map((p) => p.data!)).equals(want.data!));
      pieces.forEach((p, k) => {
        const synAck = Flag.SYN | Flag.ACK;
        const finRst = Flag.FIN | Flag.RST;
        assert.equal(p.flags & synAck, k === 0 ? want.flags & synAck : 0);
        assert.equal(p.flags & finRst, k === pieces.length - 1 ? want.flags & finRst : 0);
      });
    }
    assert.equal(i, got.length);
  });

  const bad: [string, Buffer, string][] = [
    ['version 1', Buffer.from([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]), 'ERR_YAMUX_VERSION'],
    ['type 4', Buffer.from([0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]), 'ERR_YAMUX_TYPE'],
    ['unknown flag 0x10 (LZW)', Buffer.from([0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0, 0, 0]), 'ERR_YAMUX_FLAGS'],
    ['ping on stream 5', Buffer.from([0, 2, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0]), 'ERR_YAMUX_SESSION_FRAME'],
    ['data on stream 0', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 'ERR_YAMUX_STREAM_ID'],
    [
      '4 GiB data frame',
      Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]),
      'ERR_YAMUX_FRAME_TOO_LARGE',
    ],
  ];
  for (const [what, wire, code] of bad) {
    it(`rejects ${what} as a protocol error (${code}), and stays failed`, () => {
      const dec = new FrameDecoder({ maxFrameSize: 65536 });
      const r = dec.push(wire);
      assert.ok(r.error instanceof ProtocolError);
      assert.equal(r.error.code, code);
      const again = dec.push(Buffer.alloc(HEADER_SIZE));
      assert.equal(again.error, r.error);
      assert.equal(again.frames.length, 0);
    });
  }

  it('fuzz: random bytes and mutated valid frames never throw, never hang, never buffer past the limit', () => {
    const rnd = prng(7);
    const maxFrameSize = 8192;
    const started = Date.now();
    let errors = 0;
    let frames = 0;
    for (let round = 0; round < 3000; round++) {
      let wire: Buffer;
      if (round % 3 === 0) {
        wire = randomBytes(Math.floor(rnd() * 200));
      } else {
        wire = Buffer.concat(
          Array.from({ length: 1 + Math.floor(rnd() * 5) }, () => encodeFrame(randomFrame(rnd))),
        );
        const flips = 1 + Math.floor(rnd() * 6);
        for (let i = 0; i < flips && wire.length; i++)
          wire[Math.floor(rnd() * wire.length)] = Math.floor(rnd() * 256);
        if (rnd() < 0.3) wire = wire.subarray(0, Math.floor(rnd() * wire.length));
      }
      const dec = new FrameDecoder({ maxFrameSize });
      for (const c of chop(wire, rnd)) {
        const r = dec.push(c); // must not throw
        frames += r.frames.length;
        for (const f of r.frames) if (f.data) assert.ok(f.data.length <= maxFrameSize);
        if (r.error) {
          errors++;
          assert.ok(r.error instanceof ProtocolError);
          break;
        }
        // Never holds more than one header plus one maximal payload.
        assert.ok(dec.pendingBytes <= HEADER_SIZE + maxFrameSize + 64, `buffered ${dec.pendingBytes}`);
      }
    }
    assert.ok(errors > 100, `mutations found protocol errors (${errors})`);
    assert.ok(frames > 100, `valid frames still decoded (${frames})`);
    assert.ok(Date.now() - started < 10_000, 'fuzzing finished in bounded time');
  });
});
