// What a local user (or a wrong argument) can do to the daemon's control socket, state dir, journal,
// config and capture files: each is refused with a clear error, and nothing of the daemon's is lost.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { ConfigError } from '../../src/errors';
import { ControlServer, controlRequest } from '../../src/daemon/control';
import { parseConfig } from '../../src/daemon/config';
import { DaemonMetrics } from '../../src/daemon/metrics';
import { DaemonOps } from '../../src/daemon/ops';
import { checkStateDir, StateDirLock } from '../../src/daemon/stateguard';
import { FileStore } from '../../src/dgd/store';
import { PcapFileWriter } from '../../src/sys/packet';
import { DurableWriter } from '../../src/util/durable';
import { writeFileAtomic } from '../../src/util/atomic';
import { MemoryEventLog } from '../doubles';
import { waitFor } from '../lab/lab';

/** Send raw bytes on the control socket and read the first answer line. */
function rawRequest(sock: string, text: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const s = net.connect(sock);
    let buf = '';
    s.setEncoding('utf8');
    s.once('connect', () => s.write(text));
    s.on('data', (c: string) => {
      buf += c;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      s.destroy();
      resolve(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
    });
    s.once('error', reject);
    setTimeout(() => reject(new Error('no answer')), 5000).unref();
  });
}

/** Resolves when the peer closed the connection completely (not half-closed). */
function closedByPeer(s: net.Socket): Promise<void> {
  return new Promise((resolve) => s.once('close', () => resolve()));
}

/**
 * Resolves when the server's end of a half-open client is gone: after its FIN, writes still land
 * while the server holds its socket, and fail (EPIPE) once it let go. Bounded (a few seconds).
 */
function serverLetGo(s: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    const give = setTimeout(() => reject(new Error('the server still holds the connection')), 5000);
    s.once('end', () => {
      const t = setInterval(() => s.write('x'), 20);
      s.once('error', () => {
        clearInterval(t);
        clearTimeout(give);
        resolve();
      });
    });
  });
}

