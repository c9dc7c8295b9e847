// Lab helpers for the tunnel: the firewalled topology, node configs, processes, and the leak checks
// (CLOSE_WAIT sockets with ss, descriptors in /proc/PID/fd).
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { controlRequest } from '../../src/daemon/control';
import type { TunnelStatus } from '../../src/tunnel/node';
import { Lab, waitFor, type LabSpec } from '../lab/lab';
import type { TestPki } from '../fixtures/tunnel-pki';

export const TUN = {
  gateway: '198.18.1.10', // the real gateway (secure zone)
  ep: '198.18.1.2', // endpoint proxy (secure zone)
  fwIn: '198.18.1.1',
  fwOut: '198.18.2.1',
  gw1: '198.18.2.11', // gateway proxies (outer zone)
  gw2: '198.18.2.12',
  endpoint: '198.18.2.20', // an endpoint (outer zone)
  linkPort: 9401,
  gatewayPort: 9494,
  endpointPort: 9495,
} as const;

/**
 * secure zone: gateway, ep --(fw: router + nftables)-- outer zone: gw1, gw2, endpoint.
 * The firewall forwards only new TCP connections from ep to port 9401 in the outer zone (and
 * their replies): one port, one direction. Everything else is dropped.
 */
export function firewallLabSpec(): LabSpec {
  const viaIn = [['route', 'add', 'default', 'via', TUN.fwIn]];
  const viaOut = [['route', 'add', 'default', 'via', TUN.fwOut]];
  return {
    hosts: {
      gateway: { ip: viaIn },
      ep: { ip: viaIn },
      fw: { router: true },
      gw1: { ip: viaOut },
      gw2: { ip: viaOut },
      endpoint: { ip: viaOut },
    },
    lans: [
      {
        name: 'sec',
        members: [
          { host: 'gateway', iface: 'eth0', addrs: [`${TUN.gateway}/24`] },
          { host: 'ep', iface: 'eth0', addrs: [`${TUN.ep}/24`] },
          { host: 'fw', iface: 'in0', addrs: [`${TUN.fwIn}/24`] },
        ],
      },
      {
        name: 'out',
        members: [
          { host: 'fw', iface: 'out0', addrs: [`${TUN.fwOut}/24`] },
          { host: 'gw1', iface: 'eth0', addrs: [`${TUN.gw1}/24`] },
          { host: 'gw2', iface: 'eth0', addrs: [`${TUN.gw2}/24`] },
          { host: 'endpoint', iface: 'eth0', addrs: [`${TUN.endpoint}/24`] },
        ],
      },
    ],
  };
}

export async function installFirewall(lab: Lab): Promise<void> {
  const file = lab.tempPath('nft-tunnel-fw');
  fs.writeFileSync(
    file,
    `table inet idgtunfw {\n  chain forward_filter {\n    type filter hook forward priority 0; policy drop;\n` +
      `    ct state established,related accept\n` +
      `    ip saddr ${TUN.ep} tcp dport ${TUN.linkPort} ct state new accept\n  }\n}\n`,
  );
  await lab.execOk('fw', ['nft', '-f', file]);
}

export interface NodeSpec {
  host: string;
  name: string;
  role: 'gateway-proxy' | 'endpoint-proxy' | 'relay';
  listen?: string;
  links?: string[];
  services?: Record<string, string>;
  forwards?: { listen: string; service: string }[];
  closeTimeout?: string;
  dialTimeout?: string;
  maxSessions?: number;
  /** heartbeat (default 500ms). */
  heartbeat?: string;
  /** Run the node with this descriptor limit (prlimit), e.g. the packaged unit's LimitNOFILE. */
  nofile?: number;
  /** tunnel.native_relay_after ("0": every bridged session goes to the native relay at once). */
  relayAfter?: string;
}

export interface RunningNode {
  spec: NodeSpec;
  child: ChildProcess;
  control: string;
  log: string[];
}

