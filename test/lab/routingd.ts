// Real routing daemons in lab hosts: FRR (zebra + staticd, and bgpd/ospfd when asked) and BIRD 2,
// as Debian 12 packages them. Each instance runs in its host's namespace in the foreground, with
// its config, pid files and sockets in a per-run directory under /tmp (never /etc/frr, /run/frr or
// a system service); the lab kills them and removes the directory at close(), even on failure.
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { waitFor, type ExecResult, type Lab, type LabSpec } from './lab';

const FRR_DAEMONS_DIR = '/usr/lib/frr';

export type FrrDaemon = 'zebra' | 'staticd' | 'bgpd' | 'ospfd';

export interface FrrInstance {
  host: string;
  /** The per-run directory: configs, pid files, the vty sockets and zserv.api. */
  dir: string;
  children: Map<FrrDaemon, ChildProcess>;
  /** vtysh in the host, talking to this instance (--vty_socket dir). */
  vtysh(commands: string[]): Promise<ExecResult>;
  /** `vtysh -c 'show ip route'` of this instance. */
  showRoute(): Promise<string>;
  /** The daemon's config as it runs now (zebra's and staticd's running config). */
  runningConfig(): Promise<string>;
  /** Stop the daemons (SIGTERM, then SIGKILL after 5 s). */
  stop(): Promise<void>;
}

/** True when Debian's frr package is installed (its daemons and vtysh). */
export function haveFrr(): boolean {
  return fs.existsSync(path.join(FRR_DAEMONS_DIR, 'zebra')) && fs.existsSync('/usr/bin/vtysh');
}

export function haveBird(): boolean {
  return fs.existsSync('/usr/sbin/bird');
}

/**
 * Start FRR in `host`: zebra first (it owns zserv.api), then the protocol daemons, each with its
 * own config text (staticd: "ip route ..." lines; bgpd: "router bgp ..."). Resolves when vtysh
 * reaches every daemon.
 */
export async function startFrr(
  lab: Lab,
  host: string,
  configs: Partial<Record<FrrDaemon, string>>,
): Promise<FrrInstance> {
  const dir = lab.tempPath(`frr-${host}`);
  fs.mkdirSync(dir, { recursive: true });
  // The daemons drop to user frr: they own their directory, as Debian's frrinit.sh makes
  // /var/run/frr (frr:frr, 0750); the vty sockets in it are frr:frrvty 0770.
  fs.chmodSync(dir, 0o750);
  const { uid, gid } = frrIds();
  fs.chownSync(dir, uid, gid);
  const zserv = path.join(dir, 'zserv.api');
  const daemons: FrrDaemon[] = [
    'zebra',
    ...(Object.keys(configs) as FrrDaemon[]).filter((d) => d !== 'zebra'),
  ];
  const children = new Map<FrrDaemon, ChildProcess>();
  const inst: FrrInstance = {
    host,
    dir,
    children,
    vtysh: (commands) =>
      lab.exec(host, ['vtysh', '--vty_socket', dir, ...commands.flatMap((c) => ['-c', c])], 15_000),
    showRoute: async () => (await inst.vtysh(['show ip route'])).stdout,
    runningConfig: async () => (await inst.vtysh(['show running-config'])).stdout,
    stop: async () => {
      for (const c of children.values()) if (c.exitCode === null) c.kill('SIGTERM');
      await Promise.all(
        [...children.values()].map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null || c.signalCode !== null) return resolve();
              const t = setTimeout(() => c.kill('SIGKILL'), 5000);
              c.once('exit', () => {
                clearTimeout(t);
                resolve();
              });
            }),
        ),
      );
    },
  };
  for (const d of daemons) {
    const conf = path.join(dir, `${d}.conf`);
    fs.writeFileSync(conf, (configs[d] ?? '') + '\n');
    fs.chownSync(conf, uid, gid);
    const args = [
      path.join(FRR_DAEMONS_DIR, d),
      '-f',
      conf,
      '-i',
      path.join(dir, `${d}.pid`),
      '-z',
      zserv,
      '--vty_socket',
      dir,
      '-P',
      '0', // no TCP vty
      '--log',
      `file:${path.join(dir, `${d}.log`)}`,
    ];
    const child = lab.spawn(host, args, { stdio: 'ignore' });
    children.set(d, child);
    const sock = path.join(dir, d === 'zebra' ? 'zserv.api' : `${d}.vty`);
    await waitFor(
      () => fs.existsSync(sock) || child.exitCode !== null,
      10_000,
      `FRR ${d} in ${host} to create ${sock}`,
    );
    if (child.exitCode !== null)
      throw new Error(`FRR ${d} in ${host} exited (${child.exitCode}): ${frrLog(dir, d)}`);
  }
  await waitFor(
    async () => {
      const r = await inst.vtysh(['show version']);
      return r.code === 0 && !/failed to connect/i.test(r.stdout + r.stderr);
    },
    10_000,
    `vtysh to reach FRR in ${host}`,
    100,
  );
  return inst;
}

