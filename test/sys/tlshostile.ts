// The harness of the hostile-peer tests (tlslink-hostile.test.ts, tlslink-fuzz.test.ts): a Node TLS
// client does a real handshake with our server through a relay the test controls; its traffic
// secrets (Node's 'keylog' event) let a test build records OpenSSL will authenticate
// (tlsrecords.ts) and open the ones our server sends back.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { LINK_ALPN } from '../../src/tunnel/link';
import { TlsLinkContext, TlsLinkSocket } from '../../src/sys/tlslink';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { sleep } from '../tunnel/helpers';
import {
  ContentType,
  Direction,
  HandshakeType,
  KeyLog,
  splitRecords,
  SUITES,
  type Opened,
  type SuiteName,
} from './tlsrecords';

export type Err = Error & { code?: string };

export async function until(what: string, ms: number, fn: () => boolean): Promise<void> {
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
export interface Hostile {
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

/** Our server, Node clients with real keys, and the clean-up of both: the harness of the hostile-peer tests. */
export class HostileLab {
  pki!: TestPki;
  serverCtx!: TlsLinkContext;
  private cleanups: (() => void | Promise<void>)[] = [];

  /** In before(): the PKI and our server's context. */
  setup(): void {
    this.pki = makePki(['srv', 'cli']);
    this.serverCtx = new TlsLinkContext({
      server: true,
      ca: fs.readFileSync(this.pki.ca),
      cert: fs.readFileSync(this.pki.nodes.srv!.cert),
      key: fs.readFileSync(this.pki.nodes.srv!.key),
      alpn: LINK_ALPN,
      ciphersuites: Object.keys(SUITES).join(':'),
    });
  }

  /** In after(). */
  teardown(): void {
    this.serverCtx?.free();
    this.pki?.cleanup();
  }

  defer(fn: () => void | Promise<void>): void {
    this.cleanups.push(fn);
  }

  async releaseAll(): Promise<void> {
    const fns = this.cleanups.reverse();
    this.cleanups = [];
    for (const fn of fns) {
      try {
        await fn();
      } catch {
        // cleaning up after a failure: the failure is what the test reports
      }
    }
  }

  async listen(server: net.Server): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.defer(() => Promise.race([new Promise<void>((r) => server.close(() => r())), sleep(2000)]));
    return (server.address() as net.AddressInfo).port;
  }

  nodeCreds(name: string | undefined): tls.ConnectionOptions {
    return {
      ca: fs.readFileSync(this.pki.ca),
      ...(name
        ? {
            cert: fs.readFileSync(this.pki.nodes[name]!.cert),
            key: fs.readFileSync(this.pki.nodes[name]!.key),
          }
        : {}),
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      ALPNProtocols: [LINK_ALPN],
      checkServerIdentity: () => undefined,
    };
  }

  /** Our server and a Node client with `suite`, handshake done; from then on the relay holds the client's bytes. */
  async hostile(suite: SuiteName = 'TLS_AES_128_GCM_SHA256'): Promise<Hostile> {
    let ours: Ours | undefined;
    const server = net.createServer({ pauseOnConnect: true }, (tcp) => {
      const s = new TlsLinkSocket(tcp, this.serverCtx);
      this.defer(() => void s.destroy());
      ours = watch(s);
    });
    const port = await this.listen(server);
    let marked = false;
    const held: Buffer[] = [];
    const down: Buffer[] = [];
    let up: net.Socket | undefined;
    const relay = net.createServer({ allowHalfOpen: true }, (c) => {
      const u = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      up = u;
      this.defer(() => {
        c.destroy();
        u.destroy();
      });
      c.on('error', () => undefined);
      u.on('error', () => undefined);
      c.on('data', (d: Buffer) => (marked ? held.push(d) : u.write(d)));
      u.on('data', (d: Buffer) => (marked ? down.push(d) : c.write(d)));
    });
    const relayPort = await this.listen(relay);
    const keys = new KeyLog();
    const node = tls.connect({
      host: '127.0.0.1',
      port: relayPort,
      ...this.nodeCreds('cli'),
      ciphers: suite,
    });
    this.defer(() => void node.destroy());
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
  async failsWith(h: Hostile, code: RegExp, alert: number | undefined, delivered: Buffer): Promise<void> {
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
  async genuine(h: Hostile, pieces: Buffer[]): Promise<Buffer[]> {
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
}

export const flip = (rec: Buffer, at: number, bit = 1): Buffer => {
  const c = Buffer.from(rec);
  c[at]! ^= bit;
  return c;
};
