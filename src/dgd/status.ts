// What `ipdeadgate status` shows about detection: the types of the projection and the pure
// functions that build it from the engine's state.
import { protocolName } from '../sys/rtnl';
import type { ConntrackFollowStatus } from './conntrackfollow';
import type { GatewayState, TriggerKind } from './events';
import type { Gateway, GatewayPhase, Transition } from './gateway';
import type { InterfacePresence } from './interfaces';
import type { OwnerStatus } from './owners';
import type { JournalEntry, KernelRoute, RecorderStatus, WireStatus } from './ports';
import { gatewaysOf, routeIdentity } from './routeplan';

export interface GatewayRouteStatus {
  dst: string;
  table: number;
  metric: number;
  gateway: string | null;
  nexthops: { gateway: string | null; weight: number }[] | null;
  /** Who installed the route (rtm_protocol): kernel, boot, static, dhcp, ra, zebra, bird, ... */
  owner: string | null;
  /** The nexthop object the route goes through, if any. */
  nhid: number | null;
  /**
   * active: in use; withdrawn: taken out of the kernel; kept: through a dead gateway, left by
   * keep_last_route; contested: through a dead gateway, put back by its owner too often to fight.
   */
  state: 'active' | 'withdrawn' | 'kept' | 'contested';
}

export interface DgdStatus {
  enabled: boolean;
  tables: number[];
  gateways: {
    address: string;
    interface: string;
    ifindex: number;
    /** The interface is up, down (administratively), or absent (deleted; routes wait for its name). */
    link: InterfacePresence;
    family: 4 | 6;
    state: GatewayState;
    /** The machine's phase (src/dgd/gateway.ts): dead is dead, held_down or waiting_for_interface. */
    phase: GatewayPhase;
    mac: string | null;
    routes: GatewayRouteStatus[];
    last_verification: {
      at: string;
      alive: boolean;
      arp_rtt_ms: number | null;
      echo_rtt_ms: number | null;
      probes_sent: number;
      duration_ms: number;
    } | null;
    verifications: number;
    triggers: Record<TriggerKind, number>;
    active_probing: { interval_ms: number; misses: number; missed: number } | null;
    dead_since_ms: number | null;
    next_poll: string | null;
    hold_down_ms: number | null;
    transitions: Transition[];
  }[];
  withdrawn_routes: (Omit<GatewayRouteStatus, 'state'> & { removed_gateways: string[] })[];
  /** Nexthop groups with dead members taken out (`ip nexthop replace`), as they were and are. */
  withdrawn_nexthop_members: {
    id: number;
    owner: string;
    original: string;
    now: string;
    removed_gateways: string[];
    contested: boolean;
  }[];
  /** Routing daemons configured in dgd.owners: what each has been told and what it holds. */
  route_owners: OwnerStatus[];
  /** Conntrack following the routes (dgd.conntrack); null where the system offers no conntrack. */
  conntrack: ConntrackFollowStatus | null;
  last_scan: {
    at: string | null;
    duration_ms: number;
    sockets: number;
    retransmitting: number;
    dumps: number;
  };
  /**
   * The trigger for traffic the host forwards: `capture` (TCP segments leaving towards gateway
   * MACs, per interface) or `off` (dgd.forwarded.enabled false, or detection off).
   */
  forwarded: { method: 'capture' | 'off'; interfaces: WireStatus[] };
  /**
   * Flow resume (dgd.resend_on_switch): `on` unless it or detection is off; the flows recorded now
   * (retransmitting through a gateway); and each interface's recorder while it has flows (none is
   * left open once no flow retransmits).
   */
  flow_resume: {
    on: boolean;
    recorded_flows: number;
    recorders: ({ interface: string } & RecorderStatus)[];
  };
}

export type GatewayStatus = DgdStatus['gateways'][number];

export function routeSummary(r: KernelRoute): Omit<GatewayRouteStatus, 'state'> {
  return {
    dst: r.dst,
    table: r.table,
    metric: r.metric,
    gateway: r.gateway,
    nexthops: r.nexthops ? r.nexthops.map((n) => ({ gateway: n.gateway, weight: n.weight })) : null,
    owner: r.protocol === undefined ? null : protocolName(r.protocol),
    nhid: r.nhid ?? null,
  };
}

/**
 * One gateway as status shows it. A route is listed once: in the kernel through g (active; kept
 * or contested while g is dead), or withdrawn (journaled and not in the kernel through g).
 */
export function gatewayStatus(
  g: Gateway,
  ctx: {
    kernelRoutes: readonly KernelRoute[];
    journal: readonly JournalEntry[];
    isContested: (r: KernelRoute) => boolean;
    now: number;
  },
): GatewayStatus {
  const routes: GatewayRouteStatus[] = [];
  const inKernel = new Set<string>();
  for (const r of ctx.kernelRoutes) {
    if (!gatewaysOf(r).includes(g.key)) continue;
    inKernel.add(routeIdentity(r));
    let state: GatewayRouteStatus['state'] = 'active';
    if (g.state === 'dead') state = ctx.isContested(r) ? 'contested' : 'kept';
    routes.push({ ...routeSummary(r), state });
  }
  for (const e of ctx.journal)
    if (e.removed.includes(g.key) && !inKernel.has(routeIdentity(e.original)))
      routes.push({ ...routeSummary(e.original), state: 'withdrawn' });
  const v = g.lastVerification;
  return {
    address: g.address,
    interface: g.ifname,
    ifindex: g.ifindex,
    link: g.link,
    family: g.family,
    state: g.state,
    phase: g.phase,
    mac: g.mac,
    routes,
    last_verification: v
      ? {
          at: new Date(v.startedAt).toISOString(),
          alive: v.alive,
          arp_rtt_ms: v.arpRttMs,
          echo_rtt_ms: v.echoRttMs,
          probes_sent: v.probesSent,
          duration_ms: Math.round(v.durationMs),
        }
      : null,
    verifications: g.verifications,
    triggers: { ...g.triggers },
    active_probing: g.active
      ? { interval_ms: g.active.intervalMs, misses: g.active.misses, missed: g.active.missed }
      : null,
    dead_since_ms: g.deadSince === null ? null : Math.round(ctx.now - g.deadSince),
    next_poll: g.nextPollAt === null ? null : new Date(g.nextPollAt).toISOString(),
    hold_down_ms: g.holdDownUntil === null ? null : Math.max(0, Math.round(g.holdDownUntil - ctx.now)),
    transitions: [...g.transitions],
  };
}
