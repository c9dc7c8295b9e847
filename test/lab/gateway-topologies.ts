// Gateway-host topologies: the daemon's host C ("gw") forwards for a LAN host L ("lanhost"), as on
// the gateway hosts docs/host-integration.md is about. Built with the lab harness (test/lab/lab.ts),
// so the lab rules hold: namespaces only, per-run names, 198.18.0.0/15 and 2001:db8::/32, teardown
// on every exit. Forwarding is switched on inside the lab's gw and router namespaces only.
//
//   forwardLab():  lanhost --lan-- gw --up(bridge)-- r1, r2 --wan(bridge)-- server
//                  gw reaches the server's network via r1 (metric 10) and r2 (metric 20), or through
//                  an ECMP nexthop group (L4 hash), or by fwmark policy routing (mark 1 prefers r1,
//                  no mark r2).
//   multiWanLab(): lanhost --lan-- gw ==e0== r1 \
//                                     ==e1== r2 --wan(bridge)-- server
//                  one subnet per uplink, routers that drop sources outside it (ISP filtering), and
//                  NAT per uplink on gw: `snat to` each uplink's address, `masquerade`, or none.
import * as fs from 'node:fs';
import { Lab, type HostSpec, type LabSpec } from './lab';

/** Addresses of the gateway labs. r1/r2's LAN side is "lan0" in each (kill it there). */
export const GW = {
  lanhost4: '198.18.10.10',
  lanhost6: '2001:db8:10::10',
  gwLan4: '198.18.10.1',
  gwLan6: '2001:db8:10::1',
  lanNet4: '198.18.10.0/24',
  lanNet6: '2001:db8:10::/64',
  /** forwardLab: gw's uplink (up0) and the routers on the same LAN. */
  gwUp4: '198.18.1.10',
  gwUp6: '2001:db8:1::10',
  r1_4: '198.18.1.1',
  r2_4: '198.18.1.2',
  r1_6: '2001:db8:1::1',
  r2_6: '2001:db8:1::2',
  /** The server's network, behind both routers. */
  serverNet4: '198.18.2.0/24',
  serverNet6: '2001:db8:2::/64',
  server4: '198.18.2.10',
  server6: '2001:db8:2::10',
  r1s4: '198.18.2.1',
  r2s4: '198.18.2.2',
  r1s6: '2001:db8:2::1',
  r2s6: '2001:db8:2::2',
  /** multiWanLab: one subnet per uplink; gw is .10 on both, the router .1. */
  e0Net4: '198.18.3.0/24',
  e0Net6: '2001:db8:3::/64',
  gwE0_4: '198.18.3.10',
  gwE0_6: '2001:db8:3::10',
  isp1_4: '198.18.3.1',
  isp1_6: '2001:db8:3::1',
  e1Net4: '198.18.4.0/24',
  e1Net6: '2001:db8:4::/64',
  gwE1_4: '198.18.4.10',
  gwE1_6: '2001:db8:4::10',
  isp2_4: '198.18.4.1',
  isp2_6: '2001:db8:4::1',
} as const;

/**
 * Extra server addresses (198.18.2.11.., 2001:db8:2::11..): an ECMP test picks one whose portless
 * lookup and whose L4 lookup take different members.
 */
export const SERVER_EXTRA = 8;
export const serverExtra4 = (i: number): string => `198.18.2.${11 + i}`;
export const serverExtra6 = (i: number): string => `2001:db8:2::${(0x11 + i).toString(16)}`;

/** The kernel's nexthop ids and table forwardLab() uses. */
export const NHID = { r1_4: 1, r2_4: 2, group4: 10, r1_6: 3, r2_6: 4, group6: 11 } as const;
export const FWMARK = { mark: 1, table: 100, priority: 100 } as const;

export type Routing =
  /** 198.18.2.0/24 via r1 metric 10 and via r2 metric 20 (and IPv6 alike). */
  | 'metric'
  /** 198.18.2.0/24 nhid 10: a nexthop group r1/r2, fib_multipath_hash_policy=1 (L4 hash). */
  | 'ecmp'
  /** fwmark 1 looks up table 100 (server net via r1, then r2); the main table prefers r2, then r1. */
  | 'fwmark';

export interface ForwardLabOptions {
  routing?: Routing;
  /** Load conntrack in gw (an nft rule that uses it), as any gateway with a stateful firewall. Default true. */
  conntrack?: boolean;
  /** net.netfilter.nf_conntrack_acct=1 in gw (per-direction packet and byte counters). */
  acct?: boolean;
}

