// Facts about the host the daemon runs on, read from /proc: its effective capabilities and the
// boot id that tells one boot from the next.
import { readFileSync } from 'node:fs';

/** Capability numbers from include/uapi/linux/capability.h. */
export const CAPABILITIES = {
  CAP_NET_ADMIN: 12,
  CAP_NET_RAW: 13,
} as const;

export type CapabilityName = keyof typeof CAPABILITIES;

/** The effective capability set (the CapEff line of /proc/self/status, proc(5)) as a bit mask. */
export function effectiveCapabilities(statusText?: string): bigint {
  const text = statusText ?? readFileSync('/proc/self/status', 'utf8');
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(text);
  if (!m) throw new Error('no CapEff line in /proc/self/status');
  return BigInt(`0x${m[1]}`);
}

/** Which of `wanted` the effective set lacks, in the order given. */
export function missingCapabilities(
  wanted: readonly CapabilityName[],
  effective = effectiveCapabilities(),
): CapabilityName[] {
  return wanted.filter((name) => ((effective >> BigInt(CAPABILITIES[name])) & 1n) === 0n);
}

/**
 * This boot's id (/proc/sys/kernel/random/boot_id: a random UUID the kernel makes at each boot),
 * or null where it cannot be read.
 */
export function readBootId(): string | null {
  try {
    const id = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    return id === '' ? null : id;
  } catch {
    return null;
  }
}