describe('a local user and the daemon', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(tmpdir(), 'idg-local-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('the control socket', () => {
    it('answers requests that are not objects with a clear error, and keeps serving', async () => {
      const sock = path.join(dir, 'c.sock');
      const server = new ControlServer(sock, () => 0).handle('status', async () => ({ up: true }));
      await server.listen();
      try {
        for (const bad of ['null', '[]', '42', '"status"', '{"cmd":7}', '{"cmd":"status","args":null}']) {
          const r = await rawRequest(sock, bad + '\n');
          assert.equal(r.ok, false, bad);
          assert.equal((r.error as { code: string }).code, 'ERR_BAD_REQUEST', bad);
        }
        assert.deepEqual(await controlRequest(sock, 'status'), { up: true });
      } finally {
        await server.close();
      }
    });

    it('a second daemon on the same path leaves the first one socket in place', async () => {
      const sock = path.join(dir, 'c.sock');
      const first = new ControlServer(sock, () => 0).handle('status', async () => 'first');
      await first.listen();
      try {
        const second = new ControlServer(sock, () => 0);
        await assert.rejects(second.listen(), /already listening/);
        await second.close(); // what a failed start does
        assert.ok(fs.lstatSync(sock).isSocket());
        assert.equal(await controlRequest(sock, 'status'), 'first');
      } finally {
        await first.close();
      }
    });

    it('never unlinks a file that is not a socket (--control pointing at the config)', async () => {
      const file = path.join(dir, 'ipdeadgate.yaml');
      fs.writeFileSync(file, 'dgd: {}\n');
      const server = new ControlServer(file, () => 0);
      await assert.rejects(server.listen(), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'ERR_CONTROL_NOT_SOCKET');
        assert.match(e.message, /ipdeadgate\.yaml exists and is not a socket/);
        return true;
      });
      await server.close();
      assert.equal(fs.readFileSync(file, 'utf8'), 'dgd: {}\n');
    });

    it('closes a refused client completely, caps clients and drops idle ones', async () => {
      const sock = path.join(dir, 'c.sock');
      let uid = 1000;
      const server = new ControlServer(sock, () => uid, new Set([0]), null, { maxClients: 2, idleMs: 300 });
      await server.listen();
      const clients: net.Socket[] = [];
      try {
        // A refused client that never closes its side is still disconnected.
        const refused = net.connect({ path: sock, allowHalfOpen: true });
        clients.push(refused);
        refused.resume();
        await serverLetGo(refused);

        uid = 0;
        const a = net.connect(sock);
        const b = net.connect(sock);
        clients.push(a, b);
        await Promise.all([a, b].map((s) => new Promise((r) => s.once('connect', r))));
        await new Promise((r) => setTimeout(r, 50));
        const c = net.connect(sock);
        clients.push(c);
        c.on('error', () => undefined);
        await closedByPeer(c); // over the cap
        // Idle clients go after the idle timeout.
        await Promise.all([closedByPeer(a), closedByPeer(b)]);
      } finally {
        for (const s of clients) s.destroy();
        await server.close();
      }
    });
  });

  describe('the state dir', () => {
    it('is refused when another user owns it or others can write it', async () => {
      const state = path.join(dir, 'state');
      fs.mkdirSync(state, { mode: 0o700 });
      await checkStateDir(state); // ours, 0700
      fs.chmodSync(state, 0o770);
      await assert.rejects(checkStateDir(state), /writable by its group \(mode 0770\).*chmod 700/);
      fs.chmodSync(state, 0o707);
      await assert.rejects(checkStateDir(state), /writable by others/);
      fs.chmodSync(state, 0o700);
      await assert.rejects(
        checkStateDir(state, (process.geteuid?.() ?? 0) + 4242),
        /belongs to uid \d+, not to the daemon's uid \d+/,
      );
      if (process.geteuid?.() === 0) {
        fs.chownSync(state, 4242, 4242);
        await assert.rejects(checkStateDir(state), /belongs to uid 4242/);
      }
    });

    it('is locked: a second daemon sharing it is refused until the first lets go', () => {
      const first = StateDirLock.acquire(dir);
      try {
        assert.throws(
          () => StateDirLock.acquire(dir),
          (e: Error & { code?: string }) => {
            assert.equal(e.code, 'ERR_STATE_DIR_IN_USE');
            assert.match(
              e.message,
              new RegExp(`another ipdeadgate \\(pid ${process.pid}\\) uses the state dir`),
            );
            return true;
          },
        );
      } finally {
        first.close();
      }
      StateDirLock.acquire(dir).close();
    });
  });

  describe('the journal', () => {
    it('sets a bad entry aside, names its file, and uses the good ones', async () => {
      const good = {
        key: 'r1',
        original: {
          family: 4,
          dst: '0.0.0.0/0',
          table: 254,
          metric: 100,
          tos: 0,
          gateway: '198.18.1.1',
          ifindex: 2,
          ifname: 'lan0',
          nexthops: null,
          protocol: 4,
        },
        removed: ['198.18.1.1%2'],
        at: '2026-01-01T00:00:00.000Z',
      };
      const bad = { ...good, key: 'r2', original: { ...good.original, gateway: 'not-an-ip' } };
      fs.writeFileSync(
        path.join(dir, 'withdrawn-routes.json'),
        JSON.stringify({ version: 1, entries: [null, good, bad, 'x'] }),
      );
      const log = new MemoryEventLog();
      const store = new FileStore(dir, { log });
      const entries = await store.loadJournal();
      assert.deepEqual(
        entries.map((e) => e.key),
        ['r1'],
      );
      assert.deepEqual(await store.loadGroupJournal(), []);
      const rejected = log.named('journal_entry_rejected');
      assert.equal(rejected.length, 3);
      assert.deepEqual(
        rejected.map((r) => r.index),
        [0, 2, 3],
      );
      assert.match(String(rejected[1]!.problem), /original\.gateway: is not an IP address/);
      const aside = String(rejected[0]!.set_aside_in);
      assert.ok(aside.startsWith(path.join(dir, 'withdrawn-routes.json.rejected-')), aside);
      assert.equal(
        (JSON.parse(fs.readFileSync(aside, 'utf8')) as { rejected: unknown[] }).rejected.length,
        3,
      );
      // The journal now holds only the good entry: the next start sets nothing aside.
      const again = new FileStore(dir, { log: new MemoryEventLog() });
      assert.deepEqual(
        (await again.loadJournal()).map((e) => e.key),
        ['r1'],
      );
    });
  });

  describe('state writes', () => {
    it('a failed write is logged, counted and retried until it lands; the caller never fails', async () => {
      const log = new MemoryEventLog();
      const writer = new DurableWriter(log, 30);
      const file = path.join(dir, 'state', 'journal.json');
      let fail = 2;
      const write = async () => {
        if (fail-- > 0) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
        fs.mkdirSync(path.dirname(file), { recursive: true });
        fs.writeFileSync(file, 'ok');
      };
      try {
        assert.equal(await writer.write(file, write), false);
        const failed = log.named('state_write_failed');
        assert.equal(failed.length, 1);
        assert.equal(failed[0]!.state_dir, path.dirname(file));
        assert.match(String(failed[0]!.error), /^ENOSPC/);
        assert.deepEqual(writer.stats().pending, [file]);
        await waitFor(() => log.named('state_write_recovered').length === 1, 5000, 'the retry to land');
        assert.equal(fs.readFileSync(file, 'utf8'), 'ok');
        assert.deepEqual(writer.stats(), { failures: 2, pending: [] });
      } finally {
        writer.close();
      }
    });

    it('an atomic write that fails leaves no temp file behind', async () => {
      // The target is a directory: the write succeeds, the rename fails.
      fs.mkdirSync(path.join(dir, 'target'));
      await assert.rejects(writeFileAtomic(path.join(dir, 'target'), 'x'));
      // The write itself fails once the temp file exists (as with ENOSPC; the lab test fills a disk).
      await assert.rejects(writeFileAtomic(path.join(dir, 'journal.json'), 42 as unknown as string));
      assert.deepEqual(
        fs.readdirSync(dir).filter((f) => f.endsWith('.tmp')),
        [],
      );
    });
  });

  describe('capture -w', () => {
    it('creates the file exclusively, never through a symlink; --force overwrites a regular file', () => {
      const victim = path.join(dir, 'victim');
      fs.writeFileSync(victim, 'precious');
      const link = path.join(dir, 'link.pcap');
      fs.symlinkSync(victim, link);
      assert.throws(() => PcapFileWriter.open(victim), /exists \(pass --force to overwrite it\)/);
      assert.throws(() => PcapFileWriter.open(link), /EEXIST|ELOOP/);
      assert.throws(() => PcapFileWriter.open(link, { overwrite: true }), /is a symlink/);
      assert.equal(fs.readFileSync(victim, 'utf8'), 'precious');
      PcapFileWriter.open(victim, { overwrite: true }).close();
      assert.equal(fs.readFileSync(victim).readUInt32LE(0), 0xa1b2c3d4);
      const fresh = path.join(dir, 'new.pcap');
      PcapFileWriter.open(fresh).close();
      assert.ok(fs.statSync(fresh).size > 0);
    });
  });

  describe('the config', () => {
    it('an alias bomb is a config error naming the file', () => {
      const lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
      for (let i = 0; i < 8; i++) {
        const p = String.fromCharCode(97 + i);
        const n = String.fromCharCode(98 + i);
        lines.push(`${n}: &${n} [${Array(9).fill(`*${p}`).join(',')}]`);
      }
      lines.push('dgd: {}');
      assert.throws(
        () => parseConfig(lines.join('\n') + '\n', '/etc/ipdeadgate/bomb.yaml'),
        (e: unknown) => {
          assert.ok(e instanceof ConfigError, String(e));
          assert.match((e as Error).message, /^\/etc\/ipdeadgate\/bomb\.yaml: /);
          return true;
        },
      );
    });
  });

  describe('the metrics endpoint', () => {
    it('renders at most once a second however often it is asked', async () => {
      const m = new DaemonMetrics({});
      let renders = 0;
      const original = m.registry.metrics.bind(m.registry);
      m.registry.metrics = () => {
        renders++;
        return original();
      };
      const texts = await Promise.all(Array.from({ length: 50 }, () => m.render()));
      assert.equal(renders, 1);
      assert.ok(texts.every((t) => t === texts[0]));
    });

    it('closes connections beyond its cap as they come', async () => {
      const m = new DaemonMetrics({});
      const { port } = await m.listen('127.0.0.1:0');
      const held: net.Socket[] = [];
      try {
        for (let i = 0; i < 60; i++) {
          const s = net.connect(port, '127.0.0.1');
          s.on('error', () => undefined);
          held.push(s);
        }
        await Promise.all(held.map((s) => new Promise((r) => (s.connecting ? s.once('connect', r) : r(0)))));
        // Connections beyond the cap are closed by the server; the others stay open (idle).
        await waitFor(
          () => held.filter((s) => s.destroyed || s.readableEnded).length >= 60 - 32,
          5000,
          'closes',
        );
        assert.ok(held.filter((s) => !s.destroyed && !s.readableEnded).length <= 32);
      } finally {
        for (const s of held) s.destroy();
        await m.close();
      }
    });

    it('a reload that cannot bind the new address keeps the old endpoint and says so', async () => {
      const blocker = http.createServer();
      await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
      const taken = (blocker.address() as net.AddressInfo).port;
      const log = new MemoryEventLog();
      const config = parseConfig('metrics:\n  listen: 127.0.0.1:0\nflight_recorder:\n  enabled: false\n');
      const ops = new DaemonOps(dir, config);
      ops.wrapEvents(log);
      try {
        await ops.start(
          { status: () => ({ enabled: true, gateways: [], withdrawn_routes: [], last_scan: {} }) as never },
          { link: () => new Promise(() => undefined) },
        );
        const port = log.named('metrics_listening')[0]!.port as number;
        await ops.reconfigure(parseConfig(`metrics:\n  listen: 127.0.0.1:${taken}\n`));
        const failed = log.named('metrics_listen_failed');
        assert.equal(failed.length, 1);
        assert.equal(failed[0]!.listen, `127.0.0.1:${taken}`);
        assert.match(String(failed[0]!.note), /stays on 127\.0\.0\.1:0/);
        const r = await fetch(`http://127.0.0.1:${port}/metrics`);
        assert.equal(r.status, 200);
        await r.text();
      } finally {
        await ops.close();
        blocker.close();
      }
    });
  });
});
