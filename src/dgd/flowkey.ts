// The key the kernel looks a local TCP socket's route up by (struct flowi4/flowi6,
// include/net/flow.h, as ip_route_connect and inet6_csk_route_socket fill it): besides the
// addresses, the protocol and both ports (an ECMP group with an L4 hash, fib_multipath_hash_policy=1,
// picks its member by them; `ip rule sport/dport/ipproto` selects tables by them), the socket's mark
// (`ip rule fwmark`), its owner's uid (`ip rule uidrange`) and the interface it is bound to. A lookup
// by the addresses alone answers for another flow, and blames a gateway the socket does not use.
import type { FlowKey, ScannedSocket } from './ports';

/** What a socket's key is made of: a ScannedSocket, or a sock_diag entry (mark null: not told). */
export type KeyedSocket = Pick<ScannedSocket, 'srcPort' | 'dstPort' | 'uid' | 'ifindex'> & {
  mark?: number | null;
};

/** IPPROTO_TCP (include/uapi/linux/in.h). */
const IPPROTO_TCP = 6;

/** The lookup key of a scanned TCP socket; fields the scan did not report are left out. */
export function socketFlowKey(s: KeyedSocket): FlowKey {
  const key: FlowKey = { proto: IPPROTO_TCP, sport: s.srcPort, dport: s.dstPort };
  if (s.mark !== undefined && s.mark !== null) key.mark = s.mark;
  if (s.uid !== undefined) key.uid = s.uid;
  if (s.ifindex) key.oif = s.ifindex;
  return key;
}

/** One string per distinct lookup (addresses and every key field), for caches of lookups. */
export function lookupCacheKey(dst: string, src: string | null, key: FlowKey = {}): string {
  const { proto, sport, dport, mark, uid, iif, oif } = key;
  return [src ?? '', dst, proto, sport, dport, mark, uid, iif, oif].map((v) => v ?? '').join('|');
}
