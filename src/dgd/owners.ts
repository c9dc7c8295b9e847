// Route owners. Every route (and nexthop object) the daemon manages has an owner, known from its
// rtm_protocol: the kernel, the boot scripts, an admin's `ip route`, a DHCP client, router
// advertisements, a network manager — their routes are withdrawn and restored in the kernel — or a
// routing daemon, FRR or BIRD, which owns its routes: it keeps the backups in its own RIB and puts
// back whatever anyone else removes. A routing daemon is told, through its own interface, that a
// gateway is unusable, so it selects and installs its backup itself, and on revival that is undone
// exactly. FRR and BIRD are found without configuration: unless dgd.owners says `false`, an adapter
// with the daemon's default paths is used once its control interface answers; while it does not
// and the kernel holds its routes, those routes are unprotected, and status and a warning say so. Each change is journaled (state dir, atomic, fsync) before the
// routing daemon is told, and undone on `off`, SIGTERM and, after a crash, at the next start.
import { emit } from './events';
import * as path from 'node:path';
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../util/atomic';
import type { DurableWriter } from '../util/durable';
import { z } from 'zod';
import { IpdeadgateError, errorMessage } from '../errors';
import { protocolName } from '../sys/rtnl';
import type { EventLog } from '../util/eventlog';

/**
 * FRR's protocols: zebra installs with its own numbers (zebra/rt_netlink.h: RTPROT_ZEBRA 11 for
 * nexthop objects, BGP 186, ISIS 187, OSPF 188, RIP 189, RIPNG 190, NHRP 191, EIGRP 192, LDP 193,
 * SHARP 194, PBR 195, ZSTATIC 196, OPENFABRIC 197, SRTE 198), all owned by one routing daemon.
 * Every other protocol's owner is its iproute2 name (rt_protos: BIRD 2 uses bird, 12;
 * systemd-networkd and NetworkManager use static, dhcp and ra like everyone else).
 */
const isFrrProtocol = (p: number): boolean => p === 11 || (p >= 186 && p <= 198);

/** An optional section where `frr:` with nothing after it (YAML null) means "with the defaults". */
function present<T extends z.ZodRawShape>(section: z.ZodObject<T>) {
  return z.preprocess((v) => (v === null ? {} : v), section.strict().optional());
}

/** BIRD's control socket as Debian's bird2 runs it. */
export const BIRD_DEFAULT_SOCKET = '/run/bird/bird.ctl';

const absolutePath = (what: string) =>
  z.string().refine((s) => s.startsWith('/'), { message: `must be an absolute path (${what})` });

/**
 * dgd.owners: the routing daemons to tell about dead gateways, each with what its adapter needs.
 * Absent: found at its default paths (used once it answers). `false`: never told; its routes are
 * withdrawn in the kernel like anyone else's (it will put them back: the fight guard stops that
 * after dgd.rewithdraw_limit returns).
 */
function falseOr<T extends z.ZodTypeAny>(section: T, daemon: string) {
  return z.union([z.literal(false), section], {
    errorMap: (issue, ctx) => {
      if (issue.code !== 'invalid_union') return { message: ctx.defaultError };
      // A section with a bad key: name that key's problem, not the union's.
      const inner = issue.unionErrors.flatMap((e) => e.issues).find((i) => i.path.length > issue.path.length);
      if (inner) return { message: `${inner.path.slice(issue.path.length).join('.')}: ${inner.message}` };
      return {
        message: `must be false (never tell ${daemon}) or a section (\`{}\` or its keys); absent: ${daemon} is found at its default paths`,
      };
    },
  });
}

export const ownersSchema = z
  .object({
    frr: falseOr(
      present(
        z.object({
          vtysh: z.string().min(1).default('vtysh'),
          vty_socket: absolutePath("the directory of FRR's *.vty sockets, vtysh --vty_socket").optional(),
          pathspace: z
            .string()
            .regex(/^[A-Za-z0-9_.-]+$/, 'must be a pathspace name (FRR -N), letters, digits, _ . -')
            .optional(),
        }),
      ),
      'FRR',
    ),
    bird: falseOr(
      present(
        z.object({
          socket: absolutePath("BIRD's control socket, bird -s").default(BIRD_DEFAULT_SOCKET),
        }),
      ),
      'BIRD',
    ),
  })
  .strict();

export type OwnersConfig = z.infer<typeof ownersSchema>;

/** The routing daemons that ipdeadgate can tell about dead gateways. */
export type RoutingDaemon = 'frr' | 'bird';

