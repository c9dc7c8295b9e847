// The native relay of bridged sessions (native/relay.cc, src/tunnel/nativebridge.ts) on a real link
// (the addon's TLS on loopback, a MuxSession each side, a CloseGuard each side): bytes both ways
// with half-close each way, what was in flight in JavaScript at the handover, a reader that stops
// (it holds its own stream's window, never the link), two streams sharing a link, resets each way
// and a link that vanishes mid-stream. Every session must reach closed and leave no relay behind.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { loadNative } from '../../src/sys/native';
import { TlsLinkSocket } from '../../src/sys/tlslink';
import { CloseGuard, type GuardOptions } from '../../src/tunnel/closeguard';
import { linkContext, loadTls } from '../../src/tunnel/linktls';
import { MuxSession, type MuxOptions, type MuxStream } from '../../src/tunnel/muxsession';
import type { SessionExit, SessionLife } from '../../src/tunnel/sessionlife';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { FAULT_CASES } from './faultcases';
import { once, readAll, sha256, tcpPair, until } from './helpers';

const MiB = 1024 * 1024;

interface Side {
  mux: MuxSession;
  link: TlsLinkSocket;
  guard: CloseGuard;
}

interface Session {
  appA: net.Socket;
  appB: net.Socket;
  sa: SessionLife;
  sb: SessionLife;
  done: { a: boolean; b: boolean };
}

/** Write `data` in pieces as the socket takes them, then FIN (end) unless `end` is false. */
async function send(s: net.Socket, data: Buffer, end = true): Promise<void> {
  for (let off = 0; off < data.length; off += 256 * 1024) {
    if (!s.write(data.subarray(off, off + 256 * 1024)))
      await new Promise<void>((r) => {
        const go = (): void => {
          s.off('drain', go).off('close', go);
          r();
        };
        s.on('drain', go).on('close', go);
      });
    if (s.destroyed) return;
  }
  if (end) s.end();
}

