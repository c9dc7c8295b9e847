// The two journals of withdrawn routes: routes taken out (by key) and nexthop groups with members
// taken out (by group id), kept for the route keeper (./routekeeper.ts: only it changes them),
// loaded at start and written whole (the store writes atomically, with fsync) after each change.
// What the journals say is placed by names, not ifindexes: an entry follows its interface's name.
import type { EventLog } from '../util/eventlog';
import { emit } from './events';
import type { DgdStore, GroupJournalEntry, JournalEntry } from './ports';
import { describeGroup, describeRoute as describe } from './routeplan';
import { entryHasNames, remapEntry, routeInterfaces } from './interfaces';

export class RouteJournal {
  readonly routes = new Map<string, JournalEntry>();
  readonly groups = new Map<number, GroupJournalEntry>();

  constructor(
    private readonly store: DgdStore,
    private readonly log: EventLog,
    private readonly bootId: string | null,
  ) {}

  /**
   * At start: the journals as stored. Entries that can never be placed are dropped with an event
   * (an entry without interface names; a group changed in an earlier boot, since nexthop objects
   * do not survive a reboot and the id now belongs to whatever its owner created since).
   */
  async load(): Promise<{ this_boot: number; earlier_boot: number; unknown_boot: number }> {
    const boots = { this_boot: 0, earlier_boot: 0, unknown_boot: 0 };
    let unplaceable = false;
    for (const e of await this.store.loadJournal()) {
      if (!entryHasNames(e)) {
        // Without a name nothing says which interface its ifindex meant: never guess.
        emit(
          this.log,
          {
            event: 'route_dropped',
            route: describe(e.original),
            reason: 'the journal entry names no interface; not restored',
          },
          'warn',
        );
        unplaceable = true;
        continue;
      }
      if (!e.boot_id) boots.unknown_boot++;
      else if (e.boot_id === this.bootId) boots.this_boot++;
      else boots.earlier_boot++;
      this.routes.set(e.key, e);
    }
    for (const e of await this.store.loadGroupJournal()) {
      if (e.boot_id && this.bootId && e.boot_id !== this.bootId) {
        emit(
          this.log,
          {
            event: 'nexthop_group_dropped',
            nexthop: describeGroup(e.original),
            reason: 'changed before a reboot; nexthop objects do not survive one',
          },
          'warn',
        );
        unplaceable = true;
        continue;
      }
      this.groups.set(e.id, e);
    }
    if (unplaceable) await this.save();
    return boots;
  }

  get size(): number {
    return this.routes.size + this.groups.size;
  }

  entries(): JournalEntry[] {
    return [...this.routes.values()];
  }

  groupEntries(): GroupJournalEntry[] {
    return [...this.groups.values()];
  }

  /** Journaled routes that wait for g (it was removed from them). */
  entriesVia(gatewayKey: string): JournalEntry[] {
    return this.entries().filter((e) => e.removed.includes(gatewayKey));
  }

  save(): Promise<void> {
    return this.store.saveJournal(this.entries(), this.groupEntries());
  }

  /** An interface re-created (or a reboot): entries journaled with `ifname` at `from` move to `to`. */
  remapInterface(ifname: string, from: number, to: number): void {
    for (const [k, e] of [...this.routes]) {
      const moved = remapEntry(e, ifname, from, to);
      if (moved === e) continue;
      this.routes.delete(k);
      this.routes.set(moved.key, moved);
    }
  }

  /**
   * Journaled routes on interfaces gone longer than interface_wait can never be restored: dropped,
   * each with an event (inside the chain).
   */
  async dropEntriesOn(expired: ReadonlySet<string>, absentMs: (ifname: string) => number): Promise<void> {
    let changed = false;
    for (const [k, e] of [...this.routes]) {
      const gone = routeInterfaces(e.original).find((i) => i.ifname && expired.has(i.ifname));
      if (!gone) continue;
      this.routes.delete(k);
      changed = true;
      emit(
        this.log,
        {
          event: 'route_dropped',
          route: describe(e.original),
          interface: gone.ifname,
          absent_ms: Math.round(absentMs(gone.ifname!)),
          reason: 'its interface has been gone longer than dgd.interface_wait; it can never be restored',
        },
        'warn',
      );
    }
    if (changed) await this.save();
  }
}
