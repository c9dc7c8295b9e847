import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { ControlServer, controlRequest } from '../../src/daemon/control';

describe('control socket', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'idg-ctl-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('answers a command, mode 0600, and removes its socket on close', async () => {
    const sock = path.join(dir, 'c.sock');
    const server = new ControlServer(sock, () => 0).handle('status', async () => ({ enabled: true }));
    await server.listen();
    try {
      assert.equal(statSync(sock).mode & 0o777, 0o600);
      assert.deepEqual(await controlRequest(sock, 'status'), { enabled: true });
    } finally {
      await server.close();
    }
    assert.throws(() => statSync(sock), /ENOENT/);
  });

  it('refuses a peer that is not root, saying so', async () => {
    const sock = path.join(dir, 'c.sock');
    const server = new ControlServer(sock, () => 1000, new Set([0])).handle('off', async () => 'done');
    await server.listen();
    try {
      await assert.rejects(controlRequest(sock, 'off'), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'EACCES');
        assert.match(e.message, /root-only \(your uid is 1000\)/);
        return true;
      });
    } finally {
      await server.close();
    }
  });

  it('names an unknown command and relays handler errors with their code', async () => {
    const sock = path.join(dir, 'c.sock');
    const server = new ControlServer(sock, () => 0).handle('boom', async () => {
      throw Object.assign(new Error('it broke'), { code: 'EBROKE' });
    });
    await server.listen();
    try {
      await assert.rejects(controlRequest(sock, 'nope'), /unknown command "nope" \(known: boom\)/);
      await assert.rejects(
        controlRequest(sock, 'boom'),
        (e: Error & { code?: string }) => e.code === 'EBROKE',
      );
    } finally {
      await server.close();
    }
  });

  it('a second server on a live socket fails; a stale socket file is replaced', async () => {
    const sock = path.join(dir, 'c.sock');
    const a = new ControlServer(sock, () => 0).handle('x', async () => 'a');
    await a.listen();
    try {
      await assert.rejects(new ControlServer(sock, () => 0).listen(), /already listening/);
    } finally {
      await a.close();
    }
    // A socket file left by a killed daemon: nobody listens on it.
    const net = await import('node:net');
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(sock, r));
    (srv as unknown as { _handle: { close(): void } })._handle.close(); // leave the file behind
    const b = new ControlServer(sock, () => 0).handle('x', async () => 'b');
    await b.listen();
    try {
      assert.equal(await controlRequest(sock, 'x'), 'b');
    } finally {
      await b.close();
    }
  });

  it('a missing daemon is a clear error', async () => {
    await assert.rejects(
      controlRequest(path.join(dir, 'none.sock'), 'status'),
      /no daemon is running on .*none\.sock/,
    );
  });
});
