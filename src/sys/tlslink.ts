// A link's TLS in the addon (native/tlslink.cc): an OpenSSL TLS 1.3 session on the connected
// socket, driven by the addon so that a batch of writes leaves in one send(2) and a wake-up's
// records come up in one callback. The wire is plain TLS 1.3.
//
// TlsLinkSocket is a Duplex over that, shaped like the parts of tls.TLSSocket the link uses
// (remoteAddress, alpnProtocol, authorized, getPeerCertificate): a MuxSession runs on it as on any
// transport. Its write callback waits until the addon has handed every byte to the kernel, so
// writableLength counts what the kernel has not taken yet, and 'drain' means what it means on a
// socket.
import { X509Certificate } from 'node:crypto';
import type * as net from 'node:net';
import { Duplex } from 'node:stream';
import type * as tls from 'node:tls';
import { IpdeadgateError } from '../errors';
import { loadNative, type TlsContextOptions } from './native';

export type { TlsContextOptions };

/** An SSL_CTX in the addon. Links made from it keep working after free(). */
export class TlsLinkContext {
  private id: number | undefined;

  constructor(readonly options: TlsContextOptions) {
    this.id = loadNative().tlsContext(options);
  }

  /** @internal */
  get handle(): number {
    if (this.id === undefined)
      throw new IpdeadgateError('ERR_TLS_CONTEXT_FREED', 'the TLS context was freed');
    return this.id;
  }

  free(): void {
    if (this.id === undefined) return;
    loadNative().tlsContextFree(this.id);
    this.id = undefined;
  }
}

interface SecureInfo {
  peerCertificate?: Buffer;
  alpn?: string;
  cipher: string;
}

/** The parts of tls.PeerCertificate the link reads, from the DER the handshake saw. */
function peerCertificateOf(der: Buffer | undefined): tls.PeerCertificate {
  if (!der) return {} as tls.PeerCertificate;
  const x = new X509Certificate(der);
  const dn = (text: string): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const line of text.split('\n')) {
      const eq = line.indexOf('=');
      if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
    }
    return out;
  };
  return {
    subject: dn(x.subject),
    issuer: dn(x.issuer),
    subjectaltname: x.subjectAltName ?? '',
    valid_from: x.validFrom,
    valid_to: x.validTo,
    fingerprint256: x.fingerprint256,
    serialNumber: x.serialNumber,
    raw: der,
  } as unknown as tls.PeerCertificate;
}

export interface TlsLinkSocketOptions {
  /** Send a KeyUpdate after this many records under one key (default 2^23; tests use small values). */
  rekeyRecords?: number;
}

/**
 * TLS over a connected TCP socket, in the addon. The TCP socket is taken over at once (its
 * descriptor is duplicated and the Node socket destroyed), so it must not have read anything: a
 * client socket right after 'connect', a server's socket accepted with pauseOnConnect.
 * Events: 'secure' after the handshake (the peer's certificate required and verified in it: a
 * peer without a good one fails the handshake with an alert, and the 'error' names why:
 * CERT_HAS_EXPIRED, ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE, ...), 'error' (handshake or link
 * failure, with Node's codes where Node has one), and a Duplex's own.
 */
export class TlsLinkSocket extends Duplex {
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  /** The ALPN protocol agreed on, or false. */
  alpnProtocol: string | false = false;
  /** Whether the handshake verified the peer's certificate (always, once 'secure'). */
  authorized = false;
  cipher = '';
  secure = false;
  private peerDer: Buffer | undefined;
  private id: number | undefined;
  private pendingWrite: ((err?: Error | null) => void) | undefined;
  private readWanted = false;
  private finalCb: ((err?: Error | null) => void) | undefined;
  /** queueFrame(): buffers for the next batch, their bytes, and the addon's unsent bytes. */
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private batchScheduled = false;
  private nativeQueued = 0;
  private needDrain = false;

  constructor(tcp: net.Socket, ctx: TlsLinkContext, opts: TlsLinkSocketOptions = {}) {
    super({ allowHalfOpen: true, readableHighWaterMark: 256 * 1024, writableHighWaterMark: 64 * 1024 });
    this.remoteAddress = tcp.remoteAddress;
    this.remotePort = tcp.remotePort;
    // A link carries frames that must not wait for Nagle; errors after the takeover are ours.
    tcp.setNoDelay(true);
    tcp.on('error', () => undefined);
    const fd = (tcp as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) {
      tcp.destroy();
      throw new IpdeadgateError('ERR_TLS_SOCKET', 'the TCP socket has no descriptor to take over');
    }
    const native = loadNative();
    const ev = native.tlsEvents;
    try {
      this.id = native.tlsOpen(
        ctx.handle,
        fd,
        ctx.options.server,
        opts.rekeyRecords ?? 0,
        (kind, arg, length) => {
          switch (kind) {
            case ev.secure:
              return this.onSecure(arg as SecureInfo);
            case ev.data: {
              const buf = arg as Buffer;
              if (!this.push(length < buf.length ? buf.subarray(0, length) : buf) && this.id !== undefined) {
                this.readWanted = false;
                native.tlsRead(this.id, false);
              }
              return;
            }
            case ev.end:
              this.push(null);
              return;
            case ev.drain: {
              this.nativeQueued = 0;
              const cb = this.pendingWrite;
              this.pendingWrite = undefined;
              cb?.();
              this.drained();
              const fin = this.finalCb;
              this.finalCb = undefined;
              fin?.();
              return;
            }
            case ev.error:
              // The addon has closed the link already; report outside its call.
              this.id = undefined;
              process.nextTick(() => this.destroy(arg as Error));
              return;
          }
        },
      );
    } finally {
      // The addon holds its own descriptor now (or failed to take one): ours goes either way.
      tcp.destroy();
    }
  }

