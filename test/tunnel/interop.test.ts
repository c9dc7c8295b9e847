// Interop with an independent yamux implementation (yamux-js, a TypeScript port of hashicorp/yamux)
// over real TCP sockets, both directions: our framing, SYN/ACK, window updates, FIN and RST must be
// what another implementation expects.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { Client as YamuxJsClient, Server as YamuxJsServer } from 'yamux-js';
import { Transform, type TransformCallback } from 'node:stream';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { tunnelConfigSchema, type TunnelConfigInput } from '../../src/tunnel/config';
import { encodeFrame, encodeHeader, Flag, FrameDecoder, FrameType, type Frame } from '../../src/tunnel/frame';
import { LINK_ALPN } from '../../src/tunnel/link';
import { TunnelNode } from '../../src/tunnel/node';
import { CONTROL_SERVICE, encodeOpen } from '../../src/tunnel/protocol';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { MuxSession, type MuxStream } from '../../src/tunnel/muxsession';
import { freePort, sha256, tcpPair, sleep } from './helpers';

const quiet = { enableKeepAlive: false, logger: () => undefined };

/**
 * A gateway proxy (`gw1`) serving an echo service, and a raw TLS connection to its link port
 * with `ep`'s certificate: the peer side is the test's to speak, frame by frame or through
 * another yamux implementation.
 */
async function echoGatewayOverTls(
  pki: TestPki,
  extra: Partial<TunnelConfigInput> = {},
): Promise<{ echo: net.Server; gw: TunnelNode; sock: tls.TLSSocket }> {
  const echo = net.createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  const port = await freePort();
  const gw = await TunnelNode.start(
    tunnelConfigSchema.parse({
      name: 'gw1',
      role: 'gateway-proxy',
      tls: { ca: pki.ca, ...pki.nodes.gw1! },
      listen: `127.0.0.1:${port}`,
      services: { echo: `127.0.0.1:${(echo.address() as net.AddressInfo).port}` },
      ...extra,
    }),
  );
  const sock = tls.connect({
    host: '127.0.0.1',
    port,
    ca: fs.readFileSync(pki.ca),
    cert: fs.readFileSync(pki.nodes.ep!.cert),
    key: fs.readFileSync(pki.nodes.ep!.key),
    checkServerIdentity: () => undefined,
    ALPNProtocols: [LINK_ALPN],
  });
  return { echo, gw, sock };
}

/**
 * yamux-js 0.2.0 loses bytes when a frame is split across two reads of its input (it drops the
 * partial payload and desynchronises). TCP may split anywhere, so its input is re-chunked to one
 * whole frame per write. The bytes are unchanged: our encoder's frames, parsed by their parser.
 */
function wholeFrames(): Transform {
  const dec = new FrameDecoder({ maxFrameSize: 16 * 1024 * 1024 });
  return new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      const { frames, error } = dec.push(chunk);
      for (const f of frames) this.push(encodeFrame(f));
      cb(error);
    },
  });
}

/**
 * What yamux-js 0.2.0 implements and therefore what can be checked against it: framing, SYN/ACK in
 * both directions, window updates (ours larger than 256 KiB, theirs at 256 KiB), pings both ways,
 * FIN from their side (their close()), go-away. It does not implement FIN towards its readers nor
 * end() on its streams, so replies are counted to a known length instead of read to the end.
 */
function readN(s: Duplex, n: number, timeoutMs = 20_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const t = setTimeout(
      () => reject(new Error(`readN: ${got} of ${n} bytes after ${timeoutMs} ms`)),
      timeoutMs,
    );
    s.on('data', (c: Buffer) => {
      chunks.push(c);
      got += c.length;
      if (got >= n) {
        clearTimeout(t);
        resolve(Buffer.concat(chunks));
      }
    });
  });
}

