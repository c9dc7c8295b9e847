// The control socket: a Unix stream socket, mode 0600, for root and the daemon's own user (the
// peer's uid is checked with SO_PEERCRED); with a control group (the packaged unit's
// --control-group ipdeadgate), mode 0660 in that group, and the kernel's check of the socket
// file's permission at connect() is what admits the group's members. Protocol: one JSON request per line, one JSON response per line:
//   -> {"cmd":"status"}            <- {"ok":true,"result":{...}}
//   -> {"cmd":"nope"}              <- {"ok":false,"error":{"code":"ERR_UNKNOWN_COMMAND","message":"..."}}
// Requests are validated (zod) before anything reads them; refused and idle clients are destroyed,
// and connections are capped, so no client can take the daemon's descriptors or stop it. Only the
// socket this server created (same device and inode) is ever unlinked.
import { chmod, chown, lstat, stat, unlink } from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { z } from 'zod';
import { IpdeadgateError } from '../errors';

export type ControlHandler = (args: Record<string, unknown>) => Promise<unknown>;

/** How the server learns who is on the other end (SO_PEERCRED); injected so tests can fake it. */
export type PeerUid = (socket: net.Socket) => number | null;

const MAX_REQUEST = 64 * 1024;
/** Clients at once; more are closed when accepted (the CLI needs one per command). */
export const MAX_CONTROL_CLIENTS = 32;
/** A client that sends nothing for this long is disconnected. */
export const CONTROL_IDLE_MS = 30_000;
/** How long a refused client's connection may stay half-closed. */
const REFUSED_LINGER_MS = 1000;
/** A client that does not read its answers: disconnected once this much waits to be sent. */
const MAX_PENDING_OUTPUT = 1024 * 1024;

export const controlRequestSchema = z.object({
  cmd: z.string().min(1).max(64),
  args: z.record(z.unknown()).optional(),
});

interface Created {
  dev: number;
  ino: number;
}

export class ControlServer {
  private readonly handlers = new Map<string, ControlHandler>();
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private closed = false;
  /** The socket file this server created; null until listen() bound it. */
  private created: Created | null = null;

  constructor(
    readonly path: string,
    private readonly peerUid: PeerUid,
    private readonly allowedUids: ReadonlySet<number> = new Set([0, process.getuid?.() ?? 0]),
    /** The gid whose members may use the socket too (mode 0660), or null for 0600. */
    private readonly group: number | null = null,
    private readonly limits: { maxClients: number; idleMs: number } = {
      maxClients: MAX_CONTROL_CLIENTS,
      idleMs: CONTROL_IDLE_MS,
    },
  ) {}

  handle(cmd: string, fn: ControlHandler): this {
    this.handlers.set(cmd, fn);
    return this;
  }

