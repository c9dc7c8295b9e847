// `ipdeadgate incidents [ID] [--json] [--state-dir DIR]`: the incident records the daemon keeps in
// its state directory (src/daemon/incidents.ts), read from the files, so it answers with the
// daemon stopped. Without ID the list, newest first (from the index alone); with ID one incident's
// timeline in milliseconds from its first trigger.
import type { Command } from 'commander';
import { UsageError } from '../errors';
import { DEFAULT_STATE_DIR } from '../daemon/statedir';
import {
  readIncident,
  readIncidentIndex,
  type IncidentRecord,
  type IncidentSummary,
} from '../daemon/incidentstore';
import { action, formatTable, intOption, printJson } from './common';

function secs(ms: number | null): string {
  return ms === null ? '-' : `${(ms / 1000).toFixed(3)} s`;
}

/** The list as `incidents` prints it: newest first. */
export function formatIncidentList(rows: readonly IncidentSummary[]): string {
  if (rows.length === 0) return 'no incidents recorded\n';
  const table = [
    ['ID', 'GATEWAY', 'INTERFACE', 'STARTED', 'VERDICT', 'OUTCOME', 'OUTAGE', 'SWITCH', 'MOVED'],
  ];
  for (const r of rows)
    table.push([
      String(r.id),
      r.gateway,
      r.interface,
      r.started_at,
      r.verdict ?? 'pending',
      r.outcome,
      r.ended_at === null ? 'ongoing' : r.verdict === 'dead' ? secs(r.outage_ms) : '-',
      secs(r.switch_ms),
      r.moved,
    ]);
  return formatTable(table);
}

/** One incident as `incidents ID` prints it: the timeline in ms from the first trigger. */
export function formatIncident(r: IncidentRecord): string {
  const out: string[] = [];
  const end = r.ended_at === null ? 'still open' : `ended ${r.ended_at}`;
  out.push(
    `Incident ${r.id}: gateway ${r.gateway} on ${r.interface}, ${r.outcome} (verdict ${r.verdict ?? 'pending'})`,
  );
  out.push(`  started ${r.started_at}, ${end}`);
  const d = r.durations;
  out.push(
    `  verdict after ${secs(d.to_verdict_ms)}, switched after ${secs(d.to_switch_ms)}, ` +
      `first segment through the new next hop after ${secs(d.to_resume_ms)}, outage ${secs(d.outage_ms)}`,
  );
  out.push(`  moved: ${r.moved}`);
  if (r.trigger) {
    out.push(`  triggered by ${r.trigger.reason}: ${r.trigger.sockets} socket(s)/flow(s); samples:`);
    for (const s of r.trigger.samples)
      out.push(
        `    ${s.src} > ${s.dst}  ${s.wire ? 'forwarded/on the wire' : s.state}  ${s.retransmits} retransmission(s)`,
      );
  }
  out.push('');
  out.push('  Timeline (ms from the first trigger):');
  const width = Math.max(...r.timeline.map((e) => String(e.t_ms).length), 1) + 1;
  for (const e of r.timeline) out.push(`  ${`+${e.t_ms}`.padStart(width)} ms  ${e.text}`);
  if (r.timeline_dropped > 0)
    out.push(`  (${r.timeline_dropped} entries left out to keep the record bounded)`);
  const list = (title: string, items: string[]) => {
    if (items.length === 0) return;
    out.push('', `  ${title}:`);
    for (const i of items) out.push(`    ${i}`);
  };
  list('Routes withdrawn', r.routes_withdrawn);
  list('Nexthop groups changed', r.groups_changed);
  list('Routes kept (keep_last_route)', r.routes_kept);
  list(
    'Routing daemons told',
    r.owners_told.map(
      (o) =>
        `${o.owner}${o.ok ? '' : ' (FAILED)'}: ${o.routes.join('; ')}${o.applied.length ? ` -> applied ${o.applied.join('; ')}` : ''}`,
    ),
  );
  if (r.flows_resent) list('Flows resent', [`${r.flows_resent.resent} of ${r.flows_resent.flows}`]);
  if (r.conntrack)
    list('Conntrack', [
      `${r.conntrack.deleted} of ${r.conntrack.examined} entries deleted`,
      ...r.conntrack.samples,
    ]);
  list('Routes restored', r.routes_restored);
  out.push('');
  if (r.capture) {
    const seg =
      r.capture.segments !== undefined
        ? `, ${r.capture.segments} TCP segment headers of the triggering flows`
        : '';
    out.push(`  Capture: ${r.capture.file} (${r.capture.packets} packets${seg})`);
    for (const f of r.capture.flows ?? []) out.push(`    segments of ${f}`);
    const first = r.capture.first_segment_via_new_gateway;
    if (first)
      out.push(`    first through the new next hop: +${first.t_ms} ms, ${first.flow} to ${first.mac}`);
    out.push(`    tcpdump -nner ${r.capture.file}`);
  } else
    out.push(
      '  Capture: none (written a few seconds after a dead verdict; see flight_recorder in the config)',
    );
  return out.join('\n') + '\n';
}

export function registerIncidents(program: Command): void {
  program
    .command('incidents')
    .description(
      "past incidents (newest first), or one incident's timeline; reads the state directory, no daemon needed",
    )
    .argument('[id]', 'an incident number from the list')
    .option('--json', 'print JSON')
    .option('--state-dir <dir>', "the daemon's state directory", DEFAULT_STATE_DIR)
    .option('-n, --limit <n>', 'at most this many incidents in the list (newest first)')
    .addHelpText(
      'after',
      '\nExamples:\n  ipdeadgate incidents\n  ipdeadgate incidents 12\n' +
        "  ipdeadgate incidents 12 --json | jq '.timeline[] | [.t_ms, .text]'\n",
    )
    .action(
      action(async (id: string | undefined, opts: { json?: boolean; stateDir: string; limit?: string }) => {
        if (id !== undefined) {
          if (!/^\d+$/.test(id))
            throw new UsageError(`the incident ID must be a number from the list, not "${id}"`);
          const r = await readIncident(opts.stateDir, Number(id));
          if (opts.json) printJson(r);
          else process.stdout.write(formatIncident(r));
          return;
        }
        const limit = opts.limit === undefined ? Infinity : intOption('--limit', opts.limit, 1);
        const rows = (await readIncidentIndex(opts.stateDir)).slice().reverse().slice(0, limit);
        if (opts.json) printJson(rows);
        else process.stdout.write(formatIncidentList(rows));
      }),
    );
}
