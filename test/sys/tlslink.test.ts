// The link's TLS (native/tlslink.cc behind src/sys/tlslink.ts) against TLS 1.3 implementations
// that are not the addon: Node's TLSSocket and Debian's `openssl s_server` / `s_client`. OpenSSL
// seals and opens our records; the addon batches them (many records per send, one callback per
// read) and drives KeyUpdate and close_notify. So each test checks what the other implementation
// saw and sent: the bytes (sha256 both ways), the end of the stream, KeyUpdates both ways under
// every TLS 1.3 suite, and what a broken or vanishing peer leaves on our side: an 'error' with a
// code, and no TLS link and no descriptor left behind. Hostile peers: tlslink-hostile.test.ts.
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import * as tls from 'node:tls';
import { loadNative } from '../../src/sys/native';
import { LINK_ALPN } from '../../src/tunnel/link';
import { TlsLinkContext, TlsLinkSocket, type TlsLinkSocketOptions } from '../../src/sys/tlslink';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { freePort, sha256, sleep } from '../tunnel/helpers';

const MiB = 1024 * 1024;
const SUITES = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'];
/** Write sizes around the 2^14 record size and across many records, cycled through by pump(). */
const WRITE_SIZES = [1, 16_383, 16_384, 16_385, 100, 65_536, 200_003, 7, 49_152, 131_072];

type Stats = NonNullable<ReturnType<TlsLinkSocket['tlsStats']>>;
type Err = Error & { code?: string };

/** Everything a stream delivers, and how it ended. */
class Sink {
  readonly chunks: Buffer[] = [];
  length = 0;
  ended = false;
  closed = false;
  error: Err | undefined;
  constructor(s: Readable) {
    s.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.length += c.length;
    });
    s.on('end', () => (this.ended = true));
    s.on('close', () => (this.closed = true));
    s.on('error', (e: Err) => (this.error ??= e));
  }
  buffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
  text(): string {
    return this.buffer().toString('latin1');
  }
}

/** Our socket, what it received, and its tlsStats() as last seen while the link was open. */
interface Ours {
  s: TlsLinkSocket;
  got: Sink;
  stats: Stats | undefined;
}

/** A spawned openssl, its output, and how it ended. */
interface Proc {
  child: ChildProcess;
  out: Sink;
  err: Sink;
  exited: boolean;
  code: number | null;
}

async function until(what: string, ms: number, fn: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** This process's descriptors: number -> what it points at. */
function descriptors(): Map<string, string> {
  const m = new Map<string, string>();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      m.set(fd, fs.readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // the directory's own descriptor, closed by now
    }
  }
  return m;
}

/** `bytes` random bytes as upper-case hex lines: not one chunk of it is an s_server/s_client command. */
function hexLines(bytes: number): string {
  return (
    randomBytes(bytes)
      .toString('hex')
      .toUpperCase()
      .match(/.{1,64}/g)!
      .join('\n') + '\n'
  );
}

function between(text: string, begin: string, end: string): string | undefined {
  const a = text.indexOf(begin);
  if (a < 0) return undefined;
  const b = text.indexOf(end, a + begin.length);
  return b < 0 ? undefined : text.slice(a + begin.length, b);
}

function drained(w: Writable, ms = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      clearTimeout(t);
      w.off('drain', ok);
      w.off('error', done);
      w.off('close', closed);
      if (err) reject(err);
      else resolve();
    };
    const ok = (): void => done();
    const closed = (): void => done(new Error('closed while waiting for drain'));
    const t = setTimeout(() => done(new Error(`no drain within ${ms} ms`)), ms);
    w.on('drain', ok);
    w.on('error', done);
    w.on('close', closed);
  });
}

/** Write `data` in pieces of WRITE_SIZES, waiting for 'drain' whenever write() says so. */
async function pump(w: Writable, data: Buffer): Promise<void> {
  let off = 0;
  for (let i = 0; off < data.length; i++) {
    if (w.destroyed) throw new Error('destroyed while writing');
    const n = Math.min(WRITE_SIZES[i % WRITE_SIZES.length]!, data.length - off);
    const more = w.write(data.subarray(off, off + n));
    off += n;
    if (!more) await drained(w);
  }
}

