// What a peer's frames and lines can cost a node, piece by piece (docs/security.md "An
// authenticated tunnel peer"): pings are answered a few per turn and are no heartbeat life; a
// peer that sends without reading pauses our reading and is closed by write_timeout; a stream the
// peer opens keeps yamux's 256 KiB window until it has a consumer; control lines are parsed with
// a schema; the listeners' descriptor budget.
import { FakeClock } from '../doubles';
import { strict as assert } from 'node:assert';
import type * as net from 'node:net';
import { encodeHeader, Flag, FrameDecoder, FrameType, type Frame } from '../../src/tunnel/frame';
import { FdBudget } from '../../src/tunnel/fdbudget';
import { parseControlLine } from '../../src/tunnel/link';
import { MuxSession, type MuxStream } from '../../src/tunnel/muxsession';
import { once, sleep, tcpPair } from './helpers';
import { waitFor } from '../lab/lab';

function collectFrames(sock: net.Socket): Frame[] {
  const dec = new FrameDecoder();
  const out: Frame[] = [];
  sock.on('data', (c: Buffer) => out.push(...dec.push(c).frames));
  return out;
}

/** `n` frames of one kind in one buffer. */
function frames(n: number, make: (i: number) => Buffer): Buffer {
  return Buffer.concat(Array.from({ length: n }, (_, i) => make(i)));
}

describe('tunnel: bounds on what a peer can make a node do', function () {
  const open: (MuxSession | net.Socket)[] = [];
  afterEach(() => {
    for (const s of open.splice(0)) {
      if (s instanceof MuxSession) s.close();
      else s.destroy();
    }
  });

  it('a flood of pings gets a few answers per turn, and is no heartbeat life: the link is dropped', async () => {
    const clock = new FakeClock();
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'client', clock, heartbeatMs: 10_000, heartbeatMisses: 3 });
    open.push(a, sb);
    const seen = collectFrames(sb);
    const closed = once<Error>(a, 'close');
    const flood = frames(10_000, (i) => encodeHeader(FrameType.Ping, Flag.SYN, 0, i + 1));
    for (let tick = 0; tick < 4 && !a.closed; tick++) {
      sb.write(flood); // pings, never an answer to ours
      await waitFor(() => a.bytesIn >= (tick + 1) * flood.length, 5000, 'the flood read');
      await clock.advance(10_000);
    }
    assert.match((await closed).message, /heartbeat/);
    await sleep(20);
    const answers = seen.filter((f) => f.type === FrameType.Ping && f.flags & Flag.ACK).length;
    assert.ok(answers > 0 && answers < 1000, `${answers} answers to 30 000+ pings`);
    assert.ok(a.pingsUnanswered > 29_000, `unanswered: ${a.pingsUnanswered}`);
  });

  it('a peer that sends without reading: reading pauses, the queue stays bounded, write_timeout closes the link', async function () {
    this.timeout(20_000);
    const clock = new FakeClock();
    const [sa, sb] = await tcpPair();
    sb.pause(); // never reads what we answer
    const maxUnsent = 1024 * 1024;
    const a = new MuxSession(sa, { role: 'client', clock, maxUnsent, writeTimeoutMs: 10_000 });
    open.push(a, sb);
    // Wrong-parity SYNs (odd IDs to the client): each is refused with a stream RST of our own.
    const batch = frames(8192, (i) => encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1 + 2 * i, 0));
    const closed = once<Error>(a, 'close', 15_000);
    const quarter = maxUnsent / 4;
    let sent = 0;
    let peak = 0;
    // Until the kernel's buffers are full both ways and the node has stopped reading.
    while (sent < 128 * 1024 * 1024 && !(a.readingPaused && sb.writableLength > 4 * 1024 * 1024)) {
      if (!sb.write(batch)) await sleep(sb.writableLength > 1024 * 1024 ? 20 : 0);
      sent += batch.length;
      peak = Math.max(peak, a.unsentBytes);
    }
    assert.ok(a.readingPaused, `reading paused (${a.unsentBytes} bytes wait, ${sent} sent)`);
    await sleep(200);
    assert.ok(!a.closed, 'not closed yet: paused, within its cap');
    assert.ok(a.refusedSyns > 0);
    assert.ok(a.readingPaused && a.unsentBytes > 0, 'still paused: the peer reads nothing');
    assert.ok(peak > quarter, `paused once above a quarter of the cap: ${peak}`);
    assert.ok(Math.max(peak, a.unsentBytes) <= maxUnsent, `${peak} bytes waited (cap ${maxUnsent})`);
    // The stall is measured from the first look that saw no byte leave (looks every write_timeout / 4).
    await clock.advance(12_500);
    assert.match((await closed).message, /write_timeout/);
  });

  it('a stream the peer opens answers with the 256 KiB window, and gets 1 MiB once its consumer is attached', async () => {
    const [sa, sb] = await tcpPair();
    const a = new MuxSession(sa, { role: 'server', holdInboundWindow: true });
    open.push(a, sb);
    const seen = collectFrames(sb);
    const stream = once<MuxStream>(a, 'stream');
    sb.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1, 0));
    const s = await stream;
    await waitFor(() => seen.length > 0, 2000, 'the ACK');
    assert.deepEqual(
      seen.map((f) => [f.flags, f.length]),
      [[Flag.ACK, 0]],
    );
    s.openWindow();
    s.openWindow(); // once only
    await waitFor(() => seen.length > 1, 2000, 'the window update');
    await sleep(20);
    assert.deepEqual(
      seen.map((f) => [f.type, f.flags, f.length]),
      [
        [FrameType.WindowUpdate, Flag.ACK, 0],
        [FrameType.WindowUpdate, 0, 1024 * 1024 - 256 * 1024],
      ],
    );
  });

  it('control lines: only JSON objects with a string type; known types with their fields; unknown types ignored', () => {
    for (const line of [
      'null',
      '[]',
      '1',
      '"hello"',
      '{"type":null}',
      '{"type":"hello"}',
      'nope',
      '{"type":"bye","reason":1}',
    ])
      assert.ok(parseControlLine(line) instanceof Error, line);
    assert.equal(parseControlLine('{"type":"later","x":1}'), undefined);
    const hello = parseControlLine(
      '{"type":"hello","name":"gw1","role":"relay","services":{"__proto__":0,"constructor":1,"a b":0,"ok":64,"fine":2}}',
    );
    assert.ok(hello && !(hello instanceof Error) && hello.type === 'hello');
    // Only names of the documented syntax with hops in 0..63; own keys, nothing inherited.
    assert.deepEqual(Object.entries(hello.services), [
      ['constructor', 1],
      ['fine', 2],
    ]);
    assert.match(String(parseControlLine('{"type":"hello","name":"x"}')), /role/);
  });

  it('the descriptor budget: near the limit once past its share, the count read at most every cacheMs', async () => {
    const clock = new FakeClock();
    let fds = 700;
    let reads = 0;
    const b = new FdBudget(0.8, 100, clock, 1000, () => (reads++, fds));
    assert.equal(b.nearLimit(), false);
    fds = 900;
    assert.equal(b.nearLimit(), false, 'the cached count, plus one accepted since');
    await clock.advance(100);
    assert.equal(b.nearLimit(), true);
    assert.equal(reads, 2);
  });
});
