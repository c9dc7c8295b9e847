// `ipdeadgate capture [-i IFACE]... | --gateways] [-w FILE] [-c COUNT] [-G SECONDS] [-q] [FILTER...]`:
// packet-capture debugging of what detection and the tunnel do on the wire. One decoded line per
// packet on stdout (ARP, NDP, ICMP/ICMPv6, TCP with retransmissions marked, UDP), optionally a pcap
// file that tcpdump -r and Wireshark read. Ends on -c, -G, SIGINT or SIGTERM: the file is closed
// (fsync'd) and a summary of packets by kind goes to stderr.
//
// -G SECONDS ends the capture after SECONDS. (tcpdump's -G rotates files instead; a capture here is
// a bounded debugging session, and the daemon's flight recorder keeps the moments around every
// failover anyway.)
import type { Command } from 'commander';
import { UsageError } from '../errors';
import {
  LiveCapture,
  PacketDescriber,
  andFilters,
  gatewayFilter,
  interfaceExists,
  type CapturedPacket,
  type PacketKind,
  PcapFileWriter,
  splitTimestamp,
} from '../sys/packet';
import { openRtnl } from '../sys/rtnl';
import { action, intOption } from './common';

const RT_TABLE_MAIN = 254;

export interface CaptureOptions {
  interface?: string[];
  gateways?: boolean;
  write?: string;
  force?: boolean;
  count?: string;
  seconds?: string;
  quiet?: boolean;
  nano?: boolean;
}

interface GatewayOnLink {
  address: string;
  mac: string | null;
}

