// Interop with an independent yamux implementation (yamux-js, a TypeScript port of hashicorp/yamux)
// over real TCP sockets, both directions: our framing, SYN/ACK, window updates, FIN and RST must be
// what another implementation expects.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { Client as YamuxJsClient, Server as YamuxJsServer } from 'yamux-js';
import { Transform, type TransformCallback } from 'node:stream';
import { FrameDecoder, encodeFrame } from '../../src/tunnel/frame';
import { MuxSession, type MuxStream } from '../../src/tunnel/muxsession';
import { sha256, tcpPair, sleep } from './helpers';

const quiet = { enableKeepAlive: false, logger: () => undefined };

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