  /**
   * Listen. A stale socket file (nobody listening) is replaced; a live one (another daemon) is an
   * error, and so is anything at the path that is not a socket (never unlinked: it may be the
   * config, passed in the wrong place).
   */
  async listen(): Promise<void> {
    const existing = await lstat(this.path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw new IpdeadgateError(
        err.code ?? 'EIO',
        `cannot use the control socket ${this.path}: ${err.message}`,
      );
    });
    if (existing && !existing.isSocket())
      throw new IpdeadgateError(
        'ERR_CONTROL_NOT_SOCKET',
        `${this.path} exists and is not a socket; refusing to replace it (is --control pointing at ` +
          'the wrong file?); pass --control PATH for the control socket',
      );
    if (existing) {
      if (await isListening(this.path))
        throw new IpdeadgateError(
          'ERR_CONTROL_IN_USE',
          `another ipdeadgate is already listening on ${this.path}`,
        );
      // A stale socket left by a daemon that died: replace it, but only if it is still that file.
      const again = await lstat(this.path).catch(() => null);
      if (again && again.isSocket() && again.ino === existing.ino && again.dev === existing.dev)
        await unlink(this.path).catch(() => undefined);
    }
    // libuv reports bind() in a missing directory as EACCES; name the real problem.
    const dir = path.dirname(path.resolve(this.path));
    const st = await stat(dir).catch(() => null);
    if (!st || !st.isDirectory())
      throw new IpdeadgateError(
        'ENOENT',
        `cannot listen on the control socket ${this.path}: the directory ${dir} does not exist ` +
          '(create it, or pass --control PATH in an existing directory)',
      );
    const server = net.createServer((s) => this.onConnection(s));
    // Beyond the cap a connection is closed as soon as it is accepted.
    server.maxConnections = this.limits.maxClients;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new IpdeadgateError(
            err.code ?? 'EIO',
            `cannot listen on the control socket ${this.path}: ${err.message}`,
          ),
        ),
      );
      // Created with mode 0600 from the start: no window in which others could connect.
      const oldMask = process.umask(0o177);
      try {
        server.listen(this.path, () => resolve());
      } finally {
        process.umask(oldMask);
      }
    });
    server.on('error', () => undefined);
    const mine = await lstat(this.path);
    this.created = { dev: mine.dev, ino: mine.ino };
    await chmod(this.path, 0o600);
    if (this.group !== null) {
      // Still 0600 until it is in the group: the group's members are let in only then. Under the
      // packaged unit the socket is born in the group (the daemon's own), and chown() is not even
      // allowed there (SystemCallFilter=~@privileged): change it only when it differs.
      try {
        if ((await stat(this.path)).gid !== this.group) await chown(this.path, -1, this.group);
      } catch (err) {
        throw new IpdeadgateError(
          'EPERM',
          `cannot give the control socket ${this.path} to group ${this.group}: ${(err as Error).message} ` +
            '(the daemon must be a member of its control group)',
        );
      }
      await chmod(this.path, 0o660);
    }
  }

  private onConnection(s: net.Socket): void {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
    s.on('error', () => s.destroy());
    s.setTimeout(this.limits.idleMs, () => s.destroy());
    const uid = this.peerUid(s);
    // With a control group, whoever could connect passed the kernel's permission check on the socket.
    if (this.group === null && (uid === null || !this.allowedUids.has(uid))) {
      refuse(s, {
        code: 'EACCES',
        message: `the control socket is root-only (your uid is ${uid ?? 'unknown'}); run the command as root`,
      });
      return;
    }
    let buf = '';
    let queue: Promise<void> = Promise.resolve();
    s.setEncoding('utf8');
    s.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_REQUEST) {
        buf = '';
        refuse(s, { code: 'ERR_TOO_LARGE', message: `request too large (over ${MAX_REQUEST} bytes)` });
        return;
      }
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        // One request at a time per client, answered in order.
        queue = queue.then(async () => {
          const resp = await this.dispatch(line);
          if (s.destroyed) return;
          s.write(JSON.stringify(resp) + '\n');
          if (s.writableLength > MAX_PENDING_OUTPUT) s.destroy();
        });
      }
    });
  }

  private async dispatch(line: string): Promise<unknown> {
    let json: unknown;
    try {
      json = JSON.parse(line) as unknown;
    } catch {
      return { ok: false, error: { code: 'ERR_BAD_REQUEST', message: 'request is not JSON' } };
    }
    const parsed = controlRequestSchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      return {
        ok: false,
        error: {
          code: 'ERR_BAD_REQUEST',
          message:
            'a request is {"cmd": "...", "args": {...}}: ' +
            `${issue.path.join('.') || 'the request'}: ${issue.message}`,
        },
      };
    }
    const { cmd, args = {} } = parsed.data;
    const handler = this.handlers.get(cmd);
    if (!handler)
      return {
        ok: false,
        error: {
          code: 'ERR_UNKNOWN_COMMAND',
          message: `unknown command "${cmd}" (known: ${[...this.handlers.keys()].join(', ')})`,
        },
      };
    try {
      return { ok: true, result: await handler(args) };
    } catch (err) {
      const e = (err ?? {}) as { code?: unknown; message?: unknown };
      return {
        ok: false,
        error: {
          code: typeof e.code === 'string' ? e.code : 'ERR_INTERNAL',
          message: String(e.message ?? err),
        },
      };
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    // net.Server.close() unlinks the path it bound; whatever is there now is someone else's,
    // unless it is still the very socket this server created.
    const created = this.created;
    this.created = null;
    if (!created) return;
    const now = await lstat(this.path).catch(() => null);
    if (now && now.isSocket() && now.dev === created.dev && now.ino === created.ino)
      await unlink(this.path).catch(() => undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Answer once and let go: the connection is destroyed when the client closes its side, or after a
 * second at most (a refused client keeps no descriptor of the daemon's, however it behaves). Not
 * at once: the client's request may still be on its way, and it must read the answer, not EPIPE.
 */
function refuse(s: net.Socket, error: { code: string; message: string }): void {
  s.removeAllListeners('data');
  s.resume();
  s.end(JSON.stringify({ ok: false, error }) + '\n');
  s.once('end', () => s.destroy());
  setTimeout(() => s.destroy(), REFUSED_LINGER_MS).unref();
}

function isListening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** One request to the daemon; errors name the socket and say what to do. */
export async function controlRequest(
  path: string,
  cmd: string,
  args: Record<string, unknown> = {},
  timeoutMs = 10_000,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(
        new IpdeadgateError(
          'ETIMEDOUT',
          `the daemon on ${path} did not answer "${cmd}" within ${timeoutMs} ms`,
        ),
      );
    }, timeoutMs);
    s.setEncoding('utf8');
    s.once('connect', () => s.write(JSON.stringify({ cmd, args }) + '\n'));
    s.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      s.destroy();
      let resp: { ok?: boolean; result?: unknown; error?: { code?: string; message?: string } };
      try {
        resp = JSON.parse(buf.slice(0, nl)) as typeof resp;
      } catch {
        return reject(
          new IpdeadgateError('ERR_BAD_RESPONSE', `the daemon on ${path} sent a response that is not JSON`),
        );
      }
      if (resp.ok) resolve(resp.result);
      else
        reject(
          new IpdeadgateError(resp.error?.code ?? 'ERR_DAEMON', resp.error?.message ?? 'the daemon refused'),
        );
    });
    s.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const hint =
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
          ? `no daemon is running on ${path} (start it with: ipdeadgate daemon, or pass --control PATH)`
          : err.code === 'EACCES'
            ? `permission denied on ${path}: the control socket is root-only; run as root`
            : `cannot reach the daemon on ${path}: ${err.message}`;
      reject(new IpdeadgateError(err.code ?? 'EIO', `${err.code ?? 'EIO'}: ${hint}`));
    });
    s.once('close', () => {
      clearTimeout(timer);
      if (!buf.includes('\n'))
        reject(
          new IpdeadgateError('ECONNRESET', `the daemon on ${path} closed the connection without answering`),
        );
    });
  });
}
