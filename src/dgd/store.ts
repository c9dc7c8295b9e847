// Detection state on disk, in the state directory: the journal of withdrawn routes and the on/off
// switch. Both are written atomically and fsync'd (src/util/atomic.ts) before the kernel changes.
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { IpdeadgateError } from '../errors';
import { writeFileAtomic } from '../util/atomic';
import type { DgdStore, GroupJournalEntry, JournalEntry } from './ports';

const JOURNAL = 'withdrawn-routes.json';
const SWITCH = 'dgd-enabled.json';

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
