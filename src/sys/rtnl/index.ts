// The rtnetlink facade: what the rest of the project uses of rtnetlink (routes, neighbours,
// links, addresses and nexthop objects of this network namespace). The route codecs stay inside
// this folder; the netlink channel and the message framing are protocol-neutral and shared with
// the other netlink families (nfnetlink.ts).
export { openRtnl } from './client';
export { describeNexthop } from './nexthop';
export type {
  Address,
  FlowKey,
  Link,
  NeighState,
  Neighbour,
  Nexthop,
  NexthopGroupMember,
  NexthopObject,
  OpenRtnlOptions,
  Route,
  RouteLookup,
  Rtnl,
  RtnlEvent,
  RtnlGroup,
  RtnlSubscription,
  SubscribeOptions,
} from './types';
export type { RouteRaw } from './routes';
export {
  routeKey,
  routeToIpArgs,
  describeRoute,
  tableName,
  protocolName,
  scopeName,
  routeTypeName,
} from './format';
export { NetlinkChannel, NetlinkErrno } from './channel';
export type { ChannelOptions, ChannelReply, NetlinkMessage, RequestOptions } from './channel';
export { NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, align4 } from './codec';
