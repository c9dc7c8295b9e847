// Conntrack follows the routes. On a gateway with source NAT per uplink (`snat to` each uplink's
// own address), a conntrack entry keeps the translation its first packet got: after a dead
// gateway's routes are withdrawn, its flows leave by another uplink still carrying the old
// uplink's address, which that ISP drops, and a flow that keeps its ports (UDP: VPN, VoIP, games)
// gets no answer again until its entry expires, which it never does while the flow keeps sending.
// The kernel does this itself for `masquerade` only: nf_nat_inet_fn drops an entry whose output
// interface changed (nf_nat_oif_changed, net/netfilter/nf_nat_core.c). This room does the same for
// every source NAT, once per route change: entries translated to an address of an interface whose
// flows may have moved are looked up by their flow's whole key, and those whose route now leaves by
// another interface are deleted, so the flow's next packet makes a new entry translated on its new
// path. Entries whose path did not change are never touched; without source NAT there is nothing
// to follow.
//
// It runs in the route keeper's chain right after the change (./routekeeper.ts), so no route
// changes while it decides, and never before the routes changed: an entry deleted earlier would be
// made again on the old path. Which interfaces: after a withdrawal, the dead gateway's (its flows
// left) and those of the paths that shared a multipath route or group with it (the kernel hashes
// their flows over the paths left); after a restore, every interface with a managed gateway but
// the revived one's (their flows may come back). An uplink is known by its gateway: one whose route
// names none (`default dev ppp0`) is not examined. Bounded by dgd.conntrack.max_entries per change
// (about 0.1 ms an entry: a dump filtered by the kernel, a route lookup, a delete); while conntrack
// is not loaded nothing is asked of the kernel (it is said once).
import { errorMessage } from '../errors';
import { formatTuple } from '../sys/conntrack';
import type { Clock } from '../util/clock';
import type { EventLog } from '../util/eventlog';
import { emit } from './events';
import { lookupCacheKey } from './flowkey';
import type {
  ConntrackEntry,
  ConntrackPorts,
  DgdPorts,
  FlowKey,
  GroupJournalEntry,
  JournalEntry,
  RouteChoice,
} from './ports';
import { gatewayKey, splitKey } from './routeplan';

export interface ConntrackFollowSettings {
  follow: boolean;
  /** Entries examined at most per route change (dgd.conntrack.max_entries). */
  max_entries: number;
}

/** A route change that flows may follow. */
export interface RouteMove {
  after: 'withdrawal' | 'restore';
  /** The gateway whose routes changed; null: every withdrawn route went back (off, stop). */
  gateway: { address: string; ifindex: number; ifname: string } | null;
}

export interface ConntrackFollowOptions {
  ports: ConntrackPorts;
  lookupRoute: DgdPorts['lookupRoute'];
  ifname: (ifindex: number) => string;
  log: EventLog;
  clock: Clock;
  settings: () => ConntrackFollowSettings;
  /** The interfaces (ifindexes) that carry a managed gateway now. */
  gatewayInterfaces: () => number[];
  /**
   * The interfaces of the other paths of the multipath routes and nexthop groups that g (its key)
   * was just taken out of (./routeplan.ts journals them): their flows may be hashed anew.
   */
  multipathPeers: (gatewayKey: string) => number[];
}

export interface ConntrackFollowStatus {
  follow: boolean;
  /** false: conntrack is not loaded here, nothing to follow; null: not looked at yet. */
  available: boolean | null;
  /** Route changes followed, entries examined, deleted, and follows cut at max_entries. */
  follows: number;
  examined: number;
  deleted: number;
  truncated: number;
  last: {
    at: string;
    gateway: string | null;
    after: RouteMove['after'];
    examined: number;
    deleted: number;
    ms: number;
  } | null;
}

/** Entries looked up together (their requests queue on one rtnetlink socket). */
const BATCH = 256;
/** Deleted flows an event names. */
const SAMPLES = 8;

/** IPPROTO_* the kernel's route lookup takes (rtm_getroute_parse_ip_proto, net/ipv4/netlink.c). */
const TCP = 6;
const UDP = 17;
const ICMP = 1;
const ICMPV6 = 58;

/** Addresses no source NAT to the outside binds to: loopback, IPv6 link-local. */
const notNatAddress = (a: string): boolean => a.startsWith('127.') || a === '::1' || /^fe[89ab]/i.test(a);

