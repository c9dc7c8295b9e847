// src/tunnel/flow.ts, the JavaScript path's pipe without per-pipe closures: what a session needs of
// pipe() on real sockets (backpressure, the end passed on, a destination that goes away, undoing
// it with nothing lost, corking) and what it saves (no closure per flow).
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { PassThrough, Writable } from 'node:stream';
import { flow, flowing, unflow } from '../../src/tunnel/flow';
import { readAll, sha256, tcpPair } from './helpers';

describe('tunnel: flow, the JavaScript path between a socket and a stream', function () {
  this.timeout(20_000);

  it('carries 16 MiB socket to socket in order, and passes the end on', async () => {
    const [a, a2] = await tcpPair(true);
    const [b2, b] = await tcpPair(true);
    flow(a2, b2);
    const data = randomBytes(16 * 1024 * 1024);
    const got = readAll(b);
    a.end(data);
    assert.equal(sha256(await got), sha256(data));
    assert.ok(b2.writableEnded, 'the end was passed on');
    assert.equal(flowing(a2), false, 'the flow ended with its source');
    for (const s of [a, a2, b, b2]) s.destroy();
  });

  it('holds the source while the destination is full, and resumes it on drain', async () => {
    const src = new PassThrough();
    let release: (() => void) | undefined;
    let writes = 0;
    const dest = new Writable({
      highWaterMark: 1024,
      write(_c, _e, cb) {
        writes++;
        release = cb; // one write at a time, completed by the test
      },
    });
    flow(src, dest);
    src.write(Buffer.alloc(4096));
    src.write(Buffer.alloc(4096));
    await new Promise((r) => setImmediate(r));
    assert.equal(src.isPaused(), true, 'paused behind a full destination');
    assert.equal(writes, 1);
    const cb = release!;
    release = undefined;
    cb(); // the first write completes: the second goes on
    await new Promise((r) => setImmediate(r));
    assert.equal(writes, 2);
    release!();
    await new Promise((r) => setImmediate(r));
    assert.equal(src.isPaused(), false, 'resumed once the destination drained');
  });

  it('unflow stops at once and leaves the source paused: what arrives later is kept for the next reader', async () => {
    const src = new PassThrough();
    const seen: Buffer[] = [];
    const dest = new Writable({
      write(c: Buffer, _e, cb) {
        seen.push(c);
        cb();
      },
    });
    flow(src, dest);
    src.write('one');
    await new Promise((r) => setImmediate(r));
    unflow(src);
    assert.equal(flowing(src), false);
    src.write('two');
    await new Promise((r) => setImmediate(r));
    assert.equal(Buffer.concat(seen).toString(), 'one', 'nothing written after unflow');
    assert.equal((src.read() as Buffer).toString(), 'two', 'kept in the source');
    // Flowing again into the same destination works.
    flow(src, dest);
    src.end('three');
    await new Promise((r) => dest.once('finish', r));
    assert.equal(Buffer.concat(seen).toString(), 'onethree');
  });

  it('a destination that closes stops the flow; the source is not ended or resumed by it', async () => {
    const src = new PassThrough();
    const dest = new PassThrough();
    flow(src, dest);
    dest.destroy();
    await new Promise((r) => setImmediate(r));
    assert.equal(flowing(src), false);
    src.write('after');
    await new Promise((r) => setImmediate(r));
    assert.equal((src.read() as Buffer).toString(), 'after');
  });

  it('an already ended source still ends its destination', async () => {
    const src = new PassThrough();
    src.end();
    src.resume();
    await new Promise((r) => src.once('end', r));
    const dest = new PassThrough();
    flow(src, dest);
    await new Promise((r) => dest.once('finish', r));
  });

  it('corked: the pieces of one loop turn leave in one write to the socket', async () => {
    const src = new PassThrough();
    const [sock, peer] = await tcpPair(true);
    const writes: number[] = [];
    const orig = sock._writev!.bind(sock);
    sock._writev = (chunks, cb) => {
      writes.push(chunks.length);
      orig(chunks, cb);
    };
    flow(src, sock, true);
    const got = readAll(peer);
    for (let i = 0; i < 8; i++) src.write(Buffer.alloc(1000, i));
    src.end();
    assert.equal((await got).length, 8000);
    assert.deepEqual(writes, [8], 'eight pieces, one writev');
    sock.destroy();
  });

  it('no closure per flow: the listeners are the same functions for every flow', async () => {
    const [a, a2] = await tcpPair(true);
    const [b, b2] = await tcpPair(true);
    flow(a2, b);
    flow(b2, a);
    assert.deepEqual(a2.listeners('data'), b2.listeners('data'));
    assert.deepEqual(b.listeners('drain'), a.listeners('drain'));
    for (const s of [a, a2, b, b2]) s.destroy();
  });
});
