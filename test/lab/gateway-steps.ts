// Steps the gateway-host lab tests share (test/dgd/gateway-lab.test.ts, gateway-forwarded.test.ts
// and gateway-nat.test.ts): the daemon's config, flows with a chosen key, the routes the daemon may
// touch, and the multi-WAN switch-and-restore scenario.
import type { ChildProcess } from 'node:child_process';
import type { Lab } from './lab';
import { LabDaemon, type DaemonEvent } from './daemon';
import { startFlowClient, startFlowServer } from './flows';
import { GW, multiWanLab, type NatMode } from './gateway-topologies';
import { startUdpFlow, startUdpServer } from './udpflow';
import { waitFor } from './lab';

export const TCP_PORT = 7000;
export const UDP_PORT = 7001;
export const FAST = 'dgd:\n  slow_poll_interval: 1s\n';
export const activeR1 = (gw: string) =>
  `dgd:\n  slow_poll_interval: 1s\n  active:\n    - { gateway: ${gw}, interval: 100ms, misses: 3 }\n`;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The routes and nexthops the daemon may touch (the kernel's own, link-local and local ones left out). */
export async function stableRoutes(lab: Lab, host: string): Promise<string> {
  const out =
    (await lab.ip(host, ['-d', '-4', 'route', 'show', 'table', 'all'])) +
    (await lab.ip(host, ['-d', '-6', 'route', 'show', 'table', 'all'])) +
    (await lab.ip(host, ['nexthop', 'show']));
  return out
    .split('\n')
    .filter((l) => l && !/expires|cache|proto kernel|table local|fe80::/.test(l))
    .sort()
    .join('\n');
}

/** The routes_withdrawn event for `gateway`, or null when none came within timeoutMs. */
export async function withdrawnWithin(
  d: LabDaemon,
  gateway: string,
  timeoutMs: number,
): Promise<DaemonEvent | null> {
  return d
    .waitFor(
      (e) => e.event === 'routes_withdrawn' && e.gateway === gateway,
      timeoutMs,
      `${gateway} withdrawn`,
    )
    .catch(() => null);
}

export function eventsSummary(d: LabDaemon): string {
  return d.events
    .filter((e) => e.event !== 'daemon_started')
    .map((e) => `${e.event}${typeof e.gateway === 'string' ? `(${e.gateway})` : ''}`)
    .slice(-12)
    .join(' ');
}

/** A local TCP stream from `host` with a fixed source port (and SO_MARK), bounded: 60 lines in 6 s. */
export function localStream(lab: Lab, host: string, dst: string, sport: number, mark?: number): ChildProcess {
  const addr = dst.includes(':') ? `TCP6:[${dst}]:${TCP_PORT}` : `TCP4:${dst}:${TCP_PORT}`;
  // SO_MARK is option 36 at SOL_SOCKET (1) (asm-generic/socket.h).
  const opts = `sourceport=${sport},reuseaddr${mark !== undefined ? `,setsockopt-int=1:36:${mark}` : ''}`;
  return lab.spawn(host, [
    'bash',
    '-c',
    `for i in $(seq 60); do echo "$i-xxxxxxxxxxxxxxxx"; sleep 0.1; done | timeout 10 socat -u - ${addr},${opts}`,
  ]);
}

export interface NatSwitchOptions {
  /** More lines of the daemon's `dgd:` section (indented two spaces), e.g. "  conntrack: { follow: false }\n". */
  dgd?: string;
  /** Revive r1 and measure after the restore too (default true). */
  restore?: boolean;
}

/** What a multi-WAN switch (and restore) did to the flows; times in ms from the route change. */
export interface NatSwitchResult {
  /** The one-port UDP flow's first answer after the switch (null: none within 3 s). */
  udpAfterSwitchMs: number | null;
  /** ... and after the restore (null: none within 5 s, or no restore). */
  udpAfterRestoreMs: number | null;
  /** A TCP connection opened during the outage: its first echo within 2 s (null: none). */
  tcpOpenedMs: number | null;
  /** That connection after the restore: its first echo, or the error that ended it, and when. */
  tcpAfterRestore: { echoMs: number | null; error: string | null; errorMs: number | null } | null;
  /** The daemon's conntrack_followed events. */
  followed: DaemonEvent[];
  /** What missed the goals (UDP within 3 s of the switch and 5 s of the restore, TCP after the switch). */
  problems: string[];
}

/**
 * Multi-WAN with NAT per uplink (made to switch fast by active probing of r1, so this measures what
 * NAT does after the switch, apart from detection): a one-port UDP flow across the switch and the
 * restore, and a TCP connection opened during the outage that keeps sending across the restore.
 */
export async function multiWanAfterSwitch(
  nat: NatMode,
  sport: number,
  keep: (lab: Lab) => void,
  opts: NatSwitchOptions = {},
): Promise<NatSwitchResult> {
  const l = await multiWanLab({ nat });
  keep(l);
  await startUdpServer(l, 'server', UDP_PORT);
  await startFlowServer(l, 'server', TCP_PORT).listening;
  const d = await LabDaemon.start(l, 'gw', activeR1(GW.isp1_4) + (opts.dgd ?? ''));
  await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing to start');
  const udp = startUdpFlow(l, 'lanhost', GW.server4, UDP_PORT, sport, {
    intervalMs: 100,
    durationMs: 25_000,
  });
  await waitFor(() => udp.answers.length >= 5, 5000, 'the UDP flow to be answered through e0');
  await l.killSilently('r1', 'lan0');
  const w = await d.waitFor((e) => e.event === 'routes_withdrawn', 5000, 'the switch to e1');
  const tSwitch = Date.parse(w.time);
  const tcp = startFlowClient(l, 'lanhost', GW.server4, TCP_PORT, { intervalMs: 200, durationMs: 15_000 });
  await sleep(3000);
  const since = (t: number, after: number) => (t > after ? t - after : null);
  const firstAfter = (xs: { t: number }[], after: number, within: number) => {
    const x = xs.find((a) => a.t > after);
    return x && x.t - after <= within ? x.t - after : null;
  };
  const result: NatSwitchResult = {
    udpAfterSwitchMs: firstAfter(udp.answers, tSwitch, 3000),
    udpAfterRestoreMs: null,
    tcpOpenedMs: tcp.connectedAt !== null ? firstAfter(tcp.echoes, tcp.connectedAt - 1, 2000) : null,
    tcpAfterRestore: null,
    followed: [],
    problems: [],
  };
  if (opts.restore ?? true) {
    await l.revive('r1', 'lan0');
    const r = await d.waitFor((e) => e.event === 'routes_restored', 8000, 'the restore to e0');
    const tRestore = Date.parse(r.time);
    await sleep(5000);
    result.udpAfterRestoreMs = firstAfter(udp.answers, tRestore, 5000);
    const errorAt = tcp.errorsAt.find((e) => e.t > tRestore);
    result.tcpAfterRestore = {
      echoMs: firstAfter(tcp.echoes, tRestore, 5000),
      error: errorAt?.error ?? null,
      errorMs: errorAt ? since(errorAt.t, tRestore) : null,
    };
  }
  result.followed = d.named('conntrack_followed');
  await d.stop();
  const p = result.problems;
  if (result.udpAfterSwitchMs === null)
    p.push('the UDP flow (one port) got no answer within 3 s of the switch (wanted <= 3000 ms)');
  if ((opts.restore ?? true) && result.udpAfterRestoreMs === null)
    p.push('the UDP flow got no answer within 5 s of the restore (wanted <= 5000 ms)');
  if (result.tcpOpenedMs === null) p.push('a new TCP connection after the switch got no echo within 2 s');
  return result;
}
