// Detection state on disk, in the state directory: the journal of withdrawn routes, the on/off
// switch and the gateways' known MACs. All are written atomically and fsync'd (src/util/atomic.ts);
// the journal before the kernel changes. With a DurableWriter (the daemon's), a failed write is
// logged, counted and retried instead of failing the withdrawal (src/util/durable.ts). Journal
// entries are validated one by one when read: a bad one is set aside in a file of its own (named
// in the event), the others are used.
import { isIP } from 'node:net';
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { z } from 'zod';
import { IpdeadgateError } from '../errors';
import { writeFileAtomic } from '../util/atomic';
import type { DurableWriter } from '../util/durable';
import type { EventLog } from '../util/eventlog';
import type { DgdStore, GroupJournalEntry, JournalEntry } from './ports';

const JOURNAL = 'withdrawn-routes.json';
const SWITCH = 'dgd-enabled.json';
const MACS = 'gateway-macs.json';
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

const ip = z.string().refine((s) => isIP(s) !== 0, { message: 'is not an IP address' });
const family = z.union([z.literal(4), z.literal(6)]);
const ifindex = z.number().int().min(0);
const nexthop = z
  .object({
    gateway: ip.nullable(),
    ifindex,
    ifname: z.string().nullable().optional(),
    weight: z.number().int().min(0),
    flags: z.number().int().optional(),
  })
  .passthrough();
// Fields the engine reads are checked; the rest of the kernel's route is carried through.
const kernelRoute = z
  .object({
    family,
    dst: z.string().min(1),
    table: z.number().int().min(0),
    metric: z.number().int().min(0),
    tos: z.number().int().min(0),
    gateway: ip.nullable(),
    ifindex: ifindex.nullable(),
    ifname: z.string().nullable().optional(),
    nexthops: z.array(nexthop).nullable(),
    protocol: z.number().int().optional(),
    nhid: z.number().int().optional(),
  })
  .passthrough();
const journalEntry = z
  .object({
    key: z.string().min(1),
    original: kernelRoute,
    removed: z.array(z.string().min(1)).min(1),
    at: z.string(),
    boot_id: z.string().nullable().optional(),
  })
  .passthrough();
const nexthopObject = z
  .object({
    id: z.number().int().min(1),
    family: family.nullable(),
    protocol: z.number().int(),
    gateway: ip.nullable(),
    ifindex: ifindex.nullable(),
    ifname: z.string().nullable().optional(),
    blackhole: z.boolean(),
    fdb: z.boolean(),
    group: z.array(z.object({ id: z.number().int(), weight: z.number().int() }).passthrough()).nullable(),
    groupType: z.enum(['mpath', 'resilient']).nullable(),
  })
  .passthrough();
const groupEntry = z
  .object({
    id: z.number().int().min(1),
    original: nexthopObject,
    members: z.record(z.string().nullable()),
    removed: z.array(z.string().min(1)),
    at: z.string(),
    boot_id: z.string().nullable().optional(),
  })
  .passthrough();

export interface FileStoreOptions {
  /** Writes go through it (retried on failure, never failing the caller); absent: a write may throw. */
  writer?: DurableWriter;
  /** Where a journal entry set aside is reported. */
  log?: EventLog;
}

interface Loaded {
  entries: JournalEntry[];
  groups: GroupJournalEntry[];
}

export class FileStore implements DgdStore {
  private loaded: Promise<Loaded> | null = null;

  constructor(
    readonly dir: string,
    private readonly opts: FileStoreOptions = {},
  ) {}

  get journalPath(): string {
    return path.join(this.dir, JOURNAL);
  }

  async loadJournal(): Promise<JournalEntry[]> {
    return (await this.load()).entries;
  }

  async loadGroupJournal(): Promise<GroupJournalEntry[]> {
    return (await this.load()).groups;
  }

  /** Read and validate the journal file once (both lists come from it). */
  private load(): Promise<Loaded> {
    this.loaded ??= this.readJournal();
    return this.loaded;
  }

  private async readJournal(): Promise<Loaded> {
    const data = await readJson(this.journalPath);
    if (data === null) return { entries: [], groups: [] };
    const entries = (data as { entries?: unknown } | null)?.entries;
    if (!Array.isArray(entries))
      throw new IpdeadgateError(
        'ERR_JOURNAL',
        `${this.journalPath} is not a journal of withdrawn routes; move it away to start fresh`,
      );
    const groups = (data as { nexthop_groups?: unknown }).nexthop_groups ?? [];
    if (!Array.isArray(groups))
      throw new IpdeadgateError(
        'ERR_JOURNAL',
        `${this.journalPath}: nexthop_groups is not a list; move the file away to start fresh`,
      );
    const rejected: { list: string; index: number; entry: unknown; problem: string }[] = [];
    const keep = <T>(list: string, items: unknown[], schema: z.ZodTypeAny): T[] =>
      items.flatMap((entry, index) => {
        const r = schema.safeParse(entry);
        if (r.success) return [r.data as T];
        const issue = r.error.issues[0]!;
        rejected.push({
          list,
          index,
          entry,
          problem: `${issue.path.join('.') || '(the entry)'}: ${issue.message}`,
        });
        return [];
      });
    const out = {
      entries: keep<JournalEntry>('entries', entries, journalEntry),
      groups: keep<GroupJournalEntry>('nexthop_groups', groups, groupEntry),
    };
    if (rejected.length > 0) await this.setAside(rejected, out);
    return out;
  }

  /**
   * Keep the bad entries in a file of their own (for whoever wants to look), and the journal
   * without them: a bad entry is never used and never blocks the good ones.
   */
  private async setAside(
    rejected: { list: string; index: number; entry: unknown; problem: string }[],
    good: Loaded,
  ): Promise<void> {
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    let file: string | null = path.join(this.dir, `${JOURNAL}.rejected-${stamp}`);
    try {
      await writeFileAtomic(file, JSON.stringify({ from: this.journalPath, rejected }, null, 1) + '\n');
    } catch {
      // A full disk: the entries are still refused (and named in the events), just not kept.
      file = null;
    }
    for (const r of rejected)
      this.opts.log?.event(
        'journal_entry_rejected',
        {
          journal: this.journalPath,
          list: r.list,
          index: r.index,
          problem: r.problem,
          set_aside_in: file,
          entry: file === null ? JSON.stringify(r.entry)?.slice(0, 2000) : undefined,
          note: 'not restored nor used; the other entries are',
        },
        'error',
      );
    await this.saveJournal(good.entries, good.groups);
  }

  async saveJournal(entries: JournalEntry[], groups: GroupJournalEntry[] = []): Promise<void> {
    const body =
      groups.length > 0 ? { version: 1, entries, nexthop_groups: groups } : { version: 1, entries };
    const text = JSON.stringify(body, null, 1) + '\n';
    await this.write(this.journalPath, text);
  }

  async loadEnabled(): Promise<boolean | null> {
    const data = (await readJson(path.join(this.dir, SWITCH))) as { enabled?: unknown } | null;
    return typeof data?.enabled === 'boolean' ? data.enabled : null;
  }

  async saveEnabled(enabled: boolean): Promise<void> {
    await this.write(path.join(this.dir, SWITCH), JSON.stringify({ enabled }) + '\n');
  }

  private async write(file: string, text: string): Promise<void> {
    if (this.opts.writer) await this.opts.writer.write(file, () => writeFileAtomic(file, text));
    else await writeFileAtomic(file, text);
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
    await this.write(path.join(this.dir, MACS), JSON.stringify({ version: 1, macs }, null, 1) + '\n');
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