  private onSecure(info: SecureInfo): void {
    this.secure = true;
    this.alpnProtocol = info.alpn ?? false;
    this.cipher = info.cipher;
    this.peerDer = info.peerCertificate;
    this.authorized = !!info.peerCertificate;
    this.emit('secure');
    if (this.id !== undefined && this.readWanted) loadNative().tlsRead(this.id, true);
  }

  getPeerCertificate(): tls.PeerCertificate {
    return peerCertificateOf(this.peerDer);
  }

  /**
   * Have the addon split this link's plaintext into yamux frames, so that native relays
   * (src/tunnel/nativebridge.ts) can take over streams: only before any plaintext went up.
   */
  trackFrames(): boolean {
    if (this.id === undefined || this.readableLength > 0) return false;
    return loadNative().tlsTrackFrames(this.id);
  }

  /** The addon's id of the link (native relays attach to it), while it is open. */
  get linkId(): number | undefined {
    return this.id;
  }

  /** Frames queued by queueFrame() go to the addon now (before a relay writes behind them). */
  flushFrames(): void {
    this.flushBatch();
  }

  /** Bytes the kernel took so far (the mux's write-stall check: relays send on the link too). */
  get sentBytes(): number | undefined {
    return this.id === undefined ? undefined : loadNative().tlsStats(this.id)?.sent;
  }

  /** Records and key updates so far, and the bytes the kernel has not taken (tests). */
  tlsStats(): ReturnType<ReturnType<typeof loadNative>['tlsStats']> {
    return this.id === undefined ? undefined : loadNative().tlsStats(this.id);
  }

  override _read(): void {
    this.readWanted = true;
    if (this.id !== undefined && this.secure) loadNative().tlsRead(this.id, true);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.send([chunk], cb);
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    this.send(
      chunks.map((c) => c.chunk),
      cb,
    );
  }

  /** The Writable path (write()/end() by other users than the mux): after any queued frames. */
  private send(bufs: Buffer[], cb: (err?: Error | null) => void): void {
    this.flushBatch();
    if (this.id === undefined || !this.secure)
      return cb(new IpdeadgateError('ERR_TLS_NOT_SECURE', 'write on a link before or after its TLS session'));
    const err = this.toAddon(bufs);
    if (err) return cb(err);
    if (this.nativeQueued === 0) cb();
    else this.pendingWrite = cb;
  }

  /** Seal and send in the addon; nativeQueued is what the kernel has not taken. An Error if the link failed. */
  private toAddon(bufs: Buffer[]): Error | undefined {
    try {
      this.nativeQueued = loadNative().tlsWrite(this.id!, bufs);
    } catch (err) {
      return err as Error;
    }
    // A failure inside the call has been reported (the error event) and the link closed.
    return this.id === undefined
      ? new IpdeadgateError('ECONNRESET', 'the link failed while writing')
      : undefined;
  }

  /**
   * The mux's write path (MuxSession.writeFrame), past the Writable machinery: the buffer joins a
   * batch that goes to the addon in one call in the loop's check phase, so the frames of every
   * read handled in one poll phase leave in one send(2). Returns false once the batch and what the
   * kernel has not taken reach `highWater`; 'drain' is emitted when that is over.
   */
  queueFrame(buf: Buffer, highWater: number): boolean {
    if (this.id === undefined || !this.secure || this.writableEnded) return true; // dropped, as after end
    this.batch.push(buf);
    this.batchBytes += buf.length;
    if (!this.batchScheduled) {
      this.batchScheduled = true;
      setImmediate(this.flushBatch);
    }
    if (this.nativeQueued + this.batchBytes < highWater) return true;
    this.needDrain = true;
    return false;
  }

  /** Bytes queued by queueFrame() or the addon and not yet taken by the kernel (the mux's budget). */
  get queuedBytes(): number {
    return this.nativeQueued + this.batchBytes;
  }

  private readonly flushBatch = (): void => {
    this.batchScheduled = false;
    if (!this.batch.length) return;
    const bufs = this.batch;
    this.batch = [];
    this.batchBytes = 0;
    if (this.id === undefined) return;
    const err = this.toAddon(bufs);
    if (err) return void this.destroy(err);
    if (this.nativeQueued === 0) this.drained();
  };

  private drained(): void {
    if (!this.needDrain || this.batchBytes + this.nativeQueued > 0) return;
    this.needDrain = false;
    this.emit('drain');
  }

  /**
   * end(): every queued frame, then close_notify and FIN. 'finish' waits until the kernel has
   * taken all of it, so a socket whose peer already ended is not destroyed (autoDestroy) with
   * records still in the addon.
   */
  override _final(cb: (err?: Error | null) => void): void {
    this.flushBatch();
    if (this.id === undefined) return cb();
    if (loadNative().tlsEnd(this.id) > 0) this.finalCb = cb;
    else cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.id !== undefined) {
      loadNative().tlsClose(this.id);
      this.id = undefined;
    }
    const p = this.pendingWrite;
    this.pendingWrite = undefined;
    p?.(err ?? new IpdeadgateError('ERR_STREAM_DESTROYED', 'the link was destroyed'));
    const fin = this.finalCb;
    this.finalCb = undefined;
    fin?.(err ?? new IpdeadgateError('ERR_STREAM_DESTROYED', 'the link was destroyed'));
    cb(err);
  }
}
