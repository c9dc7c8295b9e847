// Incident records on disk, in the state directory: one JSON file per incident
// (incidents/00000042.json) and an index of their summaries (incidents/index.json) that
// `ipdeadgate incidents` reads alone, so the list answers quickly with a thousand records kept.
// Written like the journal (src/util/atomic.ts: temp file, fsync, rename, fsync the directory), so
// after a crash each file is the old or the new content, never torn; the record is written before
// the index, so the index never names a record that is not on disk.
//
// Bounded: at most MAX_INCIDENTS records (the oldest removed first) of at most MAX_RECORD_BYTES
// each (./incidents.ts trims a record's timeline to fit). Reading needs no daemon: the CLI reads
// the same files.
import { readdir, readFile, rm } from 'node:fs/promises';
import * as path from 'node:path';
import { z } from 'zod';
import { IpdeadgateError } from '../errors';
import { writeFileAtomic } from '../util/atomic';

/** Records kept; the oldest are removed first. */
export const MAX_INCIDENTS = 1000;
/** Bytes one record may take on disk (its timeline is trimmed in the middle to fit). */
export const MAX_RECORD_BYTES = 64 * 1024;

const DIR = 'incidents';
const INDEX = 'index.json';
const RECORD_RE = /^(\d{8})\.json$/;

export type IncidentOutcome = 'failover' | 'nothing_moved' | 'downstream_problem' | 'unverified';

/** One line of `incidents`: what the index holds per incident. */
export interface IncidentSummary {
  id: number;
  gateway: string;
  interface: string;
  started_at: string;
  /** null while the incident is open (the gateway is still dead, or the verdict is pending). */
  ended_at: string | null;
  verdict: 'dead' | 'alive' | null;
  outcome: IncidentOutcome;
  /** From the first trigger: the dead verdict's routes changed (null: nothing switched). */
  switch_ms: number | null;
  /** From the first trigger: the gateway usable again and its routes restored (null: still out). */
  outage_ms: number | null;
  /** One line: what moved ("2 routes, 1 group, frr told, 3 flows resent, 4 conntrack deleted"). */
  moved: string;
}

export interface TimelineEntry {
  /** Milliseconds from the incident's first trigger. */
  t_ms: number;
  at: string;
  event: string;
  text: string;
  /** The event's own fields (samples, routes, steps), bounded. */
  detail?: Record<string, unknown>;
}

export interface SocketSampleRecord {
  src: string;
  dst: string;
  state: string;
  retransmits: number;
  wire?: boolean;
}

export interface OwnerToldRecord {
  owner: string;
  routes: string[];
  applied: string[];
  kept: string[];
  ok: boolean;
}

/** The whole record of one incident (`incidents ID --json`). */
export interface IncidentRecord extends IncidentSummary {
  version: 1;
  trigger: { reason: string; sockets: number; samples: SocketSampleRecord[] } | null;
  durations: {
    to_verdict_ms: number | null;
    to_switch_ms: number | null;
    /** To the first segment of a triggering flow leaving towards another next hop (flight recorder). */
    to_resume_ms: number | null;
    outage_ms: number | null;
  };
  /** Verification steps of the verdicts, each at its time from the first trigger. */
  verification: { t_ms: number; step: string; detail?: string }[];
  routes_withdrawn: string[];
  groups_changed: string[];
  routes_kept: string[];
  routes_restored: string[];
  owners_told: OwnerToldRecord[];
  flows_resent: { flows: number; resent: number; detail: unknown[] } | null;
  conntrack: { deleted: number; examined: number; samples: string[] } | null;
  polls: number;
  capture: {
    file: string;
    packets: number;
    bytes: number;
    /** TCP segment headers of the triggering flows in it. */
    segments?: number;
    /** The flows whose segments it holds: those the triggers named, and others sent again towards the dead gateway. */
    flows?: string[];
    first_segment_via_new_gateway?: { at: string; t_ms: number; flow: string; mac: string } | null;
  } | null;
  timeline: TimelineEntry[];
  /** Timeline entries left out to stay within the bounds (counted, never silently). */
  timeline_dropped: number;
}

const summarySchema = z.object({
  id: z.number().int().nonnegative(),
  gateway: z.string(),
  interface: z.string(),
  started_at: z.string(),
  ended_at: z.string().nullable(),
  verdict: z.enum(['dead', 'alive']).nullable(),
  outcome: z.enum(['failover', 'nothing_moved', 'downstream_problem', 'unverified']),
  switch_ms: z.number().nullable(),
  outage_ms: z.number().nullable(),
  moved: z.string(),
});
const VERDICTS: readonly unknown[] = ['dead', 'alive', null];
const OUTCOMES: readonly unknown[] = ['failover', 'nothing_moved', 'downstream_problem', 'unverified'];
const isNumOrNull = (x: unknown) => x === null || typeof x === 'number';
/**
 * The index's entries, checked by hand as summarySchema would: the list is a command an operator
 * waits for, and zod's parse of a thousand entries was a sixth of its time (node start included).
 */
