// FRRouting through its own shell, vtysh: read zebra's RIB (`show ip route json`) and tell zebra
// that some gateways are unusable, so that zebra itself selects its backups and installs them.
//
// The mechanism is zebra's FIB filter, `ip protocol PROTO route-map NAME` (FRR docs, "zebra: FIB
// route-map"): zebra evaluates the route-map for every nexthop of every route of PROTO, and a
// nexthop the map denies is inactive, so the route through it loses the election and the next best
// one (a higher distance, the rest of an ECMP set) is installed instead. The map denies nexthops
// whose address is on a prefix-list of dead gateways. Everything is runtime config only: vtysh is
// never asked to `write`, so nothing reaches frr.conf (unless an operator runs `write` while a
// gateway is dead; docs/host-integration.md says how to see and avoid that).
//
// Measured on Debian 12's FRR 8.4 (see test/sys/frr.test.ts):
// - A change to a prefix-list or route-map already bound takes effect only after zebra's route-map
//   delay timer (5 s by default). Binding a protocol to a *different* map name is applied at once,
//   so each change builds the new filter under the other of two names (IPDEADGATE-A / -B), binds
//   the protocols to it and deletes the old one: one switch, never an unfiltered moment.
// - `ip protocol any route-map` is accepted but triggers no re-evaluation in 8.4 (zebra logs
//   "unknown zebra route type: 31"), so protocols are bound one by one.
// - zebra's route-maps cannot match IPv6 nexthops (`match ipv6 next-hop prefix-list` is bgpd's),
//   so this works for IPv4 gateways only.
import { execFile } from 'node:child_process';
import { isIP } from 'node:net';
import { IpdeadgateError } from '../errors';

export const FRR_FILTER_PREFIX = 'IPDEADGATE';

/**
 * vtysh run by a member of frrvty who is not in group frr (ipdeadgate's own user) cannot read
 * /etc/frr/vtysh.conf (frr:frr 0640 in Debian) and says so, then works: that file only holds
 * vtysh's own settings (integrated config for `write`, users), which ipdeadgate never uses.
 */
const VTYSH_CONF_UNREADABLE = /^% Can't open configuration file \S*vtysh\.conf due to 'Permission denied'/;

export interface VtyshOptions {
  /** The vtysh binary (default "vtysh" on PATH). */
  vtysh?: string;
  /** The directory with the daemons' *.vty sockets (vtysh --vty_socket); default FRR's own. */
  vtySocket?: string | null;
  /** FRR's -N pathspace, for a second FRR instance. */
  pathspace?: string | null;
  /** Per vtysh run (default 10 s). */
  timeoutMs?: number;
}

/** One nexthop of a route in zebra's RIB (`show ip route json`). */
export interface FrrNexthop {
  ip: string | null;
  interfaceName: string | null;
  active: boolean;
  fib: boolean;
}

/** One route entry of zebra's RIB: a prefix can have several (one per protocol/distance). */
export interface FrrRoute {
  prefix: string;
  protocol: string;
  distance: number;
  metric: number;
  selected: boolean;
  installed: boolean;
  nexthops: FrrNexthop[];
}

/**
 * What ipdeadgate has configured in zebra: the gateways on the deny list, the destinations kept
 * (keep_last_route), and the protocols bound to the filter. Empty gateways = nothing configured.
 */
export interface FrrFilter {
  gateways: string[];
  keep: string[];
  protocols: string[];
}

export interface FrrFilterState extends FrrFilter {
  /** The current map name (IPDEADGATE-A or -B), or null when there is none. */
  name: string | null;
  /** `ip protocol` bindings to maps that are not ours: protocol -> map name. */
  foreign: Record<string, string>;
  /** Our config objects that exist, as their commands ("route-map IPDEADGATE-A", ...). */
  objects: string[];
}

export class FrrError extends IpdeadgateError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_FRR', message, options);
  }
}

export class Vtysh {
  readonly binary: string;
  private readonly base: string[];
  private readonly timeoutMs: number;

