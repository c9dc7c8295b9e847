// One live libpcap handle on one interface (native/pcap.cc): the one way into libpcap for ARP/NDP
// (neighlink.ts), packet capture (capture.ts) and the TCP segment recorder (tcpreplay.ts). Our own
// addon rather than a packaged binding, so an interface going down is an event, not an abort of
// the process (native/pcap.cc says why).
//
// A handle whose interface goes down or away reports it once with 'down' (a SystemError, usually
// ENETDOWN) and closes itself: a packet socket bound to a deleted interface never receives again,
// so owners open a new handle when the interface is back.
import { EventEmitter } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { IpdeadgateError, SystemError, UsageError } from '../../errors';
import { loadNative, type NativeSystemError } from '../native';

/** One frame as libpcap captured it. `data` is the addon's own copy: safe to keep. */
export interface LivePacket {
  data: Buffer;
  /** Length on the wire; more than data.length when the frame was cut at the snap length. */
  wireLength: number;
  /** The kernel's receive time stamp, epoch milliseconds (microsecond precision). */
  tsMs: number;
}

export interface PcapOpenOptions {
  /** tcpdump-syntax filter (pcap-filter(7)); '' for every packet. */
  filter?: string;
  snaplen?: number;
  /** Kernel ring buffer size. */
  bufferBytes?: number;
  /** What the handle is for, in error messages: " for ARP/NDP". */
  purpose?: string;
  /**
   * Which frames to report: both directions (the default), only those the interface received, or
   * only those it sent (pcap_setdirection(3PCAP)). Set it where one direction is all that matters.
   */
  direction?: 'inout' | 'in' | 'out';
}

/** DLT_EN10MB (pcap/dlt.h). */
export const LINKTYPE_ETHERNET = 1;

const IFNAME = /^[^\s/:]{1,15}$/;

/**
 * Emits 'packet' (LivePacket) and, once, 'down' (SystemError) when the interface went down or away
 * or reading failed; the handle is closed by then. close() is idempotent and safe from a listener.
 */
export class PcapHandle extends EventEmitter {
  private closed = false;
  readonly linkType: number;
  /** The packet socket's descriptor (for leak checks). */
  readonly fd: number;

  private constructor(
    readonly ifname: string,
    private readonly id: number,
    linkType: number,
    fd: number,
  ) {
    super();
    this.linkType = linkType;
    this.fd = fd;
  }

  /**
   * Open and activate a handle (never promiscuous; immediate, non-blocking). A packet socket on a
   * veth or behind a bridge still receives frames flooded to other MACs: readers that decide from
   * frames check the destination themselves. Throws UsageError for an
   * unknown interface or a bad filter, SystemError EPERM without CAP_NET_RAW, ENETDOWN for an
   * interface that is down.
   */
  static open(ifname: string, opts: PcapOpenOptions = {}): PcapHandle {
    if (typeof ifname !== 'string' || !IFNAME.test(ifname))
      throw new UsageError(`"${ifname}" is not a valid interface name`);
    const filter = opts.filter ?? '';
    const native = loadNative();
    let handle: PcapHandle | null = null;
    const onEvent = (err: NativeSystemError | null, packets?: LivePacket[]) => {
      if (!handle || handle.closed) return;
      if (err) {
        const h = handle;
        h.close();
        h.emit('down', pcapError(err, ifname + (opts.purpose ?? ''), filter, 'reading packets on'));
        return;
      }
      for (const p of packets ?? []) {
        if (handle.closed) return;
        handle.emit('packet', p);
      }
    };
    let opened: { id: number; linkType: number; fd: number };
    try {
      opened = native.pcapOpen(
        ifname,
        filter,
        opts.snaplen ?? 65535,
        opts.bufferBytes ?? 1 << 20,
        opts.direction ?? 'inout',
        onEvent,
      );
    } catch (err) {
      throw pcapError(err, ifname + (opts.purpose ?? ''), filter, 'opening');
    }
    handle = new PcapHandle(ifname, opened.id, opened.linkType, opened.fd);
    return handle;
  }

