// `ipdeadgate status [--json]`: daemon state, gateways, their routes, tunnel links and sessions.
import type { Command } from 'commander';
import { controlRequest } from '../daemon/control';
import type { DgdStatus } from '../dgd/engine';
import type { TunnelStatus } from '../tunnel/node';
import { tableName } from '../sys/rtnl';
import { action, DEFAULT_CONTROL, printJson } from './common';

type Status = DgdStatus & {
  pid: number;
  started_at: string;
  config: string | null;
  tunnel: TunnelStatus | null;
};

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('daemon state, gateways and their routes, tunnel links and sessions')
    .option('--json', 'machine-readable output')
    .option('--control <path>', 'control socket', DEFAULT_CONTROL)
    .action(
      action(async (opts: { json?: boolean; control: string }) => {
        const status = (await controlRequest(opts.control, 'status')) as Status;
        if (opts.json) printJson(status);
        else process.stdout.write(formatStatus(status));
      }),
    );
}

export function formatStatus(s: Status): string {
  // `ipdeadgate tunnel --control PATH` serves only its tunnel.
  if (!Array.isArray(s.gateways))
    return (s.tunnel ? formatTunnel(s.tunnel) : ['no status']).join('\n') + '\n';
  const lines: string[] = [];
  lines.push(`dead gateway detection: ${s.enabled ? 'on' : 'OFF'}   (pid ${s.pid}, since ${s.started_at})`);
  if (s.last_scan?.at)
    lines.push(
      `last scan: ${s.last_scan.sockets} TCP sockets, ${s.last_scan.retransmitting} retransmitting, ${s.last_scan.duration_ms} ms`,
    );
  if (s.forwarded) {
    const f = s.forwarded;
    const per = f.interfaces.map(
      (i) =>
        `${i.interface}${i.sampling > 1 ? ` (1 flow in ${i.sampling})` : ''}: ${i.frames} segments, ${i.retransmissions} sent again`,
    );
    lines.push(
      `forwarded traffic: ${f.method === 'capture' ? `capture on ${per.join(', ') || 'no interface yet'}` : 'not watched'}`,
    );
  }
  if (s.flow_resume) {
    const r = s.flow_resume;
    const per = r.recorders.map((x) => `${x.interface} ${x.flows} (capture ${x.open ? 'open' : 'closed'})`);
    lines.push(
      `flow resume: ${r.on ? `${r.recorded_flows} flows recorded${per.length ? `: ${per.join(', ')}` : ''}` : 'off'}`,
    );
  }
  const ct = conntrackLine(s.conntrack);
  if (ct) lines.push(ct);
  if (s.gateways.length === 0) lines.push('no gateways in the managed tables');
  for (const g of s.gateways) {
    lines.push('');
    lines.push(
      `gateway ${g.address} on ${g.interface}${linkNote(g.link)}: ${g.state.toUpperCase()}${g.mac ? `  mac ${g.mac}` : ''}`,
    );
    const v = g.last_verification;
    if (v)
      lines.push(
        `  last verification ${v.at}: ${v.alive ? 'alive' : 'no answer'}` +
          (v.arp_rtt_ms !== null ? `, arp ${v.arp_rtt_ms.toFixed(2)} ms` : '') +
          (v.echo_rtt_ms !== null ? `, echo ${v.echo_rtt_ms.toFixed(2)} ms` : ', echo unanswered') +
          `, ${v.probes_sent} probes, ${v.duration_ms} ms`,
      );
    const t = g.triggers;
    lines.push(
      `  triggers: retransmit ${t.retransmit}, aggregate ${t.aggregate ?? 0}, neighbour FAILED ${t.neighbour_failed}, active probe ${t.active_probe}, sighting ${t.sighting}`,
    );
    if (g.active_probing)
      lines.push(
        `  active probing every ${g.active_probing.interval_ms} ms, dead after ${g.active_probing.misses} misses`,
      );
    if (g.next_poll) lines.push(`  next poll: ${g.next_poll}`);
    if (g.hold_down_ms)
      lines.push(`  held down (flapping) for another ${Math.round(g.hold_down_ms / 1000)} s`);
    for (const r of g.routes) {
      const via = r.nexthops
        ? r.nexthops.map((n) => `${n.gateway}*${n.weight}`).join(' ')
        : (r.gateway ?? '');
      const nh = r.nhid ? ` nhid ${r.nhid}` : '';
      const owner = r.owner ? ` proto ${r.owner}` : '';
      // Tables by name, as `routes` and iproute2 print them (main, not 254).
      const table = typeof r.table === 'number' ? tableName(r.table) : String(r.table);
      lines.push(`  route ${r.dst}${nh} via ${via} table ${table} metric ${r.metric}${owner}: ${r.state}`);
    }
    for (const tr of g.transitions.slice(-5)) lines.push(`  ${tr.at} ${tr.from} -> ${tr.to}: ${tr.reason}`);
  }
  for (const m of s.withdrawn_nexthop_members ?? [])
    lines.push(
      '',
      `nexthop group ${m.id} (proto ${m.owner}): ${m.original} -> now ${m.now}${m.contested ? ' (contested: its owner puts members back)' : ''}`,
    );
  for (const o of s.route_owners ?? []) {
    const how = o.mode === 'unreachable' ? ' (found, NOT ANSWERING)' : o.mode === 'found' ? ' (found)' : '';
    lines.push(
      '',
      `routing daemon ${o.owner}${how}: told of dead gateways: ${o.dead_gateways.join(', ') || 'none'}`,
    );
    if (o.unprotected_routes?.length) {
      lines.push(
        `  UNPROTECTED (it cannot be told of a dead gateway): ${o.unprotected_routes.length} route(s)`,
      );
      for (const r of o.unprotected_routes) lines.push(`    ${r}`);
      if (o.hint) lines.push(`  to fix: ${o.hint}`);
    }
    for (const a of o.applied) lines.push(`  applied: ${a}`);
    if (o.kept.length) lines.push(`  kept (last route): ${o.kept.join(', ')}`);
    for (const p of o.problems) lines.push(`  problem: ${p}`);
    if (o.last_error) lines.push(`  ERROR: ${o.last_error}`);
  }
  if (s.tunnel) lines.push('', ...formatTunnel(s.tunnel));
  return lines.join('\n') + '\n';
}