  constructor(opts: VtyshOptions = {}) {
    this.binary = opts.vtysh ?? 'vtysh';
    this.base = [];
    if (opts.vtySocket) this.base.push('--vty_socket', opts.vtySocket);
    if (opts.pathspace) this.base.push('-N', opts.pathspace);
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  /**
   * Run commands in one vtysh session (each its own -c, in order); resolves with the output.
   * vtysh reports a failed command with a "% ..." line and a non-zero exit.
   */
  run(commands: string[], opts: { daemon?: string } = {}): Promise<string> {
    const args = [...this.base];
    if (opts.daemon) args.push('-d', opts.daemon);
    for (const c of commands) args.push('-c', c);
    return new Promise((resolve, reject) => {
      execFile(
        this.binary,
        args,
        { timeout: this.timeoutMs, maxBuffer: 64 * 1024 * 1024 },
        (err, stdout, stderr) => {
          const out = String(stdout);
          const errLines = (out + '\n' + String(stderr))
            .split('\n')
            .filter((l) => !VTYSH_CONF_UNREADABLE.test(l))
            .filter((l) => /^%/.test(l.trim()) || /failed to connect|not running/i.test(l));
          if (err) {
            const e = err as NodeJS.ErrnoException & { killed?: boolean };
            const why =
              e.code === 'ENOENT'
                ? `${this.binary} not found (install frr, or set the vtysh path in dgd.owners.frr)`
                : e.killed
                  ? `timed out after ${this.timeoutMs} ms`
                  : errLines.join('; ') || String(stderr).trim() || e.message;
            reject(
              new FrrError(`vtysh ${commands.map((c) => `-c '${c}'`).join(' ')}: ${why}`, { cause: err }),
            );
            return;
          }
          if (errLines.some((l) => l.trim().startsWith('%'))) {
            reject(new FrrError(`vtysh ${commands.join(' / ')}: ${errLines.join('; ')}`));
            return;
          }
          resolve(out);
        },
      );
    });
  }

  /** "FRRouting 8.4.4 (host)": the first line of zebra's `show version`. */
  async version(): Promise<string> {
    const out = await this.run(['show version'], { daemon: 'zebra' });
    return (
      out
        .split('\n')
        .find((l) => /\S/.test(l))
        ?.trim() ?? ''
    );
  }

  /** zebra's IPv4 RIB: every route entry, selected or not. */
  async ipv4Routes(): Promise<FrrRoute[]> {
    const out = await this.run(['show ip route json'], { daemon: 'zebra' });
    return parseRouteJson(out);
  }

  /** The running config of zebra (where the filter lives). */
  runningConfig(): Promise<string> {
    return this.run(['show running-config'], { daemon: 'zebra' });
  }

  /** What ipdeadgate has configured in zebra now, read back from the running config. */
  async filterState(): Promise<FrrFilterState> {
    return parseFilterState(await this.runningConfig());
  }

  /** The default VRF's BGP neighbours; [] when bgpd does not run. */
  async bgpNeighbors(): Promise<BgpNeighbor[]> {
    let config: string;
    try {
      config = await this.run(['show running-config'], { daemon: 'bgpd' });
    } catch (err) {
      if (/not running|failed to connect/i.test((err as Error).message)) return [];
      throw err;
    }
    return parseBgpNeighbors(config);
  }

  /**
   * `neighbor ADDRESS shutdown` (or its `no`) in `router bgp ASN`, runtime only: bgpd drops the
   * session and every path learned over it, and selects the next best paths; `no` lets the session
   * come back.
   */
  async setBgpShutdown(asn: string, address: string, shutdown: boolean): Promise<void> {
    if (!/^\d+$/.test(asn) || isIP(address) === 0)
      throw new FrrError(`bad BGP neighbour ${address} in AS ${asn}`);
    await this.run(
      ['configure terminal', `router bgp ${asn}`, `${shutdown ? '' : 'no '}neighbor ${address} shutdown`],
      { daemon: 'bgpd' },
    );
  }

  /**
   * Make zebra's filter exactly `want` (runtime config only, never written). Returns the state
   * read back afterwards. Refuses to bind a protocol that already has another route-map.
   */
  async applyFilter(want: FrrFilter): Promise<FrrFilterState> {
    const now = await this.filterState();
    const commands = filterCommands(now, want);
    if (commands.length > 0) await this.run(['configure terminal', ...commands], { daemon: 'zebra' });
    return this.filterState();
  }
}

/** A BGP neighbour of the default VRF's `router bgp`, from the running config. */
export interface BgpNeighbor {
  asn: string;
  address: string;
  /** `neighbor ADDRESS shutdown` is configured. */
  shutdown: boolean;
}

/**
 * The default VRF's BGP neighbours (addresses only; interface-named unnumbered neighbours and
 * peer-group names are not gateways) from the running config of all daemons.
 */
export function parseBgpNeighbors(config: string): BgpNeighbor[] {
  const out = new Map<string, BgpNeighbor>();
  let asn: string | null = null;
  for (const line of config.split('\n')) {
    const start = /^router bgp (\d+)(\s+vrf\s+\S+)?\s*$/.exec(line);
    if (start) {
      asn = start[2] ? null : start[1]!;
      continue;
    }
    if (/^\S/.test(line)) {
      asn = null;
      continue;
    }
    if (asn === null) continue;
    const m = /^ neighbor (\S+) (.*)$/.exec(line);
    if (!m || isIP(m[1]!) === 0) continue;
    const n = out.get(m[1]!) ?? { asn, address: m[1]!, shutdown: false };
    if (/^shutdown\b/.test(m[2]!)) n.shutdown = true;
    out.set(m[1]!, n);
  }
  return [...out.values()];
}

/** Parse `show ip route json`: { "prefix": [ {route entry}, ... ] }. */
export function parseRouteJson(text: string): FrrRoute[] {
  let data: unknown;
  try {
    data = JSON.parse(text.trim() || '{}');
  } catch {
    throw new FrrError(`vtysh 'show ip route json' did not print JSON: ${text.slice(0, 200)}`);
  }
  const out: FrrRoute[] = [];
  for (const [prefix, entries] of Object.entries(data as Record<string, unknown>)) {
    if (!Array.isArray(entries)) continue;
    for (const e of entries as Record<string, unknown>[]) {
      const hops = Array.isArray(e.nexthops) ? (e.nexthops as Record<string, unknown>[]) : [];
      out.push({
        prefix: typeof e.prefix === 'string' ? e.prefix : prefix,
        protocol: String(e.protocol ?? 'unknown'),
        distance: Number(e.distance ?? 0),
        metric: Number(e.metric ?? 0),
        selected: e.selected === true,
        installed: e.installed === true,
        nexthops: hops.map((h) => ({
          ip: typeof h.ip === 'string' ? h.ip : null,
          interfaceName: typeof h.interfaceName === 'string' ? h.interfaceName : null,
          active: h.active === true,
          fib: h.fib === true,
        })),
      });
    }
  }
  return out;
}

const NAME_RE = new RegExp(`^${FRR_FILTER_PREFIX}-([AB])$`);
const LIST_RE = new RegExp(`^(${FRR_FILTER_PREFIX}-[AB])-(DEAD|KEEP)$`);

/** Read ipdeadgate's filter (and foreign `ip protocol` bindings) from zebra's running config. */
export function parseFilterState(config: string): FrrFilterState {
  const lists: Record<string, { dead: string[]; keep: string[] }> = {};
  const objects = new Set<string>();
  const bound: Record<string, string> = {};
  for (const raw of config.split('\n')) {
    const line = raw.trim();
    let m = /^ip prefix-list (\S+) seq \d+ permit (\S+)$/.exec(line);
    const lm = m ? LIST_RE.exec(m[1]!) : null;
    if (m && lm) {
      const l = (lists[lm[1]!] ??= { dead: [], keep: [] });
      if (lm[2] === 'DEAD') l.dead.push(m[2]!.replace(/\/32$/, ''));
      else l.keep.push(m[2]!);
      objects.add(`ip prefix-list ${m[1]!}`);
      continue;
    }
    m = /^route-map (\S+) (permit|deny) \d+$/.exec(line);
    if (m && NAME_RE.test(m[1]!)) {
      objects.add(`route-map ${m[1]!}`);
      continue;
    }
    m = /^ip protocol (\S+) route-map (\S+)$/.exec(line);
    if (m) bound[m[1]!] = m[2]!;
  }
  const ours = Object.entries(bound).filter(([, n]) => NAME_RE.test(n));
  const names = [...objects].map((o) => /(IPDEADGATE-[AB])/.exec(o)![1]!);
  const name = ours[0]?.[1] ?? names[0] ?? null;
  const foreign: Record<string, string> = {};
  for (const [p, n] of Object.entries(bound)) if (!NAME_RE.test(n)) foreign[p] = n;
  const l = name ? lists[name] : undefined;
  return {
    name,
    gateways: l?.dead ?? [],
    keep: l?.keep ?? [],
    protocols: ours.map(([p]) => p).sort(),
    foreign,
    objects: [...objects].sort(),
  };
}

/**
 * The zebra config commands that turn filter `now` into `want`: build the filter under the other
 * name, switch every wanted protocol to it (applied at once), unbind the others, delete the old.
 */
export function filterCommands(now: FrrFilterState, want: FrrFilter): string[] {
  for (const p of want.protocols)
    if (now.foreign[p])
      throw new FrrError(
        `zebra already filters ${p} routes with route-map ${now.foreign[p]} (ip protocol ${p} route-map ${now.foreign[p]}); ` +
          `ipdeadgate cannot add its own: fail over ${p} routes another way or remove that binding`,
      );
  const empty = want.gateways.length === 0 || want.protocols.length === 0;
  const onlyCurrent = now.objects.every((o) => now.name !== null && o.includes(now.name));
  if (empty && now.objects.length === 0 && now.protocols.length === 0) return [];
  if (
    !empty &&
    now.name !== null &&
    onlyCurrent &&
    sameSet(now.gateways, want.gateways) &&
    sameSet(now.keep, want.keep) &&
    sameSet(now.protocols, want.protocols)
  )
    return [];
  const cmds: string[] = [];
  const drop = (name: string | null) => {
    for (const o of now.objects)
      if (name === null || o.endsWith(name) || o.includes(`${name}-`)) cmds.push(`no ${o}`);
  };
  if (empty) {
    for (const p of now.protocols) cmds.push(`no ip protocol ${p} route-map ${now.name}`);
    drop(null);
    return cmds;
  }
  const next = `${FRR_FILTER_PREFIX}-${now.name === `${FRR_FILTER_PREFIX}-A` ? 'B' : 'A'}`;
  drop(next); // leftovers of an interrupted change under the name about to be built
  want.gateways.forEach((g, i) => cmds.push(`ip prefix-list ${next}-DEAD seq ${(i + 1) * 5} permit ${g}/32`));
  want.keep.forEach((k, i) => cmds.push(`ip prefix-list ${next}-KEEP seq ${(i + 1) * 5} permit ${k}`));
  if (want.keep.length > 0)
    cmds.push(`route-map ${next} permit 5`, `match ip address prefix-list ${next}-KEEP`, 'exit');
  cmds.push(
    `route-map ${next} deny 10`,
    'description ipdeadgate: nexthops through dead gateways; runtime only, do not save',
    `match ip next-hop prefix-list ${next}-DEAD`,
    'exit',
    `route-map ${next} permit 20`,
    'exit',
  );
  for (const p of want.protocols) cmds.push(`ip protocol ${p} route-map ${next}`);
  for (const p of now.protocols)
    if (!want.protocols.includes(p)) cmds.push(`no ip protocol ${p} route-map ${now.name}`);
  if (now.name && now.name !== next) drop(now.name);
  return cmds;
}

function sameSet(a: string[], b: string[]): boolean {
  return a.length === b.length && [...a].sort().join(',') === [...b].sort().join(',');
}
