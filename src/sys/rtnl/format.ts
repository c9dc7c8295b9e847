// Routes as people and logs read them: identity keys, iproute2 names, and the `ip route` argv that
// would recreate a route.
import { formatIp } from '../ipaddr';
import type { Route } from './types';

/** rt_tables names iproute2 knows without /etc/iproute2/rt_tables. */
const TABLE_NAMES: Record<number, string> = { 253: 'default', 254: 'main', 255: 'local' };
/** /usr/share/iproute2/rt_protos (iproute2 6.x). */
const PROTOCOL_NAMES: Record<number, string> = {
  0: 'unspec',
  1: 'redirect',
  2: 'kernel',
  3: 'boot',
  4: 'static',
  8: 'gated',
  9: 'ra',
  10: 'mrt',
  11: 'zebra',
  12: 'bird',
  13: 'dnrouted',
  14: 'xorp',
  15: 'ntk',
  16: 'dhcp',
  17: 'mrouted',
  18: 'keepalived',
  42: 'babel',
  99: 'openr',
  186: 'bgp',
  187: 'isis',
  188: 'ospf',
  189: 'rip',
  192: 'eigrp',
};
const SCOPE_NAMES: Record<number, string> = {
  0: 'global',
  200: 'site',
  253: 'link',
  254: 'host',
  255: 'nowhere',
};
/** RTN_* as iproute2 spells them. */
const TYPE_NAMES: Record<number, string> = {
  0: 'none',
  1: 'unicast',
  2: 'local',
  3: 'broadcast',
  4: 'anycast',
  5: 'multicast',
  6: 'blackhole',
  7: 'unreachable',
  8: 'prohibit',
  9: 'throw',
  10: 'nat',
  11: 'xresolve',
};
/** ICMPV6_ROUTER_PREF_* (RFC 4191 2.1). */
const PREF_NAMES: Record<number, string> = { 0: 'medium', 1: 'high', 3: 'low' };

export const tableName = (table: number): string => TABLE_NAMES[table] ?? String(table);
export const protocolName = (p: number): string => PROTOCOL_NAMES[p] ?? String(p);
export const scopeName = (s: number): string => SCOPE_NAMES[s] ?? String(s);
export const routeTypeName = (t: number): string => TYPE_NAMES[t] ?? String(t);

/** Stable identity of a route in the kernel: family, table, dst, tos, metric. */
export function routeKey(r: Route): string {
  return `ipv${r.family}/${r.table}/${r.dst}/tos${r.tos}/metric${r.metric}`;
}

/** "198.18.5.0/24 via 198.18.1.1 table 254 metric 100", for messages. */
export function describeRoute(r: Route): string {
  let s = `route ${r.dst}`;
  if (r.nexthops && r.nexthops.length)
    s += ` nexthops ${r.nexthops.map((h) => (h.gateway ? `via ${h.gateway}` : `dev ${h.ifname}`)).join(', ')}`;
  else if (r.gateway) s += ` via ${r.gateway}`;
  else if (r.ifname) s += ` dev ${r.ifname}`;
  s += ` table ${r.table}`;
  if (r.metric) s += ` metric ${r.metric}`;
  return s;
}

/**
 * The `ip route add` argv (without the leading `ip`) that would recreate `r`, for logs and docs.
 * Nexthops come last: iproute2 reads everything after the first `nexthop` as nexthop options.
 */
export function routeToIpArgs(r: Route): string[] {
  const args: string[] = [];
  if (r.family === 6) args.push('-6');
  args.push('route', 'add');
  if (r.type !== 1) args.push(routeTypeName(r.type));
  const zero = r.family === 4 ? '0.0.0.0/0' : '::/0';
  args.push(r.dst === zero ? 'default' : r.dst);
  const from = sourcePrefix(r);
  if (from) args.push('from', from);
  if (r.tos) args.push('tos', `0x${r.tos.toString(16)}`);
  const via = (gw: string) => (gw.includes(':') && r.family === 4 ? ['inet6', gw] : [gw]);
  const multipath = !!(r.nexthops && r.nexthops.length);
  if (!multipath) {
    if (r.gateway) args.push('via', ...via(r.gateway));
    if (r.ifname) args.push('dev', r.ifname);
    if (r.flags & 4) args.push('onlink');
  }
  args.push('table', tableName(r.table), 'proto', protocolName(r.protocol));
  // IPv6 routes have no scope (the kernel ignores rtm_scope for them).
  if (r.family === 4) args.push('scope', scopeName(r.scope));
  if (r.metric || r.family === 6) args.push('metric', String(r.metric));
  if (r.prefsrc) args.push('src', r.prefsrc);
  const metrics = r.metrics ?? {};
  const locked = metrics.lock ?? 0;
  for (const [name, value] of Object.entries(metrics)) {
    if (name === 'lock') continue;
    if (name === 'features') {
      if (value & 1) args.push('features', 'ecn'); // RTAX_FEATURE_ECN, the only one iproute2 sets
      continue;
    }
    const bit = METRIC_BITS[name];
    args.push(name);
    if (bit !== undefined && locked & (1 << bit)) args.push('lock');
    // The kernel keeps rtt in 1/8 ms and rttvar in 1/4 ms units (iproute2 scales them the same way).
    if (name === 'rtt') args.push(`${value / 8}ms`);
    else if (name === 'rttvar') args.push(`${value / 4}ms`);
    else if (name === 'rto_min') args.push(`${value}ms`);
    else args.push(String(value));
  }
  if (r.family === 6 && r.pref !== undefined) args.push('pref', PREF_NAMES[r.pref] ?? String(r.pref));
  if (r.expires) args.push('expires', String(r.expires));
  if (multipath)
    for (const h of r.nexthops!) {
      args.push('nexthop');
      if (h.gateway) args.push('via', ...via(h.gateway));
      args.push('dev', h.ifname, 'weight', String(h.weight));
      if (h.flags & 4) args.push('onlink');
    }
  return args;
}

/** The source prefix of a source-specific route (rtm_src_len + RTA_SRC, kept in Route.raw). */
function sourcePrefix(r: Route): string | null {
  const raw = r.raw as { srcLen?: unknown; attrs?: unknown } | null;
  if (
    !raw ||
    typeof raw !== 'object' ||
    typeof raw.srcLen !== 'number' ||
    raw.srcLen === 0 ||
    !Array.isArray(raw.attrs)
  )
    return null;
  const src = (raw.attrs as unknown[]).find(
    (a) => Array.isArray(a) && a[0] === 2 /* RTA_SRC */ && typeof a[1] === 'string',
  );
  if (!src) return null;
  const hex = (src as [number, string])[1];
  if (!/^([0-9a-f]{8}|[0-9a-f]{32})$/i.test(hex)) return null;
  return `${formatIp(Buffer.from(hex, 'hex'))}/${raw.srcLen}`;
}

const METRIC_BITS: Record<string, number> = {
  mtu: 2,
  window: 3,
  rtt: 4,
  rttvar: 5,
  ssthresh: 6,
  cwnd: 7,
  advmss: 8,
  reordering: 9,
  hoplimit: 10,
  initcwnd: 11,
  rto_min: 13,
  initrwnd: 14,
};