/** The owner of a route or nexthop object by its rtm_protocol / nh_protocol. */
export function ownerOfProtocol(protocol: number | undefined | null): string {
  if (protocol === undefined || protocol === null) return 'unspec';
  if (isFrrProtocol(protocol)) return 'frr';
  const name = protocolName(protocol);
  return name === String(protocol) ? `proto-${protocol}` : name;
}

/** A route's protocol, when the facade reported it (KernelRoute carries it through untyped). */
export function protocolOf(route: object): number | null {
  const p = (route as { protocol?: unknown }).protocol;
  return typeof p === 'number' ? p : null;
}

/** What an adapter reports after telling its daemon: for the journal, events and status. */
export interface OwnerOutcome {
  /** JSON state the adapter needs to undo exactly what it did (journaled). */
  state: unknown;
  /** The daemon was changed by this call. */
  changed: boolean;
  /** What is configured in the daemon now, for status ("route-map IPDEADGATE-A on static", ...). */
  applied: string[];
  /** Destinations left alone because they have no other route (keep_last_route). */
  kept: string[];
  /** Why some of the dead gateways could not be handed to the daemon. */
  problems: string[];
}

/**
 * A routing daemon's adapter (src/dgd/owner-frr.ts, owner-bird.ts): converge the daemon to treat
 * exactly `dead` (gateway addresses) as unusable. `persist(state)` is called with the state to
 * be reached before the daemon is changed (the journal comes first); `previous` is the last state
 * persisted (after a restart: from the journal).
 */
export interface ConvergeOptions {
  keepLastRoute: boolean;
  previous: unknown;
  persist: (state: unknown) => Promise<void>;
}

export interface OwnerAdapter {
  readonly owner: RoutingDaemon;
  /**
   * Found, not configured (dgd.owners does not name it): used only once check() has answered, and
   * while it has not, its routes are reported as unprotected (with how to reach it) instead.
   */
  readonly auto?: boolean;
  /** A cheap question to the daemon (its version): can it be told when a gateway dies? */
  check?(): Promise<string>;
  converge(dead: string[], opts: ConvergeOptions): Promise<OwnerOutcome>;
}

/** The owner journal: per routing daemon, the dead gateways it was told of and its adapter's state. */
export interface OwnerJournal {
  version: 1;
  owners: Partial<Record<RoutingDaemon, { dead: string[]; state: unknown; at: string }>>;
}

export interface OwnerStore {
  load(): Promise<OwnerJournal | null>;
  save(j: OwnerJournal): Promise<void>;
}

const OWNER_JOURNAL = 'route-owners.json';

/** The owner journal in the state directory, beside the journal of withdrawn routes. */
export class FileOwnerStore implements OwnerStore {
  /** With a writer, a failed save is logged and retried instead of thrown (src/util/durable.ts). */
  constructor(
    readonly dir: string,
    private readonly writer?: DurableWriter,
  ) {}

  get file(): string {
    return path.join(this.dir, OWNER_JOURNAL);
  }

  async load(): Promise<OwnerJournal | null> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    let data: OwnerJournal;
    try {
      data = JSON.parse(text) as OwnerJournal;
    } catch {
      throw new IpdeadgateError('ERR_JOURNAL', `${this.file} is not valid JSON; was it edited?`);
    }
    if (data?.version !== 1 || typeof data.owners !== 'object' || data.owners === null)
      throw new IpdeadgateError(
        'ERR_JOURNAL',
        `${this.file} is not an owner journal (version 1); move it away to start fresh`,
      );
    return data;
  }

  async save(j: OwnerJournal): Promise<void> {
    const text = JSON.stringify(j, null, 1) + '\n';
    if (this.writer) await this.writer.write(this.file, () => writeFileAtomic(this.file, text));
    else await writeFileAtomic(this.file, text);
  }
}

export class MemoryOwnerStore implements OwnerStore {
  journal: OwnerJournal | null = null;
  async load(): Promise<OwnerJournal | null> {
    return this.journal ? structuredClone(this.journal) : null;
  }
  async save(j: OwnerJournal): Promise<void> {
    this.journal = structuredClone(j);
  }
}

/** Owners log through detection's event port. */
export type OwnerEvents = EventLog;

