// Detection state on disk, in the state directory: the journal of withdrawn routes, the on/off
// switch and the gateways' known MACs. All are written atomically and fsync'd (src/util/atomic.ts);
// the journal before the kernel changes.
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { IpdeadgateError } from '../errors';
import { writeFileAtomic } from '../util/atomic';
import type { DgdStore, GroupJournalEntry, JournalEntry } from './ports';

const JOURNAL = 'withdrawn-routes.json';
const SWITCH = 'dgd-enabled.json';
const MACS = 'gateway-macs.json';
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export class FileStore implements DgdStore {
  constructor(readonly dir: string) {}

  get journalPath(): string {
    return path.join(this.dir, JOURNAL);
  }

  async loadJournal(): Promise<JournalEntry[]> {
    const data = await readJson(path.join(this.dir, JOURNAL));
    if (data === null) return [];
    const entries = (data as { entries?: unknown }).entries;
    if (!Array.isArray(entries))
      throw new IpdeadgateError(
        'ERR_JOURNAL',
        `${this.journalPath} is not a journal of withdrawn routes; move it away to start fresh`,
      );
    return entries as JournalEntry[];
  }

  async loadGroupJournal(): Promise<GroupJournalEntry[]> {
    const data = await readJson(path.join(this.dir, JOURNAL));
    const groups = (data as { nexthop_groups?: unknown } | null)?.nexthop_groups;
    if (groups === undefined || groups === null) return [];
    if (!Array.isArray(groups))
      throw new IpdeadgateError(
        'ERR_JOURNAL',
        `${this.journalPath}: nexthop_groups is not a list; move the file away to start fresh`,
      );
    return groups as GroupJournalEntry[];
  }

  async saveJournal(entries: JournalEntry[], groups: GroupJournalEntry[] = []): Promise<void> {
    const body =
      groups.length > 0 ? { version: 1, entries, nexthop_groups: groups } : { version: 1, entries };
    await writeFileAtomic(path.join(this.dir, JOURNAL), JSON.stringify(body, null, 1) + '\n');
  }

  async loadEnabled(): Promise<boolean | null> {
    const data = (await readJson(path.join(this.dir, SWITCH))) as { enabled?: unknown } | null;
    return typeof data?.enabled === 'boolean' ? data.enabled : null;
  }

  async saveEnabled(enabled: boolean): Promise<void> {
    await writeFileAtomic(path.join(this.dir, SWITCH), JSON.stringify({ enabled }) + '\n');
  }

  /** Known MACs; entries that are not "address%ifname" -> MAC are skipped (the file is advisory). */
  async loadMacs(): Promise<Record<string, string>> {
    const data = (await readJson(path.join(this.dir, MACS))) as { macs?: unknown } | null;
    const out: Record<string, string> = {};
    if (!data || typeof data.macs !== 'object' || data.macs === null) return out;
    for (const [k, v] of Object.entries(data.macs as Record<string, unknown>))
      if (k.includes('%') && typeof v === 'string' && MAC.test(v)) out[k] = v;
    return out;
  }

  async saveMacs(macs: Record<string, string>): Promise<void> {
    await writeFileAtomic(path.join(this.dir, MACS), JSON.stringify({ version: 1, macs }, null, 1) + '\n');
  }
}

async function readJson(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new IpdeadgateError(
      'ERR_JOURNAL',
      `${file} is not valid JSON (a torn write is impossible with atomic writes; was it edited?)`,
    );
  }
}
