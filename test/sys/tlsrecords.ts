// TLS 1.3 records built and opened with a connection's real traffic secrets (from Node's 'keylog'
// event), for peers that are hostile on purpose: well-formed records with content a conforming
// peer never sends. RFC 8446 5.2 (record protection) and 7.1-7.3 (key schedule, KeyUpdate).
import { createCipheriv, createDecipheriv, createHmac } from 'node:crypto';

export const SUITES = {
  TLS_AES_128_GCM_SHA256: { hash: 'sha256', cipher: 'aes-128-gcm', keyLen: 16 },
  TLS_AES_256_GCM_SHA384: { hash: 'sha384', cipher: 'aes-256-gcm', keyLen: 32 },
  TLS_CHACHA20_POLY1305_SHA256: { hash: 'sha256', cipher: 'chacha20-poly1305', keyLen: 32 },
} as const;
export type SuiteName = keyof typeof SUITES;

export const ContentType = { alert: 21, handshake: 22, appData: 23 } as const;
export const HandshakeType = { newSessionTicket: 4, keyUpdate: 24 } as const;
/** Alert descriptions (RFC 8446 6). */
export const Alert = {
  closeNotify: 0,
  unexpectedMessage: 10,
  badRecordMac: 20,
  recordOverflow: 22,
  decodeError: 50,
  illegalParameter: 47,
  certificateRequired: 116,
} as const;

/** HKDF-Expand-Label(secret, label, "", length) (RFC 8446 7.1). */
export function expandLabel(hash: string, secret: Buffer, label: string, length: number): Buffer {
  const full = Buffer.from(`tls13 ${label}`);
  const info = Buffer.concat([
    Buffer.from([length >> 8, length & 0xff, full.length]),
    full,
    Buffer.from([0]),
  ]);
  const blocks: Buffer[] = [];
  let t = Buffer.alloc(0);
  for (let i = 1; Buffer.concat(blocks).length < length; i++) {
    t = createHmac(hash, secret)
      .update(Buffer.concat([t, info, Buffer.from([i])]))
      .digest();
    blocks.push(t);
  }
  return Buffer.concat(blocks).subarray(0, length);
}

export interface Opened {
  type: number;
  content: Buffer;
}

/** One direction's traffic protection: its secret, key, IV and sequence number. */
export class Direction {
  private key!: Buffer;
  private iv!: Buffer;
  seq = 0n;

  constructor(
    readonly suite: SuiteName,
    private secret: Buffer,
  ) {
    this.install();
  }

  private install(): void {
    const s = SUITES[this.suite];
    this.key = expandLabel(s.hash, this.secret, 'key', s.keyLen);
    this.iv = expandLabel(s.hash, this.secret, 'iv', 12);
    this.seq = 0n;
  }

  /** The next traffic secret (KeyUpdate). */
  update(): void {
    this.secret = expandLabel(SUITES[this.suite].hash, this.secret, 'traffic upd', this.secret.length);
    this.install();
  }

  private nonce(): Buffer {
    const n = Buffer.from(this.iv);
    for (let i = 0; i < 8; i++) n[11 - i]! ^= Number((this.seq >> BigInt(8 * i)) & 0xffn);
    return n;
  }

  /** A record whose inner plaintext is exactly `inner` (content, type, padding: the caller's). */
  sealInner(inner: Buffer): Buffer {
    const len = inner.length + 16;
    const header = Buffer.from([ContentType.appData, 3, 3, len >> 8, len & 0xff]);
    const c = createCipheriv(SUITES[this.suite].cipher as 'aes-128-gcm', this.key, this.nonce(), {
      authTagLength: 16,
    });
    c.setAAD(header);
    const body = Buffer.concat([c.update(inner), c.final(), c.getAuthTag()]);
    this.seq++;
    return Buffer.concat([header, body]);
  }

  /** A record of `type` with `content` and `padding` zero bytes after the type. */
  seal(type: number, content: Buffer, padding = 0): Buffer {
    return this.sealInner(Buffer.concat([content, Buffer.from([type]), Buffer.alloc(padding)]));
  }

  /** Open one whole record; throws if it does not authenticate. */
  open(record: Buffer): Opened {
    const header = record.subarray(0, 5);
    const body = record.subarray(5);
    const d = createDecipheriv(SUITES[this.suite].cipher as 'aes-128-gcm', this.key, this.nonce(), {
      authTagLength: 16,
    });
    d.setAAD(header);
    d.setAuthTag(body.subarray(body.length - 16));
    const inner = Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]);
    this.seq++;
    let end = inner.length;
    while (end > 0 && inner[end - 1] === 0) end--;
    if (end === 0) throw new Error('a record with no content type');
    return { type: inner[end - 1]!, content: inner.subarray(0, end - 1) };
  }
}

/** Whole records at the front of `buf`, and the bytes after them. */
export function splitRecords(buf: Buffer): { records: Buffer[]; rest: Buffer } {
  const records: Buffer[] = [];
  let off = 0;
  while (buf.length - off >= 5) {
    const len = buf.readUInt16BE(off + 3);
    if (buf.length - off < 5 + len) break;
    records.push(buf.subarray(off, off + 5 + len));
    off += 5 + len;
  }
  return { records, rest: buf.subarray(off) };
}

/** A handshake message: type, uint24 length, body. */
export function handshakeMessage(type: number, body: Buffer): Buffer {
  return Buffer.concat([
    Buffer.from([type, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff]),
    body,
  ]);
}

/** KeyUpdate (RFC 8446 4.6.3): 1 = update_requested. */
export function keyUpdate(requested: boolean): Buffer {
  return handshakeMessage(HandshakeType.keyUpdate, Buffer.from([requested ? 1 : 0]));
}

/** The secrets of a TLS 1.3 connection from Node's 'keylog' lines. */
export class KeyLog {
  readonly secrets = new Map<string, Buffer>();

  add(line: Buffer): void {
    const [label, , hex] = line.toString('latin1').trim().split(' ');
    if (label && hex) this.secrets.set(label, Buffer.from(hex, 'hex'));
  }

  get(label: 'CLIENT_TRAFFIC_SECRET_0' | 'SERVER_TRAFFIC_SECRET_0'): Buffer {
    const s = this.secrets.get(label);
    if (!s) throw new Error(`no ${label} in the key log`);
    return s;
  }
}
