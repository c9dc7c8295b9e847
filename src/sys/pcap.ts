// One live libpcap handle on one interface (native/pcap.cc), for ARP/NDP (neighlink.ts) and packet
// capture (capture.ts). Replaces the `cap` package, whose poll callback asserted and aborted the
// process when an interface went down (see native/pcap.cc for the whole story).
//
// A handle whose interface goes down or away reports it once with 'down' (a SystemError, usually
// ENETDOWN) and closes itself: a packet socket bound to a deleted interface never receives again,
// so owners open a new handle when the interface is back.
import { EventEmitter } from 'node:events';
import { IpdeadgateError, SystemError, UsageError } from '../errors';
import { loadNative, type NativeSystemError } from './native';

/** One frame as libpcap captured it. `data` is the addon's own copy: safe to keep. */
export interface PcapPacket {
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
}

/** DLT_EN10MB (pcap/dlt.h). */
export const LINKTYPE_ETHERNET = 1;

const IFNAME = /^[^\s/:]{1,15}$/;

/**
 * Emits 'packet' (PcapPacket) and, once, 'down' (SystemError) when the interface went down or away
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
   * Open and activate a handle (promiscuous, immediate, non-blocking). Throws UsageError for an
   * unknown interface or a bad filter, SystemError EPERM without CAP_NET_RAW, ENETDOWN for an
   * interface that is down.
   */
  static open(ifname: string, opts: PcapOpenOptions = {}): PcapHandle {
    if (typeof ifname !== 'string' || !IFNAME.test(ifname))
      throw new UsageError(`"${ifname}" is not a valid interface name`);
    const filter = opts.filter ?? '';
    const native = loadNative();
    let handle: PcapHandle | null = null;
    const onEvent = (err: NativeSystemError | null, packets?: PcapPacket[]) => {
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
      opened = native.pcapOpen(ifname, filter, opts.snaplen ?? 65535, opts.bufferBytes ?? 1 << 20, onEvent);
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