/** Write a node's YAML config (TLS paths relative to the config, as operators write them). */
export function writeConfig(pki: TestPki, n: NodeSpec): string {
  const lines = [
    'tunnel:',
    `  role: ${n.role}`,
    `  name: ${n.name}`,
    `  tls: { ca: ca.pem, cert: ${n.name}.pem, key: ${n.name}.key }`,
    ...(n.listen ? [`  listen: ${n.listen}`] : []),
    ...(n.links?.length ? ['  links:', ...n.links.map((l) => `    - { connect: ${l} }`)] : []),
    ...(n.services ? ['  services:', ...Object.entries(n.services).map(([k, v]) => `    ${k}: ${v}`)] : []),
    ...(n.forwards?.length
      ? ['  forwards:', ...n.forwards.map((f) => `    - { listen: ${f.listen}, service: ${f.service} }`)]
      : []),
    `  heartbeat: ${n.heartbeat ?? '500ms'}`,
    '  heartbeat_misses: 3',
    `  close_timeout: ${n.closeTimeout ?? '3s'}`,
    `  max_sessions: ${n.maxSessions ?? 10000}`,
    ...(n.dialTimeout ? [`  dial_timeout: ${n.dialTimeout}`] : []),
    ...(n.relayAfter ? [`  native_relay_after: ${n.relayAfter}`] : []),
  ];
  const file = path.join(pki.dir, `${n.name}.yaml`);
  fs.writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

export function startNode(lab: Lab, pki: TestPki, n: NodeSpec): RunningNode {
  const file = writeConfig(pki, n);
  const control = path.join(pki.dir, `${n.name}.sock`);
  const args = ['tunnel', '--config', file, '--control', control, '--log-format', 'text'];
  // prlimit sets the limit and execs the node: the PID stays the node's.
  const child = n.nofile
    ? lab.spawn(n.host, [
        'prlimit',
        `--nofile=${n.nofile}:${n.nofile}`,
        '--',
        process.execPath,
        path.resolve(__dirname, '..', '..', '..', 'bin', 'ipdeadgate'),
        ...args,
      ])
    : lab.spawnCli(n.host, args);
  const log: string[] = [];
  child.stdout?.on('data', (c: Buffer) => log.push(...c.toString().split('\n').filter(Boolean)));
  child.stderr?.on('data', (c: Buffer) => log.push(...c.toString().split('\n').filter(Boolean)));
  return { spec: n, child, control, log };
}

export async function status(n: RunningNode): Promise<TunnelStatus> {
  const r = (await controlRequest(n.control, 'status', {}, 5000)) as { tunnel: TunnelStatus };
  return r.tunnel;
}

export async function waitStatus(
  n: RunningNode,
  ok: (s: TunnelStatus) => boolean,
  ms: number,
  what: string,
): Promise<TunnelStatus> {
  return waitFor<TunnelStatus | undefined>(
    async () => {
      const s = await status(n).catch(() => undefined);
      return s && ok(s) ? s : undefined;
    },
    ms,
    `${n.spec.name}: ${what} (log: ${n.log.slice(-5).join(' | ')})`,
    50,
  ) as Promise<TunnelStatus>;
}

/** Sockets in CLOSE-WAIT in a host's namespace (ss -tan state close-wait). */
export async function closeWait(lab: Lab, host: string): Promise<string[]> {
  const out = await lab.execOk(host, ['ss', '-Htan', 'state', 'close-wait']);
  return out.split('\n').filter((l) => l.trim());
}

/** The resident set of a process, in bytes (/proc/PID/status VmRSS). */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** LimitNOFILE of a packaged systemd unit (packaging/NAME). */
export function unitNofile(unit: string): number {
  const text = fs.readFileSync(path.resolve(__dirname, '..', '..', '..', 'packaging', unit), 'utf8');
  const m = /^LimitNOFILE=(\d+)$/m.exec(text);
  if (!m) throw new Error(`no LimitNOFILE in packaging/${unit}`);
  // A container may hold the hard limit lower than the unit asks for (raising it needs
  // CAP_SYS_RESOURCE): then the hard limit we have.
  const hard = /^Max open files\s+\d+\s+(\d+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
  return hard ? Math.min(Number(m[1]), Number(hard[1])) : Number(m[1]);
}

export function fdCount(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** Run a client fixture in a host; parse its JSON line. */
export async function client<T = Record<string, unknown>>(
  lab: Lab,
  host: string,
  args: string[],
  timeoutMs = 60_000,
): Promise<T> {
  const r = await lab.node(host, 'dist/test/fixtures/tunnel-client.js', args, timeoutMs);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`tunnel-client ${args.join(' ')} exited ${r.code}: ${r.stdout} ${r.stderr}`);
  }
}

export function startEcho(
  lab: Lab,
  host: string,
  addr: string,
  port: number,
): ChildProcess & { events: string[] } {
  const child = lab.spawn(host, [
    process.execPath,
    path.resolve(__dirname, '..', 'fixtures', 'tunnel-echo.js'),
    addr,
    String(port),
  ]) as ChildProcess & { events: string[] };
  child.events = [];
  child.stdout?.on('data', (c: Buffer) => child.events.push(...c.toString().split('\n').filter(Boolean)));
  return child;
}