function frrLog(dir: string, d: string): string {
  try {
    return fs.readFileSync(path.join(dir, `${d}.log`), 'utf8').slice(-2000);
  } catch {
    return '(no log)';
  }
}

function frrIds(): { uid: number; gid: number } {
  return userIds('frr', 'frr');
}

/** The uid and primary gid of a system user a Debian package made. */
function userIds(user: string, pkg: string): { uid: number; gid: number } {
  const passwd = fs.readFileSync('/etc/passwd', 'utf8');
  const line = passwd.split('\n').find((l) => l.startsWith(`${user}:`));
  if (!line)
    throw new Error(`lab: user ${user} does not exist (install Debian's ${pkg} package: scripts/setup)`);
  const f = line.split(':');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

export interface BirdInstance {
  host: string;
  dir: string;
  /** The control socket (bird -s). */
  socket: string;
  child: ChildProcess;
  /** birdc in the host against this instance's socket. */
  birdc(command: string): Promise<ExecResult>;
  stop(): Promise<void>;
}

/** Start BIRD 2 in `host` with `config` (bird.conf text); resolves when its socket answers. */
export async function startBird(lab: Lab, host: string, config: string): Promise<BirdInstance> {
  const dir = lab.tempPath(`bird-${host}`);
  fs.mkdirSync(dir, { recursive: true });
  const conf = path.join(dir, 'bird.conf');
  const socket = path.join(dir, 'bird.ctl');
  fs.writeFileSync(conf, config);
  // As Debian's bird.service runs it: user and group bird, in a directory like /run/bird
  // (bird:bird 0775, /usr/lib/bird/prepare-environment). -f: foreground, so the lab owns the
  // process; -c config, -s socket, -P pid file.
  const { uid, gid } = userIds('bird', 'bird2');
  fs.chownSync(dir, uid, gid);
  fs.chmodSync(dir, 0o775);
  const child = lab.spawn(
    host,
    ['bird', '-f', '-u', 'bird', '-g', 'bird', '-c', conf, '-s', socket, '-P', path.join(dir, 'bird.pid')],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (c: string) => (err += c));
  const inst: BirdInstance = {
    host,
    dir,
    socket,
    child,
    birdc: (command) => lab.exec(host, ['birdc', '-s', socket, ...command.split(' ')], 15_000),
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        child.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    },
  };
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`bird in ${host} exited (${child.exitCode}): ${err}`);
      return fs.existsSync(socket) && (await inst.birdc('show status')).code === 0;
    },
    10_000,
    `bird in ${host} to answer on ${socket}`,
    100,
  );
  return inst;
}

/** Addresses of the routing-daemon lab (DGD's, plus a prefix reached through both routers). */
/** The client's main-table routes, as `ip route show` prints them. */
export async function kernelRoutes(lab: Lab): Promise<string> {
  return (await lab.ip('client', ['route', 'show'])).trim();
}

/** The client's route to `dst`, on one line. */
export async function kernelRoute(lab: Lab, dst: string): Promise<string> {
  return (await lab.ip('client', ['route', 'show', dst])).replace(/\s+/g, ' ').trim();
}

export const RD = {
  client: '198.18.1.10',
  r1: '198.18.1.1',
  r2: '198.18.1.2',
  /** A gateway address nobody has: a backup that is configured but never used. */
  absent: '198.18.1.254',
  server: '198.18.2.10',
  r1s: '198.18.2.1',
  r2s: '198.18.2.2',
  /** The server's second address, on its loopback: 198.18.3.0/24 is routed by r1 and r2 alike. */
  server3: '198.18.3.10',
} as const;

/**
 * client --lan(bridge)-- r1, r2 --wan(bridge)-- server, with no routes on the client: its routing
 * daemon adds them. The server answers through r2 (so a flow survives r1's death once the client
 * sends through r2) and also owns 198.18.3.10, reached through either router.
 */
export function routedLabSpec(): LabSpec {
  return {
    hosts: {
      client: {},
      r1: { router: true, ip: [['route', 'add', '198.18.3.0/24', 'via', RD.server, 'dev', 'wan0']] },
      r2: { router: true, ip: [['route', 'add', '198.18.3.0/24', 'via', RD.server, 'dev', 'wan0']] },
      server: {
        ip: [
          ['addr', 'add', `${RD.server3}/32`, 'dev', 'lo'],
          ['route', 'add', '198.18.1.0/24', 'via', RD.r2s, 'dev', 'wan0'],
        ],
      },
    },
    lans: [
      {
        name: 'lan',
        members: [
          { host: 'client', iface: 'lan0', addrs: [`${RD.client}/24`] },
          { host: 'r1', iface: 'lan0', addrs: [`${RD.r1}/24`] },
          { host: 'r2', iface: 'lan0', addrs: [`${RD.r2}/24`] },
        ],
      },
      {
        name: 'wan',
        members: [
          { host: 'server', iface: 'wan0', addrs: [`${RD.server}/24`] },
          { host: 'r1', iface: 'wan0', addrs: [`${RD.r1s}/24`] },
          { host: 'r2', iface: 'wan0', addrs: [`${RD.r2s}/24`] },
        ],
      },
    ],
  };
}