export interface OwnerStatus {
  owner: RoutingDaemon;
  /** "configured" (dgd.owners names it) or "found" (the default adapter, answering). */
  mode: 'configured' | 'found' | 'unreachable';
  dead_gateways: string[];
  applied: string[];
  kept: string[];
  problems: string[];
  last_error: string | null;
  /**
   * Routes of this daemon in the managed tables that no one can fail over: its control interface
   * does not answer, so it cannot be told, and a withdrawal in the kernel would be undone by it.
   */
  unprotected_routes: string[];
  /** Why, and what to set, when unprotected_routes is not empty. */
  hint: string | null;
}

/** How long a found daemon that does not answer is left before it is asked again. */
const RECHECK_MS = 10_000;

/** What an operator can do when a routing daemon's control interface does not answer. */
export function reachHint(owner: RoutingDaemon): string {
  return owner === 'frr'
    ? "ipdeadgate runs vtysh to tell zebra: its user needs FRR's frrvty group (the packaged unit joins it " +
        'at each start: `systemctl restart ipdeadgate` after installing FRR), FRR must be running, and an FRR ' +
        'with its sockets elsewhere needs dgd.owners.frr.vty_socket or .pathspace; ' +
        '`dgd.owners.frr: false` withdraws its routes in the kernel instead (zebra puts them back)'
    : `ipdeadgate connects to BIRD's control socket (${BIRD_DEFAULT_SOCKET}): its user needs the bird group ` +
        '(the packaged unit joins it at each start: `systemctl restart ipdeadgate` after installing BIRD), ' +
        'BIRD must be running, and a socket elsewhere needs dgd.owners.bird.socket; ' +
        '`dgd.owners.bird: false` withdraws its routes in the kernel instead';
}

/**
 * The routing daemons' side of detection: which dead gateways each configured daemon has been
 * told of, converging it on every change, journaled first. One call at a time (the engine
 * serialises route changes).
 */
export class RouteOwners {
  private readonly dead = new Map<RoutingDaemon, Set<string>>();
  private readonly states = new Map<RoutingDaemon, unknown>();
  private readonly last = new Map<RoutingDaemon, OwnerOutcome>();
  private readonly errors = new Map<RoutingDaemon, string>();
  /** Found (auto) adapters whose daemon has answered: only these are used. */
  private readonly answered = new Set<RoutingDaemon>();
  /** When each found daemon was last asked, and whether a question is under way. */
  private readonly lastCheck = new Map<RoutingDaemon, number>();
  private readonly checking = new Set<RoutingDaemon>();
  private loaded: OwnerJournal | null = null;

  constructor(
    private adapters: Map<RoutingDaemon, OwnerAdapter>,
    private readonly store: OwnerStore,
    private readonly log: OwnerEvents,
    private keepLastRoute: boolean,
  ) {}

  /** Reconfigure (SIGHUP): adapters may come and go; the journal keeps what was done. */
  async configure(adapters: Map<RoutingDaemon, OwnerAdapter>, keepLastRoute: boolean): Promise<void> {
    // A daemon taken out of dgd.owners is put back as it was first, while its adapter is known.
    for (const owner of this.adapters.keys())
      if (!adapters.has(owner) && (this.dead.get(owner)?.size ?? 0) > 0) {
        this.dead.set(owner, new Set());
        await this.converge(owner, 'no longer in dgd.owners');
      }
    this.adapters = adapters;
    this.keepLastRoute = keepLastRoute;
    this.answered.clear();
    this.lastCheck.clear();
    await this.checkAll();
  }

  /** Daemons whose last telling failed (not reachable, restarting): try again. */
  async retryFailed(reason: string): Promise<void> {
    for (const owner of [...this.errors.keys()]) if (this.usable(owner)) await this.converge(owner, reason);
  }

  /** Configured, or found and answering. */
  private usable(owner: RoutingDaemon): boolean {
    const a = this.adapters.get(owner);
    return a !== undefined && (!a.auto || this.answered.has(owner));
  }

  /** The routing daemon that owns routes of this protocol, if its adapter is in use. */
  adapterFor(protocol: number | null): RoutingDaemon | null {
    const owner = ownerOfProtocol(protocol);
    return (owner === 'frr' || owner === 'bird') && this.usable(owner) ? owner : null;
  }

  /**
   * The routes (of `routes`) that a routing daemon owns and that no adapter can fail over: its
   * adapter is found but its daemon does not answer, or configured and its last telling failed.
   */
  unprotected<R extends { protocol?: number }>(routes: readonly R[]): Map<RoutingDaemon, R[]> {
    const out = new Map<RoutingDaemon, R[]>();
    for (const r of routes) {
      const owner = ownerOfProtocol(r.protocol ?? null);
      if (owner !== 'frr' && owner !== 'bird') continue;
      const a = this.adapters.get(owner);
      if (!a || (this.usable(owner) && !this.errors.has(owner))) continue;
      out.set(owner, [...(out.get(owner) ?? []), r]);
    }
    return out;
  }