  /** Handles open in this process (leak checks in tests). */
  static openCount(): number {
    return loadNative().pcapCount();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Send one frame as is (pcap_inject); throws SystemError. */
  send(frame: Buffer): void {
    if (this.closed)
      throw new IpdeadgateError('ERR_CLOSED', `the libpcap handle on ${this.ifname} is closed`);
    try {
      loadNative().pcapSend(this.id, frame);
    } catch (err) {
      throw pcapError(err, this.ifname, '', 'sending on');
    }
  }

  /** Replace the kernel filter (tcpdump syntax); throws UsageError for a bad filter. */
  setFilter(filter: string): void {
    if (this.closed)
      throw new IpdeadgateError('ERR_CLOSED', `the libpcap handle on ${this.ifname} is closed`);
    try {
      loadNative().pcapSetFilter(this.id, filter);
    } catch (err) {
      throw pcapError(err, this.ifname, filter, 'filtering on');
    }
  }

  /** The kernel's counts since the handle opened: frames that passed the filter, and those dropped. */
  stats(): { received: number; dropped: number } | null {
    return this.closed ? null : loadNative().pcapStats(this.id);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    loadNative().pcapClose(this.id);
    this.emit('closed');
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Does a network interface of this name exist in this network namespace? */
export function interfaceExists(ifname: string): boolean {
  if (!IFNAME.test(ifname)) return false;
  // /proc/net/dev lists the interfaces of the reading thread's network namespace. /sys/class/net
  // lists those of the namespace sysfs was mounted in, which in a container entered with its own
  // network namespace but the host's /sys (systemd-nspawn --network-namespace-path, nsenter --net)
  // is another one: asking sysfs there would refuse an interface that ARP/NDP already has open.
  try {
    return readFileSync('/proc/net/dev', 'latin1')
      .split('\n')
      .some((line) => line.split(':')[0]!.trim() === ifname);
  } catch {
    return existsSync(`/sys/class/net/${ifname}`);
  }
}

/**
 * Open a handle and insist on Ethernet (DLT_EN10MB): every frame codec here reads Ethernet II.
 * `whyEthernet` ends the UsageError for another link type ("ARP and NDP need Ethernet").
 */
export function openEthernetHandle(ifname: string, opts: PcapOpenOptions, whyEthernet: string): PcapHandle {
  const handle = PcapHandle.open(ifname, opts);
  if (handle.linkType !== LINKTYPE_ETHERNET) {
    handle.close();
    throw new UsageError(
      `${ifname} is not an Ethernet interface (libpcap link type ${handle.linkType}); ${whyEthernet}`,
    );
  }
  return handle;
}

const CAPTURE_BUFFER = 65535;

/**
 * A handle for capturing whole frames with a tcpdump-syntax filter ('' for everything), as packet
 * capture and the TCP segment recorder use them: the full frame, a 4 MiB kernel buffer. Throws
 * UsageError for a bad or unknown interface name, a non-Ethernet interface or a bad filter,
 * SystemError EPERM without CAP_NET_RAW, ENETDOWN for an interface that is down.
 */
export function openCaptureHandle(ifname: string, filter = ''): PcapHandle {
  if (!IFNAME.test(ifname)) throw new UsageError(`"${ifname}" is not a valid interface name`);
  if (!interfaceExists(ifname))
    throw new UsageError(`no network interface named "${ifname}" in this network namespace (see: ip link)`);
  return openEthernetHandle(
    ifname,
    { filter, snaplen: CAPTURE_BUFFER, bufferBytes: 4 << 20 },
    'capture writes Ethernet (DLT_EN10MB) only',
  );
}

/** The addon's errors carry errno codes; say what they mean for a capture. */
function pcapError(err: unknown, ifname: string, filter: string, doing: string): IpdeadgateError {
  const e = err as Partial<NativeSystemError> & { pcapMessage?: string };
  if (!e || typeof e.code !== 'string')
    return new IpdeadgateError('EIO', `${doing} ${ifname}: ${String(err)}`);
  const text = e.pcapMessage || e.description || e.message || '';
  const sys = (hint: string) =>
    new SystemError(
      e.code!,
      e.errno ?? 0,
      e.syscall ?? 'pcap',
      `${e.code}: ${doing} ${ifname} ${hint} (${text})`,
      {
        cause: err,
      },
    );
  switch (e.code) {
    case 'ENODEV':
      return new UsageError(
        `no network interface named "${ifname.split(' ')[0]}" in this network namespace (${text})`,
        {
          cause: err,
        },
      );
    case 'EPERM':
    case 'EACCES':
      return sys('needs CAP_NET_RAW (run as root)');
    case 'ENETDOWN':
      return sys('failed: the interface is down or was removed');
    case 'EINVAL':
      if (e.syscall === 'pcap_compile' || e.syscall === 'pcap_setfilter')
        return new UsageError(
          `bad capture filter "${filter}": ${text} (tcpdump filter syntax, see man pcap-filter)`,
          {
            cause: err,
          },
        );
      return sys('failed: invalid argument');
    default:
      return sys('failed');
  }
}