function routesOfGw(routing: Routing): string[][] {
  const v4 = GW.serverNet4;
  const v6 = GW.serverNet6;
  switch (routing) {
    case 'metric':
      return [
        ['route', 'add', v4, 'via', GW.r1_4, 'dev', 'up0', 'metric', '10'],
        ['route', 'add', v4, 'via', GW.r2_4, 'dev', 'up0', 'metric', '20'],
        ['-6', 'route', 'add', v6, 'via', GW.r1_6, 'dev', 'up0', 'metric', '10'],
        ['-6', 'route', 'add', v6, 'via', GW.r2_6, 'dev', 'up0', 'metric', '20'],
      ];
    case 'ecmp':
      return [
        ['nexthop', 'add', 'id', String(NHID.r1_4), 'via', GW.r1_4, 'dev', 'up0'],
        ['nexthop', 'add', 'id', String(NHID.r2_4), 'via', GW.r2_4, 'dev', 'up0'],
        ['nexthop', 'add', 'id', String(NHID.group4), 'group', `${NHID.r1_4}/${NHID.r2_4}`],
        ['route', 'add', v4, 'nhid', String(NHID.group4)],
        ['nexthop', 'add', 'id', String(NHID.r1_6), 'via', GW.r1_6, 'dev', 'up0'],
        ['nexthop', 'add', 'id', String(NHID.r2_6), 'via', GW.r2_6, 'dev', 'up0'],
        ['nexthop', 'add', 'id', String(NHID.group6), 'group', `${NHID.r1_6}/${NHID.r2_6}`],
        ['-6', 'route', 'add', v6, 'nhid', String(NHID.group6)],
      ];
    case 'fwmark': {
      // Both tables can reach the server through both routers (so no route is the last one), in
      // opposite orders: marked traffic prefers r1, unmarked r2.
      const { mark, table, priority } = FWMARK;
      const rule = ['fwmark', String(mark), 'lookup', String(table), 'priority', String(priority)];
      const t = ['table', String(table)];
      return [
        ['rule', 'add', ...rule],
        ['route', 'add', v4, 'via', GW.r1_4, 'dev', 'up0', 'metric', '10', ...t],
        ['route', 'add', v4, 'via', GW.r2_4, 'dev', 'up0', 'metric', '20', ...t],
        ['route', 'add', v4, 'via', GW.r2_4, 'dev', 'up0', 'metric', '10'],
        ['route', 'add', v4, 'via', GW.r1_4, 'dev', 'up0', 'metric', '20'],
        ['-6', 'rule', 'add', ...rule],
        ['-6', 'route', 'add', v6, 'via', GW.r1_6, 'dev', 'up0', 'metric', '10', ...t],
        ['-6', 'route', 'add', v6, 'via', GW.r2_6, 'dev', 'up0', 'metric', '20', ...t],
        ['-6', 'route', 'add', v6, 'via', GW.r2_6, 'dev', 'up0', 'metric', '10'],
        ['-6', 'route', 'add', v6, 'via', GW.r1_6, 'dev', 'up0', 'metric', '20'],
      ];
    }
  }
}

const router: HostSpec = { router: true };

/** The LAN host routes everything through the gateway host, in every gateway topology. */
const LANHOST = {
  ip: [
    ['route', 'add', 'default', 'via', GW.gwLan4, 'dev', 'lan0'],
    ['-6', 'route', 'add', 'default', 'via', GW.gwLan6, 'dev', 'lan0'],
  ],
};

/** The LAN behind the gateway host, the same in every gateway topology. */
function lanSegment() {
  return {
    name: 'lan',
    members: [
      { host: 'lanhost', iface: 'lan0', addrs: [`${GW.lanhost4}/24`, `${GW.lanhost6}/64`] },
      { host: 'gw', iface: 'lan1', addrs: [`${GW.gwLan4}/24`, `${GW.gwLan6}/64`] },
    ],
  };
}

/** The routers' far side and the server (with extra server addresses, as CIDRs). */
function wanSegment(extra: string[] = []) {
  return {
    name: 'wan',
    members: [
      { host: 'server', iface: 'wan0', addrs: [`${GW.server4}/24`, `${GW.server6}/64`, ...extra] },
      { host: 'r1', iface: 'wan0', addrs: [`${GW.r1s4}/24`, `${GW.r1s6}/64`] },
      { host: 'r2', iface: 'wan0', addrs: [`${GW.r2s4}/24`, `${GW.r2s6}/64`] },
    ],
  };
}

