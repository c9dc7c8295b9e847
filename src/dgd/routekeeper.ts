// The route keeper: the only writer of the two journals (withdrawn routes, nexthop groups with
// members taken out), of detection's view of the kernel's routes and nexthop objects, and of the
// kernel's routes themselves. Every change runs inside one chain (`serially`), so the journal,
// the view and the kernel change in one order; every change is journaled (atomic write, fsync)
// before the kernel changes, and rolled back in the journal if the kernel refuses it. What to
// change is planned by the pure functions of ./routeplan.ts.
import { errorMessage } from '../errors';
import { protocolName } from '../sys/rtnl';
import type { Clock } from '../util/clock';
import type { EventLog } from '../util/eventlog';
import { emit } from './events';
import type { Gateway } from './gateway';
import { routingDaemonOf, type OwnerLiaison } from './ownerliaison';
import type {
  DgdPorts,
  DgdStore,
  GroupJournalEntry,
  JournalEntry,
  KernelNexthopObject,
  KernelRoute,
} from './ports';
import { RewithdrawGuard } from './rewithdraw';
import { RouteJournal } from './routejournal';
import {
  describeGroup,
  describeRoute as describe,
  gatewaysOf,
  groupKey,
  groupTarget,
  planWithdrawal,
  reducedRoute,
  routeIdentity,
  splitKey,
  targetOf,
  transition,
  type RouteOp,
} from './routeplan';
import { routeSummary, type DgdStatus } from './status';
import { routeInterfaces } from './interfaces';

export interface RouteKeeperOptions {
  ports: DgdPorts;
  store: DgdStore;
  log: EventLog;
  clock: Clock;
  bootId: string | null;
  liaison: OwnerLiaison;
  /** The managed tables now (they change on reload). */
  tables: () => number[];
  keepLastRoute: () => boolean;
  /** Every dead gateway's key: keep_last_route counts only routes that still work. */
  deadKeys: () => Set<string>;
  /**
   * May g's routes be withdrawn now (it is dead, detection is on)? Asked when the withdrawal's
   * turn in the chain comes, since a revival or `off` queued before it may have changed that.
   */
  mayWithdraw: (g: Gateway) => boolean;
  /** Can the entry's route be put back now (its interfaces present and up)? (./linktracker.ts) */
  placeable: (entry: JournalEntry) => boolean;
  rewithdraw: { limit: number; windowMs: number };
  /** Routes moved (g's withdrawn or restored; null: all restored): conntrack follows, in the chain. */
  routesMoved?: (after: 'withdrawal' | 'restore', g: Gateway | null) => Promise<void>;
}

