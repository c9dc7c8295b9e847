// The session state machine on real sockets and a real yamux session over loopback TCP: every
// fault injected in every state it can happen in, and after each one the same outcome: the
// session closed, its slot free, both ends destroyed. (The lab version, across namespaces with
// resets, slow services and link cuts, is sessions.test.ts.)
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { CloseGuard } from '../../src/tunnel/closeguard';
import { MuxSession, type MuxStream } from '../../src/tunnel/muxsession';
import type { SessionExit, SessionLife } from '../../src/tunnel/sessionlife';
import { FAULT_CASES as CASES } from './faultcases';
import { once, sleep, tcpPair } from './helpers';

const BOUND_MS = 300;

async function until(fn: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('tunnel: a session state machine, every fault in every state', function () {
  this.timeout(10_000);
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0)) c();
  });

  /** A listening port nobody listens on any more (connections are refused). */
  async function closedPort(): Promise<number> {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as net.AddressInfo).port;
    await new Promise((r) => s.close(r));
    return port;
  }

  for (const c of CASES) {
    it(`${c.state}: ${c.fault} -> closed (${c.exit}), both ends destroyed, slot freed`, async () => {
      const [sn, sp] = await tcpPair();
      const near = new MuxSession(sn, { role: 'client' }); // the node under test
      const peer = new MuxSession(sp, { role: 'server' });
      const guard = new CloseGuard({
        closeTimeoutMs: BOUND_MS,
        dialTimeoutMs: BOUND_MS,
        openTimeoutMs: BOUND_MS,
        reapIntervalMs: 60_000, // the state machine alone must end it
      });
      const echo = net.createServer({ allowHalfOpen: true }, (s) => {
        s.on('error', () => undefined);
        s.pipe(s);
      });
      await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
      const echoPort = (echo.address() as net.AddressInfo).port;
      let lookupTimer: NodeJS.Timeout | undefined;
      cleanups.push(() => {
        guard.close();
        near.close();
        peer.close();
        echo.close();
        clearTimeout(lookupTimer);
      });
      const ended: SessionExit[] = [];
      let session: SessionLife;
      let client: net.Socket | undefined; // the forward's local client
      let farStream: MuxStream;

      if (c.state === 'dialing') {
        // A service session: the peer opens a stream; we dial. Dials hang in a slow name lookup
        // (the socket stays connecting), or are refused.
        const accepted = once<MuxStream>(near, 'stream');
        const opened = peer.open(Buffer.from('req'));
        opened.on('error', () => undefined);
        opened.resume();
        opened.on('end', () => opened.end()); // a refusal's FIN is answered, as an opener does
        farStream = opened;
        const stream = await accepted;
        const refusedPort = await closedPort();
        const connect = (): net.Socket =>
          c.fault === 'service refused'
            ? net.connect({ host: '127.0.0.1', port: refusedPort, allowHalfOpen: true })
            : net.connect({
                host: 'slow.invalid',
                port: echoPort,
                allowHalfOpen: true,
                lookup: (_h, _o, cb) => {
                  lookupTimer = setTimeout(() => cb(null, '127.0.0.1', 4), 5000);
                },
              });
        session = guard.service(
          stream,
          { host: 'x', port: 1 },
          Buffer.from([0, 0]),
          (st, reason) => {
            st.resume(); // as TunnelNode's refuse(): discard what the opener pipelined
            st.end(Buffer.concat([Buffer.from([3, reason.length]), Buffer.from(reason)]));
          },
          connect,
          () => ended.push(session.exit!),
        );
        assert.equal(session.state, 'dialing');
      } else {
        // A forward session: a local client, a stream opened to the peer, an answer we control.
        const [cl, local] = await tcpPair(true);
        client = cl;
        client.on('error', () => undefined);
        client.on('data', () => undefined);
        const stream = near.open();
        const remote = await once<MuxStream>(peer, 'stream');
        remote.on('error', () => undefined);
        farStream = remote;
        let answer!: () => void;
        const answered = new Promise<void>((r) => (answer = r));
        session = guard.forward(local, stream, answered, () => ended.push(session.exit!));
        assert.equal(session.state, 'opening');
        if (c.state !== 'opening') {
          remote.pipe(remote); // the far end echoes
          answer();
          await until(() => session.state === 'bridged', 2000, 'bridged');
          client.write('hello');
          await sleep(20);
        }
        if (c.state === 'half_closed') {
          client.end(); // our client's FIN: the session is half-closed, the far end never ends
          remote.unpipe(remote);
          await until(() => session.state === 'half_closed', 2000, 'half_closed');
        }
      }
      assert.equal(session.state, c.state);
      assert.equal(guard.size, 1);

      switch (c.fault) {
        case 'client reset':
          client!.resetAndDestroy();
          break;
        case 'stream reset':
          farStream.reset();
          break;
        case 'link death':
          sp.destroy(); // the link's TCP connection is gone: the session aborts every stream
          break;
        case 'stop':
          guard.close();
          break;
        case 'bound':
        case 'service refused':
          break; // time or the service does it
      }
      await until(() => guard.size === 0, 3000, `the session to close (state ${session.state})`);
      assert.equal(session.state, 'closed');
      assert.deepEqual(ended, [c.exit]);
      assert.equal(guard.stats.exits[c.exit], 1);
      assert.ok(session.stream.destroyed, 'the stream is destroyed');
      assert.ok(!session.local || session.local.destroyed, 'the local end is destroyed');
      if (client) await until(() => client!.destroyed, 3000, 'the local client to be closed or reset');
    });
  }

  // A forward's socket is accepted paused and read only once its stream is open. A client that
  // sends and then resets within that time leaves data and its RST queued together; libuv reads
  // the data, sees the socket hung up (EPOLLHUP) and reports end of stream without reading again,
  // so Node emits 'end', never ECONNRESET. Taken for a FIN, it would half-close the stream instead
  // of resetting it, and the far node would go on dialing the service until dial_timeout.
  it('opening: a client RST queued behind data not read yet (Node sees an end) -> closed (local_reset), the far end reset', async () => {
    const [sn, sp] = await tcpPair();
    const near = new MuxSession(sn, { role: 'client' });
    const peer = new MuxSession(sp, { role: 'server' });
    const guard = new CloseGuard({
      closeTimeoutMs: 60_000,
      openTimeoutMs: 60_000, // only the reset may end this session
      reapIntervalMs: 60_000,
    });
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }); // as a forward
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => (guard.close(), near.close(), peer.close(), server.close()));
    const accepted = once<net.Socket>(server, 'connection');
    const client = net.connect({
      host: '127.0.0.1',
      port: (server.address() as net.AddressInfo).port,
      allowHalfOpen: true,
    });
    client.on('error', () => undefined);
    await once(client, 'connect');
    const local = await accepted;
    local.on('error', () => undefined);
    client.write(Buffer.alloc(100));
    client.resetAndDestroy();
    const fd = guard.ports.fdOf(local)!;
    await until(() => guard.ports.tcpState(fd) === 'CLOSE', 2000, 'the RST to reach the accepted socket');

    const stream = near.open();
    const remote = await once<MuxStream>(peer, 'stream');
    const farEnd = new Promise<string>((r) => {
      remote.once('error', () => r('reset'));
      remote.once('end', () => r('half-closed'));
    });
    remote.resume();
    const ended: SessionExit[] = [];
    const session = guard.forward(local, stream, new Promise<void>(() => undefined), () =>
      ended.push(session.exit!),
    );
    let nodeSawEnd = false;
    local.once('end', () => (nodeSawEnd = true));
    assert.equal(await farEnd, 'reset', 'the far end is told of the reset, not of a FIN');
    await until(() => guard.size === 0, 3000, `the session to close (state ${session.state})`);
    assert.deepEqual(ended, ['local_reset']);
    assert.ok(local.destroyed, 'the local end is destroyed');
    assert.ok(nodeSawEnd, 'the case under test: Node reported an end of stream, not ECONNRESET');
  });

  it('a stream reset in the same read as its SYN (before the session begins) ends the session at once', async () => {
    const [sn, sp] = await tcpPair();
    const near = new MuxSession(sn, { role: 'client' });
    const peer = new MuxSession(sp, { role: 'server' });
    const guard = new CloseGuard({ closeTimeoutMs: 60_000 });
    cleanups.push(() => (guard.close(), near.close(), peer.close()));
    const accepted = once<MuxStream>(near, 'stream');
    const s = peer.open(Buffer.from('x'));
    s.on('error', () => undefined);
    const stream = await accepted;
    s.reset();
    await until(() => stream.destroyed, 2000, 'the RST');
    let dialed = false;
    guard.service(
      stream,
      { host: '127.0.0.1', port: 1 },
      Buffer.alloc(2),
      () => undefined,
      () => {
        dialed = true;
        return new net.Socket();
      },
    );
    await until(() => guard.size === 0, 2000, 'the session to close');
    assert.equal(dialed, false, 'no dial for a stream already gone');
  });
});
