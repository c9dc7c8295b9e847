// BIRD 2 through its control socket (what birdc speaks): read its routes and protocols, and
// disable / enable protocols at runtime. `disable` is BIRD's own runtime switch: it never touches
// bird.conf, it is undone by `enable`, and it is forgotten when BIRD restarts. With the routes
// through each gateway in a protocol of their own (a static protocol per gateway, a BGP session
// per neighbour), disabling that protocol makes BIRD's kernel protocol export the next best route.
//
// The control protocol (BIRD's doc/prog, "Remote control"): the server greets with
// "0001 BIRD x.y ready."; each reply line is "DDDD-text" (more follows), "DDDD text" (the last
// line of the reply) or " text" (continues the previous code). 0xxx is success, 8xxx/9xxx errors,
// 1xxx and 2xxx data.
import * as net from 'node:net';
import { IpdeadgateError } from '../errors';

export class BirdError extends IpdeadgateError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_BIRD', message, options);
  }
}

export interface BirdReplyLine {
  code: number;
  text: string;
}

/** One route of BIRD's tables (`show route`): a prefix can have several, one per protocol. */
export interface BirdRoute {
  prefix: string;
  table: string;
  protocol: string;
  /** The best route for its prefix (the one exported). */
  primary: boolean;
  preference: number;
  gateways: string[];
}

export interface BirdProtocol {
  name: string;
  /** Static, BGP, OSPF, Kernel, Device, Direct, Pipe, ... */
  proto: string;
  table: string;
  /** up, down, start, ... */
  state: string;
  info: string;
}

export class BirdControl {
  constructor(
    readonly socketPath: string,
    private readonly timeoutMs = 10_000,
  ) {}

  /** One command on a fresh connection; resolves with its reply lines; rejects on an error code. */
  command(cmd: string): Promise<BirdReplyLine[]> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(this.socketPath);
      const lines: BirdReplyLine[] = [];
      let buf = '';
      let greeted = false;
      let lastCode = 0;
      let done = false;
      const finish = (err: Error | null) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        sock.destroy();
        if (err) reject(err);
        else resolve(lines);
      };
      const timer = setTimeout(
        () => finish(new BirdError(`bird ${this.socketPath}: '${cmd}' timed out after ${this.timeoutMs} ms`)),
        this.timeoutMs,
      );
      sock.setEncoding('utf8');
      sock.on('error', (err: NodeJS.ErrnoException) =>
        finish(
          new BirdError(
            `bird control socket ${this.socketPath}: ${err.code ?? err.message}` +
              (err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
                ? ' (is bird running? set dgd.owners.bird.socket to its -s path)'
                : ''),
            { cause: err },
          ),
        ),
      );
      sock.on('close', () => finish(new BirdError(`bird ${this.socketPath}: closed during '${cmd}'`)));
      sock.on('data', (chunk: string) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          let code = lastCode;
          let text: string;
          let last = false;
          const m = /^(\d{4})([- ])(.*)$/.exec(line);
          if (m) {
            code = Number(m[1]);
            last = m[2] === ' ';
            text = m[3]!;
          } else text = line.startsWith(' ') ? line.slice(1) : line;
          lastCode = code;
          if (!greeted) {
            if (last && code === 1) {
              greeted = true;
              sock.write(cmd.replace(/\n/g, ' ') + '\n');
            }
            continue;
          }
          lines.push({ code, text });
          if (last) {
            if (code >= 8000) finish(new BirdError(`bird: '${cmd}' failed: ${text} (${code})`));
            else finish(null);
            return;
          }
        }
      });
    });
  }

  /** "BIRD 2.0.12": from `show status`. */
  async version(): Promise<string> {
    const lines = await this.command('show status');
    return lines.find((l) => l.code === 1000)?.text.trim() ?? 'BIRD';
  }

  async protocols(): Promise<BirdProtocol[]> {
    const lines = await this.command('show protocols');
    return lines
      .filter((l) => l.code === 1002)
      .map((l) => l.text.split(/\s+/))
      .filter((f) => f[0] !== 'Name' && f.length >= 4)
      .map((f) => ({
        name: f[0]!,
        proto: f[1]!,
        table: f[2]!,
        state: f[3]!,
        info: f.slice(5).join(' '),
      }));
  }

  /** Every route of every table, primary or not. */
  async routes(): Promise<BirdRoute[]> {
    return parseBirdRoutes(await this.command('show route all'));
  }

  /** Runtime only (never written to bird.conf): the protocol's routes are withdrawn. */
  async disable(protocol: string): Promise<void> {
    checkName(protocol);
    await this.command(`disable "${protocol}"`);
  }

  async enable(protocol: string): Promise<void> {
    checkName(protocol);
    await this.command(`enable "${protocol}"`);
  }
}

function checkName(name: string): void {
  if (!/^[A-Za-z0-9_.:-]+$/.test(name)) throw new BirdError(`"${name}" is not a BIRD protocol name`);
}

/**
 * Parse `show route all` reply lines (1007 for routes and their nexthops, 1008 attributes,
 * 1012 attributes in BIRD 2) into routes. A route line is
 * "198.18.2.0/24 unicast [via_r1 00:17:05.777] * (200)", or a continuation for the same prefix
 * "unicast [via_r2 ...] (100)"; nexthop lines are "via 198.18.1.1 on lan0 [weight 1]".
 */
export function parseBirdRoutes(lines: BirdReplyLine[]): BirdRoute[] {
  const out: BirdRoute[] = [];
  let table = '';
  let prefix = '';
  let current: BirdRoute | null = null;
  for (const { code, text } of lines) {
    if (code !== 1007) continue;
    const t = text.trim();
    const tm = /^Table (\S+):$/.exec(t);
    if (tm) {
      table = tm[1]!;
      continue;
    }
    const via = /^via (\S+)(?: on (\S+))?/.exec(t);
    if (via && current) {
      current.gateways.push(via[1]!);
      continue;
    }
    const rm =
      /^(?:(\S+)\s+)?(?:unicast|blackhole|unreachable|prohibit)\s+\[(\S+)[^\]]*\]\s*(\*)?\s*\((\d+)/.exec(t);
    if (rm) {
      if (rm[1]) prefix = rm[1];
      current = {
        prefix,
        table,
        protocol: rm[2]!,
        primary: rm[3] === '*',
        preference: Number(rm[4]),
        gateways: [],
      };
      // "198.18.2.0/24 unicast [p ...] * (200)\n\tvia ..." or a single-line "... via X on IF".
      const inline = /\bvia (\S+) on \S+/.exec(t.slice(t.indexOf(')')));
      if (inline) current.gateways.push(inline[1]!);
      out.push(current);
    }
  }
  return out;
}
