// The packet facade: what the rest of the project uses of packets on the wire. Neighbour
// resolution (neighlink.ts), ICMP echo (echo.ts), recording and resending TCP segments
// (tcpreplay.ts), packet capture for debugging (capture.ts), pcap savefiles (pcapfile.ts), and the
// pure frame codecs they share. Modules inside this folder import each other directly, never this
// file, so the facade cannot close a cycle.
export {
  LiveCapture,
  PacketDescriber,
  andFilters,
  frameAddresses,
  gatewayFilter,
  tcpFlagsText,
  type CapturedPacket,
  type DecodedPacket,
  type PacketKind,
} from './capture';
export { interfaceExists } from './pcap';
export { TcpRetransmissionTracker } from './tcpretrans';
export {
  PcapFileWriter,
  encodePcap,
  encodePcapHeader,
  encodePcapRecord,
  parsePcap,
  splitTimestamp,
  type ParsedPcap,
  type PcapHeaderOptions,
  type PcapPacket,
  type TimestampResolution,
} from './pcapfile';
export { EchoSocket, type EchoOptions, type EchoStats, type RawIcmpSocket } from './echo';
export {
  NEIGHBOUR_BPF_FILTER,
  neighbourFilter,
  NeighbourLink,
  NeighbourLinks,
  pickArpSender,
  pickNsSource,
  readInterfaceAddresses,
  type FrameTransport,
  type InterfaceAddresses,
  type LinkFrame,
  type NeighbourLinkStats,
  type NeighbourSighting,
  type ResolveOptions,
  type ResolveResult,
} from './neighlink';
export {
  MAX_RECORDED_FLOWS,
  SegmentRecorder,
  SegmentSender,
  TCP_FLAG_SYN,
  flowKey,
  type SegmentSource,
  type RecorderStats,
  type TcpFlow,
  type TcpSegment,
} from './tcpreplay';

// The frame codecs: pure encoders and decoders of untrusted bytes.
export { BROADCAST_MAC, FrameError, ZERO_MAC, readIpv4, readIpv6, readMac, type Decoded } from './framebase';
export * from './ethernet';
export * from './ip';
export * from './icmp';
export * from './neighframes';
export * from './tcp';
export {
  WireWatch,
  wireFilter,
  sampledFlow,
  decodeSegment,
  type WireRetransmission,
  type WireInterfaceStatus,
  type WireHandle,
} from './wirewatch';