/**
 * The key the kernel routed the entry's packets by: routing comes after destination NAT and before
 * source NAT, so the destination is the reply's source (the original one unless DNAT changed it)
 * and the source the original one; the ct mark stands in for the packet mark that policy routing
 * by connmark restores from it.
 */
export function entryFlowKey(e: ConntrackEntry): { dst: string; src: string; key: FlowKey } {
  const key: FlowKey = {};
  const p = e.orig.protocol;
  if (p === TCP || p === UDP || p === (e.family === 4 ? ICMP : ICMPV6)) key.proto = p;
  if ((p === TCP || p === UDP) && e.orig.sport !== undefined && e.reply.sport !== undefined) {
    key.sport = e.orig.sport;
    key.dport = e.reply.sport;
  }
  if (e.mark) key.mark = e.mark;
  return { dst: e.reply.src, src: e.orig.src, key };
}

interface Run {
  examined: number;
  deleted: number;
  gone: number;
  failed: number;
  truncated: boolean;
  samples: string[];
  firstError: string | null;
}

export class ConntrackFollower {
  private available: boolean | null = null;
  private saidUnavailable = false;
  private readonly totals = { follows: 0, examined: 0, deleted: 0, truncated: 0 };
  private last: ConntrackFollowStatus['last'] = null;

  constructor(private readonly o: ConntrackFollowOptions) {}

  /** After a route change (inside the route keeper's chain): delete the entries it left stranded. */
  async follow(move: RouteMove): Promise<void> {
    try {
      await this.run(move);
    } catch (err) {
      // Never fails the route change it follows.
      emit(this.o.log, { event: 'error', during: 'conntrack follow', error: errorMessage(err) }, 'warn');
    }
  }

  private async run(move: RouteMove): Promise<void> {
    const settings = this.o.settings();
    if (!settings.follow) return;
    const count = this.o.ports.conntrackCount();
    if (count === null) {
      this.unavailable('conntrack is not loaded in this namespace: no entries to follow the routes');
      return;
    }
    this.available = true;
    if (count === 0) return;
    const interfaces = this.interfacesOf(move);
    if (interfaces.length === 0) return;
    const started = this.o.clock.now();
    const run: Run = {
      examined: 0,
      deleted: 0,
      gone: 0,
      failed: 0,
      truncated: false,
      samples: [],
      firstError: null,
    };
    const done = await this.followOn(interfaces, settings.max_entries, run);
    if (!done) return;
    const ms = Math.round((this.o.clock.now() - started) * 10) / 10;
    this.totals.follows++;
    this.totals.examined += run.examined;
    this.totals.deleted += run.deleted;
    if (run.truncated) this.totals.truncated++;
    this.last = {
      at: new Date(this.o.clock.wallNow()).toISOString(),
      gateway: move.gateway?.address ?? null,
      after: move.after,
      examined: run.examined,
      deleted: run.deleted,
      ms,
    };
    if (run.firstError)
      emit(
        this.o.log,
        {
          event: 'error',
          during: 'conntrack follow (delete)',
          error: `${run.failed} entries could not be deleted; first: ${run.firstError}`,
        },
        'warn',
      );
    emit(this.o.log, {
      event: 'conntrack_followed',
      gateway: move.gateway?.address ?? null,
      interface: move.gateway?.ifname ?? null,
      after: move.after,
      interfaces: interfaces.map((i) => this.o.ifname(i)),
      examined: run.examined,
      deleted: run.deleted,
      kept: run.examined - run.deleted - run.gone - run.failed,
      ...(run.gone > 0 ? { gone: run.gone } : {}),
      truncated: run.truncated,
      ms,
      ...(run.samples.length > 0 ? { samples: run.samples } : {}),
    });
  }

  status(): ConntrackFollowStatus {
    return { follow: this.o.settings().follow, available: this.available, ...this.totals, last: this.last };
  }

  /**
   * The interfaces whose flows may have moved. A withdrawal moves the flows that used g's routes
   * (on g's interface), and those a multipath route or group without g hashes anew; a restore may
   * bring back flows from any other uplink.
   */
  private interfacesOf(move: RouteMove): number[] {
    const g = move.gateway;
    if (!g) return [...new Set(this.o.gatewayInterfaces())];
    if (move.after === 'restore')
      return [...new Set(this.o.gatewayInterfaces())].filter((i) => i !== g.ifindex);
    return [...new Set([g.ifindex, ...this.o.multipathPeers(gatewayKey(g.address, g.ifindex))])];
  }

