// The `tunnel:` section of the config file (the operators' contract, docs/configuration.md): keys
// in snake_case, durations as strings. The daemon's loader (src/daemon/config.ts) embeds this
// schema under `tunnel`; errors carry the zod path so the loader can name the file, line and key.
import * as path from 'node:path';
import { isIP } from 'node:net';
import { z } from 'zod';
import { duration, intIn as wholeNumber } from '../util/schema';
import { RELAY_AFTER_BYTES } from './handover';

export interface HostPort {
  host: string;
  port: number;
}

/** "198.18.0.1:9401", "[2001:db8::1]:9401", "gw.example:9401". */
export function parseHostPort(text: string): HostPort | undefined {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(text) ?? /^([^\s:[\]]+):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  if (text.startsWith('[') && isIP(m[1]!) !== 6) return undefined;
  return { host: m[1]!, port };
}

export function formatHostPort(hp: HostPort): string {
  return isIP(hp.host) === 6 ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

const hostPort = z
  .string({ invalid_type_error: 'must be a string HOST:PORT, e.g. 198.18.0.1:9401 or [2001:db8::1]:9401' })
  .transform((text, ctx) => {
    const hp = parseHostPort(text.trim());
    if (!hp) {
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        message: `"${text}" is not HOST:PORT (e.g. 198.18.0.1:9401, [2001:db8::1]:9401)`,
      });
      return z.NEVER;
    }
    return hp;
  });

const durationIn = (min: number, max: number, dflt: string) => duration(min, max).default(dflt);

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };

/** "256KiB", "32MiB", "1GiB" or a number of bytes, within [min, max] bytes. */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+)\s*(B|KiB|MiB|GiB)?$/.exec(text.trim());
  return m ? Number(m[1]) * SIZE_UNITS[m[2] ?? '']! : undefined;
}

const sizeIn = (min: number, max: number, dflt: string) =>
  z
    .union([z.number().int(), z.string()], {
      invalid_type_error: 'must be a size like "256KiB", "32MiB" or a number of bytes',
    })
    .default(dflt)
    .transform((v, ctx) => {
      const n = typeof v === 'number' ? v : parseSize(v);
      if (n === undefined || n < min || n > max) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          message: `"${v}" must be a size from ${min / 1024} KiB to ${max / 1024 ** 2} MiB (e.g. "32MiB")`,
        });
        return z.NEVER;
      }
      return n;
    });
const intIn = (min: number, max: number, dflt: number) => wholeNumber(min, max).default(dflt);

/** Service and node names: what peers ask for and announce. '@' is reserved for the link's own streams. */
export const SERVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const serviceName = z
  .string()
  .regex(SERVICE_NAME, 'must be 1-63 letters, digits, "_", "." or "-", starting with a letter or digit');

/** A service name, a prefix ending in "*", or "*" alone (any). */
export const SERVICE_PATTERN = /^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\*?)$/;
const servicePattern = z
  .string()
  .regex(
    SERVICE_PATTERN,
    'must be a service name, a prefix ending in "*" (e.g. "endpoint-*"), or "*" for any',
  );

/**
 * The value under `key` when it is the record's own: names come from peers, and a plain object's
 * inherited members (`constructor`, `toString`, `__proto__`) must never resolve as a service or a peer.
 */
export function ownEntry<T>(rec: Record<string, T> | undefined, key: string): T | undefined {
  return rec !== undefined && Object.hasOwn(rec, key) ? rec[key] : undefined;
}

/** Whether `service` matches one of `patterns` (exact names, "prefix*", "*"). */
export function matchesAny(patterns: readonly string[], service: string): boolean {
  return patterns.some((p) => (p.endsWith('*') ? service.startsWith(p.slice(0, -1)) : p === service));
}

/**
 * Which peers may link, and what each may announce and open. Absent: any peer whose
 * certificate is from the CA and vouches for the name it gives may link, announce and open any
 * service (today's behaviour, with identities bound). Present: only the peers named here may link;
 * each may announce and open what its lists say (default "*").
 */
const peerRule = z
  .object({
    announce: z.array(servicePattern).default(['*']),
    open: z.array(servicePattern).default(['*']),
  })
  .strict();

export const tunnelConfigSchema = z
  .object({
    role: z.enum(['gateway-proxy', 'endpoint-proxy', 'relay']),
    name: serviceName,
    tls: z.object({ ca: z.string().min(1), cert: z.string().min(1), key: z.string().min(1) }).strict(),
    listen: hostPort.optional(),
    links: z.array(z.object({ connect: hostPort }).strict()).default([]),
    services: z.record(serviceName, hostPort).default({}),
    forwards: z.array(z.object({ listen: hostPort, service: serviceName }).strict()).default([]),
    heartbeat: durationIn(100, 3_600_000, '10s'),
    heartbeat_misses: intIn(1, 100, 3),
    close_timeout: durationIn(100, 86_400_000, '60s'),
    dial_timeout: durationIn(100, 3_600_000, '15s'),
    open_timeout: durationIn(100, 3_600_000, '30s'),
    handshake_timeout: durationIn(100, 600_000, '10s'),
    max_sessions: intIn(1, 1_000_000, 10_000),
    // What one authenticated peer may cost this node (docs/security.md).
    peer_max_sessions: intIn(1, 1_000_000, 5000),
    peer_max_buffered: sizeIn(256 * 1024, 4096 * 1024 ** 2, '32MiB'),
    write_timeout: durationIn(100, 3_600_000, '10s'),
    max_unsent: sizeIn(8 * 1024 ** 2, 1024 * 1024 ** 2, '16MiB'),
    // What unauthenticated clients may cost the link listener.
    max_handshakes: intIn(1, 100_000, 256),
    max_handshakes_per_address: intIn(1, 100_000, 16),
    first_byte_timeout: durationIn(100, 600_000, '3s'),
    // Bridged sessions' bytes move in the addon (src/tunnel/nativebridge.ts); false: in JavaScript.
    native_relay: z.boolean().default(true),
    // ...once a session has moved this much (0: at once); short and idle sessions stay in JavaScript.
    native_relay_after: sizeIn(0, 64 * 1024 ** 2, String(RELAY_AFTER_BYTES)),
    peers: z.record(serviceName, peerRule).optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (!c.listen && c.links.length === 0)
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ['links'],
        message: 'a node needs `listen` or at least one entry in `links`, or it has no link at all',
      });
    if (c.role === 'relay' && (Object.keys(c.services).length > 0 || c.forwards.length > 0))
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ['role'],
        message:
          'a relay only joins links: move `services` and `forwards` to a gateway-proxy or endpoint-proxy',
      });
  });

/** The parsed section; durations are milliseconds, addresses {host, port}. */
export type TunnelConfig = z.output<typeof tunnelConfigSchema>;
export type TunnelConfigInput = z.input<typeof tunnelConfigSchema>;

/** TLS file paths in a config are relative to the config file's directory. */
export function resolveTlsPaths(cfg: TunnelConfig, configDir: string): TunnelConfig {
  const r = (p: string): string => path.resolve(configDir, p);
  return { ...cfg, tls: { ca: r(cfg.tls.ca), cert: r(cfg.tls.cert), key: r(cfg.tls.key) } };
}