describe('tunnel: the native relay of bridged sessions', function () {
  this.timeout(60_000);
  let pki: TestPki;
  const cleanups: (() => void)[] = [];
  const native = loadNative();

  before(() => {
    pki = makePki(['a', 'b']);
  });
  after(() => pki.cleanup());
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) c();
    await until(() => native.relayCount() === 0, 3000, 'every relay closed');
  });

  /** Two nodes' ends of one link: the addon's TLS on loopback, a mux and a close guard each. */
  async function link(
    mux: Partial<MuxOptions> = {},
    closeTimeoutMs = 30_000,
    guard: Partial<GuardOptions> = { relayAfterBytes: 0 }, // most tests hand over at bridging
  ): Promise<{ a: Side; b: Side }> {
    const server = net.createServer({ pauseOnConnect: true });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const accepted = once<net.Socket>(server, 'connection');
    const tcpA = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1' });
    await once(tcpA, 'connect');
    const tcpB = await accepted;
    server.close();
    const ctx = (n: string, srv: boolean) => linkContext(loadTls({ ca: pki.ca, ...pki.nodes[n]! }), srv);
    const ca = ctx('a', false);
    const cb = ctx('b', true);
    const la = new TlsLinkSocket(tcpA, ca);
    const lb = new TlsLinkSocket(tcpB, cb);
    ca.free();
    cb.free();
    await Promise.all([once(la, 'secure'), once(lb, 'secure')]);
    const side = (l: TlsLinkSocket, role: 'client' | 'server'): Side => ({
      link: l,
      mux: new MuxSession(l, { role, closeTimeoutMs: 30_000, ...mux }),
      guard: new CloseGuard({ closeTimeoutMs, ...guard }),
    });
    const a = side(la, 'client');
    const b = side(lb, 'server');
    cleanups.push(() => {
      for (const s of [a, b]) {
        s.guard.close();
        s.mux.close();
        s.link.destroy();
      }
    });
    return { a, b };
  }

  /** A session from app A through the link to app B, bridged at both ends. */
  async function session(
    a: Side,
    b: Side,
    before?: {
      proxyA?: (proxy: net.Socket, app: net.Socket) => Promise<void>;
      streamB?: (s: MuxStream) => Promise<void>;
    },
  ): Promise<Session> {
    const [appA, proxyA] = await tcpPair(true);
    const [appB, proxyB] = await tcpPair(true);
    for (const s of [appA, appB]) s.on('error', () => undefined);
    cleanups.push(() => [appA, appB, proxyA, proxyB].forEach((s) => s.destroy()));
    const done = { a: false, b: false };
    await before?.proxyA?.(proxyA, appA);
    const accepted = once<MuxStream>(b.mux, 'stream');
    const sa = a.guard.bridge(proxyA, a.mux.open(), () => (done.a = true));
    const stream = await accepted;
    await before?.streamB?.(stream);
    const sb = b.guard.bridge(proxyB, stream, () => (done.b = true));
    if (a.guard.relayAfterBytes === 0) assert.ok(sa.relay, 'relayed natively at A');
    if (b.guard.relayAfterBytes === 0) assert.ok(sb.relay, 'relayed natively at B');
    return { appA, appB, sa, sb, done };
  }

  it('by default a session is handed over once it has moved RELAY_AFTER_BYTES: a short one never, a bulk one mid-stream, either way', async () => {
    const { a, b } = await link({}, 30_000, {});
    // A short exchange stays on the JavaScript path at both ends: no relay, no second descriptor.
    const short = await session(a, b);
    const echoed = new Promise<Buffer>((r) => short.appA.once('data', r));
    short.appB.once('data', (c: Buffer) => short.appB.write(c));
    short.appA.write('x');
    assert.equal((await echoed).toString(), 'x');
    assert.equal(short.sa.relay, undefined, 'A: one byte each way is not worth a handover');
    assert.equal(short.sb.relay, undefined, 'B: the same');
    assert.equal(native.relayCount(), 0);
    // Bulk each way: handed over while the bytes flow, every byte in order.
    for (const dir of ['up', 'down'] as const) {
      const s = await session(a, b);
      const [from, to] = dir === 'up' ? [s.appA, s.appB] : [s.appB, s.appA];
      const data = randomBytes(8 * MiB);
      const got = readAll(to);
      await send(from, data);
      assert.equal(sha256(await got), sha256(data), `${dir}: intact and in order`);
      assert.ok(s.sa.relay && s.sb.relay, `${dir}: handed over at both ends`);
      // Handed over mid-stream: what the stream held unread at the handover went on through the
      // relay, so the relay's count is below the transfer but may exceed its last 256 KiB.
      const moved = s.sa.relay.counters();
      const total = moved.bytesIn + moved.bytesOut;
      assert.ok(total > 0 && total < data.length, `${dir}: relayed mid-stream: ${JSON.stringify(moved)}`);
      to.end();
      await until(() => s.done.a && s.done.b, 5000, `${dir}: both sessions to close`);
    }
    short.appA.end();
    short.appB.end();
    await until(() => short.done.a && short.done.b, 5000, 'the short session to close');
    assert.deepEqual(a.guard.stats.exits, { completed: 3 });
    assert.equal(a.guard.stats.relayed, 2);
    assert.equal(b.guard.stats.relayed, 2);
  });

  it('moves bytes both ways with half-close each way, and both sessions complete', async () => {
    const { a, b } = await link();
    const s = await session(a, b);
    const up = randomBytes(6 * MiB);
    const down = randomBytes(3 * MiB);
    const gotB = readAll(s.appB);
    await send(s.appA, up); // A's FIN: B reads to its end while A still reads
    assert.equal(sha256(await gotB), sha256(up));
    assert.equal(s.sb.state, 'half_closed');
    const gotA = readAll(s.appA);
    await send(s.appB, down);
    assert.equal(sha256(await gotA), sha256(down));
    await until(() => s.done.a && s.done.b, 5000, 'both sessions to close');
    assert.deepEqual(a.guard.stats.exits, { completed: 1 });
    assert.deepEqual(b.guard.stats.exits, { completed: 1 });
    assert.equal(a.guard.stats.relayed, 1);
    // The status counts the relayed bytes of the link.
    assert.ok(a.mux.stats().bytesOut >= up.length && a.mux.stats().bytesIn >= down.length);
  });

  it('bytes Node read before the handover, and bytes the stream held, go first and in order', async () => {
    const { a, b } = await link();
    const early = randomBytes(10_000);
    const s = await session(a, b, {
      // Node has read A's first bytes into the socket's buffer before A's end is bridged...
      proxyA: async (proxy, app) => {
        app.write(early);
        await until(() => proxy.readableLength === early.length, 5000, "Node's socket to hold them");
      },
      // ... and B's stream holds them, unread, when B's end is bridged.
      streamB: (st) => until(() => st.readableLength >= early.length, 5000, 'the stream to hold them'),
    });
    const later = randomBytes(2 * MiB);
    const gotB = readAll(s.appB);
    await send(s.appA, later);
    assert.equal(sha256(await gotB), sha256(Buffer.concat([early, later])));
    s.appB.end();
    await until(() => s.done.a && s.done.b, 5000, 'both sessions to close');
  });

  it('a session with a write still in flight at its bridging is handed over once it drains, bytes in order', async () => {
    const { a, b } = await link();
    const [appA, proxyA] = await tcpPair(true);
    const [appB, proxyB] = await tcpPair(true);
    for (const x of [appA, appB]) x.on('error', () => undefined);
    cleanups.push(() => [appA, appB, proxyA, proxyB].forEach((x) => x.destroy()));
    const done = { a: false, b: false };
    const accepted = once<MuxStream>(b.mux, 'stream');
    // As a client that sends at once: more than the stream's window is written before A's end is
    // bridged, so a write is still in flight then and the session starts on the JavaScript path.
    const st = a.mux.open();
    const first = randomBytes(2 * MiB);
    st.write(first);
    const sa = a.guard.bridge(proxyA, st, () => (done.a = true));
    assert.equal(sa.relay, undefined, 'not handed over with a write in flight');
    const sb = b.guard.bridge(proxyB, await accepted, () => (done.b = true));
    const gotB = readAll(appB);
    await until(() => sa.relay !== undefined, 5000, "A's end handed over once its writes drained");
    const later = randomBytes(2 * MiB);
    await send(appA, later);
    assert.equal(sha256(await gotB), sha256(Buffer.concat([first, later])));
    const down = randomBytes(MiB);
    const gotA = readAll(appA);
    await send(appB, down);
    assert.equal(sha256(await gotA), sha256(down));
    await until(() => done.a && done.b, 5000, 'both sessions to close');
    assert.ok(sb.relay, 'B relayed natively');
    assert.deepEqual(a.guard.stats.exits, { completed: 1 });
  });

  it('a reader that stops holds only its own window: the link and the other session go on', async () => {
    const { a, b } = await link({ initialWindow: 256 * 1024, maxWindow: 1 * MiB });
    const slow = await session(a, b);
    slow.appB.pause(); // B's application stops reading
    const stalled = randomBytes(24 * MiB);
    const gotSlow = new Promise<Buffer>((r) => {
      const chunks: Buffer[] = [];
      slow.appB.on('data', (c: Buffer) => chunks.push(c)).once('end', () => r(Buffer.concat(chunks)));
    });
    slow.appB.pause();
    void send(slow.appA, stalled);
    await until(() => b.guard.stats.relayStalls >= 1, 20_000, "the slow stream's window to run out");
    const st = slow.sb.relay!.stats()!;
    assert.ok(
      st.queued <= st.recvTarget && st.recvTarget <= 1 * MiB,
      `held within its window: ${JSON.stringify(st)}`,
    );
    // Meanwhile another session on the same link moves 8 MiB each way.
    const fast = await session(a, b);
    const up = randomBytes(8 * MiB);
    const gotB = readAll(fast.appB);
    await send(fast.appA, up);
    assert.equal(sha256(await gotB), sha256(up));
    const down = randomBytes(8 * MiB);
    const gotA = readAll(fast.appA);
    await send(fast.appB, down);
    assert.equal(sha256(await gotA), sha256(down));
    assert.equal(slow.sb.state, 'bridged', 'the stalled session is still there');
    // The reader comes back: every byte arrives, in order.
    slow.appB.resume();
    assert.equal(sha256(await gotSlow), sha256(stalled));
  });

  it('a local FIN behind bytes the shut window holds back: the watcher sees it, close_timeout ends the session', async () => {
    const w = 256 * 1024;
    const { a, b } = await link({ initialWindow: w, maxWindow: w, closeTimeoutMs: 400 }, 400);
    const [appA, proxyA] = await tcpPair(true);
    cleanups.push(() => [appA, proxyA].forEach((x) => x.destroy()));
    appA.on('error', () => undefined);
    const accepted = once<MuxStream>(b.mux, 'stream');
    let done = false;
    const sa = a.guard.bridge(proxyA, a.mux.open(), () => (done = true));
    assert.ok(sa.relay, 'relayed natively');
    await accepted; // the far end never reads: the stream's window shuts after 256 KiB
    // The window's worth, then a tail the socket's receive queue holds, and FIN behind it.
    appA.end(Buffer.alloc(w + 64 * 1024));
    await until(() => done, 10_000, 'the session to end');
    assert.ok(a.guard.stats.watcherFins >= 1, 'the watcher reported the FIN');
    assert.equal(a.guard.stats.exits.close_timeout, 1);
    assert.ok(proxyA.destroyed);
    assert.ok(sa.relay.bytes() <= w, `no more than the window left: ${sa.relay.bytes()}`);
  });

  it('two streams on one link take turns: neither waits for the other to finish', async () => {
    const { a, b } = await link();
    const one = await session(a, b);
    const two = await session(a, b);
    const size = 32 * MiB;
    const got = [0, 0];
    let firstDone = -1;
    let otherAtFirst = -1;
    const reader = (s: net.Socket, i: number): Promise<void> =>
      new Promise((r) => {
        s.on('data', (c: Buffer) => {
          got[i]! += c.length;
          if (got[i] === size && firstDone < 0) {
            firstDone = i;
            otherAtFirst = got[1 - i]!;
          }
        });
        s.once('end', () => r());
      });
    const ends = [reader(one.appB, 0), reader(two.appB, 1)];
    await Promise.all([send(one.appA, Buffer.alloc(size, 1)), send(two.appA, Buffer.alloc(size, 2))]);
    await Promise.all(ends);
    assert.ok(
      otherAtFirst >= size / 4,
      `the other stream had ${otherAtFirst} of ${size} bytes when one finished`,
    );
  });

  it('an RST either way reaches the other application as a reset, and both sessions close', async () => {
    const { a, b } = await link();
    for (const from of ['A', 'B'] as const) {
      const s = await session(a, b);
      const [resetter, other] = from === 'A' ? [s.appA, s.appB] : [s.appB, s.appA];
      other.write('before the reset');
      await new Promise<void>((r) => resetter.once('data', () => r()));
      const err = new Promise<string>((r) =>
        other.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? '')).once('close', () => r('close')),
      );
      resetter.resetAndDestroy();
      assert.equal(await err, 'ECONNRESET', `a reset from ${from}`);
      await until(() => s.done.a && s.done.b, 5000, 'both sessions to close');
    }
    assert.equal(a.guard.stats.exits.local_reset, 1);
    assert.equal(a.guard.stats.exits.stream_reset, 1);
    assert.equal(a.guard.size + b.guard.size, 0);
  });

  it('a link that vanishes mid-stream resets both applications and leaves no relay', async () => {
    const { a, b } = await link();
    const s = await session(a, b);
    // An RST behind unread data may surface as the end of the stream in Node (libuv reads what
    // was queued, then stops at the hang-up): either is the end of the session for the application.
    const errs = [s.appA, s.appB].map(
      (app) =>
        new Promise<string>((r) =>
          app
            .once('error', (e: NodeJS.ErrnoException) => r(e.code ?? ''))
            .once('end', () => r('ECONNRESET'))
            .once('close', () => r('close')),
        ),
    );
    s.appB.on('data', () => undefined);
    void send(s.appA, randomBytes(64 * MiB), false);
    await until(() => s.sb.relay!.bytes() > 1 * MiB, 10_000, 'bytes moving');
    b.link.destroy(); // B's end of the link goes without a word
    assert.deepEqual(await Promise.all(errs), ['ECONNRESET', 'ECONNRESET']);
    await until(() => s.done.a && s.done.b, 5000, 'both sessions to close');
    assert.equal(a.guard.stats.exits.stream_reset, 1);
    assert.equal(native.relayCount(), 0);
  });

  // The fault matrix of test/tunnel/sessionlife.test.ts for the states a relayed session is in
  // (bridged, half_closed), with the session's bytes in the addon: the same outcome every time.
  const MATRIX = FAULT_CASES.filter((c) => c.state === 'bridged' || c.state === 'half_closed');
  for (const c of MATRIX) {
    it(`relayed, ${c.state}: ${c.fault} -> closed (${c.exit}), both ends destroyed, no relay left`, async () => {
      const { a, b } = await link({}, 300);
      const [client, local] = await tcpPair(true);
      cleanups.push(() => [client, local].forEach((x) => x.destroy()));
      client.on('error', () => undefined);
      const accepted = once<MuxStream>(b.mux, 'stream');
      const ended: SessionExit[] = [];
      const session: SessionLife = a.guard.bridge(local, a.mux.open(), () => ended.push(session.exit!));
      const remote = await accepted;
      remote.on('error', () => undefined);
      remote.pipe(remote); // the far end echoes
      assert.ok(session.relay, 'relayed natively');
      const echoed = new Promise<void>((r) => client.once('data', () => r()));
      client.write('hello');
      await echoed;
      if (c.state === 'half_closed') {
        client.end(); // our client's FIN: the session is half-closed, the far end never ends
        remote.unpipe(remote);
        await until(() => session.state === 'half_closed', 2000, 'half_closed');
      }
      assert.equal(session.state, c.state);
      switch (c.fault) {
        case 'client reset':
          client.resetAndDestroy();
          break;
        case 'stream reset':
          remote.reset();
          break;
        case 'link death':
          b.link.destroy(); // the far end of the link is gone without a word
          break;
        case 'stop':
          a.guard.close();
          break;
        case 'bound':
          break; // close_timeout does it
      }
      await until(() => a.guard.size === 0, 3000, `the session to close (state ${session.state})`);
      assert.equal(session.state, 'closed');
      assert.deepEqual(ended, [c.exit]);
      assert.ok(session.stream.destroyed, 'the stream is destroyed');
      assert.ok(session.local!.destroyed, 'the local end is destroyed');
      await until(() => client.destroyed, 3000, 'the local client to be closed or reset');
      assert.equal(native.relayCount(), 0, 'the relay closed with its session');
    });
  }
});
