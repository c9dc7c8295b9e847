import { FakeClock } from '../doubles';
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import type * as net from 'node:net';
import { Duplex } from 'node:stream';
import {
  encodeHeader,
  FrameDecoder,
  FrameType,
  Flag,
  GoAwayCode,
  INITIAL_WINDOW,
  type Frame,
} from '../../src/tunnel/frame';
import { MuxSession, type MuxStream, type MuxOptions } from '../../src/tunnel/muxsession';
import { nextError, once, readAll, sha256, sleep, tcpPair, until } from './helpers';

async function sessions(
  opts: Partial<MuxOptions> = {},
): Promise<{ a: MuxSession; b: MuxSession; sa: net.Socket; sb: net.Socket }> {
  const [sa, sb] = await tcpPair();
  const a = new MuxSession(sa, { role: 'client', ...opts });
  const b = new MuxSession(sb, { role: 'server', ...opts });
  return { a, b, sa, sb };
}

/** Frames a raw peer receives, for tests that play the peer by hand. */
function collectFrames(sock: net.Socket): Frame[] {
  const dec = new FrameDecoder();
  const out: Frame[] = [];
  sock.on('data', (c: Buffer) => out.push(...dec.push(c).frames));
  return out;
}

describe('tunnel: mux (hand-written yamux)', function () {
  const open: MuxSession[] = [];
  afterEach(() => {
    for (const s of open.splice(0)) s.close();
  });

  it('opens with data in the SYN (no round trip), echoes, and ids are odd for the dialer, even for the listener', async () => {
    const { a, b } = await sessions();
    open.push(a, b);
    b.on('stream', (s: MuxStream) => s.pipe(s));
    a.on('stream', (s: MuxStream) => s.pipe(s));
    const s1 = a.open(Buffer.from('hello '));
    assert.equal(s1.id, 1);
    s1.end('world');
    assert.equal((await readAll(s1)).toString(), 'hello world');
    const s2 = b.open();
    assert.equal(s2.id, 2);
    s2.end('back');
    assert.equal((await readAll(s2)).toString(), 'back');
  });

  it('carries 64 MiB both ways at once with sha256 integrity, and the window grows past 256 KiB', async function () {
    this.timeout(30_000);
    const { a, b } = await sessions();
    open.push(a, b);
    const up = randomBytes(64 * 1024 * 1024);
    const down = randomBytes(32 * 1024 * 1024);
    const served = new Promise<{ got: Buffer; s: MuxStream }>((resolve) =>
      b.on('stream', (s: MuxStream) => {
        readAll(s).then((got) => resolve({ got, s }));
        s.end(down);
      }),
    );
    const s = a.open();
    s.end(up);
    const [gotDown, { got: gotUp, s: remote }] = await Promise.all([readAll(s), served]);
    assert.equal(sha256(gotUp), sha256(up));
    assert.equal(sha256(gotDown), sha256(down));
    assert.ok(remote.receiveWindow > INITIAL_WINDOW, `window ${remote.receiveWindow}`);
    assert.ok(remote.receiveWindow <= 16 * 1024 * 1024);
  });

  it('half-close: the opener shuts its write side and still gets the reply', async () => {
    const { a, b } = await sessions();
    open.push(a, b);
    b.on('stream', async (s: MuxStream) => {
      const req = await readAll(s); // ends on the opener's FIN
      s.end(Buffer.from(`reply to ${req.toString()}`));
    });
    const s = a.open();
    s.end('request');
    assert.equal((await readAll(s)).toString(), 'reply to request');
    await sleep(20);
    assert.equal(a.streamCount, 0);
    assert.equal(b.streamCount, 0);
  });

  it("a stream's life (its handler table): open, then local_fin or remote_fin, then closed; a destroy in half-close resets both ends", async () => {
    const { a, b } = await sessions();
    open.push(a, b);
    const accepted = once<MuxStream>(b, 'stream');
    const s = a.open(Buffer.from('q'));
    const remote = await accepted;
    assert.equal(s.streamState, 'open');
    s.end();
    await sleep(20);
    assert.equal(s.streamState, 'local_fin');
    assert.equal(remote.streamState, 'remote_fin');
    remote.resume();
    remote.end('done');
    s.resume();
    await sleep(20);
    assert.equal(s.streamState, 'closed');
    assert.equal(remote.streamState, 'closed');
    assert.ok(s.closedCleanly && remote.closedCleanly);
    // Half-closed, then destroyed: RST goes out, and the peer's end is reset too.
    const accepted2 = once<MuxStream>(b, 'stream');
    const s2 = a.open(Buffer.from('r'));
    const remote2 = await accepted2;
    s2.end();
    await sleep(20);
    const err = nextError(remote2);
    s2.destroy();
    assert.equal((await err).code, 'ECONNRESET');
    assert.equal(s2.streamState, 'reset');
    assert.equal(remote2.streamState, 'reset');
    await sleep(20);
    assert.equal(a.streamCount + b.streamCount, 0);
  });

  it("the session's life (its handler table): go-away each way, then closed; no new stream after a go-away", async () => {
    const { a, b } = await sessions();
    open.push(a, b);
    const heard = once<number>(b, 'goaway');
    a.goAway();
    assert.equal(a.muxState, 'going_away');
    await heard;
    assert.equal(b.muxState, 'peer_going_away');
    assert.throws(() => a.open(), { code: 'ERR_TUNNEL_GOAWAY' });
    assert.throws(() => b.open(), { code: 'ERR_TUNNEL_GOAWAY' });
    const heard2 = once<number>(a, 'goaway');
    b.goAway();
    await heard2;
    assert.equal(a.muxState, 'both_going_away');
    assert.equal(b.muxState, 'both_going_away');
    a.close();
    assert.equal(a.muxState, 'closed');
    a.close(); // idempotent
    assert.throws(() => a.open(), { code: 'ERR_TUNNEL_LINK_CLOSED' });
  });

  it('RST both ways: destroying one end resets the other with ECONNRESET', async () => {
    const { a, b } = await sessions();
    open.push(a, b);
    const accepted = once<MuxStream>(b, 'stream');
    const s = a.open(Buffer.from('x'));
    const remote = await accepted;
    const err = nextError(remote);
    s.destroy();
    assert.equal((await err).code, 'ECONNRESET');
    const s2 = b.open(Buffer.from('y'));
    const r2 = await once<MuxStream>(a, 'stream');
    const err2 = nextError(s2);
    r2.destroy();
    assert.equal((await err2).code, 'ECONNRESET');
    await sleep(20);
    assert.equal(a.streamCount + b.streamCount, 0);
  });

  it('a paused consumer stops the peer at the window (bounded buffering)', async () => {
    const { a, b } = await sessions();
    open.push(a, b);
    const accepted = once<MuxStream>(b, 'stream');
    const s = a.open();
    const big = randomBytes(8 * 1024 * 1024);
    s.write(big);
    const remote = await accepted; // never read: paused
    await sleep(300);
    assert.ok(s.bytesOut <= 1024 * 1024, `sent ${s.bytesOut} into a 1 MiB window`);
    assert.ok(remote.readableLength <= 1024 * 1024);
    const got = readAll(remote);
    s.end();
    assert.equal(sha256(await got), sha256(big));
  });

  it("a stream nobody reads keeps its frames, not the link's reads they came in; a stream read at once gets them uncopied", async () => {
    // The peer by hand, on a transport that hands each of its chunks to the session as one read of
    // the link: 1 KiB for stream 1, which nobody reads, and 200 KiB for stream 3, read at once.
    const link = new Duplex({ read: () => undefined, write: (_c, _e, cb: () => void) => cb() });
    const a = new MuxSession(link, { role: 'server' });
    open.push(a);
    const streams = new Map<number, MuxStream>();
    a.on('stream', (s: MuxStream) => streams.set(s.id, s));
    link.push(
      Buffer.concat([
        encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1, 0),
        encodeHeader(FrameType.WindowUpdate, Flag.SYN, 3, 0),
      ]),
    );
    await until(() => streams.size === 2, 2000, 'both streams');
    const reads: Buffer[] = [];
    const bulkChunks: Buffer[] = [];
    streams.get(3)!.on('data', (c: Buffer) => bulkChunks.push(c));
    const small = randomBytes(32 * 1024);
    for (let i = 0; i < 32; i++) {
      const read = Buffer.concat([
        encodeHeader(FrameType.Data, 0, 1, 1024),
        small.subarray(i * 1024, (i + 1) * 1024),
        encodeHeader(FrameType.Data, 0, 3, 200 * 1024),
        Buffer.alloc(200 * 1024),
      ]);
      reads.push(read);
      link.push(read);
      await new Promise((r) => setImmediate(r)); // a read per turn of the loop, as from a socket
    }
    await until(() => bulkChunks.length === 32, 2000, "stream 3's frames");
    assert.ok(
      bulkChunks.every((c, i) => c.buffer === reads[i]!.buffer),
      'a flowing stream gets slices of the reads, no copies',
    );
    const waiting = streams.get(1)!;
    assert.equal(waiting.readableLength, small.length);
    const held: Buffer[] = [];
    waiting.on('data', (c: Buffer) => held.push(c));
    await until(() => held.reduce((n, c) => n + c.length, 0) === small.length, 2000, "stream 1's bytes");
    assert.ok(Buffer.concat(held).equals(small));
    // What the waiting stream held pinned: every distinct buffer under its chunks (32 reads of
    // 201 KiB if it kept slices; copies of 1 KiB share Node's 8 KiB pool slabs).
    const pinned = [...new Set(held.map((c) => c.buffer))].reduce((n, b) => n + b.byteLength, 0);
    assert.ok(pinned <= 2 * small.length + 16 * 1024, `32 KiB held ${pinned} bytes in memory`);
  });

  it('close_timeout: a half-closed stream left idle is reset and counted', async () => {
    const clock = new FakeClock();
    const { a, b } = await sessions({ clock, closeTimeoutMs: 60_000 });
    open.push(a, b);
    const accepted = once<MuxStream>(b, 'stream');
    const s = a.open(Buffer.from('req'));
    s.end();
    const remote = await accepted;
    remote.resume(); // reads the FIN, never answers nor ends
    await once(remote, 'end');
    const err = nextError(s);
    await clock.advance(59_000);
    assert.equal(a.closeTimeouts + b.closeTimeouts, 0);
    await clock.advance(1_001);
    assert.equal((await err).code, 'ERR_TUNNEL_CLOSE_TIMEOUT');
    assert.ok(a.closeTimeouts >= 1);
    await sleep(20);
    assert.equal(a.streamCount + b.streamCount, 0);
  });

  it('heartbeat: a peer that stops answering is dropped after heartbeat_misses, with its streams', async () => {
    const clock = new FakeClock();
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'client', clock, heartbeatMs: 10_000, heartbeatMisses: 3 });
    open.push(a);
    const seen = collectFrames(sb); // a silent peer: reads, never answers
    const s = a.open(Buffer.from('x'));
    const err = nextError(s);
    const closed = once<Error>(a, 'close');
    await clock.advance(30_000);
    assert.ok(!a.closed, 'three pings sent, not yet three misses');
    await clock.advance(10_000);
    assert.equal((await closed).message.includes('heartbeat'), true);
    assert.equal((await err).code, 'ERR_TUNNEL_HEARTBEAT');
    await sleep(20);
    assert.ok(seen.some((f) => f.type === FrameType.Ping && f.flags & Flag.SYN));
    assert.ok(seen.some((f) => f.type === FrameType.GoAway && f.length === GoAwayCode.InternalError));
    sb.destroy();
  });

  it('ping measures the RTT', async () => {
    const { a, b } = await sessions();
    open.push(a, b);
    const rtt = await a.ping();
    assert.ok(rtt >= 0 && rtt < 1000);
    assert.equal(a.rttMs, rtt);
  });

  it('a malformed frame is a protocol error: go-away(1), that link closes, the process lives', async () => {
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'client' });
    open.push(a);
    const seen = collectFrames(sb);
    const closed = once<Error & { code: string }>(a, 'close');
    sb.write(Buffer.from([9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]));
    assert.equal((await closed).code, 'ERR_YAMUX_VERSION');
    await sleep(50);
    assert.ok(seen.some((f) => f.type === FrameType.GoAway && f.length === GoAwayCode.ProtocolError));
    sb.destroy();
  });

  it('data beyond the receive window is a protocol error', async () => {
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'server', initialWindow: INITIAL_WINDOW });
    open.push(a);
    const closed = once<Error & { code: string }>(a, 'close');
    const data = Buffer.alloc(200 * 1024);
    sb.write(Buffer.concat([encodeHeader(FrameType.Data, Flag.SYN, 1, data.length), data]));
    sb.write(Buffer.concat([encodeHeader(FrameType.Data, 0, 1, data.length), data]));
    assert.equal((await closed).code, 'ERR_YAMUX_WINDOW');
    sb.destroy();
  });

  it('beyond maxStreams a SYN is reset, and the link stays', async () => {
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'server', maxStreams: 1 });
    open.push(a);
    const seen = collectFrames(sb);
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1, 0));
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 3, 0));
    await sleep(50);
    assert.ok(seen.some((f) => f.streamId === 1 && f.flags & Flag.ACK));
    assert.ok(seen.some((f) => f.streamId === 3 && f.flags & Flag.RST));
    assert.equal(a.closed, false);
    sb.destroy();
  });

  // spec.md "StreamID Field": the opener's parity, never 0; nothing about order. A peer that hands
  // out IDs atomically from several threads puts its SYNs on the wire in any order.
  it('stream IDs per the spec: 200 SYNs in shuffled ID order are all served; our parity and a duplicate of a live stream get a stream RST; the link stays', async () => {
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'server' });
    open.push(a);
    a.on('stream', (s: MuxStream) => s.pipe(s)); // echo
    const seen = collectFrames(sb);
    const ids = Array.from({ length: 200 }, (_, i) => 2 * i + 1);
    for (let i = ids.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [ids[i], ids[j]] = [ids[j]!, ids[i]!];
    }
    assert.notDeepEqual(
      ids,
      [...ids].sort((x, y) => x - y),
      'the order is shuffled',
    );
    // Interleaved like concurrent openers: every SYN first (shuffled), then each stream's data.
    const wire: Buffer[] = [];
    for (const id of ids) wire.push(encodeHeader(FrameType.WindowUpdate, Flag.SYN, id, 0));
    for (const id of ids) {
      const d = Buffer.from(`stream ${id}`);
      wire.push(encodeHeader(FrameType.Data, 0, id, d.length), d);
    }
    sb.write(Buffer.concat(wire));
    const echoed = (id: number): string =>
      Buffer.concat(seen.filter((f) => f.streamId === id && f.data).map((f) => f.data!)).toString();
    const end = Date.now() + 5000;
    while (ids.some((id) => echoed(id) !== `stream ${id}`) && Date.now() < end) await sleep(20);
    for (const id of ids) {
      assert.ok(
        seen.some((f) => f.streamId === id && f.flags & Flag.ACK),
        `stream ${id} acknowledged`,
      );
      assert.equal(echoed(id), `stream ${id}`);
    }
    assert.ok(!seen.some((f) => f.flags & Flag.RST), 'no stream reset');
    assert.equal(a.streamCount, 200);

    // Wrong parity (an even ID opened by the client side): that stream only is refused.
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 400, 0));
    // A duplicate SYN for live stream 7: refused, and stream 7 reset (the peer applies our RST to it).
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 7, 0));
    await sleep(100);
    assert.ok(
      seen.some((f) => f.streamId === 400 && f.flags & Flag.RST),
      'RST for the wrong parity',
    );
    assert.ok(
      seen.some((f) => f.streamId === 7 && f.flags & Flag.RST),
      'RST for the duplicate',
    );
    assert.equal(a.refusedSyns, 2);
    assert.equal(a.closed, false, 'the link stays up');
    assert.equal(a.streamCount, 199);
    // The other streams still carry data, and a new stream (an ID lower than many seen) opens.
    const more = Buffer.from('still here');
    sb.write(Buffer.concat([encodeHeader(FrameType.Data, 0, 3, more.length), more]));
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 401, 0));
    await sleep(100);
    assert.equal(echoed(3), 'stream 3still here');
    assert.ok(seen.some((f) => f.streamId === 401 && f.flags & Flag.ACK));
    assert.ok(!seen.some((f) => f.type === FrameType.GoAway), 'no go-away');
    sb.destroy();
  });

  it('an ID is free again once its stream closed: a new SYN with it opens a new stream', async () => {
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'server' });
    open.push(a);
    const streams: MuxStream[] = [];
    a.on('stream', (s: MuxStream) => streams.push(s));
    const seen = collectFrames(sb);
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 9, 0));
    await sleep(50);
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.RST, 9, 0));
    await sleep(50);
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 9, 0));
    await sleep(50);
    assert.equal(streams.length, 2);
    assert.equal(seen.filter((f) => f.streamId === 9 && f.flags & Flag.ACK).length, 2);
    assert.equal(a.closed, false);
    sb.destroy();
  });

  it('closing the session ends every stream and is idempotent; opening afterwards fails cleanly', async () => {
    const { a, b } = await sessions();
    open.push(a, b);
    const s = a.open(Buffer.from('x'));
    const remote = await once<MuxStream>(b, 'stream');
    const e1 = nextError(s);
    const e2 = nextError(remote);
    a.close();
    a.close();
    assert.equal((await e1).code, 'ERR_TUNNEL_LINK_CLOSED');
    assert.equal((await e2).code, 'ERR_TUNNEL_LINK_CLOSED');
    assert.throws(() => a.open(), /link is closed/);
  });
});