/** staticd's config for the lab: a distance-20 backup for 198.18.2.0/24, an ECMP pair for .3. */
export const FRR_STATIC = [
  `ip route 198.18.2.0/24 ${RD.r1} 10`,
  `ip route 198.18.2.0/24 ${RD.r2} 20`,
  `ip route 198.18.3.0/24 ${RD.r1}`,
  `ip route 198.18.3.0/24 ${RD.r2}`,
].join('\n');

/**
 * BIRD's config for the lab: one static protocol per gateway (what ipdeadgate's BIRD adapter needs),
 * r2's 198.18.2.0/24 at a lower preference (the backup), and 198.18.3.0/24 through both at the same
 * preference, merged into one multipath kernel route (`merge paths`).
 */
export const BIRD_STATIC = `router id ${RD.client};
protocol device {}
protocol kernel {
  ipv4 { export all; };
  merge paths on;
}
protocol static via_r1 {
  ipv4;
  route 198.18.2.0/24 via ${RD.r1};
  route 198.18.3.0/24 via ${RD.r1};
}
protocol static via_r2 {
  ipv4 { preference 100; };
  route 198.18.2.0/24 via ${RD.r2};
}
protocol static via_r2_ecmp {
  ipv4;
  route 198.18.3.0/24 via ${RD.r2};
}
`;

/** bgpd's config on the client: eBGP with r1 (AS 65001) and r2 (AS 65002). */
export const FRR_BGP = [
  'router bgp 65000',
  ` bgp router-id ${RD.client}`,
  ' no bgp ebgp-requires-policy',
  ` neighbor ${RD.r1} remote-as 65001`,
  ` neighbor ${RD.r1} timers connect 1`,
  ` neighbor ${RD.r2} remote-as 65002`,
  ` neighbor ${RD.r2} timers connect 1`,
  'exit',
].join('\n');

/**
 * BIRD on a router of the lab as a BGP speaker towards the client (AS 65000), announcing its WAN
 * prefix 198.18.2.0/24 with itself as the next hop; `prepend` lengthens the AS path so the other
 * router is preferred.
 */
export function birdBgpRouter(self: string, asn: number, prepend: boolean): string {
  return `router id ${self};
protocol device {}
protocol direct { ipv4; interface "wan0"; }
protocol bgp to_client {
  local ${self} as ${asn};
  neighbor ${RD.client} as 65000;
  connect delay time 1;
  connect retry time 1;
  ipv4 { import none; export filter { ${prepend ? `bgp_path.prepend(${asn}); ` : ''}accept; }; };
}
`;
}

/** BIRD on the client with a BGP session to each router (the same peers as FRR_BGP). */
export const BIRD_BGP = `router id ${RD.client};
protocol device {}
protocol kernel { ipv4 { export all; }; }
protocol bgp bgp_r1 {
  local ${RD.client} as 65000;
  neighbor ${RD.r1} as 65001;
  connect delay time 1;
  connect retry time 1;
  ipv4 { import all; export none; };
}
protocol bgp bgp_r2 {
  local ${RD.client} as 65000;
  neighbor ${RD.r2} as 65002;
  connect delay time 1;
  connect retry time 1;
  ipv4 { import all; export none; };
}
`;

/**
 * A command line that runs its arguments where FRR's and BIRD's default paths (/run/frr,
 * /run/bird) are the lab instances' directories: a private mount namespace with its own /run.
 * The daemon under it finds them as it finds a host's own FRR and BIRD, with nothing configured.
 */
export function atDefaultPaths(dirs: { frr?: string; bird?: string }): string[] {
  const script = [
    'set -e',
    'mount -t tmpfs -o mode=0755 ipdg-run /run',
    ...(dirs.frr ? ['mkdir /run/frr', `mount --bind '${dirs.frr}' /run/frr`] : []),
    ...(dirs.bird ? ['mkdir /run/bird', `mount --bind '${dirs.bird}' /run/bird`] : []),
    'exec "$@"',
  ].join('\n');
  return ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script, 'sh'];
}

/**
 * A command line that runs its arguments as the packaged unit runs the daemon: a non-zero uid
 * (nobody here), only CAP_NET_ADMIN and CAP_NET_RAW (ambient, so they survive the exec of node),
 * and the routing daemons' groups that exist (FRR's frrvty, BIRD's bird), as the unit's
 * ExecStartPre adds them to the ipdeadgate user.
 */
export function asOwnUser(groups: string[] = []): string[] {
  const have = groups.filter((g) => {
    try {
      return fs
        .readFileSync('/etc/group', 'utf8')
        .split('\n')
        .some((l) => l.startsWith(`${g}:`));
    } catch {
      return false;
    }
  });
  const caps = '-all,+net_admin,+net_raw';
  return [
    'setpriv',
    '--reuid=65534',
    '--regid=65534',
    have.length > 0 ? `--groups=${have.join(',')}` : '--clear-groups',
    `--inh-caps=${caps}`,
    `--ambient-caps=${caps}`,
    `--bounding-set=${caps}`,
    '--no-new-privs',
  ];
}
