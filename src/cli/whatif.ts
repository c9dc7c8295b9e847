// `ipdeadgate what-if GATEWAY [--config FILE] [--json]`: a dry run of GATEWAY's death against the
// live tables. The route keeper's own plan (src/dgd/whatif.ts over src/dgd/routeplan.ts) decides
// which routes and nexthop groups would change, which routing daemons would be told, and what
// keep_last_route would keep; then the current flows (local TCP sockets by sock_diag, forwarded
// ones by conntrack) whose route goes through GATEWAY now are listed with where they would go.
// Nothing is changed. With a daemon running, the gateways it already holds dead and its journal
// (the state directory) are part of the plan, as they would be in a real withdrawal.
import type { Command } from 'commander';
import { UsageError } from '../errors';
import { controlRequest } from '../daemon/control';
import { DEFAULT_STATE_DIR } from '../daemon/statedir';
import { FileStore } from '../dgd/store';
import { SystemPorts } from '../dgd/systemports';
import { socketFlowKey } from '../dgd/flowkey';
import { gatewayKey } from '../dgd/routeplan';
import type { KernelNexthopObject, KernelRoute } from '../dgd/ports';
import { planWhatIf, whereFlowGoes, type WhatIfPlan } from '../dgd/whatif';
import { openConntrack } from '../sys/conntrack';
import { formatEndpoint, normalizeIp } from '../sys/ipaddr';
import { openRtnl, type FlowKey } from '../sys/rtnl';
import { dumpTcpSockets } from '../sys/sockdiag';
import { DEFAULT_CONTROL, action, printJson } from './common';

/** Flows looked at, at most (each distinct destination costs one route lookup). */
const MAX_LOOKUPS = 5000;
const CONNTRACK_LIMIT = 20_000;
const FLOW_SAMPLES = 10;

export interface WhatIfFlow {
  kind: 'local' | 'forwarded';
  flow: string;
  /** The route it takes now (the most specific one through the gateway that holds its destination). */
  route: string;
  /** Where it would go. */
  to: string;
}

export interface WhatIfReport extends WhatIfPlan {
  dry_run: true;
  keep_last_route: boolean;
  owners_configured: string[];
  /** The gateways the running daemon already holds dead (null: no daemon answered). */
  daemon_dead_gateways: string[] | null;
  flows: {
    local: number;
    forwarded: number;
    /** Flows examined (sockets and conntrack entries) and whether the bounds cut the count short. */
    examined: number;
    truncated: boolean;
    samples: WhatIfFlow[];
  };
  /** Some route or flow would move. */
  would_move: boolean;
}

export function formatWhatIf(r: WhatIfReport): string {
  const out: string[] = [];
  out.push(`What if ${r.gateway} died now (a dry run: nothing was changed)`);
  out.push(`  next hop on: ${r.interfaces.join(', ') || 'no interface (no route goes through it)'}`);
  for (const w of r.warnings) out.push(`  !! ${w}`);
  const section = (title: string, lines: string[]) => {
    if (lines.length === 0) return;
    out.push('', `  ${title}:`);
    for (const l of lines) out.push(`    ${l}`);
  };
  section(
    'Routes that would change',
    r.routes.map(
      (c) =>
        `${c.route}\n      -> ${c.op === 'delete' ? 'deleted' : `replaced by ${c.to}`}; traffic ${c.instead[0] ? `takes ${c.instead[0]}` : 'has no other route'}`,
    ),
  );
  section(
    'Nexthop groups that would change',
    r.groups.map((g) => `${g.group} -> ${g.to}`),
  );
  section('Groups left in place, their routes withdrawn instead (every member dead)', r.emptied_groups);
  section('Routes kept (keep_last_route)', r.kept);
  section(
    'Routing daemons that would be told',
    r.handed_over.map((h) => `${h.owner}: ${h.routes.join('; ')}`),
  );
  section(
    `Flows through ${r.gateway} now that would move (${r.flows.local} local, ${r.flows.forwarded} forwarded${r.flows.truncated ? ', counted within bounds' : ''})`,
    r.flows.samples.map((f) => `${f.kind.padEnd(9)} ${f.flow}\n      now ${f.route}\n      -> ${f.to}`),
  );
  if (r.daemon_dead_gateways === null)
    out.push('', '  (no daemon answered: planned without its dead gateways and with the journal on disk)');
  out.push('', r.would_move ? '  Something would move.' : '  NOTHING WOULD MOVE.');
  return out.join('\n') + '\n';
}

