// Types for the part of `cap` (mscdex/cap 0.2, libpcap binding) that src/sys/neighlink.ts uses.
// Only src/sys/ may import 'cap' (STYLE.md).
declare module 'cap' {
  import { EventEmitter } from 'node:events';

  export interface CapDevice {
    name: string;
    description?: string;
    addresses: { addr: string; netmask?: string; broadaddr?: string }[];
    flags?: string;
  }

  /** One libpcap handle. Opened in promiscuous, immediate, non-blocking mode. */
  export class Cap extends EventEmitter {
    constructor();
    /**
     * Open `device` with a BPF `filter`; every captured packet is copied into `buffer` (the same
     * buffer each time) and announced by a 'packet' event. Returns the link type, e.g. "ETHERNET".
     * Throws an Error with libpcap's message on failure.
     */
    open(device: string, filter: string, bufSize: number, buffer: Buffer): string;
    /** pcap_sendpacket; throws an Error with libpcap's message on failure. */
    send(buffer: Buffer, nBytes?: number): void;
    close(): void;
    on(event: 'packet', listener: (nbytes: number, truncated: boolean) => void): this;
    static findDevice(ip?: string): string | undefined;
    static deviceList(): CapDevice[];
  }
}
