// Interfaces coming and going under detection (./interfaces.ts says why names, not ifindexes,
// decide): the namespace's interfaces as rtnetlink last reported them, which interfaces the journal
// and the gateways need and since when each is absent, renumberings (the same name, a new ifindex)
// applied to the journal and the gateways, and the interface_wait bound after which routes of a
// vanished interface are dropped. The only writer of the interface view and of gateways' `link`.
import { emit } from './events';
import { errorMessage } from '../errors';
import type { Clock, Timer } from '../util/clock';
import type { EventLog } from '../util/eventlog';
import type { Gateway } from './gateway';
import type { GatewayTable } from './gateways';
import { routeInterfaces, type InterfaceInfo, type InterfacePresence } from './interfaces';
import type { JournalEntry } from './ports';
import type { RouteKeeper } from './routekeeper';

export interface LinkTrackerOptions {
  clock: Clock;
  log: EventLog;
  gateways: GatewayTable;
  /** dgd.interface_wait now (it changes on reload). */
  interfaceWaitMs: () => number;
  /** A gateway's interface changed (up, down, absent) or it moved to a new ifindex. */
  onGatewayLink: (g: Gateway, change: 'up' | 'down' | 'moved') => void;
}

export class LinkTracker {
  /** Interfaces by name; null until set() is first called (then every interface counts as up). */
  private links: Map<string, InterfaceInfo> | null = null;
  /** Names of interfaces the journal or a gateway needs that are absent, and since when (clock ms). */
  private readonly absentSince = new Map<string, number>();
  private waitTimer: Timer | null = null;
  private closed = false;
  private keeper: RouteKeeper | null = null;

  constructor(private readonly o: LinkTrackerOptions) {}

  /** The keeper whose journal follows interface names (set once, at construction of the engine). */
  attach(keeper: RouteKeeper): void {
    this.keeper = keeper;
  }

  /** The namespace's interfaces now (start, and every rtnetlink link event). */
  set(list: readonly InterfaceInfo[]): void {
    this.links = new Map(list.map((l) => [l.ifname, { ...l }]));
  }

  get known(): boolean {
    return this.links !== null;
  }

  presenceOf(ifname: string): InterfacePresence {
    if (!this.links) return 'up';
    const l = this.links.get(ifname);
    return !l ? 'absent' : l.up ? 'up' : 'down';
  }

  ifindexOf(ifname: string): number | undefined {
    return this.links?.get(ifname)?.ifindex;
  }

  /**
   * Can the entry's route be put back now: is every interface it names present and up, and has the
   * entry already followed each name to its current ifindex (a renumbering may still be queued)?
   */
  placeable(entry: JournalEntry): boolean {
    return routeInterfaces(entry.original).every((i) => {
      if (i.ifname === null || this.presenceOf(i.ifname) !== 'up') return false;
      const now = this.links?.get(i.ifname);
      return !now || now.ifindex === i.ifindex;
    });
  }