function isSummary(x: unknown): x is IncidentSummary {
  if (typeof x !== 'object' || x === null) return false;
  const o = x as Record<string, unknown>;
  return (
    Number.isInteger(o.id) &&
    (o.id as number) >= 0 &&
    typeof o.gateway === 'string' &&
    typeof o.interface === 'string' &&
    typeof o.started_at === 'string' &&
    (o.ended_at === null || typeof o.ended_at === 'string') &&
    VERDICTS.includes(o.verdict) &&
    OUTCOMES.includes(o.outcome) &&
    isNumOrNull(o.switch_ms) &&
    isNumOrNull(o.outage_ms) &&
    typeof o.moved === 'string'
  );
}
const recordSchema = summarySchema
  .extend({
    version: z.literal(1),
    timeline: z.array(
      z.object({ t_ms: z.number(), at: z.string(), event: z.string(), text: z.string() }).passthrough(),
    ),
  })
  .passthrough();

/**
 * The record as written, within MAX_RECORD_BYTES: past it the middle of the timeline goes first
 * (the cause and the latest stay; what was left out is counted), then the entries' details.
 */
export function fitRecord(r: IncidentRecord): string {
  let text = JSON.stringify(r, null, 1) + '\n';
  while (Buffer.byteLength(text) > MAX_RECORD_BYTES && r.timeline.length > 10) {
    const n = Math.ceil(r.timeline.length / 10);
    r.timeline.splice(Math.floor(r.timeline.length / 2), n);
    r.timeline_dropped += n;
    text = JSON.stringify(r, null, 1) + '\n';
  }
  if (Buffer.byteLength(text) > MAX_RECORD_BYTES) {
    for (const e of r.timeline) delete e.detail;
    text = JSON.stringify(r) + '\n';
  }
  return text;
}

export function incidentsDir(stateDir: string): string {
  return path.join(stateDir, DIR);
}

function recordName(id: number): string {
  return `${String(id).padStart(8, '0')}.json`;
}

export function summaryOf(r: IncidentRecord): IncidentSummary {
  return {
    id: r.id,
    gateway: r.gateway,
    interface: r.interface,
    started_at: r.started_at,
    ended_at: r.ended_at,
    verdict: r.verdict,
    outcome: r.outcome,
    switch_ms: r.switch_ms,
    outage_ms: r.outage_ms,
    moved: r.moved,
  };
}

/**
 * The index, newest last (as written). Rebuilt from the record files when it is missing or does not
 * parse (an older version, or edited by hand); a record that does not parse is skipped.
 */
