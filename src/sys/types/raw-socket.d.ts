// Types for the part of `raw-socket` (nospaceships/node-raw-socket 1.8) that src/sys/packet/echo.ts
// and src/sys/packet/tcpreplay.ts use. Only src/sys/ may import 'raw-socket', so everything above
// it can run against fakes.
declare module 'raw-socket' {
  import { EventEmitter } from 'node:events';

  export const AddressFamily: { IPv4: number; IPv6: number };
  export const Protocol: { None: number; ICMP: number; TCP: number; UDP: number; ICMPv6: number };
  export const SocketLevel: { SOL_SOCKET: number; IPPROTO_IP: number; IPPROTO_IPV6: number };
  export const SocketOption: {
    SO_BINDTODEVICE: number;
    SO_RCVBUF: number;
    SO_SNDBUF: number;
    IP_HDRINCL: number;
    IP_TTL: number;
    IPV6_UNICAST_HOPS: number;
    IPV6_V6ONLY: number;
  };

  export interface SocketOptions {
    protocol?: number;
    addressFamily?: number;
    bufferSize?: number;
  }

  /**
   * A raw socket. Events: 'message' (buffer, sourceAddress) — for IPv4 the buffer starts with the
   * IP header, for IPv6 with the ICMPv6 header; 'error' — NOTE: emitted *without* an Error object
   * for poll failures (the addon passes only the event name), so the argument may be undefined;
   * 'close'.
   */
  export class Socket extends EventEmitter {
    send(
      buffer: Buffer,
      offset: number,
      length: number,
      address: string,
      afterCallback: (error: Error | null, bytes: number) => void,
    ): this;
    send(
      buffer: Buffer,
      offset: number,
      length: number,
      address: string,
      beforeCallback: () => void,
      afterCallback: (error: Error | null, bytes: number) => void,
    ): this;
    setOption(level: number, option: number, value: Buffer | number, length?: number): void;
    close(): this;
    pauseRecv(): this;
    resumeRecv(): this;
  }

  export function createSocket(options?: SocketOptions): Socket;
}