/** The forwarded-traffic lab's spec (nft rules are loaded by forwardLab()). */
export function forwardLabSpec(opts: ForwardLabOptions = {}): LabSpec {
  const routing = opts.routing ?? 'metric';
  const extra4 = Array.from({ length: SERVER_EXTRA }, (_, i) => `${serverExtra4(i)}/24`);
  const extra6 = Array.from({ length: SERVER_EXTRA }, (_, i) => `${serverExtra6(i)}/64`);
  const backVia = (dst4: string, dst6: string, via4: string, via6: string): string[][] => [
    ['route', 'add', dst4, 'via', via4],
    ['-6', 'route', 'add', dst6, 'via', via6],
  ];
  return {
    hosts: {
      lanhost: LANHOST,
      gw: {
        router: true,
        sysctls: {
          ...(routing === 'ecmp'
            ? { 'net.ipv4.fib_multipath_hash_policy': '1', 'net.ipv6.fib_multipath_hash_policy': '1' }
            : {}),
        },
        ip: routesOfGw(routing),
      },
      r1: { ...router, ip: backVia(GW.lanNet4, GW.lanNet6, GW.gwUp4, GW.gwUp6) },
      r2: { ...router, ip: backVia(GW.lanNet4, GW.lanNet6, GW.gwUp4, GW.gwUp6) },
      // The server answers through r2 (an asymmetric path, as in the client lab): a flow survives
      // r1's death once gw's own routes move to r2.
      server: {
        ip: [
          ...backVia(GW.lanNet4, GW.lanNet6, GW.r2s4, GW.r2s6),
          ...backVia('198.18.1.0/24', '2001:db8:1::/64', GW.r2s4, GW.r2s6),
        ],
      },
    },
    lans: [
      lanSegment(),
      {
        name: 'up',
        members: [
          { host: 'gw', iface: 'up0', addrs: [`${GW.gwUp4}/24`, `${GW.gwUp6}/64`] },
          { host: 'r1', iface: 'lan0', addrs: [`${GW.r1_4}/24`, `${GW.r1_6}/64`] },
          { host: 'r2', iface: 'lan0', addrs: [`${GW.r2_4}/24`, `${GW.r2_6}/64`] },
        ],
      },
      wanSegment([...extra4, ...extra6]),
    ],
  };
}

/** Load an nftables ruleset (text) into a host. */
export async function loadNft(lab: Lab, host: string, name: string, rules: string): Promise<void> {
  const file = lab.tempPath(`nft-${host}-${name}`);
  fs.writeFileSync(file, rules);
  await lab.execOk(host, ['nft', '-f', file]);
}

/**
 * A stateful forward chain: what makes the kernel track connections in a namespace (conntrack is
 * per namespace and only starts once a rule needs it). It accepts everything.
 */
export const CONNTRACK_RULES =
  'table inet idgct {\n' +
  '  chain forward { type filter hook forward priority 0; policy accept; ct state established,related accept; }\n' +
  '  chain output { type filter hook output priority 0; policy accept; ct state established,related accept; }\n' +
  '}\n';

/** Build the forwarded-traffic lab; see forwardLabSpec(). */
export async function forwardLab(opts: ForwardLabOptions = {}): Promise<Lab> {
  const lab = await Lab.create(forwardLabSpec(opts));
  try {
    if (opts.acct) await lab.execOk('gw', ['sysctl', '-qw', 'net.netfilter.nf_conntrack_acct=1']);
    if (opts.conntrack ?? true) await loadNft(lab, 'gw', 'conntrack', CONNTRACK_RULES);
  } catch (err) {
    await lab.close();
    throw err;
  }
  return lab;
}

export type NatMode = 'snat' | 'masquerade' | 'none';

/** The nft ruleset gw gets for a NAT mode (postrouting, per uplink). */
export function natRules(nat: NatMode): string {
  const per =
    nat === 'snat'
      ? [
          `    oifname "e0" snat ip to ${GW.gwE0_4}`,
          `    oifname "e0" snat ip6 to ${GW.gwE0_6}`,
          `    oifname "e1" snat ip to ${GW.gwE1_4}`,
          `    oifname "e1" snat ip6 to ${GW.gwE1_6}`,
        ]
      : nat === 'masquerade'
        ? ['    oifname { "e0", "e1" } masquerade']
        : [];
  return (
    'table inet idgnat {\n' +
    '  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n' +
    per.map((l) => l + '\n').join('') +
    '  }\n}\n'
  );
}

/** An ISP's source filter on its customer side: only the uplink's own subnet may pass. */
function ispFilter(net4: string, net6: string): string {
  return (
    'table inet idgisp {\n' +
    '  chain forward {\n    type filter hook forward priority 0; policy accept;\n' +
    `    iifname "lan0" ip saddr != ${net4} drop\n` +
    `    iifname "lan0" ip6 saddr != ${net6} drop\n` +
    '  }\n}\n'
  );
}

