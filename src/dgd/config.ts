// Detection's own config schema (the `dgd:` section of the config file): zod, durations in
// milliseconds once parsed. src/daemon/config.ts puts it in the whole file's schema; the engine
// takes the parsed section and knows nothing of the daemon (layering: docs/architecture.md).
import { isIP } from 'node:net';
import { z } from 'zod';
import { duration, intIn } from '../util/schema';
import { ownersSchema } from './owners';

const ipAddress = z.string().refine(
  (s) => isIP(s) !== 0,
  (s) => ({ message: `"${s}" is not an IP address` }),
);

/** A routing table: main, local, default, or a number 1..2^32-1 (names from rt_tables resolve later). */
const tableName = z.union([
  z.enum(['main', 'local', 'default']),
  intIn(1, 0xffffffff),
  z
    .string()
    .regex(
      /^[A-Za-z_][\w.-]*$/,
      'must be main, local, default, a number or a name from /etc/iproute2/rt_tables',
    ),
]);

const macAddress = z
  .string()
  .regex(/^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/, 'must be a MAC address like 02:00:5e:00:01:01')
  .transform((m) => m.toLowerCase())
  .refine((m) => m !== '00:00:00:00:00:00' && (parseInt(m.slice(0, 2), 16) & 1) === 0, {
    message: 'must be a unicast MAC address (not zero, broadcast or multicast)',
  });

/**
 * A gateway's MAC pinned by the operator: only answers from it count, and the kernel's neighbour
 * entry moving elsewhere (VRRP, a replaced router, a forged announcement) does not move it.
 */
const gatewayMac = z
  .object({
    gateway: ipAddress,
    mac: macAddress,
    /** Only on this interface (default: wherever the gateway is). */
    interface: z
      .string()
      .regex(/^[^\s/:%]{1,15}$/, 'must be an interface name')
      .optional(),
  })
  .strict();

const activeProbe = z
  .object({
    gateway: ipAddress,
    interval: duration(10, 3_600_000).default('1s'),
    misses: intIn(1, 100).default(3),
  })
  .strict();

/**
 * Conntrack follows the routes (./conntrackfollow.ts): after a switch or a restore, entries whose
 * source NAT binds them to an uplink their flow no longer leaves by are deleted, so the flow's next
 * packet is translated on its new path.
 */
const conntrackSchema = z
  .object({
    follow: z.boolean().default(true),
    max_entries: intIn(1, 1_000_000).default(20_000),
  })
  .strict();

/** The trigger for forwarded traffic: TCP segments leaving towards gateway MACs (src/sys/packet/wirewatch.ts). */
const forwarded = z
  .object({
    enabled: z.boolean().default(true),
    /** Frames a second per interface read at most before flows are sampled. */
    frame_budget: intIn(100, 1_000_000).default(2000),
  })
  .strict();

export const dgdSchema = z
  .object({
    enabled: z.boolean().default(true),
    retransmit_threshold: intIn(1, 15).default(3),
    scan_interval: duration(10, 10_000).default('200ms'),
    verify_probes: intIn(1, 20).default(3),
    verify_timeout: duration(10, 10_000).default('250ms'),
    slow_poll_interval: duration(1000, 3_600_000).default('2m'),
    revive_probes: intIn(1, 20).default(2),
    keep_last_route: z.boolean().default(true),
    allow_mac_change: z.boolean().default(false),
    gateway_macs: z.array(gatewayMac).max(4096).default([]),
    resend_on_switch: z.boolean().default(true),
    tables: z.array(tableName).min(1, 'needs at least one table').default(['main']),
    gateways: z.array(ipAddress).default([]),
    router_advertisements: z.boolean().default(false),
    active: z.array(activeProbe).default([]),
    flap_limit: intIn(1, 1000).default(3),
    flap_window: duration(1000, 86_400_000).default('10m'),
    flap_hold_down: duration(1000, 3_600_000).default('1m'),
    rewithdraw_limit: intIn(1, 1000).default(5),
    rewithdraw_window: duration(1000, 3_600_000).default('1m'),
    aggregate_sockets: intIn(0, 10_000).default(3),
    aggregate_window: duration(100, 60_000).default('1s'),
    syn_stall: duration(100, 10_000).default('500ms'),
    interface_wait: duration(1000, 86_400_000).default('10m'),
    owners: ownersSchema.default({}),
    conntrack: conntrackSchema.default({}),
    forwarded: forwarded.default({}),
  })
  .strict();

export type DgdConfig = z.infer<typeof dgdSchema>;