describe('tunnel: mux interop with yamux-js over TCP', function () {
  this.timeout(30_000);

  it('our dialer -> yamux-js listener: 4 streams, opening data right behind the SYN, 8 MiB each echoed with sha256, pings both ways', async () => {
    const [ca, sb] = await tcpPair();
    const theirs = new YamuxJsServer(
      (s: Duplex) => {
        s.on('data', (c: Buffer) => s.write(c)); // echo
        s.on('error', () => undefined);
      },
      { ...quiet, enableKeepAlive: true, keepAliveInterval: 1 },
    );
    theirs.on('error', () => undefined);
    sb.pipe(wholeFrames()).pipe(theirs).pipe(sb);
    const ours = new MuxSession(ca, { role: 'client' });
    try {
      const payload = randomBytes(8 * 1024 * 1024);
      const streams: MuxStream[] = [];
      for (let i = 0; i < 4; i++) streams.push(ours.open(Buffer.from(`stream ${i}:`)));
      const replies = streams.map((s, i) => readN(s, payload.length + `stream ${i}:`.length));
      for (const s of streams) s.write(payload);
      for (let i = 0; i < 4; i++) {
        const got = await replies[i]!;
        const want = Buffer.concat([Buffer.from(`stream ${i}:`), payload]);
        assert.equal(sha256(got), sha256(want), `stream ${i}`);
        assert.equal(streams[i]!.id, 2 * i + 1, 'our dialer opens odd ids');
      }
      assert.ok((await ours.ping()) >= 0, 'yamux-js answers our ping');
      await sleep(1200); // their keepalive pings us every second; we must answer or they close
      assert.equal(theirs.isClosed(), false);
      assert.equal(ours.closed, false);
    } finally {
      ours.close();
      sb.destroy();
    }
  });

  it('yamux-js dialer -> our listener: data both ways, their FIN ends our reader, our go-away reaches them', async () => {
    const [ca, sb] = await tcpPair();
    const ours = new MuxSession(sb, { role: 'server' });
    const accepted: MuxStream[] = [];
    ours.on('stream', (s: MuxStream) => {
      accepted.push(s);
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('end', () => s.end(Buffer.concat([Buffer.from('ok:'), ...chunks]))); // after their FIN
    });
    const theirs = new YamuxJsClient(quiet);
    let theirError: Error | undefined;
    theirs.on('error', (e: Error) => void (theirError = e));
    ca.pipe(wholeFrames()).pipe(theirs).pipe(ca);
    try {
      const payload = randomBytes(4 * 1024 * 1024);
      const s = theirs.open();
      s.on('error', () => undefined);
      const reply = readN(s, payload.length + 3);
      s.write(payload, () => s.close()); // their close() sends FIN
      const got = await reply;
      assert.equal(sha256(got), sha256(Buffer.concat([Buffer.from('ok:'), payload])));
      assert.equal(accepted[0]!.id % 2, 1, 'the yamux-js client opened an odd id');
      ours.close(); // go-away(normal) then the transport ends
      await sleep(100);
      assert.equal(theirError, undefined, 'a normal go-away is not an error for them');
      theirs.open(); // refused by them after our go-away
      assert.match(String(theirError), /not accepting connections/); // their errRemoteGoAway
    } finally {
      ours.close();
      ca.destroy();
    }
  });
});