export async function readIncidentIndex(stateDir: string): Promise<IncidentSummary[]> {
  const dir = incidentsDir(stateDir);
  let text: string | null = null;
  try {
    text = await readFile(path.join(dir, INDEX), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (text !== null) {
    try {
      const j = JSON.parse(text) as { version?: unknown; incidents?: unknown };
      if (j?.version === 1 && Array.isArray(j.incidents) && j.incidents.every(isSummary))
        return j.incidents.map((e: IncidentSummary) => ({
          id: e.id,
          gateway: e.gateway,
          interface: e.interface,
          started_at: e.started_at,
          ended_at: e.ended_at,
          verdict: e.verdict,
          outcome: e.outcome,
          switch_ms: e.switch_ms,
          outage_ms: e.outage_ms,
          moved: e.moved,
        }));
    } catch {
      /* rebuilt below */
    }
  }
  return (await readAllRecords(stateDir)).map(summaryOf);
}

/** Every record on disk, oldest first (the slow path: the index is missing). */
export async function readAllRecords(stateDir: string): Promise<IncidentRecord[]> {
  const dir = incidentsDir(stateDir);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: IncidentRecord[] = [];
  for (const name of names.filter((n) => RECORD_RE.test(n)).sort()) {
    try {
      out.push(parseRecord(await readFile(path.join(dir, name), 'utf8')));
    } catch {
      /* removed meanwhile, or not a record: skipped */
    }
  }
  return out;
}

function parseRecord(text: string): IncidentRecord {
  return recordSchema.parse(JSON.parse(text)) as unknown as IncidentRecord;
}

/** One record by id; a clear error when there is none. */
export async function readIncident(stateDir: string, id: number): Promise<IncidentRecord> {
  const file = path.join(incidentsDir(stateDir), recordName(id));
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new IpdeadgateError(
        'ERR_NO_INCIDENT',
        `no incident ${id} in ${incidentsDir(stateDir)} (\`ipdeadgate incidents\` lists them; the oldest are removed past ${MAX_INCIDENTS})`,
      );
    throw err;
  }
  try {
    return parseRecord(text);
  } catch (err) {
    throw new IpdeadgateError('ERR_INCIDENT', `${file} is not an incident record: ${(err as Error).message}`);
  }
}

/**
 * The daemon's writer: records are saved whole, then the index; saves are chained (one write at a
 * time, in order) and coalesced (a record changed several times while a write runs is written once
 * more, with its latest content).
 */
export class IncidentStore {
  private index: IncidentSummary[] = [];
  private readonly dirty = new Map<number, IncidentRecord>();
  private chain: Promise<void> = Promise.resolve();
  private scheduled = false;
  private nextId = 1;
  /** Records removed to stay within MAX_INCIDENTS since start. */
  removed = 0;
  writeErrors = 0;

  constructor(
    readonly stateDir: string,
    private readonly onError: (err: Error) => void = () => undefined,
    private readonly maxIncidents = MAX_INCIDENTS,
  ) {}

  get dir(): string {
    return incidentsDir(this.stateDir);
  }

  /** Read the index (and the open records) back after a restart. */
  async load(): Promise<IncidentRecord[]> {
    this.index = await readIncidentIndex(this.stateDir);
    // A record written just before a crash that kept its index entry from being written is on
    // disk but not in the index: its number is not given out again.
    let names: string[] = [];
    try {
      names = await readdir(this.dir);
    } catch {
      /* no directory yet */
    }
    const onDisk = names.map((n) => RECORD_RE.exec(n)?.[1]).filter((x): x is string => !!x);
    this.nextId = Math.max(0, ...this.index.map((s) => s.id), ...onDisk.map(Number)) + 1;
    const open: IncidentRecord[] = [];
    for (const s of this.index.filter((x) => x.ended_at === null))
      try {
        open.push(await readIncident(this.stateDir, s.id));
      } catch {
        /* the record is gone: nothing to continue */
      }
    return open;
  }

  allocateId(): number {
    return this.nextId++;
  }

  /** Queue a record for writing (with the index). */
  save(r: IncidentRecord): void {
    this.dirty.set(r.id, r);
    if (this.scheduled) return;
    this.scheduled = true;
    // A burst of events (steps, verdict, state, withdrawal) lands in one write.
    this.chain = this.chain.then(
      () =>
        new Promise<void>((resolve) =>
          setImmediate(() => {
            this.scheduled = false;
            this.writeDirty().then(resolve, (err: unknown) => {
              this.writeErrors++;
              this.onError(err as Error);
              resolve();
            });
          }),
        ),
    );
  }

  /** Every queued write done. */
  async flush(): Promise<void> {
    let last: Promise<void>;
    do {
      last = this.chain;
      await last;
    } while (last !== this.chain);
  }

  private async writeDirty(): Promise<void> {
    const records = [...this.dirty.values()];
    this.dirty.clear();
    if (records.length === 0) return;
    let indexChanged = false;
    for (const r of records) {
      await writeFileAtomic(path.join(this.dir, recordName(r.id)), fitRecord(r));
      const s = summaryOf(r);
      const i = this.index.findIndex((x) => x.id === r.id);
      // Most events change the record only: the index (1000 summaries) is rewritten when a summary changed.
      if (i >= 0 && JSON.stringify(this.index[i]) === JSON.stringify(s)) continue;
      indexChanged = true;
      if (i >= 0) this.index[i] = s;
      else this.index.push(s);
    }
    if (!indexChanged) return;
    this.index.sort((a, b) => a.id - b.id);
    const drop =
      this.index.length > this.maxIncidents
        ? this.index.splice(0, this.index.length - this.maxIncidents)
        : [];
    await writeFileAtomic(
      path.join(this.dir, INDEX),
      JSON.stringify({ version: 1, incidents: this.index }) + '\n',
    );
    // After the index no longer names them: a crash in between leaves a stray file, never a dangling entry.
    for (const s of drop) {
      await rm(path.join(this.dir, recordName(s.id)), { force: true });
      this.removed++;
    }
  }

  status(): { directory: string; incidents: number; removed: number; write_errors: number } {
    return {
      directory: this.dir,
      incidents: this.index.length,
      removed: this.removed,
      write_errors: this.writeErrors,
    };
  }
}