/** A Node TLS client's handshake, bounded. */
function nodeSecure(socket: tls.TLSSocket, ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no 'secureConnect' within ${ms} ms`)), ms);
    socket.once('secureConnect', () => {
      clearTimeout(t);
      resolve();
    });
    socket.once('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
  });
}

function connectTcp(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const tcp = net.connect({ host: '127.0.0.1', port });
    tcp.once('error', reject);
    tcp.once('connect', () => {
      tcp.off('error', reject);
      resolve(tcp);
    });
  });
}

/** Whether something listens on 127.0.0.1:`port` (/proc/net/tcp: state 0A), without connecting to it. */
function listening(port: number): boolean {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return fs
    .readFileSync('/proc/net/tcp', 'latin1')
    .split('\n')
    .some((line) => {
      const f = line.trim().split(/\s+/);
      return f[1] === local && f[3] === '0A';
    });
}

describe('tunnel: the addon TLS record layer against Node TLS and openssl s_server/s_client', function () {
  this.timeout(20_000);
  const native = loadNative();
  let pki: TestPki;
  let clientCtx: TlsLinkContext;
  let serverCtx: TlsLinkContext;
  const contexts: TlsLinkContext[] = [];
  let cleanups: (() => void | Promise<void>)[] = [];

  const defer = (fn: () => void | Promise<void>): void => void cleanups.push(fn);
  async function releaseAll(): Promise<void> {
    const fns = cleanups.reverse();
    cleanups = [];
    for (const fn of fns) {
      try {
        await fn();
      } catch {
        // cleaning up after a failure: the failure is what the test reports
      }
    }
  }

  function ourContext(server: boolean, pair: { cert: string; key: string }): TlsLinkContext {
    const ctx = new TlsLinkContext({
      server,
      ca: fs.readFileSync(pki.ca),
      cert: fs.readFileSync(pair.cert),
      key: fs.readFileSync(pair.key),
      alpn: LINK_ALPN,
      ciphersuites: SUITES.join(':'),
    });
    contexts.push(ctx);
    return ctx;
  }

  function nodeTls(name: string): tls.SecureContextOptions & { ALPNProtocols: string[] } {
    return {
      ca: fs.readFileSync(pki.ca),
      cert: fs.readFileSync(pki.nodes[name]!.cert),
      key: fs.readFileSync(pki.nodes[name]!.key),
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      ALPNProtocols: [LINK_ALPN],
    };
  }

  /** s_server/s_client options shared by every openssl run: TLS 1.3, our ALPN, mutual certificates. */
  function opensslTls(name: string): string[] {
    return [
      '-tls1_3',
      '-alpn',
      LINK_ALPN,
      '-cert',
      pki.nodes[name]!.cert,
      '-key',
      pki.nodes[name]!.key,
      '-CAfile',
      pki.ca,
      '-verify_return_error',
    ];
  }

  function adopt(s: TlsLinkSocket): Ours {
    defer(() => void s.destroy());
    const o: Ours = { s, got: new Sink(s), stats: undefined };
    const take = (): void => {
      const st = s.tlsStats();
      if (st) o.stats = st;
    };
    s.prependListener('data', take);
    s.prependListener('end', take);
    s.prependListener('finish', take);
    return o;
  }

  async function dialOurs(port: number, opts: TlsLinkSocketOptions = {}, ctx = clientCtx): Promise<Ours> {
    return adopt(new TlsLinkSocket(await connectTcp(port), ctx, opts));
  }

  function secured(o: Ours, ms = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      if (o.s.secure) return resolve();
      const t = setTimeout(() => reject(new Error(`no 'secure' within ${ms} ms`)), ms);
      o.s.once('secure', () => {
        clearTimeout(t);
        resolve();
      });
      o.s.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  async function listen(server: net.Server): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    defer(() => Promise.race([new Promise<void>((r) => server.close(() => r())), sleep(2000)]));
    return (server.address() as net.AddressInfo).port;
  }

  /** A connection at Node's TLS server: what it received, and what it saw of us in the handshake. */
  interface NodePeer {
    socket: tls.TLSSocket;
    got: Sink;
    alpn: string | false | null;
    authorized: boolean;
    peerCN: string | undefined;
  }

  /** Node's TLS server, echoing what each connection sends and recording it. */
  async function nodeEchoServer(): Promise<{ port: number; peers: NodePeer[] }> {
    const peers: NodePeer[] = [];
    const server = tls.createServer(
      { ...nodeTls('srv'), requestCert: true, rejectUnauthorized: true, allowHalfOpen: true },
      (socket) => {
        defer(() => void socket.destroy());
        peers.push({
          socket,
          got: new Sink(socket),
          alpn: socket.alpnProtocol,
          authorized: socket.authorized,
          peerCN: String(socket.getPeerCertificate().subject?.CN),
        });
        socket.pipe(socket);
      },
    );
    server.on('tlsClientError', () => undefined);
    // connections that never finish their handshake are not 'secureConnection's: closed here
    server.on('connection', (raw: net.Socket) => defer(() => void raw.destroy()));
    return { port: await listen(server), peers };
  }

  /** A plain TCP server that takes connections over with our server context (as the link does). */
  async function ourServer(
    opts: TlsLinkSocketOptions = {},
    onLink: (o: Ours) => void = () => undefined,
  ): Promise<{ port: number; links: Ours[] }> {
    const links: Ours[] = [];
    const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
      const o = adopt(new TlsLinkSocket(tcp, serverCtx, opts));
      links.push(o);
      onLink(o);
    });
    return { port: await listen(server), links };
  }

  function nodeClient(port: number, extra: tls.ConnectionOptions = {}): { socket: tls.TLSSocket; got: Sink } {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'srv', ...nodeTls('cli'), ...extra });
    defer(() => void socket.destroy());
    return { socket, got: new Sink(socket) };
  }

  function openssl(args: string[]): Proc {
    const child = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const p: Proc = {
      child,
      out: new Sink(child.stdout!),
      err: new Sink(child.stderr!),
      exited: false,
      code: null,
    };
    child.on('error', (e) => (p.err.error ??= e));
    child.once('close', (code) => {
      p.exited = true;
      p.code = code;
    });
    child.stdin!.on('error', () => undefined); // EPIPE once it has exited
    defer(async () => {
      if (!p.exited) {
        child.kill('SIGKILL');
        await until('openssl to exit after SIGKILL', 2000, () => p.exited);
      }
    });
    return p;
  }

  /** An interactive s_server (commands on stdin) on a port it picks, and that port once it listens. */
  async function interactiveServer(): Promise<{ srv: Proc; port: number }> {
    const srv = openssl([
      's_server',
      '-naccept',
      '1',
      '-accept',
      '127.0.0.1:0',
      '-Verify',
      '1',
      ...opensslTls('srv'),
    ]);
    await until(
      's_server to listen',
      5000,
      () => /ACCEPT 127\.0\.0\.1:\d+/.test(srv.out.text()) || srv.exited,
    );
    const m = /ACCEPT 127\.0\.0\.1:(\d+)/.exec(srv.out.text());
    assert.ok(m, `s_server does not listen: ${srv.err.text()}`);
    return { srv, port: Number(m[1]) };
  }

  /**
   * A TCP relay between a client and a server: counts the bytes, can hold what the server sends
   * (to hand it over in one write), inject bytes of its own, or reset either connection.
   */
  interface Relay {
    port: number;
    toServer: number;
    toClient: number;
    /** While true, the server's bytes wait in `held` instead of going to the client. */
    hold: boolean;
    held: Buffer[];
    heldBytes: number;
    client?: net.Socket;
    upstream?: net.Socket;
  }

  async function relay(target: number): Promise<Relay> {
    const r: Relay = { port: 0, toServer: 0, toClient: 0, hold: false, held: [], heldBytes: 0 };
    // Half-open both ways: our FIN must not close the relay's other side before the peer's
    // close_notify has come through (that would be a truncation, and is reported as one).
    const server = net.createServer({ allowHalfOpen: true }, (c) => {
      const u = net.connect({ host: '127.0.0.1', port: target, allowHalfOpen: true });
      defer(() => {
        c.destroy();
        u.destroy();
      });
      r.client = c;
      r.upstream = u;
      c.on('data', (d: Buffer) => {
        r.toServer += d.length;
        u.write(d);
      });
      u.on('data', (d: Buffer) => {
        r.toClient += d.length;
        if (!r.hold) return void c.write(d);
        r.held.push(d);
        r.heldBytes += d.length;
      });
      c.on('end', () => u.end());
      u.on('end', () => c.end());
      for (const [a, b] of [
        [c, u],
        [u, c],
      ] as const) {
        a.on('error', () => b.destroy());
        a.on('close', () => b.destroy());
      }
    });
    r.port = await listen(server);
    return r;
  }

  /** What the relay held, to the client in one write; then it relays again. */
  function release(r: Relay): void {
    r.hold = false;
    r.client!.write(Buffer.concat(r.held));
    r.held = [];
    r.heldBytes = 0;
  }

  /** TLS links and descriptors of this process, to compare with after a test. */
  function snapshot(): { links: number; fds: Map<string, string> } {
    return { links: native.tlsCount(), fds: descriptors() };
  }

  /** Release the test's resources; then no TLS link and no descriptor may be left that was not there before. */
  async function assertNoLeaks(before: ReturnType<typeof snapshot>): Promise<void> {
    await releaseAll();
    const leaked = (): string[] =>
      [...descriptors()]
        .filter(([fd, what]) => before.fds.get(fd) !== what)
        .map(([fd, what]) => `${fd} -> ${what}`);
    try {
      await until('TLS links and descriptors to be released', 3000, () => {
        return native.tlsCount() === before.links && leaked().length === 0;
      });
    } catch {
      assert.equal(native.tlsCount(), before.links, 'TLS links in the addon (tlsCount)');
      assert.deepEqual(leaked(), [], 'descriptors opened by the test and still open');
    }
  }

  /** `check`, then assertNoLeaks(): a failure of either is reported, of both both. */
  async function andNoLeaks(before: ReturnType<typeof snapshot>, check: () => unknown): Promise<void> {
    const failures: Error[] = [];
    for (const step of [check, () => assertNoLeaks(before)]) {
      try {
        await step();
      } catch (err) {
        failures.push(err as Error);
      }
    }
    if (failures.length === 1) throw failures[0];
    if (failures.length > 1) throw new Error(failures.map((f) => f.message).join('\nand: '));
  }

  before(() => {
    pki = makePki(['srv', 'cli']);
    clientCtx = ourContext(false, pki.nodes.cli!);
    serverCtx = ourContext(true, pki.nodes.srv!);
  });
  after(() => {
    for (const c of contexts) c.free();
    pki?.cleanup();
  });
  afterEach(async () => {
    await releaseAll();
  });

  describe('with Node TLS', () => {
    it('a server context freed while a handshake is under way: the handshake still selects ALPN and completes', async () => {
      // The ALPN callback reads the context; each link holds it until its handshake is over.
      const ctx = ourContext(true, pki.nodes.srv!);
      const links: Ours[] = [];
      const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
        links.push(adopt(new TlsLinkSocket(tcp, ctx)));
        ctx.free(); // as LinkListener.close() or a reload may, with a handshake in flight
      });
      const node = nodeClient(await listen(server));
      await nodeSecure(node.socket);
      assert.equal(node.socket.alpnProtocol, LINK_ALPN);
      await until('our side secure', 5000, () => links.length === 1 && links[0]!.s.secure);
      node.socket.write('ping');
      await until('the bytes at our side', 5000, () => links[0]!.got.length === 4);
    });

    it("our client, Node's server: 8 MiB echoed intact both ways; end() is the server's 'end' and we still read after it", async () => {
      const links = native.tlsCount();
      const peer = await nodeEchoServer();
      const o = await dialOurs(peer.port);
      await secured(o);
      assert.equal(o.s.alpnProtocol, LINK_ALPN);
      assert.equal(o.s.authorized, true);
      assert.equal(o.s.getPeerCertificate().subject.CN, 'srv');

      const data = randomBytes(8 * MiB);
      await pump(o.s, data);
      o.s.end();
      let ourBytesAtPeerEnd = -1;
      await until('a connection at the server', 5000, () => peer.peers.length === 1);
      const node = peer.peers[0]!;
      node.socket.once('end', () => (ourBytesAtPeerEnd = o.got.length));
      await until(
        'the echo to end on both sides',
        15_000,
        () => (o.got.ended && node.got.ended) || !!o.got.error,
      );

      assert.equal(o.got.error, undefined);
      assert.equal(node.got.error, undefined);
      assert.equal(node.alpn, LINK_ALPN);
      assert.equal(node.authorized, true, 'Node verified our certificate');
      assert.equal(node.peerCN, 'cli');
      assert.equal(node.got.length, data.length, 'bytes Node received');
      assert.equal(sha256(node.got.buffer()), sha256(data), 'what Node decrypted is what we sent');
      assert.equal(o.got.length, data.length, 'bytes we received');
      assert.equal(sha256(o.got.buffer()), sha256(data), 'what we decrypted is what Node sent');
      // Half-close: Node saw our end while its echo of our last bytes was still on its way to us.
      assert.ok(
        ourBytesAtPeerEnd >= 0 && ourBytesAtPeerEnd < data.length,
        `${ourBytesAtPeerEnd} at Node's end`,
      );
      const st = o.stats!;
      assert.ok(st.txRecords >= data.length / 16_384, `txRecords ${st.txRecords}`);
      assert.ok(st.rxRecords >= data.length / 16_384, `rxRecords ${st.rxRecords}`);
      assert.equal(st.keyUpdatesSent, 0);
      assert.equal(st.keyUpdatesReceived, 0);
      await until('our link to close', 2000, () => native.tlsCount() === links);
    });

    it("Node's client, our server: 8 MiB echoed intact both ways; Node's end() is our 'end'", async () => {
      const links = native.tlsCount();
      const srv = await ourServer({}, (o) => o.s.pipe(o.s));
      const node = nodeClient(srv.port);
      await nodeSecure(node.socket);
      assert.equal(node.socket.alpnProtocol, LINK_ALPN);
      assert.equal(node.socket.authorized, true, String(node.socket.authorizationError));
      await until('our side of the link', 5000, () => srv.links.length === 1);
      const o = srv.links[0]!;
      await secured(o);
      assert.equal(o.s.authorized, true);
      assert.equal(o.s.getPeerCertificate().subject.CN, 'cli');
      assert.equal(o.s.alpnProtocol, LINK_ALPN);

      const data = randomBytes(8 * MiB);
      await pump(node.socket, data);
      node.socket.end();
      let nodeBytesAtOurEnd = -1;
      o.s.once('end', () => (nodeBytesAtOurEnd = node.got.length));
      await until(
        'the echo to end on both sides',
        15_000,
        () => (o.got.ended && node.got.ended) || !!o.got.error,
      );

      assert.equal(o.got.error, undefined);
      assert.equal(node.got.error, undefined);
      assert.equal(sha256(o.got.buffer()), sha256(data), 'what we decrypted is what Node sent');
      assert.equal(node.got.length, data.length, 'bytes Node received');
      assert.equal(sha256(node.got.buffer()), sha256(data), 'what Node decrypted is what we sent');
      assert.ok(nodeBytesAtOurEnd >= 0 && nodeBytesAtOurEnd < data.length, `${nodeBytesAtOurEnd} at our end`);
      assert.ok(o.stats!.rxRecords >= data.length / 16_384);
      await until('our link to close', 2000, () => native.tlsCount() === links);
    });

    it('a reader that stops reading: the addon stops too (bounded buffer), and resumes without a byte lost', async () => {
      const srv = await ourServer();
      const node = nodeClient(srv.port);
      await nodeSecure(node.socket);
      await until('our side of the link', 5000, () => srv.links.length === 1);
      const o = srv.links[0]!;
      await secured(o);
      o.s.pause();
      const data = randomBytes(8 * MiB);
      const writing = pump(node.socket, data)
        .then(() => void node.socket.end())
        .catch((e: Error) => e);
      await sleep(300);
      // Not reading: at most the stream's high-water mark and one wake-up's read (256 KiB) are buffered.
      assert.ok(
        o.s.readableLength + o.got.length <= 1 * MiB,
        `${o.s.readableLength + o.got.length} bytes read`,
      );
      for (let i = 0; i < 4; i++) {
        o.s.resume();
        await sleep(20);
        o.s.pause();
        await sleep(50);
      }
      o.s.resume();
      assert.equal(await writing, undefined, 'Node wrote it all');
      await until('all of it, and the end', 10_000, () => o.got.ended || !!o.got.error);
      assert.equal(o.got.error, undefined);
      assert.equal(sha256(o.got.buffer()), sha256(data));
    });

    /** `data` through queueFrame() (the mux's write path) in one burst, larger than the socket buffers, then end(). */
    function queueAndEnd(o: Ours, data: Buffer): void {
      for (let off = 0; off < data.length; off += 64 * 1024)
        o.s.queueFrame(data.subarray(off, off + 64 * 1024), Infinity);
      o.s.end();
    }

    it("queueFrame() then end() while Node's side is open: every queued byte reaches Node, then the end", async () => {
      const srv = await ourServer();
      const node = nodeClient(srv.port);
      await nodeSecure(node.socket);
      await until('our side of the link', 5000, () => srv.links.length === 1);
      const o = srv.links[0]!;
      await secured(o);
      const data = randomBytes(8 * MiB);
      queueAndEnd(o, data);
      await until("Node's end", 10_000, () => node.got.ended || !!node.got.error);
      assert.equal(node.got.error, undefined);
      assert.equal(node.got.length, data.length, 'bytes Node received');
      assert.equal(sha256(node.got.buffer()), sha256(data));
    });

    // Once the peer has ended, 'finish' must wait for the addon's queue and close_notify: else
    // autoDestroy frees the link with records still in it. MuxSession.close() does exactly this
    // (GoAway through queueFrame, then transport.end()) when the peer closed first.
    it("queueFrame() then end() after Node's end: every queued byte reaches Node, then the end", async () => {
      const srv = await ourServer();
      const node = nodeClient(srv.port);
      await nodeSecure(node.socket);
      await until('our side of the link', 5000, () => srv.links.length === 1);
      const o = srv.links[0]!;
      await secured(o);
      node.socket.end();
      await until("Node's end at our side", 5000, () => o.got.ended);
      const data = randomBytes(8 * MiB);
      queueAndEnd(o, data);
      await until("Node's end", 10_000, () => node.got.ended || !!node.got.error);
      assert.equal(node.got.error, undefined);
      assert.equal(node.got.length, data.length, 'bytes Node received');
      assert.equal(sha256(node.got.buffer()), sha256(data));
    });
  });

  describe('with openssl s_server and s_client', () => {
    it('our client, s_server -quiet (small records, padded): 2 MiB each way intact; our end() is close_notify to it', async () => {
      const port = await freePort();
      const srv = openssl([
        's_server',
        '-quiet',
        '-max_send_frag',
        '1000',
        '-record_padding',
        '4096',
        '-naccept',
        '1',
        '-accept',
        `127.0.0.1:${port}`,
        '-Verify',
        '1',
        ...opensslTls('srv'),
      ]);
      await until('s_server to listen', 5000, () => listening(port) || srv.exited);
      const r = await relay(port);
      const o = await dialOurs(r.port);
      await secured(o);
      const wireAtSecure = r.toClient;
      assert.equal(o.s.alpnProtocol, LINK_ALPN);
      assert.equal(o.s.authorized, true);

      const down = randomBytes(2 * MiB);
      const up = randomBytes(2 * MiB);
      srv.child.stdin!.write(down);
      await pump(o.s, up);
      await until('2 MiB each way', 10_000, () => o.got.length >= down.length && srv.out.length >= up.length);
      const st = o.s.tlsStats()!;
      o.s.end(); // s_server stops at close_notify: only now that it has sent all it had
      await until('s_server to exit and its close_notify', 5000, () => srv.exited && o.got.ended);

      assert.equal(srv.err.text().match(/error|unexpected eof/i), null, `s_server stderr: ${srv.err.text()}`);
      assert.equal(o.got.error, undefined);
      assert.equal(sha256(o.got.buffer()), sha256(down), 'what we decrypted is what s_server sent');
      assert.equal(sha256(srv.out.buffer()), sha256(up), 'what s_server decrypted is what we sent');
      // Records of at most 1000 bytes; the short ones (the rest of each of s_server's reads of its
      // stdin) padded up to that: what the wire carried beyond the data and each record's 22 bytes
      // (header, content type, tag) is padding, but for its two session tickets' few hundred bytes.
      assert.ok(st.rxRecords >= down.length / 1000, `rxRecords ${st.rxRecords}`);
      const padding = r.toClient - wireAtSecure - down.length - 22 * st.rxRecords;
      assert.ok(padding >= 16 * 1024, `${padding} bytes of padding`);
    });

    it('s_client -quiet (small records, padded), our server: 2 MiB each way intact; s_client ends at our close_notify, exit 0', async () => {
      const srv = await ourServer();
      const r = await relay(srv.port);
      const cli = openssl([
        's_client',
        '-quiet',
        '-verify_quiet',
        '-max_send_frag',
        '1000',
        '-record_padding',
        '4096',
        '-connect',
        `127.0.0.1:${r.port}`,
        '-servername',
        'srv',
        '-verify_hostname',
        'srv',
        ...opensslTls('cli'),
      ]);
      await until('our side of the link', 5000, () => srv.links.length === 1 || cli.exited);
      const o = srv.links[0]!;
      await secured(o);
      const wireAtSecure = r.toServer;
      assert.equal(o.s.authorized, true);
      assert.equal(o.s.getPeerCertificate().subject.CN, 'cli');
      assert.equal(o.s.alpnProtocol, LINK_ALPN);

      const up = randomBytes(2 * MiB);
      const down = randomBytes(2 * MiB);
      cli.child.stdin!.write(up);
      await pump(o.s, down);
      await until('2 MiB each way', 10_000, () => o.got.length >= up.length && cli.out.length >= down.length);
      const st = o.s.tlsStats()!;
      o.s.end();
      await until('s_client to exit and its close_notify', 5000, () => cli.exited && o.got.ended);

      assert.equal(cli.code, 0, `s_client stderr: ${cli.err.text()}`);
      assert.equal(cli.err.text().match(/error|unexpected eof/i), null, `s_client stderr: ${cli.err.text()}`);
      assert.equal(o.got.error, undefined);
      assert.equal(sha256(o.got.buffer()), sha256(up), 'what we decrypted is what s_client sent');
      assert.equal(sha256(cli.out.buffer()), sha256(down), 'what s_client decrypted is what we sent');
      // as above: records of at most 1000 bytes, the short ones padded
      assert.ok(st.rxRecords >= up.length / 1000, `rxRecords ${st.rxRecords}`);
      const padding = r.toServer - wireAtSecure - up.length - 22 * st.rxRecords;
      assert.ok(padding >= 16 * 1024, `${padding} bytes of padding`);
    });

    /**
     * One KeyUpdate round with an interactive s_server/s_client on `peer`: the command line, our
     * counters after it (a KeyUpdate answered when "K" requested one, not when "k"), then data both
     * ways under the new keys. Text only (upper-case hex), so no chunk of it is an openssl command.
     */
    async function keyUpdateRound(peer: Proc, o: Ours, cmd: 'K' | 'k', round: number): Promise<void> {
      const before = o.s.tlsStats()!;
      peer.child.stdin!.write(`${cmd}\n`);
      await until(`KeyUpdate ${round} ("${cmd}") to reach us`, 5000, () => {
        return (o.s.tlsStats()?.keyUpdatesReceived ?? 0) > before.keyUpdatesReceived || !!o.got.error;
      });
      assert.equal(o.got.error, undefined);
      const after = o.s.tlsStats()!;
      assert.equal(after.keyUpdatesReceived, before.keyUpdatesReceived + 1, 'KeyUpdates received');
      assert.equal(
        after.keyUpdatesSent,
        before.keyUpdatesSent + (cmd === 'K' ? 1 : 0),
        'answered iff requested',
      );

      // to us, under the peer's next key
      const down = hexLines(24 * 1024);
      const from = o.got.length;
      peer.child.stdin!.write(down);
      await until(
        `round ${round}: data from openssl`,
        5000,
        () => o.got.length >= from + down.length || !!o.got.error,
      );
      assert.equal(
        o.got.buffer().subarray(from).toString('latin1'),
        down,
        `round ${round}: data from openssl`,
      );

      // to the peer, after our answer: a line first, which flushes openssl's own printouts on its
      // stdout, then a block between markers
      o.s.write(`SYNC${round}\n`);
      await until(`round ${round}: a line at openssl`, 5000, () =>
        peer.out.text().includes(`SYNC${round}\n`),
      );
      const up = hexLines(24 * 1024);
      o.s.write(`BEGIN${round}\n${up}END${round}\n`);
      await until(`round ${round}: data at openssl`, 5000, () => peer.out.text().includes(`END${round}\n`));
      assert.equal(
        between(peer.out.text(), `BEGIN${round}\n`, `END${round}\n`),
        up,
        `round ${round}: data at openssl`,
      );
    }

    const ROUNDS: ('K' | 'k')[] = ['K', 'k', 'K', 'K', 'k', 'k', 'K'];

    it('s_server "K"/"k" (KeyUpdate, requested or not) to our client: new keys both ways, data flows after', async () => {
      const { srv, port } = await interactiveServer();
      const o = await dialOurs(port);
      await secured(o);
      o.s.write('HELLO\n');
      await until('s_server in its data loop', 5000, () => srv.out.text().includes('HELLO\n'));

      for (const [round, cmd] of ROUNDS.entries()) await keyUpdateRound(srv, o, cmd, round);
      const st = o.s.tlsStats()!;
      assert.equal(st.keyUpdatesReceived, ROUNDS.length);
      assert.equal(st.keyUpdatesSent, ROUNDS.filter((c) => c === 'K').length);

      o.s.end();
      await until('s_server to exit and its close_notify', 5000, () => srv.exited && o.got.ended);
      assert.match(srv.out.text(), /^DONE$/m, 's_server read close_notify (SSL_ERROR_ZERO_RETURN)');
      assert.equal(`${srv.out.text()}${srv.err.text()}`.match(/ERROR|unexpected eof/), null, srv.err.text());
      assert.equal(o.got.error, undefined);
    });

    it('s_client "K"/"k" to our server: new keys both ways, data flows after; s_client exits 0 at our end', async () => {
      const srv = await ourServer();
      const cli = openssl([
        's_client',
        '-connect',
        `127.0.0.1:${srv.port}`,
        '-servername',
        'srv',
        '-verify_hostname',
        'srv',
        ...opensslTls('cli'),
      ]);
      await until('our side of the link', 5000, () => srv.links.length === 1 || cli.exited);
      const o = srv.links[0]!;
      await secured(o);
      cli.child.stdin!.write('HELLO\n');
      await until('s_client in its data loop', 5000, () => o.got.text().includes('HELLO\n'));

      for (const [round, cmd] of ROUNDS.entries()) await keyUpdateRound(cli, o, cmd, round);
      const st = o.s.tlsStats()!;
      assert.equal(st.keyUpdatesReceived, ROUNDS.length);
      assert.equal(st.keyUpdatesSent, ROUNDS.filter((c) => c === 'K').length);

      o.s.end();
      await until('s_client to exit and its close_notify', 5000, () => cli.exited && o.got.ended);
      assert.equal(cli.code, 0, cli.err.text());
      assert.equal(cli.err.text().match(/error|unexpected eof/i), null, cli.err.text());
      assert.equal(o.got.error, undefined);
    });

    it('three KeyUpdates from s_server and data under the third key, all in one TCP read of ours', async () => {
      const { srv, port } = await interactiveServer();
      const r = await relay(port);
      const o = await dialOurs(r.port);
      await secured(o);
      o.s.write('HELLO\n');
      await until('s_server in its data loop', 5000, () => srv.out.text().includes('HELLO\n'));

      r.hold = true;
      for (const cmd of ['K', 'k', 'K']) {
        const held = r.heldBytes;
        srv.child.stdin!.write(`${cmd}\n`); // one command per read of s_server: wait for its record
        await until(`the KeyUpdate of "${cmd}" at the relay`, 5000, () => r.heldBytes > held);
      }
      const keyUpdates = r.heldBytes;
      assert.equal(keyUpdates, 3 * (5 + 5 + 1 + 16), 'three KeyUpdate records, nothing else');
      const down = hexLines(48 * 1024);
      srv.child.stdin!.write(down);
      await until('data behind the KeyUpdates at the relay', 5000, () => r.heldBytes >= keyUpdates + 16_384);
      assert.equal(o.s.tlsStats()!.keyUpdatesReceived, 0);
      release(r);
      await until('the data at our client', 5000, () => o.got.length >= down.length || !!o.got.error);
      assert.equal(o.got.error, undefined);
      assert.equal(o.got.text(), down);
      const st = o.s.tlsStats()!;
      assert.equal(st.keyUpdatesReceived, 3);
      assert.equal(st.keyUpdatesSent, 2, 'the two requests answered');

      // s_server reads our two KeyUpdates back to back, then data under our third key
      o.s.write('SYNC\n');
      await until('a line at s_server', 5000, () => srv.out.text().includes('SYNC\n'));
      const up = hexLines(48 * 1024);
      o.s.write(`BEGIN\n${up}END\n`);
      await until('data at s_server', 5000, () => srv.out.text().includes('END\n') || srv.exited);
      assert.equal(between(srv.out.text(), 'BEGIN\n', 'END\n'), up);
      o.s.end();
      await until('s_server to exit and its close_notify', 5000, () => srv.exited && o.got.ended);
      assert.equal(`${srv.out.text()}${srv.err.text()}`.match(/ERROR|unexpected eof/), null, srv.err.text());
    });
  });

  describe('our KeyUpdates (rekeyRecords: 3)', () => {
    it("our client to Node's server: 4 MiB both ways intact across our KeyUpdates", async () => {
      const peer = await nodeEchoServer();
      const o = await dialOurs(peer.port, { rekeyRecords: 3 });
      await secured(o);
      const data = randomBytes(4 * MiB);
      await pump(o.s, data);
      o.s.end();
      await until('a connection at the server', 5000, () => peer.peers.length === 1);
      const node = peer.peers[0]!;
      await until(
        'the echo to end on both sides',
        15_000,
        () => (o.got.ended && node.got.ended) || !!o.got.error,
      );
      assert.equal(o.got.error, undefined);
      assert.equal(node.got.error, undefined);
      assert.equal(sha256(node.got.buffer()), sha256(data), 'what Node decrypted is what we sent');
      assert.equal(sha256(o.got.buffer()), sha256(data), 'what we decrypted is what Node sent');
      const st = o.stats!;
      // 256 records of 16 KiB at least, a KeyUpdate after every 3 records under one key
      assert.ok(st.keyUpdatesSent >= 60, `keyUpdatesSent ${st.keyUpdatesSent}`);
      assert.equal(st.keyUpdatesReceived, 0);
    });

    for (const suite of SUITES) {
      it(`Node's client to our server, ${suite}: 1 MiB both ways intact across our KeyUpdates`, async () => {
        const srv = await ourServer({ rekeyRecords: 3 }, (o) => o.s.pipe(o.s));
        const node = nodeClient(srv.port, { ciphers: suite });
        await nodeSecure(node.socket);
        assert.equal(node.socket.getCipher().standardName, suite);
        await until('our side of the link', 5000, () => srv.links.length === 1);
        const o = srv.links[0]!;
        await secured(o);
        assert.equal(o.s.cipher, suite);
        const data = randomBytes(MiB);
        await pump(node.socket, data);
        node.socket.end();
        await until(
          'the echo to end on both sides',
          10_000,
          () => (o.got.ended && node.got.ended) || !!node.got.error,
        );
        assert.equal(o.got.error, undefined);
        assert.equal(node.got.error, undefined);
        assert.equal(sha256(o.got.buffer()), sha256(data), 'what we decrypted is what Node sent');
        assert.equal(sha256(node.got.buffer()), sha256(data), 'what Node decrypted is what we sent');
        assert.ok(o.stats!.keyUpdatesSent >= 15, `keyUpdatesSent ${o.stats!.keyUpdatesSent}`);
      });
    }
  });

  describe('faults: an error with a code, no crash, no TLS link or descriptor left', () => {
    function assertClearError(err: Err | undefined, code: RegExp): void {
      assert.ok(err, 'an error on our socket');
      assert.match(String(err.code), code, `code of: ${err.message}`);
      assert.ok(err.message.length > 10, `a message that says something: "${err.message}"`);
    }

    const garbage: [string, Buffer, RegExp][] = [
      // "HTTP/" read as a record header: type 0x48, length 0x5450
      [
        'bytes that are not TLS at all',
        Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n'),
        /^ERR_SSL_WRONG_VERSION_NUMBER$/,
      ],
      [
        'a handshake record in the clear',
        Buffer.from([22, 3, 3, 0, 4, 4, 0, 0, 0]),
        /^ERR_SSL_BAD_RECORD_TYPE$/,
      ],
      // RFC 8446 5: change_cipher_spec after the peer's Finished is unexpected_message
      ['a change_cipher_spec record', Buffer.from([20, 3, 3, 0, 1, 1]), /^ERR_SSL_BAD_RECORD_TYPE$/],
      [
        'an application_data record that fails authentication',
        Buffer.concat([Buffer.from([23, 3, 3, 0, 64]), randomBytes(64)]),
        /^ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC$/,
      ],
      [
        'a record longer than 2^14 + 256',
        Buffer.concat([Buffer.from([23, 3, 3, 0x48, 0x00]), randomBytes(64)]),
        /^ERR_SSL_(ENCRYPTED|PACKET)_LENGTH_TOO_LONG$/,
      ],
      [
        'a record too short for its tag',
        Buffer.from([23, 3, 3, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]),
        /^ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC$/,
      ],
    ];
    for (const [what, bytes, code] of garbage) {
      it(`after the handshake, ${what} written raw into the TCP stream to our client`, async () => {
        const before = snapshot();
        const peer = await nodeEchoServer();
        const r = await relay(peer.port);
        const o = await dialOurs(r.port);
        await secured(o);
        // One echo round trip: Node's session tickets and echo are through, the stream is at a record boundary.
        o.s.write('ping');
        await until('the echo', 5000, () => o.got.text() === 'ping');
        r.client!.write(bytes);
        await until('an error on our socket', 5000, () => !!o.got.error);
        assertClearError(o.got.error, code);
        await until('our socket closed', 2000, () => o.got.closed);
        assert.equal(o.s.tlsStats(), undefined, 'no link left in the addon');
        await assertNoLeaks(before);
      });
    }

    it('the connection to our client ends (FIN) in the middle of a record', async () => {
      const before = snapshot();
      const peer = await nodeEchoServer();
      const r = await relay(peer.port);
      const o = await dialOurs(r.port);
      await secured(o);
      o.s.write('ping');
      await until('the echo', 5000, () => o.got.text() === 'ping');
      r.client!.end(Buffer.concat([Buffer.from([23, 3, 3, 0, 64]), randomBytes(20)]));
      await until('an error on our socket', 5000, () => !!o.got.error || o.got.ended);
      assertClearError(o.got.error, /^ERR_SSL_UNEXPECTED_EOF_WHILE_READING$/);
      await assertNoLeaks(before);
    });

    // A fatal alert that arrives after our handshake is done is named as Node (and the codes
    // classifyTlsError() in src/tunnel/link.ts looks for) names it, after OpenSSL's reason:
    // ERR_SSL_TLSV1_ALERT_UNKNOWN_CA, ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED. In TLS 1.3 a server
    // checks the client's certificate after the client has finished its handshake, so that is how
    // every standard server's refusal of our certificate reaches us.
    const refusals: [string, 'foreign' | 'expired', string][] = [
      ['from another CA', 'foreign', 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA'],
      ['that has expired', 'expired', 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED'],
    ];
    for (const [what, which, code] of refusals) {
      it(`s_server refusing our certificate ${what}: its alert named as Node names it (${code})`, async () => {
        const pair = which === 'foreign' ? pki.foreign : pki.special.expired;
        const ctx = ourContext(false, pair);
        const before = snapshot();
        const { srv, port } = await interactiveServer();
        const o = await dialOurs(port, {}, ctx);
        await until('an error on our socket', 5000, () => !!o.got.error);
        await until('s_server to exit', 5000, () => srv.exited);
        assert.match(srv.err.text(), /certificate verify failed/, 's_server refused our certificate');
        const err = o.got.error!;
        await andNoLeaks(before, () => assert.equal(err.code, code, `code of: ${err.message}`));
      });
    }

    // As Node's TLSSocket: end() before 'secure' finishes the handshake, then sends close_notify.
    it("end() before 'secure': the socket still comes to an end ('close') and says how", async () => {
      const before = snapshot();
      const peer = await nodeEchoServer();
      const o = adopt(new TlsLinkSocket(await connectTcp(peer.port), clientCtx));
      o.s.end();
      await andNoLeaks(before, () => until("'close' on our socket", 1500, () => o.got.closed));
    });

    const vanishing: [string, (c: net.Socket) => void, RegExp][] = [
      ['accepts and closes before a byte', (c) => c.destroy(), /^(ECONNRESET|EPIPE|ERR_SSL_\w+)$/],
      [
        'reads the ClientHello and closes',
        (c) => c.once('data', () => c.destroy()),
        /^(ECONNRESET|ERR_SSL_\w+)$/,
      ],
      ['reads the ClientHello and resets', (c) => c.once('data', () => c.resetAndDestroy()), /^ECONNRESET$/],
      [
        'answers the ClientHello with SSH',
        (c) => c.once('data', () => c.end('SSH-2.0-OpenSSH_9.2p1\r\n')),
        /^ERR_SSL_\w+$/,
      ],
    ];
    for (const [what, serve, code] of vanishing) {
      it(`mid-handshake: a server that ${what}`, async () => {
        const before = snapshot();
        const server = net.createServer((c) => {
          c.on('error', () => undefined);
          defer(() => void c.destroy());
          serve(c);
        });
        const o = await dialOurs(await listen(server));
        await until('an error on our socket', 5000, () => !!o.got.error || o.s.secure);
        assert.equal(o.s.secure, false);
        assertClearError(o.got.error, code);
        await until('our socket closed', 2000, () => o.got.closed);
        await assertNoLeaks(before);
      });
    }

    const badClients: [string, (c: net.Socket) => void, RegExp][] = [
      ['connects and closes at once', (c) => c.end(), /^(ECONNRESET|ERR_SSL_\w+)$/],
      ['sends an HTTP request', (c) => c.end('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), /^ERR_SSL_\w+$/],
      [
        'sends half a ClientHello and resets',
        (c) => c.write(Buffer.from([22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3]), () => c.resetAndDestroy()),
        /^(ECONNRESET|ERR_SSL_\w+)$/,
      ],
    ];
    for (const [what, act, code] of badClients) {
      it(`mid-handshake at our server: a client that ${what}`, async () => {
        const before = snapshot();
        const srv = await ourServer();
        const c = await connectTcp(srv.port);
        c.on('error', () => undefined);
        defer(() => void c.destroy());
        act(c);
        await until('our side of the link', 5000, () => srv.links.length === 1);
        const o = srv.links[0]!;
        await until('an error on our socket', 5000, () => !!o.got.error || o.s.secure);
        assert.equal(o.s.secure, false);
        assertClearError(o.got.error, code);
        await assertNoLeaks(before);
      });
    }

    it('mid-stream: the connection to our client reset while 8 MiB flow', async () => {
      const before = snapshot();
      const peer = await nodeEchoServer();
      const r = await relay(peer.port);
      const o = await dialOurs(r.port);
      await secured(o);
      const writing = pump(o.s, randomBytes(8 * MiB)).catch((e: Error) => e);
      await until('1 MiB through', 5000, () => r.toServer >= MiB && r.toClient >= 256 * 1024);
      r.client!.resetAndDestroy();
      await until('an error or end on our socket', 5000, () => !!o.got.error || o.got.ended);
      if (o.got.error) assertClearError(o.got.error, /^(ECONNRESET|EPIPE)$/);
      await writing;
      await assertNoLeaks(before);
    });

    it('mid-stream: the connection to our server reset while 8 MiB flow', async () => {
      const before = snapshot();
      const srv = await ourServer({}, (o) => o.s.pipe(o.s));
      const r = await relay(srv.port);
      const node = nodeClient(r.port);
      await nodeSecure(node.socket);
      const writing = pump(node.socket, randomBytes(8 * MiB)).catch((e: Error) => e);
      await until('1 MiB through', 5000, () => r.toServer >= MiB && r.toClient >= 256 * 1024);
      r.upstream!.resetAndDestroy();
      const o = srv.links[0]!;
      await until('an error or end on our socket', 5000, () => !!o.got.error || o.got.ended);
      if (o.got.error) assertClearError(o.got.error, /^(ECONNRESET|EPIPE)$/);
      await writing;
      await assertNoLeaks(before);
    });
  });
});