  /**
   * Apply the current view: renumberings move journal entries and gateways (inside the keeper's
   * chain), absences are timed, each gateway's `link` follows its interface.
   */
  async apply(): Promise<void> {
    const links = this.links;
    const keeper = this.keeper;
    if (!links || !keeper || this.closed) return;
    const moved = new Set<Gateway>();
    await keeper.serially(async () => {
      // An interface re-created (or a reboot): the same name, another ifindex.
      const moves = new Map<string, { ifname: string; from: number; to: number }>();
      const note = (ifname: string | null | undefined, from: number) => {
        const now = ifname ? links.get(ifname) : undefined;
        if (ifname && now && now.ifindex !== from)
          moves.set(`${ifname}|${from}`, { ifname, from, to: now.ifindex });
      };
      for (const e of keeper.entries())
        for (const i of routeInterfaces(e.original)) note(i.ifname, i.ifindex);
      for (const g of this.o.gateways.values()) note(g.ifname, g.ifindex);
      if (moves.size === 0) return;
      for (const m of moves.values()) {
        keeper.remapInterface(m.ifname, m.from, m.to);
        for (const g of this.o.gateways.renumber(m.ifname, m.from, m.to)) moved.add(g);
        emit(this.o.log, {
          event: 'interface_renumbered',
          interface: m.ifname,
          old_ifindex: m.from,
          ifindex: m.to,
          note: 'journaled routes and gateways follow the interface name',
        });
      }
      await keeper.persist();
    });
    this.timeAbsences(links);
    // Each gateway's view of its interface.
    for (const g of this.o.gateways.values()) {
      const state = this.presenceOf(g.ifname);
      if (state === g.link) continue;
      const from = g.link;
      g.link = state;
      emit(
        this.o.log,
        {
          event: 'gateway_interface',
          gateway: g.address,
          interface: g.ifname,
          ifindex: g.ifindex,
          from,
          to: state,
        },
        state === 'up' ? 'info' : 'warn',
      );
      this.o.onGatewayLink(g, state === 'up' ? 'up' : 'down');
    }
    // A gateway whose interface was re-created while up: it is verified on the new interface now.
    for (const g of moved)
      if (g.link === 'up' && this.o.gateways.get(g.key) === g) this.o.onGatewayLink(g, 'moved');
    this.scheduleWaitCheck();
  }

  /** Which needed interfaces are absent, and since when. */
  private timeAbsences(links: Map<string, InterfaceInfo>): void {
    const now = this.o.clock.now();
    const needed = new Set<string>();
    for (const e of this.keeper?.entries() ?? [])
      for (const i of routeInterfaces(e.original)) if (i.ifname) needed.add(i.ifname);
    for (const g of this.o.gateways.values()) needed.add(g.ifname);
    for (const n of needed)
      if (links.has(n)) this.absentSince.delete(n);
      else if (!this.absentSince.has(n)) this.absentSince.set(n, now);
    for (const n of [...this.absentSince.keys()]) if (!needed.has(n)) this.absentSince.delete(n);
  }

  /** Journaled routes whose interface stays absent longer than interface_wait are dropped. */
  private scheduleWaitCheck(): void {
    this.waitTimer?.cancel();
    this.waitTimer = null;
    if (this.absentSince.size === 0 || this.closed) return;
    const now = this.o.clock.now();
    const wait = this.o.interfaceWaitMs();
    const due = Math.min(...[...this.absentSince.values()].map((t) => t + wait - now));
    this.waitTimer = this.o.clock.setTimeout(
      () => {
        this.waitTimer = null;
        this.dropVanished().catch((err: unknown) =>
          emit(
            this.o.log,
            { event: 'error', during: 'dropping routes of a vanished interface', error: errorMessage(err) },
            'error',
          ),
        );
      },
      Math.max(0, due),
    );
  }

  private async dropVanished(): Promise<void> {
    const keeper = this.keeper;
    if (!keeper) return;
    const now = this.o.clock.now();
    const wait = this.o.interfaceWaitMs();
    const expired = new Set([...this.absentSince].filter(([, t]) => now - t >= wait).map(([n]) => n));
    if (expired.size > 0)
      await keeper.serially(async () => {
        await keeper.dropEntriesOn(expired, (n) => now - (this.absentSince.get(n) ?? now));
        for (const g of [...this.o.gateways.values()]) {
          if (!expired.has(g.ifname) || keeper.entriesVia(g.key).length > 0) continue;
          // A gateway the config probes actively stays (absent): probing resumes when an interface
          // of that name is back.
          if (g.active) continue;
          this.o.gateways.forget(g);
        }
        for (const n of expired) this.absentSince.delete(n);
      });
    this.scheduleWaitCheck();
  }

  close(): void {
    this.closed = true;
    this.waitTimer?.cancel();
    this.waitTimer = null;
  }
}