/** Every interface with a gateway route in the main table, and its gateways (with known MACs). */
export async function gatewaysByInterface(): Promise<Map<string, GatewayOnLink[]>> {
  const rtnl = await openRtnl();
  try {
    const routes = await rtnl.listRoutes({ table: RT_TABLE_MAIN });
    const neighbours = await rtnl.listNeighbours();
    const out = new Map<string, GatewayOnLink[]>();
    const add = (ifname: string | null, address: string | null) => {
      if (!ifname || !address) return;
      const list = out.get(ifname) ?? [];
      if (list.some((g) => g.address === address)) return;
      const n = neighbours.find((x) => x.ifname === ifname && x.address === address && x.lladdr);
      list.push({ address, mac: n?.lladdr ?? null });
      out.set(ifname, list);
    };
    for (const r of routes) {
      add(r.ifname, r.gateway);
      for (const h of r.nexthops ?? []) add(h.ifname, h.gateway);
    }
    return out;
  } finally {
    rtnl.close();
  }
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** "HH:MM:SS.uuuuuu" local time, as tcpdump prints it. */
export function clockText(tsMs: number): string {
  // The same rounding as the pcap file's timestamps, so lines and tcpdump -r agree.
  const [sec, us] = splitTimestamp(tsMs, 'micro');
  const d = new Date(sec * 1000);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}.${String(us).padStart(6, '0')}`;
}

export function summaryText(
  counts: Map<PacketKind, number>,
  total: number,
  ifnames: string[],
  seconds: number,
  file: PcapFileWriter | null,
  why: string,
): string {
  const byKind = [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  const lines = [
    `capture: ${total} packet${total === 1 ? '' : 's'} on ${ifnames.join(', ')} in ${seconds.toFixed(1)} s (${why})`,
  ];
  if (byKind) lines.push(`  by kind: ${byKind}`);
  if (file) lines.push(`  written: ${file.path} (${file.packets} packets, ${file.bytes} bytes, pcap)`);
  return lines.join('\n') + '\n';
}

/** How often a capture whose interface went away looks for it again. */
const REOPEN_MS = 500;

export async function runCapture(filterWords: string[], opts: CaptureOptions): Promise<number> {
  const userFilter = filterWords.join(' ').trim();
  const count = opts.count !== undefined ? intOption('-c/--count', opts.count, 1) : null;
  const seconds = opts.seconds !== undefined ? intOption('-G/--seconds', opts.seconds, 1, 7 * 86400) : null;
  const ifaces = opts.interface ?? [];
  if (ifaces.length > 0 && opts.gateways) throw new UsageError('use either -i IFACE or --gateways, not both');

  // What to open: [ifname, filter] pairs.
  const plan: [string, string][] = [];
  if (ifaces.length > 0) {
    for (const name of new Set(
      ifaces
        .flatMap((i) => i.split(','))
        .map((s) => s.trim())
        .filter(Boolean),
    )) {
      if (!interfaceExists(name))
        throw new UsageError(`no network interface named "${name}" in this network namespace (see: ip link)`);
      plan.push([name, userFilter]);
    }
  } else {
    const byIf = await gatewaysByInterface();
    if (byIf.size === 0)
      throw new UsageError(
        'no gateway routes in the main table, so --gateways has nothing to watch; name an interface with -i IFACE',
      );
    for (const [ifname, gws] of byIf) plan.push([ifname, andFilters(gatewayFilter(gws), userFilter)]);
  }

  const handles: LiveCapture[] = [];
  let writer: PcapFileWriter | null = null;
  try {
    for (const [ifname, filter] of plan) handles.push(LiveCapture.open(ifname, filter));
    if (opts.write)
      writer = PcapFileWriter.open(opts.write, {
        resolution: opts.nano ? 'nano' : 'micro',
        overwrite: opts.force === true,
      });
  } catch (err) {
    for (const h of handles) h.close();
    throw err;
  }

  const describer = new PacketDescriber();
  const counts = new Map<PacketKind, number>();
  let total = 0;
  const started = Date.now();
  let out = !opts.quiet;
  process.stdout.on('error', () => {
    out = false; // a closed pipe (| head) must not end the capture file badly
  });
  for (const [ifname, filter] of plan)
    process.stderr.write(`capture: listening on ${ifname}${filter ? ` with filter: ${filter}` : ''}\n`);

  return new Promise<number>((resolve, reject) => {
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    /** Pending reopens of captures whose interface went down or away. */
    const reopenTimers = new Set<NodeJS.Timeout>();
    const stop = (why: string, err?: unknown) => {
      if (stopped) return;
      stopped = true;
      clearTimeout(timer);
      for (const t of reopenTimers) clearTimeout(t);
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      for (const h of handles) h.close();
      let closeErr: unknown;
      try {
        writer?.close();
      } catch (e) {
        closeErr = e;
      }
      process.stderr.write(
        summaryText(
          counts,
          total,
          plan.map((p) => p[0]),
          (Date.now() - started) / 1000,
          writer,
          why,
        ),
      );
      if (err ?? closeErr) reject(err ?? closeErr);
      else resolve(0);
    };
    const onInt = () => stop('interrupted');
    const onTerm = () => stop('terminated');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    if (seconds !== null) timer = setTimeout(() => stop(`${seconds} s elapsed`), seconds * 1000);
    const onPacket = (p: CapturedPacket) => {
      if (stopped) return;
      total++;
      const d = describer.describe(p.data);
      counts.set(d.kind, (counts.get(d.kind) ?? 0) + 1);
      if (out) process.stdout.write(`${clockText(p.tsMs)} ${p.ifname} ${d.text}\n`);
      try {
        writer?.write(p);
      } catch (err) {
        stop('write failed', err);
        return;
      }
      if (count !== null && total >= count) stop(`${count} packet${count === 1 ? '' : 's'}`);
    };
    // An interface that goes down or away closes its capture; it is reopened (same filter) when
    // the interface is back, and the capture goes on meanwhile on the others.
    const attach = (h: LiveCapture) => {
      h.on('packet', onPacket);
      h.on('error', (err: Error) => stop('error', err));
      h.on('down', (err: Error) => {
        if (stopped) return;
        process.stderr.write(`capture: ${h.ifname} went down or away (${err.message}); waiting for it\n`);
        const retry = () => {
          const t = setTimeout(() => {
            reopenTimers.delete(t);
            if (stopped) return;
            let next: LiveCapture;
            try {
              next = LiveCapture.open(h.ifname, h.filter);
            } catch {
              return retry();
            }
            handles[handles.indexOf(h)] = next;
            process.stderr.write(`capture: ${h.ifname} is back; listening again\n`);
            attach(next);
          }, REOPEN_MS);
          reopenTimers.add(t);
        };
        retry();
      });
    };
    for (const h of handles) attach(h);
  });
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

export function registerCapture(program: Command): void {
  program
    .command('capture')
    .description(
      'packet-capture debugging: decoded lines (ARP, NDP, ICMP, TCP retransmissions) and a pcap file\n' +
        'that tcpdump -r and Wireshark read. With neither -i nor --gateways, --gateways is assumed.',
    )
    .argument('[filter...]', 'BPF filter in tcpdump syntax (man pcap-filter), e.g. arp or icmp')
    .option(
      '-i, --interface <iface>',
      'capture on this interface (repeat, or comma-separate, for several)',
      collect,
    )
    .option(
      '--gateways',
      "every interface with a gateway route in the main table, only the gateways' traffic",
    )
    .option(
      '-w, --write <file>',
      'also write the packets to this new pcap file (LINKTYPE_ETHERNET); an existing file or a symlink is refused',
    )
    .option('--force', 'with -w: overwrite an existing file (a symlink is still refused)')
    .option('-c, --count <n>', 'stop after n packets')
    .option(
      '-G, --seconds <n>',
      'stop after n seconds (unlike tcpdump -G, this ends the capture; it does not rotate)',
    )
    .option('-q, --quiet', 'no decoded lines (just the file and the summary)')
    .option('--nano', 'nanosecond timestamps in the pcap file (default microseconds)')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  ipdeadgate capture --gateways                       # ARP/NDP/ICMP/TCP of every gateway, decoded\n' +
        '  ipdeadgate capture -i eth0 arp or icmp              # tcpdump filter syntax\n' +
        '  ipdeadgate capture -i eth0 -w /tmp/gw.pcap -G 60    # one minute into a file; tcpdump -r /tmp/gw.pcap\n' +
        '  ipdeadgate capture -i eth0 -c 100 tcp port 443      # 100 packets, retransmissions marked\n\n' +
        'Ctrl-C (or SIGTERM) ends the capture: the file is closed cleanly and a summary of packets by\n' +
        'kind goes to stderr. Exit codes: 0 done, 1 capture failed, 2 unknown interface or bad filter.\n' +
        'Needs CAP_NET_RAW (root).',
    )
    .action(action(async (filter: string[], opts: CaptureOptions) => runCapture(filter, opts)));
}