  /**
   * Found daemons that own routes but have not answered are asked again (at most every 10 s; a
   * routing daemon usually starts after ipdeadgate, which starts before the network). Resolves
   * with the daemons that answered now.
   */
  async recheck(owners: Iterable<RoutingDaemon>, now = Date.now()): Promise<RoutingDaemon[]> {
    const now_answered: RoutingDaemon[] = [];
    for (const owner of owners) {
      const a = this.adapters.get(owner);
      if (!a?.auto || this.answered.has(owner) || this.checking.has(owner)) continue;
      if (now - (this.lastCheck.get(owner) ?? -Infinity) < RECHECK_MS) continue;
      if (await this.checkOne(owner, a)) now_answered.push(owner);
    }
    return now_answered;
  }

  private async checkOne(owner: RoutingDaemon, adapter: OwnerAdapter): Promise<boolean> {
    if (!adapter.check) {
      if (adapter.auto) this.answered.add(owner);
      return true;
    }
    this.checking.add(owner);
    this.lastCheck.set(owner, Date.now());
    try {
      const version = await adapter.check();
      this.errors.delete(owner);
      if (adapter.auto) this.answered.add(owner);
      emit(this.log, { event: 'owner_ready', owner, version, mode: adapter.auto ? 'found' : 'configured' });
      return true;
    } catch (err) {
      const message = errorMessage(err);
      this.errors.set(owner, message);
      // A found daemon that does not answer is often simply not installed: that is worth a warning
      // only where it owns routes (routes_unprotected), not on every host without FRR.
      if (!adapter.auto)
        emit(
          this.log,
          {
            event: 'owner_unreachable',
            owner,
            error: message,
            note: `dead gateways cannot be handed to ${owner} until it answers (checked again at each slow poll of a dead gateway)`,
            hint: reachHint(owner),
          },
          'warn',
        );
      return false;
    } finally {
      this.checking.delete(owner);
    }
  }

  /** Read the journal (start). Returns the dead gateways (keys) it names, per daemon. */
  async load(): Promise<Map<RoutingDaemon, string[]>> {
    this.loaded = await this.store.load();
    const out = new Map<RoutingDaemon, string[]>();
    for (const [owner, e] of Object.entries(this.loaded?.owners ?? {}) as [
      RoutingDaemon,
      { dead: string[]; state: unknown },
    ][]) {
      this.dead.set(owner, new Set(e.dead));
      this.states.set(owner, e.state);
      if (e.dead.length > 0) out.set(owner, [...e.dead]);
    }
    return out;
  }

  /**
   * At start: ask each configured daemon a cheap question, so that a wrong socket path or a
   * missing group is an event now (owner_unreachable), not a surprise at the first death.
   */
  async checkAll(): Promise<void> {
    for (const [owner, adapter] of this.adapters) await this.checkOne(owner, adapter);
  }

  /** After a restart: make each daemon match the journal again (it may have restarted too). */
  async reconcile(): Promise<void> {
    for (const owner of new Set([...this.dead.keys(), ...this.states.keys()])) {
      if (!this.adapters.has(owner)) {
        emit(
          this.log,
          {
            event: 'owner_unconfigured',
            owner,
            dead_gateways: [...(this.dead.get(owner) ?? [])],
            hint: `the journal says ${owner} was told of dead gateways, but dgd.owners.${owner} is no longer configured; undo it by hand (docs/host-integration.md) or configure it again`,
          },
          'warn',
        );
        continue;
      }
      await this.converge(owner, 'journal reconciled at start');
    }
  }

  /** The routing daemon `owner` must treat `gateway` (address%ifname) as unusable. */
  async markDead(owner: RoutingDaemon, gateway: string, reason: string): Promise<OwnerOutcome | null> {
    const set = this.dead.get(owner) ?? new Set<string>();
    this.dead.set(owner, set);
    set.add(gateway);
    // Converge even when already told: routes may have appeared since (the adapter is idempotent).
    return this.converge(owner, reason);
  }

  /** The gateway revived: every daemon told of it is told it is usable again. */
  async markAlive(gateway: string, reason: string): Promise<void> {
    for (const [owner, set] of this.dead) {
      if (!set.delete(gateway)) continue;
      await this.converge(owner, reason);
    }
  }

