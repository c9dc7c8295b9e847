// The tunnel process needs none of detection's privileges. The daemon holds CAP_NET_ADMIN and
// CAP_NET_RAW (routes, neighbours, raw sockets) and a forked child would inherit them: a flaw in
// the code that parses peers' bytes would then hand a hostile peer the host's routing table. So the
// child is started through util-linux's setpriv, which drops them before node starts: the child
// keeps CAP_NET_BIND_SERVICE only if the daemon had it (a tunnel port below 1024), and runs with
// no_new_privs. Capabilities are per thread, so they must go before exec, not from inside node
// (whose thread pool already exists by the time our code runs).
import * as fs from 'node:fs';

const CAP_SETPCAP = 8;
const CAP_NET_BIND_SERVICE = 10;

const SETPRIV_PATHS = ['/usr/bin/setpriv', '/bin/setpriv'];

/** The capability sets of this process, from /proc/self/status (bit n = capability n). */
export interface CapSets {
  effective: bigint;
  bounding: bigint;
}

export function readCapSets(status = fs.readFileSync('/proc/self/status', 'utf8')): CapSets {
  const field = (name: string): bigint => {
    const m = new RegExp(`^${name}:\\s*([0-9a-f]+)$`, 'm').exec(status);
    return m ? BigInt(`0x${m[1]}`) : 0n;
  };
  return { effective: field('CapEff'), bounding: field('CapBnd') };
}

const has = (set: bigint, cap: number): boolean => (set & (1n << BigInt(cap))) !== 0n;

/**
 * How to exec the tunnel child with fewer privileges: the wrapper program and its arguments, to be
 * put before node's own argv (child_process.fork's execPath / execArgv), or null when there is
 * nothing to drop or no setpriv (then `reason` says why, for a warning).
 */
export function tunnelExecWrapper(
  caps: CapSets = readCapSets(),
  setprivPaths: readonly string[] = SETPRIV_PATHS,
): { path: string; args: string[] } | { path: null; reason: string } {
  if (caps.effective === 0n) return { path: null, reason: 'the daemon holds no capabilities' };
  const setpriv = setprivPaths.find((p) => fs.existsSync(p));
  if (!setpriv)
    return { path: null, reason: `setpriv (util-linux) not found at ${setprivPaths.join(' or ')}` };
  const keep = has(caps.effective, CAP_NET_BIND_SERVICE) ? ',+net_bind_service' : '';
  // As root, exec gives back whatever the bounding set holds, so that is where they go (which
  // needs CAP_SETPCAP); what is kept comes from there, not from the ambient set.
  if (has(caps.effective, CAP_SETPCAP))
    return {
      path: setpriv,
      args: ['--no-new-privs', '--inh-caps=-all', '--ambient-caps=-all', `--bounding-set=-all${keep}`, '--'],
    };
  // As the own user (no CAP_SETPCAP), a non-root exec keeps only the ambient set.
  return {
    path: setpriv,
    args: ['--no-new-privs', `--inh-caps=-all${keep}`, `--ambient-caps=-all${keep}`, '--'],
  };
}
