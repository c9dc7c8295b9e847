// Steps the gateway-host lab tests share (test/dgd/gateway-lab.test.ts, which the suite runs, and
// test/dgd/gateway-forwarded.repro.ts, which it does not): the daemon's config, flows with a
// chosen key, the routes the daemon may touch, and the multi-WAN switch-and-restore scenario.
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

/**
 * Multi-WAN with NAT per uplink (made to switch fast by active probing of r1, so this measures what
 * NAT does after the switch, apart from detection): a one-port UDP flow and a new TCP connection
 * across the switch and the restore. The problems seen; none is the goal.
 */
export async function multiWanAfterSwitch(
  nat: NatMode,
  sport: number,
  keep: (lab: Lab) => void,
): Promise<string[]> {
  const l = await multiWanLab({ nat });
  keep(l);
  await startUdpServer(l, 'server', UDP_PORT);
  await startFlowServer(l, 'server', TCP_PORT).listening;
  const d = await LabDaemon.start(l, 'gw', activeR1(GW.isp1_4));
  await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing to start');
  const udp = startUdpFlow(l, 'lanhost', GW.server4, UDP_PORT, sport, {
    intervalMs: 100,
    durationMs: 25_000,
  });
  await waitFor(() => udp.answers.length >= 5, 5000, 'the UDP flow to be answered through e0');
  await l.killSilently('r1', 'lan0');
  const w = await d.waitFor((e) => e.event === 'routes_withdrawn', 5000, 'the switch to e1');
  const tSwitch = Date.parse(w.time);
  const tcp = startFlowClient(l, 'lanhost', GW.server4, TCP_PORT, { durationMs: 2000 });
  await sleep(3000);
  const afterSwitch = udp.answers.find((a) => a.t > tSwitch);
  const tcpOk = tcp.echoes.length > 0;
  await l.revive('r1', 'lan0');
  const r = await d.waitFor((e) => e.event === 'routes_restored', 8000, 'the restore to e0');
  const tRestore = Date.parse(r.time);
  await sleep(5000);
  const afterRestore = udp.answers.find((a) => a.t > tRestore);
  await d.stop();
  const problems: string[] = [];
  if (!afterSwitch || afterSwitch.t - tSwitch > 3000)
    problems.push(
      `UDP flow (one port) ${afterSwitch ? `answered ${afterSwitch.t - tSwitch} ms` : 'got 0 answers in the 3 s'} after the switch (wanted <= 3000 ms)`,
    );
  if (!afterRestore || afterRestore.t - tRestore > 5000)
    problems.push(
      `UDP flow ${afterRestore ? `answered ${afterRestore.t - tRestore} ms` : 'got 0 answers in the 5 s'} after the restore (wanted <= 5000 ms)`,
    );
  if (!tcpOk) problems.push('a new TCP connection after the switch got no echo within 2 s');
  return problems;
}
