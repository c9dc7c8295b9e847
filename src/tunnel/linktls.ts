// The TLS side of links: the PEM files a node needs, the addon's TLS context for a link
// (src/sys/tlslink.ts), the names a peer's certificate vouches for, and OpenSSL's errors mapped to
// the stable refusal reasons of src/tunnel/linklife.ts.
import { createPrivateKey, X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import type * as tls from 'node:tls';
import { ConfigError } from '../errors';
import { TlsLinkContext } from '../sys/tlslink';
import type { LinkRefusal } from './linklife';

/** The link protocol and its version, carried in ALPN (docs/protocol.md). */
export const LINK_ALPN = 'ipdeadgate/1';

/** Map an OpenSSL verification code or a TLS error to a refusal reason. */
export function classifyTlsError(code: string | undefined, message = ''): LinkRefusal {
  switch (code) {
    case 'CERT_HAS_EXPIRED':
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED':
      return 'cert_expired';
    case 'CERT_NOT_YET_VALID':
      return 'cert_not_yet_valid';
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'CERT_UNTRUSTED':
    case 'CERT_SIGNATURE_FAILURE':
    case 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA':
      return 'unknown_ca';
    case 'INVALID_PURPOSE':
    case 'ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE':
      return 'wrong_purpose';
    case 'ERR_TLS_HANDSHAKE_TIMEOUT':
      return 'handshake_timeout';
    case 'ERR_SSL_NO_APPLICATION_PROTOCOL':
    case 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL':
    case 'ERR_SSL_UNSUPPORTED_PROTOCOL':
    case 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION':
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
      return 'protocol_version';
    case 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE':
    case 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED':
      return 'no_certificate';
  }
  if (/no application protocol|protocol version|wrong version number/i.test(message))
    return 'protocol_version';
  if (code && /CERT/.test(code)) return 'bad_certificate';
  return 'tls_error';
}

/**
 * The names a certificate vouches for (docs/protocol.md "Identities"): its DNS subject alternative
 * names and the last segment of each URI SAN (after the last "/" or ":", as in SPIFFE IDs such as
 * spiffe://example.org/tunnel/gw1); its CN only when it has no DNS or URI SAN (RFC 6125 6.4.4).
 */
export function certificateNames(cert: tls.PeerCertificate | undefined): string[] {
  if (!cert || !Object.keys(cert).length) return [];
  const names: string[] = [];
  for (const part of (cert.subjectaltname ?? '').split(/,\s*/)) {
    const m = /^(DNS|URI):(.*)$/.exec(part.trim().replace(/^"|"$/g, ''));
    if (!m) continue;
    if (m[1] === 'DNS') names.push(m[2]!);
    else {
      const seg = /[^/:]*$/.exec(m[2]!.replace(/\/+$/, ''))?.[0] ?? '';
      if (seg) names.push(seg);
    }
  }
  if (names.length) return names;
  const cn = cert.subject?.CN;
  return typeof cn === 'string' ? [cn] : Array.isArray(cn) ? cn.map(String) : [];
}

/** Whether `name` (a hello's node name) is one the certificate vouches for (DNS names case-insensitively). */
export function certificateVouchesFor(cert: tls.PeerCertificate | undefined, name: string): boolean {
  return certificateNames(cert).some((n) => n.toLowerCase() === name.toLowerCase());
}

export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

/**
 * Read and check the PEM files, as a start needs them: each must be readable and parse (the CA and
 * the certificate as X.509, the key as a private key), and the key must belong to the certificate.
 * A problem is a ConfigError (the CLI exits 2) naming the file and the config key, not OpenSSL's
 * text alone.
 */
export function loadTls(files: TlsFiles): TlsMaterial {
  const bad = (what: keyof TlsFiles, problem: string): ConfigError =>
    new ConfigError(
      `${files[what]}: tunnel.tls.${what}: ${problem}`,
      files[what],
      undefined,
      `tunnel.tls.${what}`,
    );
  const read = (what: keyof TlsFiles): Buffer => {
    try {
      return fs.readFileSync(files[what]);
    } catch (err) {
      throw bad(what, `cannot read the file: ${(err as Error).message}`);
    }
  };
  const m: TlsMaterial = { ca: read('ca'), cert: read('cert'), key: read('key') };
  const parse = <T>(what: keyof TlsFiles, expect: string, fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      throw bad(what, `not ${expect} (${(err as Error).message})`);
    }
  };
  const caText = m.ca.toString('latin1');
  const caCerts = caText.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (!caCerts.length) throw bad('ca', 'not a PEM certificate (no "-----BEGIN CERTIFICATE-----" block)');
  for (const c of caCerts) parse('ca', 'a PEM CA certificate', () => new X509Certificate(c));
  const cert = parse('cert', 'a PEM certificate', () => new X509Certificate(m.cert));
  const key = parse('key', 'a PEM private key', () => createPrivateKey(m.key));
  if (!cert.checkPrivateKey(key))
    throw bad('key', `is not the private key of the certificate in ${files.cert} (tunnel.tls.cert)`);
  return m;
}

/**
 * TLS both ways, as the addon's TLS context (src/sys/tlslink.ts, native/tls_context.cc). TLS 1.3
 * only; the peer must present a certificate chaining to our CA, for its purpose (TLS client or
 * server), checked in the handshake: a peer without one gets the TLS alert that says why. Host
 * names are not checked: links are authenticated by the CA (a private CA for the tunnel), and nodes
 * are addressed by IP across firewalls; the peer's node name comes from its hello and must be one
 * its certificate names.
 */
export function linkContext(m: TlsMaterial, server: boolean): TlsLinkContext {
  return new TlsLinkContext({
    server,
    ca: m.ca,
    cert: m.cert,
    key: m.key,
    // The link protocol's version (docs/protocol.md): a peer that offers no common one is refused
    // by the TLS server with the no_application_protocol alert.
    alpn: LINK_ALPN,
    // AES-128-GCM first: with AES-NI it is the cheapest AEAD per byte, and a link carries bulk data.
    ciphersuites: 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256',
  });
}