export class RouteKeeper {
  /** The two journals (./routejournal.ts); changed only here. */
  private readonly j: RouteJournal;
  private readonly journal: Map<string, JournalEntry>;
  /** Nexthop groups with dead members taken out, by group id. */
  private readonly groupJournal: Map<number, GroupJournalEntry>;
  private kernelRoutes: KernelRoute[] = [];
  private nexthopObjects = new Map<number, KernelNexthopObject>();
  /** Routes (identity) left through a dead gateway by keep_last_route: reported once, not retried. */
  private readonly keptRoutes = new Set<string>();
  /** Routes and groups put back through a dead gateway: withdrawn again, within a bound. */
  private readonly rewithdraw: RewithdrawGuard;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: RouteKeeperOptions) {
    this.j = new RouteJournal(o.store, o.log, o.bootId);
    this.journal = this.j.routes;
    this.groupJournal = this.j.groups;
    this.rewithdraw = new RewithdrawGuard(o.rewithdraw.limit, o.rewithdraw.windowMs, o.clock);
  }

  /** Run fn after every change queued before it (kernel, journal and routing daemons in one order). */
  serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Conntrack follows in the chain's next step: after this change, not holding its caller up. */
  private moved(after: 'withdrawal' | 'restore', g: Gateway | null): void {
    if (this.o.routesMoved) void this.serially(() => this.o.routesMoved!(after, g));
  }

  /** Wait for every queued change. */
  async settled(): Promise<void> {
    await this.chain.catch(() => undefined);
  }

  configure(rewithdraw: { limit: number; windowMs: number }): void {
    this.rewithdraw.configure(rewithdraw.limit, rewithdraw.windowMs);
  }

  // ---------------------------------------------------------------------------------------------
  // The journals

  /** At start: the journals as stored (./routejournal.ts drops what can never be placed). */
  load(): ReturnType<RouteJournal['load']> {
    return this.j.load();
  }

  get journalSize(): number {
    return this.j.size;
  }

  entries(): JournalEntry[] {
    return this.j.entries();
  }

  groupEntries(): GroupJournalEntry[] {
    return this.j.groupEntries();
  }

  /** Journaled routes that wait for g (it was removed from them). */
  entriesVia(gatewayKey: string): JournalEntry[] {
    return this.j.entriesVia(gatewayKey);
  }

  /**
   * After g's restore: the entries it was removed from that could not go back because an interface
   * of theirs is not up (or is being renumbered); empty when every one of them went back.
   */
  waitingVia(g: Gateway): JournalEntry[] {
    const left = this.entriesVia(g.key);
    return left.some((e) => !this.o.placeable(e)) ? left : [];
  }

  private save(): Promise<void> {
    return this.j.save();
  }

  // ---------------------------------------------------------------------------------------------
  // The view of the kernel

  routes(): readonly KernelRoute[] {
    return this.kernelRoutes;
  }

  private async readNexthopObjects(): Promise<Map<number, KernelNexthopObject>> {
    this.nexthopObjects = new Map((await this.o.ports.listNexthops()).map((n) => [n.id, n]));
    return this.nexthopObjects;
  }

  private async readRoutes(): Promise<KernelRoute[]> {
    this.kernelRoutes = await this.o.ports.listRoutes(this.o.tables());
    return this.kernelRoutes;
  }

  /** Re-read the managed tables and the nexthop objects (in the chain); returns the routes. */
  refresh(): Promise<KernelRoute[]> {
    return this.serially(async () => {
      const routes = await this.readRoutes();
      await this.readNexthopObjects();
      return routes;
    });
  }

  /** Kernel routes through dead g that should not be there: not kept, not given up on as contested. */
  routesBackVia(g: Gateway, routes: readonly KernelRoute[]): KernelRoute[] {
    return routes.filter((r) => {
      if (!gatewaysOf(r).includes(g.key)) return false;
      if (this.o.liaison.daemonOf(r)) return false; // its routing daemon is told instead
      if (this.keptRoutes.has(routeIdentity(r))) return false;
      return !this.isContested(r);
    });
  }

  /** Read the tables now (not the view): is anything back through dead g? */
  async anythingBackVia(g: Gateway): Promise<boolean> {
    return this.routesBackVia(g, await this.o.ports.listRoutes(this.o.tables())).length > 0;
  }

  /** The daemon gave up withdrawing this route (or its nexthop group) again. */
  isContested(r: KernelRoute): boolean {
    if (this.rewithdraw.isStopped(routeIdentity(r))) return true;
    return r.nhid !== undefined && this.rewithdraw.isStopped(groupKey(r.nhid));
  }

  // ---------------------------------------------------------------------------------------------
  // Withdraw

  /**
   * Withdraw every route through dead g (its routing daemons' routes are handed over instead);
   * returns what changed. g may have revived (or detection gone off) while this waited its turn:
   * then nothing is withdrawn and nobody is told.
   */
  withdraw(g: Gateway, reason: string): Promise<string[]> {
    return this.serially(async () => {
      if (!this.o.mayWithdraw(g)) {
        emit(
          this.o.log,
          {
            event: 'withdrawal_skipped',
            gateway: g.address,
            interface: g.ifname,
            reason,
            note: 'the gateway is no longer dead (or detection is off)',
          },
          'debug',
        );
        return [];
      }
      const routes = await this.readRoutes();
      const objects = await this.readNexthopObjects();
      const plan = planWithdrawal({
        gateway: g.key,
        routes,
        objects,
        journal: this.journal,
        groupJournal: this.groupJournal,
        deadKeys: this.o.deadKeys(),
        keepLastRoute: this.o.keepLastRoute(),
        keptRoutes: this.keptRoutes,
        handedOver: (r) => this.o.liaison.daemonOf(r) !== null,
        mayWithdrawAgain: (key, what, protocol) => this.mayWithdrawAgain(key, g, what, protocol),
        at: new Date(this.o.clock.wallNow()).toISOString(),
        bootId: this.o.bootId,
      });
      // Emptied groups are journaled (restore needs them); the kernel's group stays.
      for (const e of plan.emptied) this.groupJournal.set(e.id, e);
      await this.o.liaison.handOver(g, routes, reason);
      this.reportKept(g, plan.kept);
      for (const r of plan.readded)
        emit(this.o.log, {
          event: 'route_readded',
          gateway: g.address,
          interface: g.ifname,
          route: r.what,
          owner: r.protocol === undefined ? null : protocolName(r.protocol),
          routing_daemon: routingDaemonOf(r.protocol),
          note: 'put back through a dead gateway by its owner; withdrawn again',
        });
      if (plan.routes.length === 0 && plan.groups.length === 0) {
        if (plan.emptied.length > 0) await this.save();
        return [];
      }
      for (const p of plan.routes) this.journal.set(p.entry.key, p.entry);
      for (const p of plan.groups) this.groupJournal.set(p.entry.id, p.entry);
      await this.save();
      const done = [...(await this.applyGroups(g, plan)), ...(await this.applyRoutes(g, plan))];
      await this.save();
      await this.readRoutes();
      emit(this.o.log, {
        event: 'routes_withdrawn',
        gateway: g.address,
        interface: g.ifname,
        reason,
        routes: done,
        ...(plan.readded.length > 0 ? { readded: plan.readded.length } : {}),
      });
      if (done.length > 0) this.moved('withdrawal', g);
      return done;
    });
  }

  private reportKept(g: Gateway, kept: KernelRoute[]): void {
    const newlyKept = kept.filter((r) => !this.keptRoutes.has(routeIdentity(r)));
    for (const r of kept) this.keptRoutes.add(routeIdentity(r));
    if (newlyKept.length > 0)
      emit(
        this.o.log,
        {
          event: 'route_kept',
          gateway: g.address,
          reason: 'keep_last_route',
          routes: newlyKept.map(describe),
        },
        'warn',
      );
  }

  /** Take g out of the planned groups; a group the kernel refuses to change is forgotten again. */
  private async applyGroups(g: Gateway, plan: ReturnType<typeof planWithdrawal>): Promise<string[]> {
    const done: string[] = [];
    for (const p of plan.groups) {
      try {
        await this.o.ports.replaceNexthop(p.to);
        done.push(`${describeGroup(p.entry.original)} -> ${describeGroup(p.to)}`);
      } catch (err) {
        emit(
          this.o.log,
          {
            event: 'error',
            during: 'withdraw (nexthop replace)',
            nexthop: describeGroup(p.entry.original),
            error: errorMessage(err),
          },
          'error',
        );
        const e = this.groupJournal.get(p.entry.id);
        if (e) {
          e.removed = e.removed.filter((k) => k !== g.key);
          if (e.removed.length === 0) this.groupJournal.delete(p.entry.id);
        }
      }
    }
    return done;
  }

  /** Change the planned routes; a route the kernel refuses to change is forgotten again. */
  private async applyRoutes(g: Gateway, plan: ReturnType<typeof planWithdrawal>): Promise<string[]> {
    const done: string[] = [];
    for (const p of plan.routes) {
      const op = transition(p.from, p.to);
      if (!op) continue;
      try {
        await this.apply(op);
        done.push(describe(p.from));
      } catch (err) {
        emit(
          this.o.log,
          {
            event: 'error',
            during: `withdraw (${op.op})`,
            route: describe(p.from),
            error: errorMessage(err),
          },
          'error',
        );
        const e = this.journal.get(p.entry.key);
        if (e) {
          e.removed = e.removed.filter((k) => k !== g.key);
          if (e.removed.length === 0) this.journal.delete(p.entry.key);
        }
      }
    }
    return done;
  }

  /**
   * Someone put `key` back through dead gateway g: withdraw it again, unless it keeps coming back
   * (the bound is in RewithdrawGuard); the first refusal is reported once, as a fight.
   */
  private mayWithdrawAgain(key: string, g: Gateway, what: string, protocol: number | undefined): boolean {
    const verdict = this.rewithdraw.comeBack(key);
    if (verdict === 'withdraw') return true;
    if (verdict === 'stop') {
      const { limit, windowMs } = this.rewithdraw.limits;
      const daemon = routingDaemonOf(protocol);
      emit(
        this.o.log,
        {
          event: 'route_fight',
          gateway: g.address,
          interface: g.ifname,
          route: what,
          owner: protocol === undefined ? null : protocolName(protocol),
          routing_daemon: daemon,
          rewithdrawals: limit,
          window_ms: windowMs,
          note:
            'its owner puts it back after every withdrawal; left in place until the gateway revives' +
            (daemon ? ` (a ${daemon} route: list ${daemon} in dgd.owners so that it fails over itself)` : ''),
        },
        'warn',
      );
    }
    return false;
  }

  // ---------------------------------------------------------------------------------------------
  // Restore

  /**
   * Put back what g took (its routing daemons told first); routes whose interface is not up wait.
   * `then` runs in the same step of the chain, after the journal is written: what it decides (g
   * alive) is in place before anything queued behind the restore runs.
   */
  restore(g: Gateway, reason: string, then?: () => void): Promise<void> {
    return this.serially(async () => {
      await this.o.liaison.markAlive(g, reason);
      // Decide from the kernel as it is now, not as it was at the last route event.
      await this.readRoutes();
      const restored: string[] = [];
      // Groups first: a route withdrawn because its whole group was dead needs a member back.
      for (const entry of this.groupEntries()) {
        if (!entry.removed.includes(g.key)) continue;
        const done = await this.restoreGroup(entry, g.key);
        if (done) restored.push(done);
      }
      for (const entry of this.entries()) {
        const viaGroup = this.groupRouteRevivable(entry);
        if (!entry.removed.includes(g.key) && !viaGroup) continue;
        if (await this.restoreEntry(entry, viaGroup ? null : g.key)) restored.push(describe(entry.original));
      }
      await this.save();
      emit(this.o.log, {
        event: 'routes_restored',
        gateway: g.address,
        interface: g.ifname,
        reason,
        routes: restored,
      });
      if (restored.length > 0) this.moved('restore', g);
      then?.();
    });
  }

  /** Restore every withdrawn route (off, SIGTERM); routes whose interface is not up wait. `then` as in restore. */
  restoreAll(reason: string, then?: () => void): Promise<void> {
    return this.serially(async () => {
      this.keptRoutes.clear();
      await this.o.liaison.restoreAll(reason);
      if (this.journal.size === 0 && this.groupJournal.size === 0) return then?.();
      await this.readRoutes();
      const restored: string[] = [];
      for (const entry of this.groupEntries()) {
        const done = await this.restoreGroup(entry, null);
        if (done) restored.push(done);
      }
      const waiting: string[] = [];
      for (const entry of this.entries()) {
        if (!this.o.placeable(entry)) waiting.push(describe(entry.original));
        else if (await this.restoreEntry(entry, null)) restored.push(describe(entry.original));
      }
      await this.save();
      emit(this.o.log, {
        event: 'routes_restored',
        gateway: null,
        reason,
        routes: restored,
        ...(waiting.length > 0
          ? { waiting_for_interface: waiting, note: 'kept in the journal until their interface is back' }
          : {}),
      });
      if (restored.length > 0) this.moved('restore', null);
      then?.();
    });
  }

  /** A route withdrawn because every member of its nexthop group was dead, whose group has one again. */
  private groupRouteRevivable(entry: JournalEntry): boolean {
    const id = entry.original.nhid;
    if (id === undefined) return false;
    const grp = this.groupJournal.get(id);
    if (grp) return groupTarget(grp) !== null;
    // The group is whole again (its entry is gone): the route goes back.
    return !!this.nexthopObjects.get(id)?.group;
  }

  /**
   * Give back to a group what `gatewayKeyToRestore` (or every gateway, if null) took from it;
   * returns what was done, or null. A group its owner deleted meanwhile is not re-created.
   */
  private async restoreGroup(
    entry: GroupJournalEntry,
    gatewayKeyToRestore: string | null,
  ): Promise<string | null> {
    const removed =
      gatewayKeyToRestore === null ? [] : entry.removed.filter((k) => k !== gatewayKeyToRestore);
    const objects = await this.readNexthopObjects();
    this.rewithdraw.forget(groupKey(entry.id));
    if (!objects.get(entry.id)?.group) {
      this.groupJournal.delete(entry.id);
      emit(
        this.o.log,
        {
          event: 'nexthop_group_gone',
          nexthop: describeGroup(entry.original),
          note: 'deleted by its owner meanwhile; not re-created',
        },
        'warn',
      );
      return null;
    }
    const after = groupTarget({ ...entry, removed });
    try {
      if (after) await this.o.ports.replaceNexthop(after);
    } catch (err) {
      emit(
        this.o.log,
        {
          event: 'error',
          during: 'restore (nexthop replace)',
          nexthop: describeGroup(entry.original),
          error: errorMessage(err),
        },
        'error',
      );
      return null;
    }
    if (removed.length === 0) this.groupJournal.delete(entry.id);
    else entry.removed = removed;
    return after ? describeGroup(after) : null;
  }

  /** Put back what `gatewayKeyToRestore` (or every gateway, if null) took from an entry. */
  private async restoreEntry(entry: JournalEntry, gatewayKeyToRestore: string | null): Promise<boolean> {
    // A route cannot go back onto an interface that is down or gone: it waits in the journal.
    if (!this.o.placeable(entry)) return false;
    const before = targetOf(entry);
    const removed =
      gatewayKeyToRestore === null ? [] : entry.removed.filter((k) => k !== gatewayKeyToRestore);
    const after = reducedRoute(entry.original, new Set(removed));
    const current = this.kernelMatch(before) ?? this.kernelMatch(entry.original);
    const op = transition(current ? before : null, after);
    try {
      if (op) await this.apply(op);
    } catch (err) {
      emit(
        this.o.log,
        {
          event: 'error',
          during: `restore (${op?.op})`,
          route: describe(entry.original),
          error: errorMessage(err),
        },
        'error',
      );
      return false;
    }
    if (removed.length === 0) this.journal.delete(entry.key);
    else entry.removed = removed;
    this.rewithdraw.forget(entry.key);
    return true;
  }

  private kernelMatch(route: KernelRoute | null): KernelRoute | null {
    if (!route) return null;
    const id = routeIdentity(route);
    return this.kernelRoutes.find((r) => routeIdentity(r) === id) ?? null;
  }

  private async apply(op: RouteOp): Promise<void> {
    const ports = this.o.ports;
    if (op.op === 'delete') return ports.deleteRoute(op.route);
    if (op.op === 'replace') return ports.replaceRoute(op.route);
    try {
      await ports.addRoute(op.route);
    } catch (err) {
      // Already there (someone put it back, or a crash after the kernel change): make it exact.
      if ((err as { code?: string }).code === 'EEXIST') await ports.replaceRoute(op.route);
      else throw err;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // After a restart, and interfaces

  /**
   * After a restart (kill -9): the journal is the truth. Make the kernel match it; each gateway
   * it names is dead (`markDead` with its key and, for a route, the interface names it had).
   */
  reconcile(markDead: (key: string, ifname: string | undefined) => void): Promise<void> {
    return this.serially(async () => {
      const objects = await this.readNexthopObjects();
      for (const entry of this.groupEntries()) {
        const target = groupTarget(entry);
        const current = objects.get(entry.id);
        if (!current?.group) {
          this.groupJournal.delete(entry.id);
          emit(this.o.log, { event: 'nexthop_group_gone', nexthop: describeGroup(entry.original) }, 'warn');
          continue;
        }
        if (target && describeGroup(current) !== describeGroup(target)) {
          try {
            await this.o.ports.replaceNexthop(target);
            emit(this.o.log, {
              event: 'journal_reconciled',
              nexthop: describeGroup(entry.original),
              op: 'replace',
            });
          } catch (err) {
            emit(
              this.o.log,
              {
                event: 'error',
                during: 'journal reconcile',
                nexthop: describeGroup(entry.original),
                error: errorMessage(err),
              },
              'error',
            );
          }
        }
        for (const key of entry.removed) markDead(key, undefined);
      }
      for (const entry of this.entries()) {
        const target = targetOf(entry);
        const current = this.kernelMatch(target) ?? this.kernelMatch(entry.original);
        const op = this.o.placeable(entry) ? transition(current, target) : null;
        if (op) {
          try {
            await this.apply(op);
            emit(this.o.log, { event: 'journal_reconciled', route: describe(entry.original), op: op.op });
          } catch (err) {
            emit(
              this.o.log,
              {
                event: 'error',
                during: 'journal reconcile',
                route: describe(entry.original),
                error: errorMessage(err),
              },
              'error',
            );
          }
        }
        for (const key of entry.removed) {
          const idx = splitKey(key)[1];
          markDead(key, routeInterfaces(entry.original).find((i) => i.ifindex === idx)?.ifname ?? undefined);
        }
      }
      await this.save();
    });
  }

  /** An interface re-created (or a reboot): entries journaled with `ifname` at `from` move to `to`. */
  remapInterface(ifname: string, from: number, to: number): void {
    this.j.remapInterface(ifname, from, to);
  }

  /** Persist after remapInterface (inside the chain). */
  persist(): Promise<void> {
    return this.j.save();
  }

  /** Journaled routes on interfaces gone longer than interface_wait are dropped (inside the chain). */
  dropEntriesOn(expired: ReadonlySet<string>, absentMs: (ifname: string) => number): Promise<void> {
    return this.j.dropEntriesOn(expired, absentMs);
  }

  // ---------------------------------------------------------------------------------------------
  // Status

  withdrawnStatus(): Pick<DgdStatus, 'withdrawn_routes' | 'withdrawn_nexthop_members'> {
    return {
      withdrawn_routes: this.entries().map((e) => ({
        ...routeSummary(e.original),
        removed_gateways: e.removed,
      })),
      withdrawn_nexthop_members: this.groupEntries().map((e) => {
        const now = groupTarget(e);
        return {
          id: e.id,
          owner: protocolName(e.original.protocol),
          original: describeGroup(e.original),
          now: describeGroup(now ?? e.original),
          removed_gateways: e.removed,
          contested: this.rewithdraw.isStopped(groupKey(e.id)),
        };
      }),
    };
  }
}
