// `ipdeadgate probe GATEWAY [--json] [--interface IF] [--probes N] [--timeout DURATION]`: one dead
// gateway verification in the current network namespace, exactly as the daemon runs it (purge the
// neighbour entry, ARP/NDP probes, one echo to force the kernel; ARP/NDP decides).
// Exit 0 alive, 1 dead (or the probe could not run), 2 bad usage.
import { isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Command } from 'commander';
import { verifyGateway, type VerifyResult } from '../dgd/verify';
import { SystemError, UsageError } from '../errors';
import { ipv4ToBytes, ipv6ToBytes, normalizeIp } from '../sys/ipaddr';
import { EchoSocket, NeighbourLink } from '../sys/packet';
import { openRtnl, type Rtnl } from '../sys/rtnl';
import { parseDuration } from '../util/duration';
import { action, EXIT_FAILURE, EXIT_OK, intOption, printJson } from './common';

export const DEFAULT_PROBES = 3;
export const DEFAULT_INTERVAL = '250ms';
const MAX_INTERVAL_MS = 60_000;

export interface ProbeOptions {
  json?: boolean;
  interface?: string;
  probes?: string;
  timeout?: string;
}

/** What `probe --json` prints (snake_case, as every --json output). */
export interface ProbeJson {
  gateway: string;
  interface: string;
  alive: boolean;
  mac: string | null;
  arp_rtt_ms: number | null;
  echo_rtt_ms: number | null;
  probes_sent: number;
  duration_ms: number;
  mac_changed: boolean;
  /** The MAC the kernel had for the gateway before the purge, if any. */
  previous_mac: string | null;
  /** Other MACs that answered for the gateway (a neighbour conflict). */
  conflicts: string[];
  /** What was seen, in words. */
  reason: string;
  started_at: string;
  steps: { at_ms: number; step: string; detail?: string }[];
}

export function toProbeJson(r: VerifyResult, previousMac: string | null): ProbeJson {
  return {
    gateway: r.gateway,
    interface: r.interface,
    alive: r.alive,
    mac: r.mac,
    arp_rtt_ms: r.arpRttMs,
    echo_rtt_ms: r.echoRttMs,
    probes_sent: r.probesSent,
    duration_ms: r.durationMs,
    mac_changed: r.macChanged,
    previous_mac: previousMac,
    conflicts: r.conflicts,
    reason: r.reason,
    started_at: new Date(r.startedAt).toISOString(),
    steps: r.steps,
  };
}

export function formatProbe(p: ProbeJson): string {
  const proto = p.gateway.includes(':') ? 'NDP' : 'ARP';
  const ms = (v: number) => `${v.toFixed(2)} ms`;
  const probes = (n: number) => `${n} probe${n === 1 ? '' : 's'}`;
  const echo = p.echo_rtt_ms === null ? 'echo unanswered (informational)' : `echo ${ms(p.echo_rtt_ms)}`;
  if (p.alive) {
    const changed = p.mac_changed && p.previous_mac ? ` (the kernel had ${p.previous_mac})` : '';
    const conflict = p.conflicts.length > 0 ? `; CONFLICT: also answered from ${p.conflicts.join(', ')}` : '';
    return `${p.gateway} on ${p.interface}: alive, ${proto} reply from ${p.mac}${changed} in ${ms(p.arp_rtt_ms!)} after ${probes(p.probes_sent)}${conflict}; ${echo}\n`;
  }
  const why = p.mac ? p.reason : `no ${proto} reply to ${probes(p.probes_sent)}`;
  return `${p.gateway} on ${p.interface}: DEAD, ${why} in ${Math.round(p.duration_ms)} ms; ${echo}\n`;
}

/** A gateway must be a unicast address a neighbour can own. */
function checkUnicast(ip: string, family: 4 | 6): void {
  const b = family === 4 ? ipv4ToBytes(ip) : ipv6ToBytes(ip);
  const bad =
    family === 4
      ? b[0] === 0 || b[0] === 127 || b[0]! >= 224 || ip === '255.255.255.255'
      : b[0] === 0xff || b.every((x, i) => x === 0 || (i === 15 && x === 1));
  if (bad) throw new UsageError(`${ip} is not a unicast address a gateway can have`);
}

function isLocalAddress(ip: string): string | null {
  for (const [name, entries] of Object.entries(networkInterfaces()))
    for (const e of entries ?? []) {
      try {
        if (normalizeIp(e.address) === ip) return name;
      } catch {
        /* not an address we can compare */
      }
    }
  return null;
}

function isLinkLocal6(ip: string): boolean {
  const b = ipv6ToBytes(ip);
  return b[0] === 0xfe && (b[1]! & 0xc0) === 0x80;
}