function parseGateway(text: string): { address: string; ifname: string | null } {
  const i = text.indexOf('%');
  const addr = i >= 0 ? text.slice(0, i) : text;
  try {
    return { address: normalizeIp(addr), ifname: i >= 0 ? text.slice(i + 1) : null };
  } catch {
    throw new UsageError(
      `GATEWAY must be an IPv4 or IPv6 address (fe80::1%eth0 for a link-local one), not "${text}"`,
    );
  }
}

export async function whatIf(
  gatewayText: string,
  opts: { config?: string; stateDir: string; control: string },
): Promise<WhatIfReport> {
  const { address, ifname } = parseGateway(gatewayText);
  // The daemon's module (the whole engine) only when the command runs: see ./daemon.ts.
  const { loadDaemonConfig } = await import('../daemon/daemon');
  const { config, tables } = await loadDaemonConfig(opts.config);
  const rtnl = await openRtnl();
  const ports = new SystemPorts(rtnl);
  try {
    await ports.refreshLinks();
    const routes = await ports.listRoutes(tables);
    const objectList = await ports.listNexthops();
    const objects = new Map(objectList.map((n) => [n.id, n]));
    const ifindexes = new Set<number>();
    const hops = [
      ...routes.flatMap(
        (r) =>
          (r.nexthops ?? [{ gateway: r.gateway, ifindex: r.ifindex }]) as {
            gateway: string | null;
            ifindex: number | null;
          }[],
      ),
      ...objectList.map((o) => ({ gateway: o.gateway ?? null, ifindex: o.ifindex ?? null })),
    ];
    for (const h of hops) {
      if (!h.gateway || h.ifindex === null) continue;
      let a: string;
      try {
        a = normalizeIp(h.gateway);
      } catch {
        continue;
      }
      if (a === address && (ifname === null || ports.ifname(h.ifindex) === ifname)) ifindexes.add(h.ifindex);
    }
    const store = new FileStore(opts.stateDir);
    const journal = await store.loadJournal().catch(() => []);
    const groupJournal = await store.loadGroupJournal().catch(() => []);
    let daemonDead: string[] | null = null;
    try {
      const st = (await controlRequest(opts.control, 'status', {}, 2000)) as {
        gateways?: { address: string; interface: string; state: string }[];
      };
      daemonDead = (st.gateways ?? [])
        .filter((g) => g.state === 'dead')
        .map((g) => `${g.address}%${g.interface}`);
    } catch {
      /* no daemon: planned from the kernel and the journal alone */
    }
    const deadKeys = (daemonDead ?? []).flatMap((k) => {
      const i = k.lastIndexOf('%');
      const idx = ports.ifindexOf(k.slice(i + 1));
      return idx === undefined ? [] : [gatewayKey(k.slice(0, i), idx)];
    });
    const plan = planWhatIf({
      address,
      ifindexes: [...ifindexes].sort((a, b) => a - b),
      ifname: (i) => ports.ifname(i),
      routes,
      objects,
      journal,
      groupJournal,
      deadKeys,
      keepLastRoute: config.dgd.keep_last_route,
      ownersConfigured: Object.keys(config.dgd.owners ?? {}).filter(
        (k) => (config.dgd.owners as Record<string, unknown>)[k] != null,
      ),
    });
    const flows = await flowsVia(rtnl, address, ifindexes, plan, routes, objects);
    return {
      dry_run: true,
      ...plan,
      keep_last_route: config.dgd.keep_last_route,
      owners_configured: Object.keys(config.dgd.owners ?? {}).filter(
        (k) => (config.dgd.owners as Record<string, unknown>)[k] != null,
      ),
      daemon_dead_gateways: daemonDead,
      flows,
      would_move: plan.withdrawn.length > 0 || plan.handed_over.length > 0,
    };
  } finally {
    await ports.close().catch(() => undefined);
    rtnl.close();
  }
}

