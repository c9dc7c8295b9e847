// The control socket: a Unix stream socket, mode 0600, for root and the daemon's own user (the
// peer's uid is checked with SO_PEERCRED); with a control group (the packaged unit's
// --control-group ipdeadgate), mode 0660 in that group, and the kernel's check of the socket
// file's permission at connect() is what admits the group's members. Protocol: one JSON request per line, one JSON response per line:
//   -> {"cmd":"status"}            <- {"ok":true,"result":{...}}
//   -> {"cmd":"nope"}              <- {"ok":false,"error":{"code":"ERR_UNKNOWN_COMMAND","message":"..."}}
import { chmod, chown, stat, unlink } from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { IpdeadgateError } from '../errors';

export type ControlHandler = (args: Record<string, unknown>) => Promise<unknown>;

/** How the server learns who is on the other end (SO_PEERCRED); injected so tests can fake it. */
export type PeerUid = (socket: net.Socket) => number | null;

const MAX_REQUEST = 64 * 1024;

export class ControlServer {
  private readonly handlers = new Map<string, ControlHandler>();
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private closed = false;

  constructor(
    readonly path: string,
    private readonly peerUid: PeerUid,
    private readonly allowedUids: ReadonlySet<number> = new Set([0, process.getuid?.() ?? 0]),
    /** The gid whose members may use the socket too (mode 0660), or null for 0600. */
    private readonly group: number | null = null,
  ) {}

  handle(cmd: string, fn: ControlHandler): this {
    this.handlers.set(cmd, fn);
    return this;
  }

  /** Listen; a stale socket file is replaced, a live one (another daemon) is an error. */
  async listen(): Promise<void> {
    if (await isListening(this.path))
      throw new IpdeadgateError(
        'ERR_CONTROL_IN_USE',
        `another ipdeadgate is already listening on ${this.path}`,
      );
    await unlink(this.path).catch(() => undefined);
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
    const uid = this.peerUid(s);
    // With a control group, whoever could connect passed the kernel's permission check on the socket.
    if (this.group === null && (uid === null || !this.allowedUids.has(uid))) {
      s.end(
        JSON.stringify({
          ok: false,
          error: {
            code: 'EACCES',
            message: `the control socket is root-only (your uid is ${uid ?? 'unknown'}); run the command as root`,
          },
        }) + '\n',
      );
      return;
    }
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_REQUEST) {
        s.end(
          JSON.stringify({ ok: false, error: { code: 'ERR_TOO_LARGE', message: 'request too large' } }) +
            '\n',
        );
        return;
      }
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        void this.dispatch(line).then((resp) => {
          if (!s.destroyed) s.write(JSON.stringify(resp) + '\n');
        });
      }
    });
  }

  private async dispatch(line: string): Promise<unknown> {
    let req: { cmd?: unknown; args?: unknown };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      return { ok: false, error: { code: 'ERR_BAD_REQUEST', message: 'request is not JSON' } };
    }
    const cmd = typeof req.cmd === 'string' ? req.cmd : '';
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
      const args = req.args && typeof req.args === 'object' ? (req.args as Record<string, unknown>) : {};
      return { ok: true, result: await handler(args) };
    } catch (err) {
      const e = err as { code?: unknown; message?: unknown };
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
    await unlink(this.path).catch(() => undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
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