/** The tunnel part of `status`: one line per link, then the session counters. */
export function formatTunnel(t: TunnelStatus): string[] {
  const lines = [`tunnel ${t.name} (${t.role}): ${t.links.length} link(s)`];
  for (const l of t.links) {
    const rtt = l.rtt_ms === null ? 'rtt -' : `rtt ${l.rtt_ms.toFixed(2)} ms`;
    const services = Object.keys(l.services).join(', ') || 'none';
    lines.push(
      `  link ${l.peer || '?'} ${l.direction === 'dial' ? 'to' : 'from'} ${l.address}: ${l.state.toUpperCase()}, ${rtt}, ` +
        `${l.streams} streams, in ${l.bytes_in} B, out ${l.bytes_out} B, reconnects ${l.reconnects}; services: ${services}` +
        (l.last_error ? `; last error: ${l.last_error}` : ''),
    );
  }
  const se = t.sessions;
  const refusals = Object.entries(se.refusals)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  lines.push(
    `  sessions: ${se.count} open, ${se.opened} opened, close timeouts ${se.close_timeouts}, reaped ${se.reaped}` +
      (refusals ? `, refused: ${refusals}` : ''),
  );
  // Services a peer announced but may not offer (its certificate or `peers:` does not name them):
  // a peer that announces what nobody gets is a misconfiguration, or an attempt.
  const ignored = Object.entries(t.announcements_ignored ?? {})
    .map(([rule, n]) => `${n} by ${rule === 'peers' ? 'tunnel.peers' : 'its certificate'}`)
    .join(', ');
  if (ignored) lines.push(`  announced services ignored: ${ignored} (event tunnel_announcement_ignored)`);
  return lines;
}

/** dgd.conntrack: the setting, and what following the routes has deleted (older daemons: none). */
function conntrackLine(c: DgdStatus['conntrack'] | undefined): string | null {
  if (!c) return null;
  if (!c.follow) return 'conntrack follows the routes: off';
  if (c.available === false) return 'conntrack follows the routes: on (conntrack is not loaded here)';
  const last = c.last
    ? `; last after a ${c.last.after}${c.last.gateway ? ` of ${c.last.gateway}` : ''}: ` +
      `${c.last.deleted} of ${c.last.examined} deleted in ${c.last.ms} ms`
    : '';
  return (
    `conntrack follows the routes: on, ${c.follows} route change${c.follows === 1 ? '' : 's'} followed, ` +
    `${c.deleted} of ${c.examined} entries examined deleted` +
    `${c.truncated > 0 ? `, ${c.truncated} cut at max_entries` : ''}${last}`
  );
}

/** How the text status says a gateway's interface is not up (older daemons do not report it). */
function linkNote(link: string | undefined): string {
  if (link === 'down') return ' (interface DOWN: not verified; withdrawn routes wait for it)';
  if (link === 'absent') return ' (interface GONE: withdrawn routes wait for one of that name)';
  return '';
}