  /** Examine the entries bound to each interface's addresses; false when conntrack cannot be read. */
  private async followOn(interfaces: number[], limit: number, run: Run): Promise<boolean> {
    const addrs = await this.o.ports.addresses();
    const local = new Set(addrs.map((a) => a.address));
    // Lookups of one change: the routes do not change while it runs (it is in the keeper's chain).
    const lookups = new Map<string, Promise<RouteChoice | null>>();
    const lookup = (dst: string, src: string | null, key: FlowKey) => {
      const k = lookupCacheKey(dst, src, key);
      let p = lookups.get(k);
      if (!p) {
        p = this.o.lookupRoute(dst, src, key).catch(() => null);
        lookups.set(k, p);
      }
      return p;
    };
    let budget = limit;
    for (const ifindex of interfaces) {
      for (const a of addrs) {
        if (a.ifindex !== ifindex || notNatAddress(a.address)) continue;
        if (budget <= 0) {
          run.truncated = true;
          return true;
        }
        let dump: { entries: ConntrackEntry[]; dropped: number };
        try {
          dump = await this.o.ports.natEntries(a.address, budget);
        } catch (err) {
          if (isUnavailable(err)) {
            this.unavailable(`ctnetlink cannot be used here: ${errorMessage(err)}`);
            return false;
          }
          emit(
            this.o.log,
            {
              event: 'error',
              during: 'conntrack follow (dump)',
              interface: this.o.ifname(ifindex),
              error: errorMessage(err),
            },
            'warn',
          );
          continue;
        }
        if (dump.dropped > 0) run.truncated = true;
        budget -= dump.entries.length;
        // Lookups (rtnetlink) and deletions (ctnetlink) go over two sockets: a batch is looked up
        // while the one before is being deleted.
        const deletions: Promise<void>[] = [];
        for (let i = 0; i < dump.entries.length; i += BATCH) {
          const batch = dump.entries.slice(i, i + BATCH);
          const moved = await Promise.all(batch.map((e) => this.stranded(e, ifindex, local, lookup)));
          run.examined += batch.length;
          batch.forEach((e, j) => {
            if (moved[j]) deletions.push(this.delete(e, a.address, run));
          });
        }
        await Promise.all(deletions);
      }
    }
    return true;
  }

  /** Does the entry's flow now leave by an interface other than `bound` (its NAT address's)? */
  private async stranded(
    e: ConntrackEntry,
    bound: number,
    local: ReadonlySet<string>,
    lookup: (dst: string, src: string | null, key: FlowKey) => Promise<RouteChoice | null>,
  ): Promise<boolean> {
    const { dst, src, key } = entryFlowKey(e);
    if (!local.has(src)) {
      // A forwarded flow: routed as it comes in, on the interface towards its source.
      const back = await lookup(src, null, {});
      if (!back) return false;
      key.iif = back.ifindex;
    }
    const now = await lookup(dst, src, key);
    // No route at all: a new entry would find none either; leave this one alone.
    return now !== null && now.ifindex !== bound;
  }

  private async delete(e: ConntrackEntry, natAddress: string, run: Run): Promise<void> {
    try {
      if (await this.o.ports.deleteEntry(e)) {
        run.deleted++;
        if (run.samples.length < SAMPLES) run.samples.push(`${formatTuple(e.orig)} (was ${natAddress})`);
      } else run.gone++;
    } catch (err) {
      run.failed++;
      run.firstError ??= errorMessage(err);
    }
  }

  private unavailable(note: string): void {
    this.available = false;
    if (this.saidUnavailable) return;
    this.saidUnavailable = true;
    emit(this.o.log, { event: 'conntrack_unavailable', note });
  }
}

/**
 * The interfaces of the paths that share a multipath route or a nexthop group with gateway `key`
 * in the journals: where g was taken out, the kernel hashes their flows over the paths left.
 */
export function multipathPeers(
  key: string,
  entries: readonly JournalEntry[],
  groups: readonly GroupJournalEntry[],
): number[] {
  const out = new Set<number>();
  for (const e of entries)
    if (e.removed.includes(key)) for (const nh of e.original.nexthops ?? []) out.add(nh.ifindex);
  for (const grp of groups)
    if (grp.removed.includes(key)) for (const k of Object.values(grp.members)) if (k) out.add(splitKey(k)[1]);
  return [...out];
}

/** ctnetlink missing (no nfnetlink, no nf_conntrack_netlink): not an error to repeat. */
function isUnavailable(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'EPROTONOSUPPORT' || code === 'EOPNOTSUPP' || code === 'EAFNOSUPPORT';
}