// A spec-conforming peer whose threads open streams concurrently puts SYNs on the wire out
// of ID order. Played here by hand, frame by frame, over a real TLS link to a TunnelNode: it must
// serve every session, and answer a duplicate or wrong-parity SYN with a stream RST only.
describe('tunnel: a concurrent, reordering opener against a tunnel node (raw frames over TLS)', function () {
  this.timeout(30_000);
  let pki: TestPki;
  before(() => {
    pki = makePki(['gw1', 'ep'], { gw1: ['echo'] });
  });
  after(() => pki.cleanup());

  it('100 sessions opened with SYNs in shuffled ID order are all served; a duplicate live ID and a wrong parity get a stream RST; the link and the other sessions stay', async () => {
    // Every session goes to the native relay at its bridging: the raw frames meet the addon.
    const { echo, gw, sock } = await echoGatewayOverTls(pki, { native_relay_after: 0 });
    try {
      await new Promise<void>((r, j) => sock.once('secureConnect', () => r()).once('error', j));
      const dec = new FrameDecoder({ maxFrameSize: 16 * 1024 * 1024 });
      const seen: Frame[] = [];
      sock.on('data', (c: Buffer) => seen.push(...dec.push(c).frames));
      const data = (id: number, payload: Buffer): Buffer =>
        Buffer.concat([encodeHeader(FrameType.Data, 0, id, payload.length), payload]);
      const syn = (id: number): Buffer => encodeHeader(FrameType.WindowUpdate, Flag.SYN, id, 0);
      const received = (id: number): Buffer =>
        Buffer.concat(seen.filter((f) => f.streamId === id && f.data).map((f) => f.data!));
      const until = async (fn: () => boolean, what: string): Promise<void> => {
        for (let i = 0; i < 250 && !fn(); i++) await sleep(20);
        assert.ok(fn(), what);
      };
      // The control stream and the hello, as a dialer.
      sock.write(Buffer.concat([syn(1), data(1, encodeOpen(CONTROL_SERVICE))]));
      await until(() => received(1).length >= 2, 'the control answer');
      const hello = JSON.stringify({ type: 'hello', name: 'ep', role: 'endpoint-proxy', services: {} });
      sock.write(data(1, Buffer.from(hello + '\n')));
      await until(() => gw.status().links.some((l) => l.peer === 'ep' && l.state === 'up'), 'the link up');
      // 100 streams, IDs 3..201 shuffled, every SYN first (as racing threads would), then each
      // stream's open header and request.
      const ids = Array.from({ length: 100 }, (_, i) => 2 * i + 3);
      for (let i = ids.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1));
        [ids[i], ids[j]] = [ids[j]!, ids[i]!];
      }
      const wire: Buffer[] = ids.map(syn);
      for (const id of ids.slice().reverse())
        wire.push(data(id, Buffer.concat([encodeOpen('echo'), Buffer.from(`hello ${id}`)])));
      sock.write(Buffer.concat(wire));
      const answerAndEcho = (id: number): string => {
        const r = received(id);
        return r.length >= 2 && r[0] === 0 ? r.subarray(2 + r[1]!).toString() : '';
      };
      await until(
        () => ids.every((id) => answerAndEcho(id) === `hello ${id}`),
        'every session answered OK and echoed',
      );
      assert.equal(gw.status().sessions.count, 100);
      await until(() => gw.status().sessions.relayed === 100, 'every session relayed natively');
      assert.ok(!seen.some((f) => f.flags & Flag.RST), 'no stream reset');
      // A duplicate SYN for live stream 7 and a SYN of the server's parity.
      sock.write(Buffer.concat([syn(7), syn(400)]));
      await until(() => seen.some((f) => f.streamId === 7 && f.flags & Flag.RST), 'RST for the duplicate');
      await until(
        () => seen.some((f) => f.streamId === 400 && f.flags & Flag.RST),
        'RST for the wrong parity',
      );
      assert.ok(!seen.some((f) => f.type === FrameType.GoAway), 'no go-away: the link stays');
      await until(() => gw.status().sessions.count === 99, "stream 7's session ended, the others go on");
      sock.write(data(9, Buffer.from(' again')));
      await until(() => answerAndEcho(9) === 'hello 9 again', 'stream 9 still carries data');
      assert.equal(gw.status().links.filter((l) => l.peer === 'ep' && l.state === 'up').length, 1);
    } finally {
      sock.destroy();
      await gw.close();
      echo.close();
    }
  });
});

// The same independent implementation against a node whose bridged sessions move in the addon
// (native/relay.cc): yamux-js dials a TunnelNode over TLS, says hello on the control stream and
// opens sessions to an echo service; its frames, windows and SYNs meet the native relay.
describe('tunnel: yamux-js over TLS against a node relaying natively', function () {
  this.timeout(60_000);
  let pki: TestPki;
  before(() => {
    pki = makePki(['gw1', 'ep'], { gw1: ['echo'] });
  });
  after(() => pki.cleanup());

  it('4 sessions of 4 MiB each echoed with sha256 through relayed streams, their windows honoured', async () => {
    const { echo, gw, sock } = await echoGatewayOverTls(pki);
    const theirs = new YamuxJsClient(quiet);
    theirs.on('error', () => undefined);
    try {
      await new Promise<void>((r, j) => sock.once('secureConnect', () => r()).once('error', j));
      sock.pipe(wholeFrames()).pipe(theirs).pipe(sock);
      const control = theirs.open();
      control.on('error', () => undefined);
      const answer = readN(control, 2);
      control.write(encodeOpen(CONTROL_SERVICE));
      assert.equal((await answer)[0], 0, 'the control stream is accepted');
      control.write(
        JSON.stringify({ type: 'hello', name: 'ep', role: 'endpoint-proxy', services: {} }) + '\n',
      );
      for (let i = 0; i < 250 && !gw.status().links.some((l) => l.peer === 'ep' && l.state === 'up'); i++)
        await sleep(20);
      const payload = randomBytes(4 * 1024 * 1024);
      const replies = Array.from({ length: 4 }, () => {
        const s = theirs.open();
        s.on('error', () => undefined);
        const reply = readN(s, 2 + payload.length);
        s.write(encodeOpen('echo'));
        s.write(payload);
        return reply;
      });
      for (const r of replies) {
        const got = await r;
        assert.equal(got[0], 0, 'the session is answered OK');
        assert.equal(sha256(got.subarray(2)), sha256(payload));
      }
      assert.ok(gw.status().sessions.relayed! >= 4, `relayed natively: ${gw.status().sessions.relayed}`);
    } finally {
      theirs.close();
      sock.destroy();
      await gw.close();
      echo.close();
    }
  });
});
