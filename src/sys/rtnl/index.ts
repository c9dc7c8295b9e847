// The rtnetlink facade: what the rest of the project uses of rtnetlink (routes, neighbours,
// links, addresses and nexthop objects of this network namespace). The codecs and the netlink
// channel behind it stay inside this folder.
export { openRtnl } from './client';
export { describeNexthop } from './nexthop';
export type {
  Address,
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
