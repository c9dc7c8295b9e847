// The link's TLS (native/tlslink.cc) against peers that misbehave on purpose (the harness:
// tlshostile.ts). Each case checks three things: what our side delivered (never a byte past the
// first bad record), how it failed (an 'error' with OpenSSL's code, never a clean 'end' for a
// truncation), and which TLS alert it sent the peer.
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
import { TlsLinkSocket } from '../../src/sys/tlslink';
import { sleep } from '../tunnel/helpers';
import { descriptors, type Err, flip, HostileLab, type Ours, until, watch } from './tlshostile';
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

describe("tunnel: the link's TLS against hostile peers (records built with the connection's own keys)", function () {
  this.timeout(30_000);
  const native = loadNative();
  const lab = new HostileLab();
  before(() => lab.setup());
  after(() => lab.teardown());
  afterEach(() => lab.releaseAll());

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
        const h = await lab.hostile();
        const records = await lab.genuine(h, pieces);
        for (const r of tamper(records)) h.up.write(r);
        await lab.failsWith(h, code, alert, Buffer.from(delivered));
      });
    }

    it('a record from another connection spliced in', async () => {
      const h = await lab.hostile();
      const other = await lab.hostile();
      const mine = await lab.genuine(h, pieces.slice(0, 2));
      const theirs = await lab.genuine(other, pieces.slice(0, 2));
      h.up.write(mine[0]!);
      h.up.write(theirs[1]!);
      await lab.failsWith(h, /BAD_RECORD_MAC/, Alert.badRecordMac, Buffer.from('record zero'));
      assert.equal(other.ours.error, undefined, 'the other connection is untouched');
    });
  });

  describe('the end of the stream', () => {
    it('FIN at a record boundary without close_notify is a truncation (an error), not an end', async () => {
      const h = await lab.hostile();
      const records = await lab.genuine(h, [Buffer.from('all'), Buffer.from(' but the end')]);
      h.up.end(Buffer.concat(records));
      await lab.failsWith(
        h,
        /^ERR_SSL_UNEXPECTED_EOF_WHILE_READING$/,
        undefined,
        Buffer.from('all but the end'),
      );
    });

    it("close_notify then FIN is a clean 'end'; bytes after the close_notify in the same read are ignored", async () => {
      const h = await lab.hostile();
      const records = await lab.genuine(h, [Buffer.from('the last words')]);
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
        const h = await lab.hostile();
        h.up.write(Buffer.concat(records(h.tx)));
        await sleep(300);
        const okFirst = what.startsWith('a handshake record in the clear') ? 'ok' : '';
        await lab.failsWith(h, code, alert, Buffer.from(okFirst));
      });
    }

    it('size boundaries that are allowed: empty records, 2^14 of content, inner plaintext of exactly 2^14+1', async () => {
      const h = await lab.hostile();
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
      const h = await lab.hostile();
      const a = randomBytes(16_384);
      h.up.write(h.tx.seal(ContentType.appData, a, 200));
      await until('the data', 5000, () => h.ours.length >= a.length || !!h.ours.error);
      assert.equal(h.ours.error, undefined);
      assert.ok(h.ours.data().equals(a));
    });

    it('40 KeyUpdates in a row (not requesting ours): each takes the next key, the data after them arrives', async () => {
      const h = await lab.hostile();
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
      const h = await lab.hostile();
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
        const h = await lab.hostile(suite);
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
        const s = new TlsLinkSocket(tcp, lab.serverCtx);
        lab.defer(() => void s.destroy());
        ours = watch(s);
      });
      const port = await lab.listen(server);
      const relay = spawn(
        'python3',
        [path.join(__dirname, '../../../test/fixtures/tls-stall-relay.py'), String(port)],
        {
          stdio: ['pipe', 'pipe', 'inherit'],
        },
      );
      lab.defer(() => void relay.kill('SIGKILL'));
      relay.stdin!.on('error', () => undefined);
      const relayPort = await new Promise<number>((resolve, reject) => {
        relay.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
        relay.once('exit', () => reject(new Error('the relay exited')));
      });
      const keys = new KeyLog();
      const node = tls.connect({ host: '127.0.0.1', port: relayPort, ...lab.nodeCreds('cli') });
      lab.defer(() => void node.destroy());
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
        const s = new TlsLinkSocket(tcp, lab.serverCtx);
        lab.defer(() => void s.destroy());
        ours = watch(s);
      });
      const port = await lab.listen(server);
      const node = tls.connect({ host: '127.0.0.1', port, ...lab.nodeCreds(undefined) });
      lab.defer(() => void node.destroy());
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
        const s = new TlsLinkSocket(tcp, lab.serverCtx);
        lab.defer(() => void s.destroy());
        ours = watch(s);
      });
      const port = await lab.listen(server);
      const node = tls.connect({
        host: '127.0.0.1',
        port,
        ...lab.nodeCreds(undefined),
        cert: fs.readFileSync(lab.pki.foreign.cert),
        key: fs.readFileSync(lab.pki.foreign.key),
      });
      lab.defer(() => void node.destroy());
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
        const s = new TlsLinkSocket(tcp, lab.serverCtx);
        lab.defer(() => void s.destroy());
        ours = watch(s);
        s.once('secure', () => s.end(data));
      });
      const port = await lab.listen(server);
      const down: Buffer[] = [];
      const relay = net.createServer({ allowHalfOpen: true }, (c) => {
        const u = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
        lab.defer(() => {
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
      const relayPort = await lab.listen(relay);
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
          lab.pki.nodes.cli!.cert,
          '-key',
          lab.pki.nodes.cli!.key,
          '-CAfile',
          lab.pki.ca,
          '-verify_return_error',
        ],
        { stdio: ['pipe', 'pipe', 'pipe'] },
      );
      lab.defer(() => void child.kill('SIGKILL'));
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
        const s = new TlsLinkSocket(tcp, lab.serverCtx);
        lab.defer(() => void s.destroy());
        s.on('error', () => undefined);
        s.once('secure', () => {
          fired = true;
          s.destroy();
        });
      });
      const node = tls.connect({
        host: '127.0.0.1',
        port: await lab.listen(server),
        ...lab.nodeCreds('cli'),
      });
      lab.defer(() => void node.destroy());
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
        const h = await lab.hostile();
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
          workerData: { ca: lab.pki.ca, server: lab.pki.nodes.srv!, client: lab.pki.nodes.cli!, exitInside },
        });
        lab.defer(() => void w.terminate());
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
});
