import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import type * as net from 'node:net';
import { FakeClock } from '../../src/util/clock';
import {
  encodeHeader,
  FrameDecoder,
  FrameType,
  Flag,
  GoAwayCode,
  INITIAL_WINDOW,
  type Frame,
} from '../../src/tunnel/frame';
import { MuxSession, type MuxStream, type MuxOptions } from '../../src/tunnel/mux';
import { nextError, once, readAll, sha256, sleep, tcpPair } from './helpers';

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

  it('a SYN with our own parity or a reused id is a protocol error; beyond maxStreams the SYN is reset', async () => {
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'server', maxStreams: 1 });
    open.push(a);
    const seen = collectFrames(sb);
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1, 0));
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 3, 0));
    await sleep(50);
    assert.ok(seen.some((f) => f.streamId === 1 && f.flags & Flag.ACK));
    assert.ok(seen.some((f) => f.streamId === 3 && f.flags & Flag.RST));
    const closed = once<Error & { code: string }>(a, 'close');
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 2, 0));
    assert.equal((await closed).code, 'ERR_YAMUX_STREAM_ID');
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
