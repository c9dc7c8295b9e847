// Which services a peer may announce (docs/security.md "An authenticated tunnel peer"). A link's
// peer is anyone with a certificate from the tunnel CA; were its announcements taken as they come,
// any such certificate could announce any service at hop 0 and draw the sessions meant for the
// node that really serves it. So an announcement is kept only when vouched for:
// - with tunnel.peers: by the peer's `announce` patterns (the operator's word, per peer);
// - without: by the peer's certificate, its `ipdeadgate:service:PATTERN` URI SANs, the same way
//   the certificate vouches for the node's name. A relay re-announces what it learned further
//   away, so its certificate names what it may carry (`ipdeadgate:service:*` for anything).
// The same rule holds at every hop count: a hop count is the peer's say-so, and a peer allowed
// hops > 0 for a name it does not serve could draw those sessions just the same.
import { X509Certificate } from 'node:crypto';
import { matchesAny, ownEntry, type TunnelConfig } from './config';
import { certificateServices, SERVICE_URI_PREFIX } from './linktls';

/** What decided: the peer's certificate, or tunnel.peers. */
export type AnnounceRule = 'certificate' | 'peers';

export interface AnnounceVerdict {
  kept: Record<string, number>;
  ignored: string[];
  rule: AnnounceRule;
  /** For the event: why, and what the operator can do. */
  detail: string;
}

/** Keep what `peer` may announce of `services`. `subjectaltname`: its certificate's SANs. */
export function vetAnnouncement(
  peers: TunnelConfig['peers'],
  peer: string,
  subjectaltname: string | undefined,
  services: Record<string, number>,
): AnnounceVerdict {
  const rule: AnnounceRule = peers ? 'peers' : 'certificate';
  const patterns = peers ? (ownEntry(peers, peer)?.announce ?? []) : certificateServices(subjectaltname);
  const kept: Record<string, number> = {};
  const ignored: string[] = [];
  for (const [svc, hops] of Object.entries(services)) {
    if (matchesAny(patterns, svc)) kept[svc] = hops;
    else ignored.push(svc);
  }
  const detail = peers
    ? `not in tunnel.peers.${peer}.announce`
    : patterns.length
      ? `the certificate of ${peer} names only the services ${JSON.stringify(patterns)}: add a ` +
        `${SERVICE_URI_PREFIX}NAME URI SAN for each service (${SERVICE_URI_PREFIX}* for a relay), ` +
        'or allow them in tunnel.peers'
      : `the certificate of ${peer} names no service (no ${SERVICE_URI_PREFIX}NAME URI SAN): reissue it ` +
        `with one for each service it serves (${SERVICE_URI_PREFIX}* for a relay), or allow them in tunnel.peers`;
  return { kept, ignored, rule, detail };
}

/**
 * What of this node's own announcements peers without tunnel.peers will ignore, by its own
 * certificate: the own services it does not name; for a relay, "*" when it names none at all.
 */
export function ownCertificateGaps(certPem: Buffer, role: string, ownServices: readonly string[]): string[] {
  let patterns: string[];
  try {
    patterns = certificateServices(new X509Certificate(certPem).subjectAltName);
  } catch {
    return []; // loadTls has checked the file; nothing to say here
  }
  if (role === 'relay') return patterns.length ? [] : ['*'];
  return ownServices.filter((s) => !matchesAny(patterns, s));
}

/** The fields of a warning at start (and reload) when ownCertificateGaps finds any, else undefined. */
export function ownCertificateWarning(
  certPem: Buffer,
  cfg: TunnelConfig,
): Record<string, unknown> | undefined {
  const missing = ownCertificateGaps(certPem, cfg.role, Object.keys(cfg.services));
  if (!missing.length) return undefined;
  return {
    cert: cfg.tls.cert,
    services: missing,
    detail:
      `peers without tunnel.peers ignore the announcements of these services: add a URI SAN ` +
      `${SERVICE_URI_PREFIX}NAME for each to this node's certificate (docs/security.md)`,
  };
}
