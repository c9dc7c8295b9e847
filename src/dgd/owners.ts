// Route owners. Every route (and nexthop object) the daemon manages has an owner, known from its
// rtm_protocol: the kernel, the boot scripts, an admin's `ip route`, a DHCP client, router
// advertisements, a network manager — their routes are withdrawn and restored in the kernel — or a
// routing daemon, FRR or BIRD, which owns its routes: it keeps the backups in its own RIB and puts
// back whatever anyone else removes. A routing daemon configured in dgd.owners is told, through its
// own interface, that a gateway is unusable, so it selects and installs its backup itself, and on
// revival that is undone exactly. Each change is journaled (state dir, atomic, fsync) before the
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

const absolutePath = (what: string) =>
  z.string().refine((s) => s.startsWith('/'), { message: `must be an absolute path (${what})` });

/**
 * dgd.owners: the routing daemons to tell about dead gateways, each with what its adapter needs.
 * A routing daemon that is not listed has its routes withdrawn in the kernel like anyone else's
 * (it will put them back: the fight guard stops that after dgd.rewithdraw_limit returns).
 */
export const ownersSchema = z
  .object({
    frr: present(
      z.object({
        vtysh: z.string().min(1).default('vtysh'),
        vty_socket: absolutePath("the directory of FRR's *.vty sockets, vtysh --vty_socket").optional(),
        pathspace: z
          .string()
          .regex(/^[A-Za-z0-9_.-]+$/, 'must be a pathspace name (FRR -N), letters, digits, _ . -')
          .optional(),
      }),
    ),
    bird: present(
      z.object({
        socket: absolutePath("BIRD's control socket, bird -s").default('/run/bird/bird.ctl'),
      }),
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
  dead_gateways: string[];
  applied: string[];
  kept: string[];
  problems: string[];
  last_error: string | null;
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
  }

  /** Daemons whose last telling failed (not reachable, restarting): try again. */
  async retryFailed(reason: string): Promise<void> {
    for (const owner of [...this.errors.keys()]) await this.converge(owner, reason);
  }

  /** The routing daemon that owns routes of this protocol, if it is configured as an adapter. */
  adapterFor(protocol: number | null): RoutingDaemon | null {
    const owner = ownerOfProtocol(protocol);
    return (owner === 'frr' || owner === 'bird') && this.adapters.has(owner) ? owner : null;
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
    for (const [owner, adapter] of this.adapters) {
      if (!adapter.check) continue;
      try {
        const version = await adapter.check();
        this.errors.delete(owner);
        emit(this.log, { event: 'owner_ready', owner, version });
      } catch (err) {
        const message = errorMessage(err);
        this.errors.set(owner, message);
        emit(
          this.log,
          {
            event: 'owner_unreachable',
            owner,
            error: message,
            note: `dead gateways cannot be handed to ${owner} until it answers (checked again at each slow poll of a dead gateway)`,
          },
          'warn',
        );
      }
    }
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

  status(): OwnerStatus[] {
    return [...new Set([...this.adapters.keys(), ...this.dead.keys()])].map((owner) => {
      const o = this.last.get(owner);
      return {
        owner,
        dead_gateways: [...(this.dead.get(owner) ?? [])].sort(),
        applied: o?.applied ?? [],
        kept: o?.kept ?? [],
        problems: o?.problems ?? [],
        last_error: this.errors.get(owner) ?? null,
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
