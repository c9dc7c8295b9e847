// NETLINK_NETFILTER (nfnetlink): the message type and header of its subsystems, over the same
// netlink channel as NETLINK_ROUTE (rtnl/channel.ts: request/reply matching, timeouts, a cap on the
// messages a dump keeps, the kernel's errno on failure).
import { NetlinkChannel, type ChannelOptions } from './rtnl';

/** NETLINK_NETFILTER (linux/netlink.h). */
const NETLINK_NETFILTER = 12;
/** NFNETLINK_V0 (linux/netfilter/nfnetlink.h). */
const NFNETLINK_V0 = 0;
/** struct nfgenmsg: u8 nfgen_family, u8 version, __be16 res_id (linux/netfilter/nfnetlink.h). */
export const NFGENMSG_LEN = 4;

export type { NetlinkMessage } from './rtnl';

/** The nfnetlink message type: subsystem in the high byte, the subsystem's message in the low one. */
export const nfnlType = (subsys: number, msg: number): number => (subsys << 8) | msg;

/** struct nfgenmsg for a request: the address family it is about (0 = every family). */
export function nfgenmsg(family: number, resId = 0): Buffer {
  const b = Buffer.alloc(NFGENMSG_LEN);
  b.writeUInt8(family, 0);
  b.writeUInt8(NFNETLINK_V0, 1);
  b.writeUInt16BE(resId, 2);
  return b;
}

/** Open a NETLINK_NETFILTER socket; multicast groups are NFNLGRP_* (linux/netfilter/nfnetlink.h). */
export function openNfnlChannel(opts: Omit<ChannelOptions, 'protocol'> = {}): NetlinkChannel {
  return new NetlinkChannel({ ...opts, protocol: NETLINK_NETFILTER });
}
