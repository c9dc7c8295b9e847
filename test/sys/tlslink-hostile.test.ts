// The link's TLS (native/tlslink.cc) against peers that misbehave on purpose. A Node TLS client
// does a real handshake with our server through a relay the test controls; its traffic secrets
// (Node's 'keylog' event) let the test build records OpenSSL will authenticate (tlsrecords.ts), and
// open the ones our server sends back, so each case checks three things: what our side delivered
// (never a byte past the first bad record), how it failed (an 'error' with OpenSSL's code, never a
// clean 'end' for a truncation), and which TLS alert it sent the peer.
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { Worker } from 'node:worker_threads';
import { loadNative } from '../../src/sys/native';
import { LINK_ALPN } from '../../src/tunnel/link';
import { TlsLinkContext, TlsLinkSocket } from '../../src/sys/tlslink';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { sleep } from '../tunnel/helpers';
import {
  Alert,
  ContentType,
  Direction,
  HandshakeType,
  handshakeMessage,
  KeyLog,
  keyUpdate,
  splitRecords,
  SUITES,
  type Opened,
  type SuiteName,
} from './tlsrecords';

type Err = Error & { code?: string };

async function until(what: string, ms: number, fn: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** This process's descriptors: number -> what it points at. */
export function descriptors(): Map<string, string> {
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

/** One of our links and everything it reported. */
export interface Ours {
  s: TlsLinkSocket;
  chunks: Buffer[];
  length: number;
  secure: boolean;
  ended: boolean;
  closed: boolean;
  error: Err | undefined;
  data(): Buffer;
}

export function watch(s: TlsLinkSocket): Ours {
  const o: Ours = {
    s,
    chunks: [],
    length: 0,
    secure: false,
    ended: false,
    closed: false,
    error: undefined,
    data: () => Buffer.concat(o.chunks),
  };
  s.on('secure', () => (o.secure = true));
  s.on('data', (c: Buffer) => {
    o.chunks.push(c);
    o.length += c.length;
  });
  s.on('end', () => (o.ended = true));
  s.on('close', () => (o.closed = true));
  s.on('error', (e: Err) => (o.error ??= e));
  return o;
}

/** Our server, a Node client that did the handshake with it, and the relay between them. */
interface Hostile {
  ours: Ours;
  node: tls.TLSSocket;
  /** The relay's connection to our server: what the test writes here reaches our server as is. */
  up: net.Socket;
  /** Client-to-server protection (what we inject), and server-to-client (what we open). */
  tx: Direction;
  rx: Direction;
  /** What the Node client sent after the handshake: held by the relay, not forwarded. */
  heldUp(): Buffer;
  /** Our server's records after the handshake, opened in order (throws if one does not open). */
  fromServer(): Opened[];
  /** The TLS alert descriptions our server sent. */
  alerts(): number[];
}

describe("tunnel: the link's TLS against hostile peers (records built with the connection's own keys)", function () {
  this.timeout(30_000);
  const native = loadNative();
  let pki: TestPki;
  let serverCtx: TlsLinkContext;
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

  function nodeCreds(name: string | undefined): tls.ConnectionOptions {
    return {
      ca: fs.readFileSync(pki.ca),
      ...(name
        ? { cert: fs.readFileSync(pki.nodes[name]!.cert), key: fs.readFileSync(pki.nodes[name]!.key) }
        : {}),
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      ALPNProtocols: [LINK_ALPN],
      checkServerIdentity: () => undefined,
    };
  }

  /** Our server and a Node client with `suite`, handshake done; from then on the relay holds the client's bytes. */
  async function hostile(suite: SuiteName = 'TLS_AES_128_GCM_SHA256'): Promise<Hostile> {
    let ours: Ours | undefined;
    const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
      const s = new TlsLinkSocket(tcp, serverCtx);
      defer(() => void s.destroy());
      ours = watch(s);
    });
    const port = await listen(server);
    let marked = false;
    const held: Buffer[] = [];
    const down: Buffer[] = [];
    let up: net.Socket | undefined;
    const relay = net.createServer({ allowHalfOpen: true }, (c) => {
      const u = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      up = u;
      defer(() => {
        c.destroy();
        u.destroy();
      });
      c.on('error', () => undefined);
      u.on('error', () => undefined);
      c.on('data', (d: Buffer) => (marked ? held.push(d) : u.write(d)));
      u.on('data', (d: Buffer) => (marked ? down.push(d) : c.write(d)));
    });
    const relayPort = await listen(relay);
    const keys = new KeyLog();
    const node = tls.connect({ host: '127.0.0.1', port: relayPort, ...nodeCreds('cli'), ciphers: suite });
    defer(() => void node.destroy());
    node.on('keylog', (line: Buffer) => keys.add(line));
    node.on('error', () => undefined);
    await until('our side of the handshake', 5000, () => !!ours?.secure || !!ours?.error);
    assert.equal(ours!.error, undefined);
    marked = true; // our server sends nothing after its handshake: the next bytes each way are records
    assert.equal(ours!.s.cipher, suite);
    const tx = new Direction(suite, keys.get('CLIENT_TRAFFIC_SECRET_0'));
    const rx = new Direction(suite, keys.get('SERVER_TRAFFIC_SECRET_0'));
    const opened: Opened[] = [];
    let consumed = 0;
    const fromServer = (): Opened[] => {
      const { records } = splitRecords(Buffer.concat(down).subarray(consumed));
      for (const r of records) {
        consumed += r.length;
        const o = rx.open(r);
        opened.push(o);
        if (o.type === ContentType.handshake && o.content[0] === HandshakeType.keyUpdate) rx.update();
      }
      return opened;
    };
    return {
      ours: ours!,
      node,
      up: up!,
      tx,
      rx,
      heldUp: () => Buffer.concat(held),
      fromServer,
      alerts: () =>
        fromServer()
          .filter((o) => o.type === ContentType.alert)
          .map((o) => o.content[1]!),
    };
  }

  /** Our side failed with `code`, sent the alert `alert`, delivered exactly `delivered`, and is gone. */
  async function failsWith(
    h: Hostile,
    code: RegExp,
    alert: number | undefined,
    delivered: Buffer,
  ): Promise<void> {
    await until('an error on our side', 5000, () => !!h.ours.error);
    assert.match(String(h.ours.error!.code), code, h.ours.error!.message);
    assert.equal(h.ours.ended, false, "no clean 'end'");
    assert.equal(h.ours.data().toString('hex'), delivered.toString('hex'), 'what our side delivered');
    if (alert !== undefined) {
      await until(`the alert ${alert}`, 3000, () => h.alerts().length > 0);
      assert.deepEqual(h.alerts(), [alert], 'the alert our side sent');
    }
    assert.equal(h.ours.s.tlsStats(), undefined, 'no link left in the addon');
  }

  /** Records the Node client sealed for `pieces` (one write each), held by the relay. */
  async function genuine(h: Hostile, pieces: Buffer[]): Promise<Buffer[]> {
    let records: Buffer[] = [];
    // One at a time: Node joins the writes it has queued into one record.
    for (const [i, p] of pieces.entries()) {
      h.node.write(p);
      await until('the records of the Node client', 5000, () => {
        records = splitRecords(h.heldUp()).records;
        return records.length > i;
      });
    }
    assert.equal(records.length, pieces.length, 'one record per write');
    return records;
  }

  const flip = (rec: Buffer, at: number, bit = 1): Buffer => {
    const c = Buffer.from(rec);
    c[at]! ^= bit;
    return c;
  };

  before(() => {
    pki = makePki(['srv', 'cli']);
    serverCtx = new TlsLinkContext({
      server: true,
      ca: fs.readFileSync(pki.ca),
      cert: fs.readFileSync(pki.nodes.srv!.cert),
      key: fs.readFileSync(pki.nodes.srv!.key),
      alpn: LINK_ALPN,
      ciphersuites: Object.keys(SUITES).join(':'),
    });
  });
  after(() => {
    serverCtx?.free();
    pki?.cleanup();
  });
  afterEach(releaseAll);

  describe('genuine records tampered with in flight: bad_record_mac or a framing error, nothing delivered past the first bad record', () => {
    const pieces = ['zero', 'one', 'two', 'three'].map((w) => Buffer.from(`record ${w}`));
    const cases: [string, (r: Buffer[]) => Buffer[], RegExp, number, string][] = [
      [
        'a bit flipped in the ciphertext',
        (r) => [r[0]!, flip(r[1]!, 7), r[2]!],
        /BAD_RECORD_MAC/,
        Alert.badRecordMac,
        'record zero',
      ],
      [
        'a bit flipped in the tag',
        (r) => [r[0]!, flip(r[1]!, r[1]!.length - 1, 0x80)],
        /BAD_RECORD_MAC/,
        Alert.badRecordMac,
        'record zero',
      ],
      [
        'the header: its version',
        (r) => [r[0]!, flip(r[1]!, 2, 0x02)],
        /WRONG_VERSION_NUMBER|BAD_RECORD_MAC/,
        Alert.decodeError,
        'record zero',
      ],
      [
        'the header: its type',
        (r) => [r[0]!, flip(r[1]!, 0, 0x01)],
        /BAD_RECORD_TYPE|UNEXPECTED/,
        Alert.unexpectedMessage,
        'record zero',
      ],
      [
        'the header: its length',
        (r) => [r[0]!, flip(r[1]!, 4, 0x01), r[2]!, r[3]!],
        /BAD_RECORD_MAC/,
        Alert.badRecordMac,
        'record zero',
      ],
      ['a record dropped', (r) => [r[0]!, r[2]!], /BAD_RECORD_MAC/, Alert.badRecordMac, 'record zero'],
      [
        'a record replayed',
        (r) => [r[0]!, r[1]!, r[1]!],
        /BAD_RECORD_MAC/,
        Alert.badRecordMac,
        'record zerorecord one',
      ],
      [
        'two records swapped',
        (r) => [r[0]!, r[2]!, r[1]!],
        /BAD_RECORD_MAC/,
        Alert.badRecordMac,
        'record zero',
      ],
      [
        'two records spliced (the head of one, the tail of the next)',
        (r) => [r[0]!, Buffer.concat([r[1]!.subarray(0, 10), r[3]!.subarray(10)])],
        /BAD_RECORD_MAC/,
        Alert.badRecordMac,
        'record zero',
      ],
    ];
    for (const [what, tamper, code, alert, delivered] of cases) {
      it(what, async () => {
        const h = await hostile();
        const records = await genuine(h, pieces);
        for (const r of tamper(records)) h.up.write(r);
        await failsWith(h, code, alert, Buffer.from(delivered));
      });
    }

    it('a record from another connection spliced in', async () => {
      const h = await hostile();
      const other = await hostile();
      const mine = await genuine(h, pieces.slice(0, 2));
      const theirs = await genuine(other, pieces.slice(0, 2));
      h.up.write(mine[0]!);
      h.up.write(theirs[1]!);
      await failsWith(h, /BAD_RECORD_MAC/, Alert.badRecordMac, Buffer.from('record zero'));
      assert.equal(other.ours.error, undefined, 'the other connection is untouched');
    });
  });

  describe('the end of the stream', () => {
    it('FIN at a record boundary without close_notify is a truncation (an error), not an end', async () => {
      const h = await hostile();
      const records = await genuine(h, [Buffer.from('all'), Buffer.from(' but the end')]);
      h.up.end(Buffer.concat(records));
      await failsWith(h, /^ERR_SSL_UNEXPECTED_EOF_WHILE_READING$/, undefined, Buffer.from('all but the end'));
    });

    it("close_notify then FIN is a clean 'end'; bytes after the close_notify in the same read are ignored", async () => {
      const h = await hostile();
      const records = await genuine(h, [Buffer.from('the last words')]);
      h.tx.seq = 1n; // the Node client sealed record 0
      const closeNotify = h.tx.seal(ContentType.alert, Buffer.from([1, Alert.closeNotify]));
      h.up.end(Buffer.concat([records[0]!, closeNotify, randomBytes(40)]));
      await until("our 'end'", 5000, () => h.ours.ended || !!h.ours.error);
      assert.equal(h.ours.error, undefined);
      assert.equal(h.ours.data().toString(), 'the last words');
    });
  });

  describe('well-formed records with hostile content (sealed with the real keys)', () => {
    const big = (n: number): Buffer => Buffer.alloc(n, 0x61);
    const cases: [string, (tx: Direction) => Buffer[], RegExp, number][] = [
      [
        'an all-zero inner plaintext (no content type)',
        (tx) => [tx.sealInner(Buffer.alloc(64))],
        /^ERR_SSL_/,
        Alert.unexpectedMessage,
      ],
      [
        'an inner plaintext of 2^14+2 bytes',
        (tx) => [tx.seal(ContentType.appData, big(16_385))],
        /^ERR_SSL_/,
        Alert.recordOverflow,
      ],
      [
        'a record longer than 2^14+256 (by its padding)',
        (tx) => [tx.seal(ContentType.appData, Buffer.from('z'), 16_384 + 256 - 16 - 1)],
        /^ERR_SSL_/,
        Alert.recordOverflow,
      ],
      [
        'an unknown inner content type (99)',
        (tx) => [tx.seal(99, Buffer.from('x'))],
        /^ERR_SSL_/,
        Alert.unexpectedMessage,
      ],
      [
        'an alert of one byte',
        (tx) => [tx.seal(ContentType.alert, Buffer.from([2]))],
        /^ERR_SSL_/,
        Alert.unexpectedMessage, // OpenSSL 3.0's answer to an alert record of the wrong length
      ],
      [
        'an alert of three bytes',
        (tx) => [tx.seal(ContentType.alert, Buffer.from([2, 40, 0]))],
        /^ERR_SSL_/,
        Alert.unexpectedMessage,
      ],
      [
        'a KeyUpdate that does not end its record',
        (tx) => [
          tx.seal(
            ContentType.handshake,
            Buffer.concat([keyUpdate(false), Buffer.from([HandshakeType.keyUpdate])]),
          ),
        ],
        /^ERR_SSL_/,
        Alert.unexpectedMessage,
      ],
      [
        'a NewSessionTicket sent to the server',
        (tx) => [
          tx.seal(ContentType.handshake, handshakeMessage(HandshakeType.newSessionTicket, Buffer.alloc(20))),
        ],
        /^ERR_SSL_/,
        Alert.unexpectedMessage,
      ],
      [
        'a handshake record in the clear between encrypted ones',
        (tx) => [
          tx.seal(ContentType.appData, Buffer.from('ok')),
          Buffer.from([22, 3, 3, 0, 5, ...keyUpdate(false)]),
        ],
        /^ERR_SSL_/,
        Alert.unexpectedMessage,
      ],
    ];
    for (const [what, records, code, alert] of cases) {
      it(what, async () => {
        const h = await hostile();
        h.up.write(Buffer.concat(records(h.tx)));
        await sleep(300);
        console.log('DBG', what, h.ours.s.tlsStats(), h.ours.error, h.ours.length);
        const okFirst = what.startsWith('a handshake record in the clear') ? 'ok' : '';
        await failsWith(h, code, alert, Buffer.from(okFirst));
      });
    }

    it('size boundaries that are allowed: empty records, 2^14 of content, inner plaintext of exactly 2^14+1', async () => {
      const h = await hostile();
      const a = randomBytes(16_384);
      const b = randomBytes(16_383);
      h.up.write(
        Buffer.concat([
          h.tx.seal(ContentType.appData, Buffer.alloc(0)),
          h.tx.seal(ContentType.appData, a),
          h.tx.seal(ContentType.appData, b, 1),
          h.tx.seal(ContentType.appData, Buffer.from('z'), 16_383),
          h.tx.seal(ContentType.appData, Buffer.alloc(0), 100),
        ]),
      );
      await until('every byte', 5000, () => h.ours.length >= a.length + b.length + 1 || !!h.ours.error);
      assert.equal(h.ours.error, undefined);
      assert.ok(h.ours.data().equals(Buffer.concat([a, b, Buffer.from('z')])));
    });

    it('2^14 of content with padding past 2^14+1 (under the 2^14+256 cap): OpenSSL strips the padding and accepts it', async () => {
      const h = await hostile();
      const a = randomBytes(16_384);
      h.up.write(h.tx.seal(ContentType.appData, a, 200));
      await until('the data', 5000, () => h.ours.length >= a.length || !!h.ours.error);
      assert.equal(h.ours.error, undefined);
      assert.ok(h.ours.data().equals(a));
    });

    it('40 KeyUpdates in a row (not requesting ours): each takes the next key, the data after them arrives', async () => {
      const h = await hostile();
      const records: Buffer[] = [];
      for (let i = 0; i < 40; i++) {
        records.push(h.tx.seal(ContentType.handshake, keyUpdate(false)));
        h.tx.update();
      }
      records.push(h.tx.seal(ContentType.appData, Buffer.from('under key 40')));
      h.up.write(Buffer.concat(records));
      await until('the data', 5000, () => h.ours.length >= 12 || !!h.ours.error);
      assert.equal(h.ours.error, undefined);
      assert.equal(h.ours.data().toString(), 'under key 40');
      assert.equal(h.ours.s.tlsStats()!.keyUpdatesReceived, 40);
      assert.equal(h.ours.s.tlsStats()!.keyUpdatesSent, 0, 'none requested, none sent');
    });

    it('our records: whole 2^14 records from a write of 3 * 2^14 + 1 bytes, none larger', async () => {
      const h = await hostile();
      const data = randomBytes(3 * 16_384 + 1);
      h.ours.s.write(data);
      let got: Opened[] = [];
      await until('our records', 5000, () => (got = h.fromServer()).length >= 4);
      assert.deepEqual(
        got.map((o) => [o.type, o.content.length]),
        [
          [23, 16_384],
          [23, 16_384],
          [23, 16_384],
          [23, 1],
        ],
      );
      assert.ok(Buffer.concat(got.map((o) => o.content)).equals(data));
    });
  });

  describe('KeyUpdate from the peer', () => {
    for (const suite of Object.keys(SUITES) as SuiteName[]) {
      it(`${suite}: a requested update is answered before our next data, both sides on new keys`, async () => {
        const h = await hostile(suite);
        h.up.write(h.tx.seal(ContentType.handshake, keyUpdate(true)));
        h.tx.update();
        h.up.write(h.tx.seal(ContentType.appData, Buffer.from('under the new key')));
        await until('the data', 5000, () => h.ours.length >= 17 || !!h.ours.error);
        assert.equal(h.ours.error, undefined);
        assert.equal(h.ours.data().toString(), 'under the new key');
        h.ours.s.write('and ours');
        let got: Opened[] = [];
        await until('our answer and data', 5000, () => (got = h.fromServer()).length >= 2);
        assert.deepEqual(
          got[0],
          { type: ContentType.handshake, content: keyUpdate(false) },
          'our KeyUpdate, not requesting',
        );
        assert.equal(got[1]!.type, ContentType.appData);
        assert.equal(got[1]!.content.toString(), 'and ours', 'our data under our next key');
        const st = h.ours.s.tlsStats()!;
        assert.equal(st.keyUpdatesReceived, 1);
        assert.equal(st.keyUpdatesSent, 1);
      });
    }

    it('a flood of update requests from a peer that never reads: our output stops at 64 KiB, and so does our reading', async () => {
      // The peer: a relay with a 4 KiB receive buffer that stops reading (Node cannot make one).
      let ours: Ours | undefined;
      const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
        const s = new TlsLinkSocket(tcp, serverCtx);
        defer(() => void s.destroy());
        ours = watch(s);
      });
      const port = await listen(server);
      const relay = spawn(
        'python3',
        [path.join(__dirname, '../../../test/fixtures/tls-stall-relay.py'), String(port)],
        {
          stdio: ['pipe', 'pipe', 'inherit'],
        },
      );
      defer(() => void relay.kill('SIGKILL'));
      relay.stdin!.on('error', () => undefined);
      const relayPort = await new Promise<number>((resolve, reject) => {
        relay.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
        relay.once('exit', () => reject(new Error('the relay exited')));
      });
      const keys = new KeyLog();
      const node = tls.connect({ host: '127.0.0.1', port: relayPort, ...nodeCreds('cli') });
      defer(() => void node.destroy());
      node.on('keylog', (line: Buffer) => keys.add(line));
      node.on('error', () => undefined);
      await until('our side of the handshake', 5000, () => !!ours?.secure || !!ours?.error);
      assert.equal(ours!.error, undefined);
      relay.stdin!.write('HOLD\n');
      const tx = new Direction('TLS_AES_128_GCM_SHA256', keys.get('CLIENT_TRAFFIC_SECRET_0'));

      // Update requests, each followed by one byte of data (so that none is "many in a row").
      // Each is answered (27 bytes); the kernel takes the answers until our socket's send buffer
      // (autotuned, up to net.ipv4.tcp_wmem's maximum) is full, then the link's output buffer
      // holds them up to its bound and the link stops reading.
      const pairs = 60_000;
      const perWrite = 500;
      let maxQueued = 0;
      let maxCapacity = 0;
      const sample = (): void => {
        const st = ours!.s.tlsStats();
        if (!st) return;
        maxQueued = Math.max(maxQueued, st.queued);
        maxCapacity = Math.max(maxCapacity, st.outCapacity);
      };
      for (let sent = 0; sent < pairs && !ours!.error; sent += perWrite) {
        const batch: Buffer[] = [];
        for (let i = 0; i < perWrite; i++) {
          batch.push(tx.seal(ContentType.handshake, keyUpdate(true)));
          tx.update();
          batch.push(tx.seal(ContentType.appData, Buffer.from([0x2e])));
        }
        if (!relay.stdin!.write(Buffer.concat(batch)))
          await new Promise((r) => relay.stdin!.once('drain', r));
        sample();
      }
      await until('every request read', 50_000, () => {
        sample();
        return ours!.length >= pairs || !!ours!.error;
      });
      assert.equal(ours!.error, undefined);
      const st = ours!.s.tlsStats()!;
      assert.equal(st.keyUpdatesReceived, pairs);
      assert.equal(st.keyUpdatesSent, pairs, 'each request answered once');
      // The bound (native/tlslink.cc kMaxOwnOutput): 64 KiB of OpenSSL's own output, plus the
      // one answer (27 bytes) that crossed it; its allocation at most the next power of two.
      assert.ok(maxQueued <= 64 * 1024 + 27, `at most ${maxQueued} bytes queued`);
      assert.ok(maxCapacity <= 128 * 1024, `output buffer allocation ${maxCapacity}`);
    });
  });

  describe('peers without a good certificate', () => {
    it('a client without a certificate that sends records at once: certificate_required, no secure, no data', async () => {
      let ours: Ours | undefined;
      const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
        const s = new TlsLinkSocket(tcp, serverCtx);
        defer(() => void s.destroy());
        ours = watch(s);
      });
      const port = await listen(server);
      const node = tls.connect({ host: '127.0.0.1', port, ...nodeCreds(undefined) });
      defer(() => void node.destroy());
      let nodeErr: Err | undefined;
      node.on('error', (e: Err) => (nodeErr = e));
      // In TLS 1.3 the client's handshake is over before the server has checked it: it may send.
      node.on('secureConnect', () => node.write('let me in'.repeat(1000)));
      await until('our error', 5000, () => !!ours?.error);
      assert.equal(ours!.error!.code, 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE');
      assert.equal(ours!.secure, false, "never 'secure'");
      assert.equal(ours!.length, 0, 'not a byte delivered');
      await until("the client's error", 5000, () => !!nodeErr);
      assert.equal(
        nodeErr!.code,
        'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
        'the alert reached the client',
      );
    });

    it('a certificate from another CA: unknown_ca in the handshake', async () => {
      let ours: Ours | undefined;
      const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
        const s = new TlsLinkSocket(tcp, serverCtx);
        defer(() => void s.destroy());
        ours = watch(s);
      });
      const port = await listen(server);
      const node = tls.connect({
        host: '127.0.0.1',
        port,
        ...nodeCreds(undefined),
        cert: fs.readFileSync(pki.foreign.cert),
        key: fs.readFileSync(pki.foreign.key),
      });
      defer(() => void node.destroy());
      let nodeErr: Err | undefined;
      node.on('error', (e: Err) => (nodeErr = e));
      await until('our error', 5000, () => !!ours?.error);
      assert.match(
        String(ours!.error!.code),
        /^(UNABLE_TO_GET_ISSUER_CERT_LOCALLY|UNABLE_TO_VERIFY_LEAF_SIGNATURE)$/,
      );
      assert.equal(ours!.secure, false);
      await until("the client's error", 5000, () => !!nodeErr);
      assert.equal(nodeErr!.code, 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA');
    });
  });

  describe('openssl s_client -maxfraglen 512', () => {
    it('our server keeps every record within the negotiated 512 bytes; 64 KiB intact', async () => {
      let ours: Ours | undefined;
      const data = randomBytes(64 * 1024);
      const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
        const s = new TlsLinkSocket(tcp, serverCtx);
        defer(() => void s.destroy());
        ours = watch(s);
        s.once('secure', () => s.end(data));
      });
      const port = await listen(server);
      const down: Buffer[] = [];
      const relay = net.createServer({ allowHalfOpen: true }, (c) => {
        const u = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
        defer(() => {
          c.destroy();
          u.destroy();
        });
        for (const s of [c, u]) s.on('error', () => undefined);
        c.pipe(u);
        u.on('data', (d: Buffer) => {
          down.push(d);
          c.write(d);
        });
        u.on('end', () => c.end());
      });
      const relayPort = await listen(relay);
      const child: ChildProcess = spawn(
        'openssl',
        [
          's_client',
          '-quiet',
          '-maxfraglen',
          '512',
          '-connect',
          `127.0.0.1:${relayPort}`,
          '-tls1_3',
          '-alpn',
          LINK_ALPN,
          '-cert',
          pki.nodes.cli!.cert,
          '-key',
          pki.nodes.cli!.key,
          '-CAfile',
          pki.ca,
          '-verify_return_error',
        ],
        { stdio: ['pipe', 'pipe', 'pipe'] },
      );
      defer(() => void child.kill('SIGKILL'));
      const out: Buffer[] = [];
      let err = '';
      child.stdout!.on('data', (d: Buffer) => out.push(d));
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      await until(
        '64 KiB at s_client',
        10_000,
        () => Buffer.concat(out).length >= data.length || !!ours?.error,
      );
      assert.equal(ours?.error, undefined, err);
      assert.ok(Buffer.concat(out).equals(data), 'what s_client decrypted is what we sent');
      const lengths = splitRecords(Buffer.concat(down)).records.map((r) => r.readUInt16BE(3));
      // 512 bytes of plaintext, the inner content type and the tag.
      assert.ok(Math.max(...lengths) <= 512 + 1 + 16, `largest record ${Math.max(...lengths)}`);
      assert.ok(lengths.length >= data.length / 512, `${lengths.length} records`);
    });
  });

  describe("destroy() inside our socket's own handlers", () => {
    it("in 'secure': no crash, the link released, the peer sees the connection close", async () => {
      const before = native.tlsCount();
      let fired = false;
      const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
        const s = new TlsLinkSocket(tcp, serverCtx);
        defer(() => void s.destroy());
        s.on('error', () => undefined);
        s.once('secure', () => {
          fired = true;
          s.destroy();
        });
      });
      const node = tls.connect({ host: '127.0.0.1', port: await listen(server), ...nodeCreds('cli') });
      defer(() => void node.destroy());
      node.on('error', () => undefined);
      node.resume();
      let nodeClosed = false;
      node.on('close', () => (nodeClosed = true));
      await until("'secure'", 5000, () => fired);
      await until('the link released', 3000, () => native.tlsCount() === before);
      await until('the peer to see the close', 3000, () => nodeClosed);
    });

    for (const event of ['data', 'end', 'drain', 'finish'] as const) {
      it(`in '${event}': no crash, the link released`, async () => {
        const before = native.tlsCount();
        const h = await hostile();
        const s = h.ours.s;
        let fired = false;
        s.once(event, () => {
          fired = true;
          s.destroy();
        });
        if (event === 'data') h.up.write(h.tx.seal(ContentType.appData, Buffer.from('x')));
        if (event === 'end') h.up.write(h.tx.seal(ContentType.alert, Buffer.from([1, Alert.closeNotify])));
        if (event === 'finish') s.end('bye');
        if (event === 'drain') {
          h.up.pause(); // the peer does not read: the kernel's buffers fill, then ours
          const chunk = Buffer.alloc(256 * 1024);
          for (let i = 0; i < 400 && s.write(chunk); i++) await new Promise((r) => setImmediate(r));
          h.up.resume();
        }
        await until(`'${event}'`, 10_000, () => fired);
        await until('the link released', 3000, () => native.tlsCount() === before && h.ours.closed);
      });
    }
  });

  describe('environment teardown with links open', () => {
    for (const exitInside of [false, true]) {
      it(`a worker ${exitInside ? 'that calls process.exit()' : 'terminated'} mid-transfer: no crash, every descriptor of its links closed`, async () => {
        const before = descriptors();
        const w = new Worker(path.join(__dirname, 'tlslink-worker.js'), {
          workerData: { ca: pki.ca, server: pki.nodes.srv!, client: pki.nodes.cli!, exitInside },
        });
        defer(() => void w.terminate());
        let exited: number | undefined;
        w.on('exit', (code) => (exited = code));
        w.on('error', () => undefined);
        await new Promise<void>((resolve, reject) => {
          w.once('message', () => resolve());
          w.once('exit', () => reject(new Error('the worker exited before its links were streaming')));
        });
        if (!exitInside) await w.terminate();
        await until('the worker to exit', 10_000, () => exited !== undefined);
        assert.equal(exited, exitInside ? 0 : 1);
        const leaked = (): string[] =>
          [...descriptors()]
            .filter(([fd, what]) => before.get(fd) !== what)
            .map(([fd, what]) => `${fd} -> ${what}`);
        await until('its descriptors closed', 5000, () => leaked().length === 0).catch(() =>
          assert.deepEqual(leaked(), [], 'descriptors the worker left open'),
        );
      });
    }
  });

  describe('a fuzz run of the read path (bounded: IPDEADGATE_TLS_FUZZ_MS, default 3000)', () => {
    it('random well-formed, malformed and tampered records after real handshakes: no crash, no byte past the first bad record, no link or descriptor left', async function () {
      const budget = Number(process.env.IPDEADGATE_TLS_FUZZ_MS ?? 3000);
      const seed = Number(process.env.IPDEADGATE_TLS_FUZZ_SEED ?? 0x1d9a7e);
      this.timeout(budget + 30_000);
      // mulberry32: the mutations repeat for a seed (the keys are each handshake's own).
      let state = seed >>> 0;
      const rnd = (): number => {
        state = (state + 0x6d2b79f5) >>> 0;
        let t = state;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
      };
      const int = (n: number): number => Math.floor(rnd() * n);
      const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));
      const linksBefore = native.tlsCount();
      const fdsBefore = descriptors();
      const suites = Object.keys(SUITES) as SuiteName[];
      const deadline = Date.now() + budget;
      let runs = 0;
      const outcomes: Record<string, number> = {};
      while (Date.now() < deadline) {
        runs++;
        const h = await hostile(suites[int(suites.length)]);
        const wire: Buffer[] = [];
        let valid = Buffer.alloc(0); // the application data before the first bad record
        let bad = false;
        const count = 1 + int(6);
        for (let i = 0; i < count; i++) {
          const kind = int(10);
          const good = (content: Buffer): void => {
            if (!bad) valid = Buffer.concat([valid, content]);
          };
          switch (kind) {
            case 0:
            case 1: {
              const c = bytes(int(3000));
              wire.push(h.tx.seal(ContentType.appData, c, int(3) === 0 ? int(300) : 0));
              good(c);
              break;
            }
            case 2:
              wire.push(h.tx.seal(ContentType.handshake, keyUpdate(int(2) === 0)));
              h.tx.update();
              break;
            case 3:
              wire.push(h.tx.seal(int(256), bytes(int(40))));
              bad = true; // unless it happened to be application data: then it is data
              break;
            case 4:
              wire.push(h.tx.seal(ContentType.handshake, handshakeMessage(int(256), bytes(int(64)))));
              bad = true;
              break;
            case 5:
              wire.push(h.tx.seal(ContentType.alert, bytes(int(5))));
              bad = true;
              break;
            case 6: {
              const r = h.tx.seal(ContentType.appData, bytes(1 + int(500)));
              wire.push(flip(r, int(r.length), 1 << int(8)));
              bad = true;
              break;
            }
            case 7:
              wire.push(bytes(1 + int(64)));
              bad = true;
              break;
            case 8:
              wire.push(h.tx.seal(ContentType.appData, bytes(16_385 + int(100))));
              bad = true;
              break;
            default:
              wire.push(h.tx.sealInner(Buffer.alloc(int(100))));
              bad = true;
          }
        }
        const ending = int(3);
        if (ending === 0) wire.push(h.tx.seal(ContentType.alert, Buffer.from([1, Alert.closeNotify])));
        const all = Buffer.concat(wire);
        // Sometimes split at a random point into two writes: records across reads.
        const cut = int(all.length + 1);
        h.up.write(all.subarray(0, cut));
        if (cut < all.length) h.up.write(all.subarray(cut));
        if (ending !== 2) h.up.end();
        await until(
          'an outcome',
          5000,
          () => h.ours.ended || !!h.ours.error || (ending === 2 && h.ours.length >= valid.length),
        );
        const got = h.ours.data();
        const outcome = h.ours.error ? String(h.ours.error.code) : h.ours.ended ? 'end' : 'open';
        outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
        if (h.ours.error) assert.match(outcome, /^(ERR_SSL_\w+|ECONNRESET|EPIPE)$/, h.ours.error.message);
        if (!bad)
          assert.ok(
            got.equals(valid.subarray(0, got.length)),
            `run ${runs}: what was delivered is what was sent`,
          );
        else
          assert.ok(
            got.length <= valid.length + 16_384 &&
              got.subarray(0, valid.length).equals(valid.subarray(0, got.length)),
            `run ${runs}: a prefix of the good data`,
          );
        if (!bad && ending === 0)
          assert.equal(outcome, 'end', `run ${runs}: close_notify after good records is a clean end`);
        if (!bad && ending === 1)
          assert.equal(
            outcome,
            'ERR_SSL_UNEXPECTED_EOF_WHILE_READING',
            `run ${runs}: FIN without close_notify`,
          );
        await releaseAll();
      }
      console.log(`      ${runs} runs (seed ${seed}): ${JSON.stringify(outcomes)}`);
      assert.ok(runs >= 3, `${runs} runs`);
      await until('every link released', 3000, () => native.tlsCount() === linksBefore);
      const leaked = [...descriptors()].filter(([fd, what]) => fdsBefore.get(fd) !== what);
      await until('every descriptor released', 3000, () =>
        [...descriptors()].every(([fd, what]) => fdsBefore.get(fd) === what),
      ).catch(() => assert.deepEqual(leaked, [], 'descriptors left'));
    });
  });
});
