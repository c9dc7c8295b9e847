// Socket-state watcher: a paused socket sees the peer's FIN and RST in the lab (pairLab), without
// consuming data; lifecycle rules (idempotent close, close inside the callback, one watcher per
// socket, worker threads and environment teardown) on Unix socket pairs, which need no network.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { constants as osConstants } from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Lab } from '../lab/lab';
import { REPO_ROOT, requireRoot, waitFor } from '../lab/lab';
import { pairLabWithPeer } from '../fixtures/sockdiag-lab';
import { SystemError } from '../../src/errors';
import { fdOf } from '../../src/sys/tcpinfo';
import { openWatcherCount, watchSocket, type SocketStateEvent } from '../../src/sys/watcher';

const PORT = 5000;

interface WatchResult {
  mode: string;
  eventsBeforeClose: number;
  latencyMs: number | null;
  events: (SocketStateEvent & { atMs: number })[];
  eventsAfterIdle: number;
  idleCpuMs: number;
  bytesReadBeforeResume: number;
  data: string;
  socketError: string | null;
  closedInside: boolean;
  openWatchers: number;
}

describe('socket-state watcher in the lab', function () {
  this.timeout(60_000);
  let lab: Lab;

  before(async function () {
    requireRoot(this);
    ({ lab } = await pairLabWithPeer(PORT));
  });
  after(async () => {
    await lab?.close();
  });

  async function watch(host: string, mode: 'fin' | 'rst'): Promise<WatchResult> {
    const r = await lab.node('a', 'dist/test/fixtures/sockdiag-client.js', [
      'watch',
      host,
      String(PORT),
      mode,
    ]);
    assert.equal(r.code, 0, `watch fixture failed (${r.code}): ${r.stdout}\n${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as WatchResult;
  }

  for (const [family, host] of [
    ['IPv4', '198.18.0.2'],
    ['IPv6', '2001:db8::2'],
  ] as const) {
    it(`a paused ${family} socket's watcher reports the peer's FIN within 50 ms, once, data intact`, async () => {
      const r = await watch(host, 'fin');
      assert.equal(r.eventsBeforeClose, 0, 'data arriving on a paused socket is no event');
      assert.ok(
        r.latencyMs !== null && r.latencyMs < 50,
        `FIN seen after ${r.latencyMs} ms (measured in the fixture)`,
      );
      assert.deepEqual(
        r.events.map(({ rdhup, hup, err }) => ({ rdhup, hup, err })),
        [{ rdhup: true, hup: false, err: false }],
      );
      assert.equal(r.eventsAfterIdle, 1, 'reported once, not on every loop turn');
      assert.ok(r.idleCpuMs < 100, `no busy loop on the half-closed socket: ${r.idleCpuMs} ms CPU in 300 ms`);
      assert.equal(
        r.bytesReadBeforeResume,
        0,
        'Node had not read: the data was in the kernel during the event',
      );
      assert.equal(r.data, 'hello from the peer', 'the queued data is still there to read after the event');
      assert.equal(r.socketError, null);
      assert.equal(r.openWatchers, 0);
    });
  }

  it("reports the peer's RST (err), closing itself inside the callback; Node still sees the data", async () => {
    const r = await watch('198.18.0.2', 'rst');
    assert.equal(r.eventsBeforeClose, 0);
    assert.ok(r.latencyMs !== null && r.latencyMs < 50, `RST seen after ${r.latencyMs} ms`);
    assert.equal(r.events.length, 1);
    assert.equal(r.events[0]!.err, true);
    assert.equal(r.events[0]!.hup, true);
    assert.equal(r.events[0]!.errno, undefined, 'SO_ERROR is left for Node unless consumeError');
    assert.equal(r.closedInside, true);
    assert.equal(r.bytesReadBeforeResume, 0);
    assert.equal(r.data, 'hello from the peer', 'data queued before the RST is not consumed by the watcher');
    assert.equal(r.openWatchers, 0);
  });
});

describe('socket-state watcher: lifecycle on Unix sockets', () => {
  const sockPath = `/tmp/idg-${process.pid}-watcher.sock`;
  let server: net.Server;
  const accepted: net.Socket[] = [];

  before(async () => {
    fs.rmSync(sockPath, { force: true });
    // pauseOnConnect: Node never reads the accepted side unless a test resumes it.
    server = net.createServer({ pauseOnConnect: true }, (s) => {
      s.on('error', () => undefined);
      accepted.push(s);
    });
    await new Promise<void>((r) => server.listen(sockPath, r));
  });
  after(() => {
    for (const s of accepted) s.destroy();
    server.close();
    fs.rmSync(sockPath, { force: true });
  });

  async function pair(): Promise<{ local: net.Socket; remote: net.Socket }> {
    const n = accepted.length;
    const local = net.connect(sockPath);
    local.on('error', () => undefined);
    await new Promise((r) => local.once('connect', r));
    await waitFor(() => accepted.length > n, 2000, 'the accept');
    return { local, remote: accepted[accepted.length - 1]! };
  }

  it('refuses a second watcher on the same socket (EEXIST), close() is idempotent', async () => {
    const { local } = await pair();
    const before = openWatcherCount();
    const w = watchSocket(fdOf(local), () => undefined);
    assert.throws(
      () => watchSocket(fdOf(local), () => undefined),
      (e: unknown) =>
        e instanceof SystemError && e.code === 'EEXIST' && /already has a watcher/.test(e.message),
    );
    assert.equal(openWatcherCount(), before + 1);
    w.close();
    w.close();
    w[Symbol.dispose]();
    await w[Symbol.asyncDispose]();
    assert.equal(openWatcherCount(), before);
    const again = watchSocket(fdOf(local), () => undefined); // the socket can be watched again
    again.close();
    local.destroy();
  });

  it('bad descriptors give EBADF / ENOTSOCK SystemErrors, bad arguments a TypeError', () => {
    const fd = fs.openSync('/dev/null', 'r');
    try {
      assert.throws(
        () => watchSocket(fd, () => undefined),
        (e: unknown) => e instanceof SystemError && e.code === 'ENOTSOCK' && /not a socket/.test(e.message),
      );
    } finally {
      fs.closeSync(fd);
    }
    assert.throws(
      () => watchSocket(fd, () => undefined),
      (e: unknown) =>
        e instanceof SystemError && e.code === 'EBADF' && e.errno === 9 && /not open/.test(e.message),
    );
    assert.throws(() => watchSocket(1.5, () => undefined), TypeError);
    assert.throws(() => watchSocket(0, 'nope' as never), TypeError);
  });

  it('delivers nothing after close(), and a closed socket fd does not confuse a new watcher', async () => {
    const a = await pair();
    let events = 0;
    const w = watchSocket(fdOf(a.local), () => events++);
    w.close();
    a.remote.end();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(events, 0);
    // A watcher left open on a socket Node then destroys: the fd number is reused by a new socket,
    // whose own watcher must work, and closing the stale watcher must not unregister the new one.
    const b = await pair();
    const stale = watchSocket(fdOf(b.local), () => events++);
    const fdB = fdOf(b.local);
    b.local.destroy();
    await new Promise((r) => setTimeout(r, 20));
    const c = await pair();
    assert.equal(fdOf(c.local), fdB, "the new socket got the stale watcher's fd number");
    const seen: SocketStateEvent[] = [];
    const fresh = watchSocket(fdOf(c.local), (ev) => seen.push(ev));
    stale.close();
    c.remote.end();
    await waitFor(() => seen.length > 0, 2000, "the new socket's FIN");
    assert.equal(seen[0]!.rdhup, true);
    assert.equal(events, 0, 'the stale watcher never fired');
    fresh.close();
    a.local.destroy();
    c.local.destroy();
  });

  it('with consumeError, reports the errno of an error', async () => {
    // A Unix stream socket whose peer closes with unread data in its queue gets ECONNRESET
    // (unix_release_sock); the accepted side is never read (pauseOnConnect).
    const { local, remote } = await pair();
    local.write('unread');
    await new Promise((r) => setTimeout(r, 20));
    const seen: SocketStateEvent[] = [];
    const w = watchSocket(fdOf(local), (ev) => seen.push(ev), { consumeError: true });
    remote.destroy();
    await waitFor(() => seen.length > 0, 2000, 'the hangup');
    const last = seen[seen.length - 1]!;
    assert.deepEqual(last, { rdhup: true, hup: true, err: true, errno: osConstants.errno.ECONNRESET });
    w.close();
    local.destroy();
  });

  it("runs on a worker thread's own loop and is cleaned up when the worker's environment goes away", async () => {
    const worker = new Worker(
      `
      const net = require('node:net');
      const { parentPort, workerData } = require('node:worker_threads');
      const { watchSocket } = require(workerData.watcher);
      const { fdOf } = require(workerData.tcpinfo);
      const c = net.connect(workerData.sockPath, () => {
        c.pause();
        // Left open on purpose: the environment cleanup hook must close it at teardown.
        watchSocket(fdOf(c), (ev) => parentPort.postMessage(ev));
        parentPort.postMessage('watching');
      });
      // A paused socket and a watcher keep no loop alive (as in Node); this keeps the worker's.
      parentPort.on('message', () => {});
      c.on('error', () => {});
      `,
      {
        eval: true,
        workerData: {
          sockPath,
          watcher: path.join(REPO_ROOT, 'dist/src/sys/watcher.js'),
          tcpinfo: path.join(REPO_ROOT, 'dist/src/sys/tcpinfo.js'),
        },
      },
    );
    const messages: unknown[] = [];
    worker.on('message', (m) => messages.push(m));
    const n = accepted.length;
    await waitFor(() => messages.includes('watching') && accepted.length > n, 5000, 'the worker to watch');
    accepted[accepted.length - 1]!.end();
    await waitFor(() => messages.length > 1, 2000, "the worker's event");
    assert.deepEqual(messages[1], { rdhup: true, hup: false, err: false });
    await worker.terminate();
    // The main thread's watchers are untouched by the worker's teardown.
    const { local } = await pair();
    const w = watchSocket(fdOf(local), () => undefined);
    w.close();
    local.destroy();
  });
});