  /** Is any daemon holding this gateway as dead? */
  holds(gateway: string): RoutingDaemon[] {
    return [...this.dead].filter(([, s]) => s.has(gateway)).map(([o]) => o);
  }

  /** off / SIGTERM: every daemon back to as it was. */
  async restoreAll(reason: string): Promise<void> {
    for (const owner of [...this.dead.keys()]) {
      this.dead.set(owner, new Set());
      if (!this.adapters.has(owner)) continue;
      await this.converge(owner, reason);
    }
  }

  private async converge(owner: RoutingDaemon, reason: string): Promise<OwnerOutcome | null> {
    const adapter = this.adapters.get(owner);
    if (!adapter) return null;
    const dead = [...(this.dead.get(owner) ?? [])].sort();
    const addresses = [...new Set(dead.map(addressOfKey))].sort();
    try {
      const outcome = await adapter.converge(addresses, {
        keepLastRoute: this.keepLastRoute,
        previous: this.states.get(owner) ?? null,
        persist: async (state) => {
          this.states.set(owner, state);
          await this.save();
        },
      });
      this.states.set(owner, outcome.state);
      this.last.set(owner, outcome);
      this.errors.delete(owner);
      if (dead.length === 0 && isEmptyState(outcome.state)) {
        this.dead.delete(owner);
        this.states.delete(owner);
      }
      await this.save();
      if (outcome.changed)
        emit(this.log, {
          event: 'owner_told',
          owner,
          dead_gateways: dead,
          reason,
          applied: outcome.applied,
          kept: outcome.kept,
        });
      for (const p of outcome.problems) emit(this.log, { event: 'owner_problem', owner, problem: p }, 'warn');
      return outcome;
    } catch (err) {
      const message = errorMessage(err);
      this.errors.set(owner, message);
      emit(
        this.log,
        { event: 'error', during: `telling ${owner}`, owner, dead_gateways: dead, error: message },
        'error',
      );
      return null;
    }
  }

  private async save(): Promise<void> {
    const owners: OwnerJournal['owners'] = {};
    const now = new Date().toISOString();
    for (const owner of new Set([...this.dead.keys(), ...this.states.keys()])) {
      const dead = [...(this.dead.get(owner) ?? [])].sort();
      const state = this.states.get(owner) ?? null;
      if (dead.length === 0 && isEmptyState(state)) continue;
      owners[owner] = { dead, state, at: now };
    }
    await this.store.save({ version: 1, owners });
  }

  /**
   * Each daemon in use or holding dead gateways, and each found one that does not answer while
   * it owns routes (`routes`: the managed tables now, described by `describe`).
   */
  status<R extends { protocol?: number }>(
    routes: readonly R[] = [],
    describe: (r: R) => string = String,
  ): OwnerStatus[] {
    const unprotected = this.unprotected(routes);
    const owners = new Set([...this.adapters.keys(), ...this.dead.keys()]);
    return [...owners]
      .filter((owner) => this.usable(owner) || this.dead.has(owner) || unprotected.has(owner))
      .map((owner) => {
        const o = this.last.get(owner);
        const left = (unprotected.get(owner) ?? []).map(describe);
        const a = this.adapters.get(owner);
        return {
          owner,
          mode: !a?.auto ? 'configured' : this.answered.has(owner) ? 'found' : 'unreachable',
          dead_gateways: [...(this.dead.get(owner) ?? [])].sort(),
          applied: o?.applied ?? [],
          kept: o?.kept ?? [],
          problems: o?.problems ?? [],
          last_error: this.errors.get(owner) ?? null,
          unprotected_routes: left,
          hint: left.length > 0 ? reachHint(owner) : null,
        };
      });
  }
}

/** "198.18.1.1%lan0" -> "198.18.1.1" (the owner journal's gateway keys name the interface). */
export function addressOfKey(key: string): string {
  const i = key.lastIndexOf('%');
  return i < 0 ? key : key.slice(0, i);
}

/** An adapter state that stands for "nothing configured in the daemon". */
function isEmptyState(state: unknown): boolean {
  if (state === null || state === undefined) return true;
  if (typeof state !== 'object') return false;
  return Object.values(state as Record<string, unknown>).every(
    (v) =>
      v === null ||
      (Array.isArray(v) && v.length === 0) ||
      (typeof v === 'object' && Object.keys(v).length === 0),
  );
}