/** Where the probe goes: the gateway's canonical address and its interface, or a UsageError. */
export async function locateGateway(
  rtnl: Rtnl,
  gatewayArg: string,
  ifnameOpt: string | undefined,
): Promise<{ gateway: string; family: 4 | 6; ifname: string; ifindex: number }> {
  const [bare, zone] = gatewayArg.split('%', 2) as [string, string | undefined];
  const family = isIPv4(bare) ? 4 : isIPv6(bare) ? 6 : 0;
  if (family === 0 || (zone !== undefined && family === 4))
    throw new UsageError(
      `"${gatewayArg}" is not an IP address (give the gateway as e.g. 198.18.1.1 or 2001:db8:1::1)`,
    );
  const gateway = normalizeIp(bare);
  checkUnicast(gateway, family);
  if (zone !== undefined && ifnameOpt !== undefined && zone !== ifnameOpt)
    throw new UsageError(`${gatewayArg} names interface ${zone} but --interface says ${ifnameOpt}`);
  const wantIf = ifnameOpt ?? zone;
  const local = isLocalAddress(gateway);
  if (local) throw new UsageError(`${gateway} is an address of this host (on ${local}), not a gateway`);

  let oif: number | undefined;
  if (wantIf !== undefined) {
    if (!/^[^\s/:%]{1,15}$/.test(wantIf)) throw new UsageError(`"${wantIf}" is not a valid interface name`);
    const link = await rtnl.linkByName(wantIf);
    if (!link) throw new UsageError(`no network interface named "${wantIf}"`);
    oif = link.ifindex;
  } else if (family === 6 && isLinkLocal6(gateway))
    throw new UsageError(
      `${gateway} is link-local: say on which interface (${gateway}%IF or --interface IF)`,
    );

  let route;
  try {
    route = await rtnl.lookupRoute(gateway, oif !== undefined ? { oif } : {});
  } catch (err) {
    if (err instanceof SystemError && ['ENETUNREACH', 'EHOSTUNREACH', 'ENODEV'].includes(err.code))
      throw new UsageError(
        `no route to ${gateway}${wantIf ? ` via ${wantIf}` : ''}: it is not on any connected network`,
        {
          cause: err,
        },
      );
    throw err;
  }
  if (route.gateway !== null)
    throw new UsageError(
      `${gateway} is not on-link: the kernel routes it via ${route.gateway} on ${route.ifname}; ` +
        `probe a directly connected gateway (such as ${route.gateway})`,
    );
  if (oif !== undefined && route.ifindex !== oif)
    throw new UsageError(`${gateway} is not reachable on ${wantIf}: the kernel would use ${route.ifname}`);
  if (route.ifname === 'lo')
    throw new UsageError(`${gateway} is routed to the loopback interface, not to a neighbour`);
  return { gateway, family, ifname: route.ifname, ifindex: route.ifindex };
}

export async function runProbe(gatewayArg: string, opts: ProbeOptions): Promise<number> {
  const probes = opts.probes === undefined ? DEFAULT_PROBES : intOption('--probes', opts.probes, 1, 100);
  let intervalMs: number;
  try {
    intervalMs = parseDuration(opts.timeout ?? DEFAULT_INTERVAL);
  } catch (err) {
    throw new UsageError(`--timeout: ${(err as Error).message}`);
  }
  if (intervalMs < 1 || intervalMs > MAX_INTERVAL_MS)
    throw new UsageError(`--timeout must be from 1ms to ${MAX_INTERVAL_MS / 1000}s, not ${opts.timeout}`);

  const rtnl = await openRtnl();
  let link: NeighbourLink | null = null;
  let echo: EchoSocket | null = null;
  try {
    const where = await locateGateway(rtnl, gatewayArg, opts.interface);
    const before = await rtnl.getNeighbour(where.ifindex, where.gateway).catch(() => null);
    const previousMac =
      before?.lladdr && !['FAILED', 'INCOMPLETE'].includes(before.state) ? before.lladdr : null;
    link = await NeighbourLink.open(where.ifname);
    const openedLink = link;
    const result = await verifyGateway(
      {
        purgeNeighbour: (ifindex, ip) => rtnl.deleteNeighbour(ifindex, ip),
        resolve: (_ifname, ip, o) => openedLink.resolve(ip, o),
        neighbour: (ifindex, ip) => rtnl.getNeighbour(ifindex, ip),
        echo: (family, ip, o) => {
          echo ??= EchoSocket.open(family, { ifname: o.ifname });
          return echo.echo(ip, { timeoutMs: o.timeoutMs });
        },
      },
      {
        gateway: where.gateway,
        ifname: where.ifname,
        ifindex: where.ifindex,
        probes,
        intervalMs,
        // The kernel's entry is what the probe holds answers against, as the daemon does: another
        // MAC answering is a conflict, and only the kernel confirming it makes it a move.
        knownMac: previousMac,
        allowMacChange: false,
      },
    );
    const out = toProbeJson(result, previousMac);
    if (opts.json) printJson(out);
    else process.stdout.write(formatProbe(out));
    return result.alive ? EXIT_OK : EXIT_FAILURE;
  } finally {
    (echo as EchoSocket | null)?.close();
    link?.close();
    rtnl.close();
  }
}

export function registerProbe(program: Command): void {
  program
    .command('probe')
    .description(
      'verify one directly connected gateway now: purge its neighbour entry, re-resolve it by ARP (IPv4) or NDP (IPv6) ' +
        'and send one echo; ARP/NDP decides. Exit 0 alive, 1 dead, 2 bad usage.',
    )
    .argument('<gateway>', 'the gateway address (on-link), e.g. 198.18.1.1, 2001:db8:1::1 or fe80::1%eth0')
    .option('--json', 'machine-readable output')
    .option('-i, --interface <if>', 'the interface the gateway is on (default: from the route lookup)')
    .option('--probes <n>', `ARP requests / neighbour solicitations to send (default ${DEFAULT_PROBES})`)
    .option(
      '--timeout <duration>',
      `spacing of the probes and the wait after the last (default ${DEFAULT_INTERVAL})`,
    )
    .action(action(async (gateway: string, opts: ProbeOptions) => runProbe(gateway, opts)));
}
