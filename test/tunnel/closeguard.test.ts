// The close guard on real sockets: the watcher sees a local FIN while the bridge is paused, the
// reaper closes a CLOSE_WAIT socket that slipped through, RST travels end to end, and EMFILE on
// accept backs off instead of crashing.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { procTcpState } from '../../src/sys/tcpstates';
import { AcceptBackoff } from '../../src/tunnel/acceptbackoff';
import { CloseGuard, systemSocketPorts, type SocketPorts } from '../../src/tunnel/closeguard';
import { MuxSession, type MuxStream } from '../../src/tunnel/muxsession';
import { once, sleep, tcpPair } from './helpers';

async function muxPair(closeTimeoutMs: number): Promise<{ a: MuxSession; b: MuxSession }> {
  const [sa, sb] = await tcpPair();
  // Small fixed windows so a test can fill them with little data.
  const w = { initialWindow: 256 * 1024, maxWindow: 256 * 1024, closeTimeoutMs };
  return { a: new MuxSession(sa, { role: 'client', ...w }), b: new MuxSession(sb, { role: 'server', ...w }) };
}

async function until(fn: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('tunnel: close guard on real sockets', function () {
  this.timeout(20_000);
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0)) c();
  });

  it('RST from the local peer resets the stream and the far socket', async () => {
    const { a, b } = await muxPair(60_000);
    const guard = new CloseGuard({ closeTimeoutMs: 60_000 });
    cleanups.push(() => (guard.close(), a.close(), b.close()));
    const [localClient, local] = await tcpPair(true);
    const [farClient, far] = await tcpPair();
    const accepted = once<MuxStream>(b, 'stream');
    let doneA = false;
    let doneB = false;
    guard.bridge(local, a.open(), () => (doneA = true));
    guard.bridge(far, await accepted, () => (doneB = true));
    localClient.write('hello');
    const farErr = new Promise<string>((r) =>
      farClient.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? '')).once('close', () => r('close')),
    );
    localClient.resetAndDestroy();
    assert.equal(await farErr, 'ECONNRESET');
    await until(() => doneA && doneB, 3000, 'both bridges to finish');
    assert.equal(guard.size, 0);
  });

  it('the watcher sees a local FIN behind unread data while the bridge is paused, and close_timeout ends it', async function () {
    const ports = systemSocketPorts();
    const { a, b } = await muxPair(400);
    const guard = new CloseGuard({ closeTimeoutMs: 400, ports });
    cleanups.push(() => (guard.close(), a.close(), b.close()));
    const [localClient, local] = await tcpPair(true);
    const accepted = once<MuxStream>(b, 'stream');
    let done = false;
    const stream = a.open();
    guard.bridge(local, stream, () => (done = true));
    let finReadByNode = false;
    local.once('end', () => (finReadByNode = true));
    await accepted; // the far consumer never reads: the window fills, the bridge pauses
    localClient.on('error', () => undefined);
    // Fill until the bridge pauses (the window, then the stream's write queue are full), whatever
    // those sizes are; then a tail larger than what Node reads ahead, and FIN behind it: the tail
    // fits the kernel's receive queue (so the FIN arrives), Node will not read the FIN while paused.
    const chunk = Buffer.alloc(64 * 1024);
    await until(
      () => {
        if (!local.isPaused() && localClient.writableLength < 1024 * 1024) localClient.write(chunk);
        return local.isPaused();
      },
      5000,
      'the bridge to pause',
    );
    localClient.end(Buffer.alloc(128 * 1024));
    await sleep(300);
    assert.equal(done, false);
    await until(() => done, 5000, 'the session to be ended by close_timeout');
    if (ports.watchSocket) assert.ok(guard.stats.watcherFins >= 1, 'the watcher reported the FIN');
    assert.ok(guard.stats.closeTimeouts + a.closeTimeouts >= 1, 'ended by close_timeout');
    assert.equal(guard.stats.exits.close_timeout, 1);
    assert.ok(local.destroyed);
    assert.equal(finReadByNode, false, 'the bridge was paused: Node never read the FIN itself');
  });

  // The reaper is the backstop for a session whose events were lost (a bug elsewhere): here the
  // session's listeners are removed by hand, so only the reaper can see what happened.
  it('the reaper ends and counts a session whose socket sits in CLOSE_WAIT, unseen by the session', async () => {
    const { a, b } = await muxPair(3_600_000); // the stream's own bound is far away
    const ports: SocketPorts = { ...systemSocketPorts(), watchSocket: undefined };
    const guard = new CloseGuard({ closeTimeoutMs: 300, reapIntervalMs: 100, ports });
    cleanups.push(() => (guard.close(), a.close(), b.close()));
    const [localClient, local] = await tcpPair(true);
    const accepted = once<MuxStream>(b, 'stream');
    let done = false;
    guard.bridge(local, a.open(), () => (done = true));
    await accepted; // answers nothing, never ends
    local.removeAllListeners('end'); // the FIN below reaches neither the session nor the pipe
    local.pause();
    localClient.end(); // FIN: our socket goes to CLOSE_WAIT
    const fd = guard.ports.fdOf(local)!;
    await until(() => guard.ports.tcpState(fd) === 'CLOSE-WAIT', 2000, 'CLOSE-WAIT');
    await until(() => guard.stats.reaped === 1, 3000, 'the reaper');
    await until(() => done, 3000, 'the session to close');
    assert.ok(local.destroyed);
    assert.equal(guard.size, 0);
    assert.equal(guard.stats.exits.reaped, 1);
    localClient.destroy();
  });

  it('the reaper ends a session whose stream is gone while its socket is ESTABLISHED', async () => {
    const { a, b } = await muxPair(3_600_000);
    const guard = new CloseGuard({ closeTimeoutMs: 60_000, reapIntervalMs: 100 });
    cleanups.push(() => (guard.close(), a.close(), b.close()));
    const [localClient, local] = await tcpPair(true);
    localClient.on('error', () => undefined);
    const accepted = once<MuxStream>(b, 'stream');
    const stream = a.open();
    let done = false;
    guard.bridge(local, stream, () => (done = true));
    await accepted;
    for (const ev of ['close', 'error', 'end', 'data']) stream.removeAllListeners(ev);
    stream.on('error', () => undefined);
    stream.destroy(); // the session never hears of it
    await sleep(50);
    assert.equal(guard.ports.tcpState(guard.ports.fdOf(local)!), 'ESTABLISHED');
    await until(() => done, 3000, 'the reaper to end the session');
    assert.equal(guard.stats.reaped, 1);
    assert.ok(local.destroyed);
    localClient.destroy();
  });

  it('/proc fallback reads the same TCP state as TCP_INFO', async () => {
    const [c, s] = await tcpPair();
    cleanups.push(() => (c.destroy(), s.destroy()));
    const fd = systemSocketPorts().fdOf(s)!;
    assert.equal(procTcpState(fd), 'ESTABLISHED');
    assert.equal(systemSocketPorts().tcpState(fd), 'ESTABLISHED');
  });

  it('EMFILE on accept pauses accepting with backoff, and accepting resumes', async () => {
    const server = net.createServer((s) => s.destroy());
    const backoff = new AcceptBackoff(server, { host: '127.0.0.1', port: 0 });
    cleanups.push(() => backoff.close());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    (backoff as unknown as { address: { host: string; port: number } }).address.port = port;
    const emfile = Object.assign(new Error('accept EMFILE'), {
      code: 'EMFILE',
      errno: -24,
      syscall: 'accept',
    });
    server.emit('error', emfile); // what net.Server emits when accept(2) fails with EMFILE
    assert.equal(backoff.errors, 1);
    assert.equal(server.listening, false, 'accepting is paused');
    await until(() => server.listening, 2000, 'listening again after the backoff');
    const c = net.connect(port, '127.0.0.1');
    await new Promise<void>((r, j) => c.once('connect', () => r()).once('error', j));
    c.destroy();
  });
});

// Keep the type import used when the watcher is unavailable.
export type { SocketPorts };