export interface MultiWanOptions {
  nat: NatMode;
  acct?: boolean;
}

/** The multi-WAN lab's spec (nft rules are loaded by multiWanLab()). */
export function multiWanLabSpec(): LabSpec {
  return {
    hosts: {
      lanhost: LANHOST,
      gw: {
        router: true,
        ip: [
          ['route', 'add', 'default', 'via', GW.isp1_4, 'dev', 'e0', 'metric', '10'],
          ['route', 'add', 'default', 'via', GW.isp2_4, 'dev', 'e1', 'metric', '20'],
          ['-6', 'route', 'add', 'default', 'via', GW.isp1_6, 'dev', 'e0', 'metric', '10'],
          ['-6', 'route', 'add', 'default', 'via', GW.isp2_6, 'dev', 'e1', 'metric', '20'],
        ],
      },
      r1: router,
      r2: router,
      // The server knows the uplinks' subnets only: the LAN behind gw is reachable through NAT.
      server: {
        ip: [
          ['route', 'add', GW.e0Net4, 'via', GW.r1s4],
          ['route', 'add', GW.e1Net4, 'via', GW.r2s4],
          ['-6', 'route', 'add', GW.e0Net6, 'via', GW.r1s6],
          ['-6', 'route', 'add', GW.e1Net6, 'via', GW.r2s6],
        ],
      },
    },
    lans: [
      lanSegment(),
      {
        name: 'e0',
        members: [
          { host: 'gw', iface: 'e0', addrs: [`${GW.gwE0_4}/24`, `${GW.gwE0_6}/64`] },
          { host: 'r1', iface: 'lan0', addrs: [`${GW.isp1_4}/24`, `${GW.isp1_6}/64`] },
        ],
      },
      {
        name: 'e1',
        members: [
          { host: 'gw', iface: 'e1', addrs: [`${GW.gwE1_4}/24`, `${GW.gwE1_6}/64`] },
          { host: 'r2', iface: 'lan0', addrs: [`${GW.isp2_4}/24`, `${GW.isp2_6}/64`] },
        ],
      },
      wanSegment(),
    ],
  };
}

/** Build the multi-WAN lab with the given NAT on gw; conntrack is loaded in gw in every mode. */
export async function multiWanLab(opts: MultiWanOptions): Promise<Lab> {
  const lab = await Lab.create(multiWanLabSpec());
  try {
    if (opts.acct) await lab.execOk('gw', ['sysctl', '-qw', 'net.netfilter.nf_conntrack_acct=1']);
    await loadNft(lab, 'gw', 'conntrack', CONNTRACK_RULES);
    await loadNft(lab, 'gw', 'nat', natRules(opts.nat));
    await loadNft(lab, 'r1', 'isp', ispFilter(GW.e0Net4, GW.e0Net6));
    await loadNft(lab, 'r2', 'isp', ispFilter(GW.e1Net4, GW.e1Net6));
  } catch (err) {
    await lab.close();
    throw err;
  }
  return lab;
}

export interface LookupKey {
  dst: string;
  from?: string;
  iif?: string;
  proto?: 'tcp' | 'udp';
  sport?: number;
  dport?: number;
  mark?: number;
}

/**
 * The gateway the kernel in `host` picks for a full lookup key (`ip route get` with iif, ipproto,
 * sport, dport, mark), or null for a route without a gateway.
 */
export async function gatewayFor(lab: Lab, host: string, key: LookupKey): Promise<string | null> {
  const args = [key.dst.includes(':') ? '-6' : '-4', 'route', 'get', key.dst];
  if (key.from) args.push('from', key.from);
  if (key.iif) args.push('iif', key.iif);
  if (key.proto) args.push('ipproto', key.proto);
  if (key.sport !== undefined) args.push('sport', String(key.sport));
  if (key.dport !== undefined) args.push('dport', String(key.dport));
  if (key.mark !== undefined) args.push('mark', String(key.mark));
  const out = await lab.ip(host, args);
  return /\bvia (\S+)/.exec(out)?.[1] ?? null;
}

/** The first source port in [from, from + tries) whose full lookup key goes via `gateway`. */
export async function sourcePortVia(
  lab: Lab,
  host: string,
  key: Omit<LookupKey, 'sport'>,
  gateway: string,
  from = 40_000,
  tries = 64,
): Promise<number> {
  for (let p = from; p < from + tries; p++)
    if ((await gatewayFor(lab, host, { ...key, sport: p })) === gateway) return p;
  throw new Error(`lab: no source port in ${from}..${from + tries - 1} hashes to ${gateway} for ${key.dst}`);
}