/** Current flows whose route goes through the gateway now (bounded), with where they would go. */
async function flowsVia(
  rtnl: Awaited<ReturnType<typeof openRtnl>>,
  address: string,
  ifindexes: ReadonlySet<number>,
  plan: WhatIfPlan,
  routes: readonly KernelRoute[],
  objects: ReadonlyMap<number, KernelNexthopObject>,
): Promise<WhatIfReport['flows']> {
  const where = (r: { ifindex: number; table: number }, dst: string) =>
    whereFlowGoes(plan, routes, objects, gatewayKey(address, r.ifindex), dst, r.table);
  const out: WhatIfReport['flows'] = { local: 0, forwarded: 0, examined: 0, truncated: false, samples: [] };
  if (ifindexes.size === 0) return out;
  const cache = new Map<
    string,
    { gateway: string | null; ifindex: number; dst: string; table: number } | null
  >();
  const lookup = async (dst: string, key: FlowKey & { src?: string }) => {
    const k = JSON.stringify([dst, key]);
    if (cache.has(k)) return cache.get(k)!;
    if (cache.size >= MAX_LOOKUPS) {
      out.truncated = true;
      return null;
    }
    let r = null;
    try {
      r = await rtnl.lookupRoute(dst, key);
    } catch {
      /* no route: not through the gateway */
    }
    cache.set(k, r);
    return r;
  };
  const via = (r: { gateway: string | null; ifindex: number } | null) => {
    if (!r?.gateway || !ifindexes.has(r.ifindex)) return false;
    try {
      return normalizeIp(r.gateway) === address;
    } catch {
      return false;
    }
  };
  const sample = (f: WhatIfFlow) => {
    if (out.samples.length < FLOW_SAMPLES) out.samples.push(f);
  };
  const sockets = await dumpTcpSockets({ states: ['ESTABLISHED', 'SYN-SENT'], info: false }).catch(() => []);
  for (const s of sockets) {
    out.examined++;
    const r = await lookup(s.dst, { ...socketFlowKey(s), src: s.src });
    if (!via(r)) continue;
    out.local++;
    sample({
      kind: 'local',
      flow: `${formatEndpoint(s.src, s.srcPort)} > ${formatEndpoint(s.dst, s.dstPort)}`,
      ...where(r!, s.dst),
    });
  }
  try {
    const ct = openConntrack();
    try {
      const dump = await ct.dump({ limit: CONNTRACK_LIMIT });
      if (dump.dropped > 0) out.truncated = true;
      for (const e of dump.entries) {
        out.examined++;
        const t = e.orig;
        // Local flows are counted from their sockets already.
        if (sockets.some((s) => s.src === t.src && s.dst === t.dst && s.srcPort === t.sport)) continue;
        const r = await lookup(t.dst, e.mark ? { mark: e.mark } : {});
        if (!via(r)) continue;
        out.forwarded++;
        sample({
          kind: 'forwarded',
          flow: `${formatEndpoint(t.src, t.sport ?? 0)} > ${formatEndpoint(t.dst, t.dport ?? 0)}`,
          ...where(r!, t.dst),
        });
      }
    } finally {
      ct.close();
    }
  } catch {
    /* conntrack not loaded or not permitted: local flows only */
  }
  return out;
}

export function registerWhatIf(program: Command): void {
  program
    .command('what-if')
    .description(
      'dry run: what would move if GATEWAY died now (routes, nexthop groups, routing daemons, flows); changes nothing',
    )
    .argument('<gateway>', 'the gateway address (fe80::1%eth0 for a link-local one)')
    .option('--config <file>', "the daemon's YAML config (tables, keep_last_route, dgd.owners)")
    .option(
      '--state-dir <dir>',
      "the daemon's state directory (its journal of withdrawn routes)",
      DEFAULT_STATE_DIR,
    )
    .option('--control <path>', "a running daemon's control socket (its dead gateways)", DEFAULT_CONTROL)
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      '\nExamples:\n  ipdeadgate what-if 192.0.2.1 --config /etc/ipdeadgate/ipdeadgate.yaml\n' +
        '  ipdeadgate what-if 2001:db8::1 --json | jq .withdrawn\n',
    )
    .action(
      action(
        async (
          gateway: string,
          opts: { config?: string; stateDir: string; control: string; json?: boolean },
        ) => {
          const r = await whatIf(gateway, opts);
          if (opts.json) printJson(r);
          else process.stdout.write(formatWhatIf(r));
        },
      ),
    );
}
