// The namespace's TCP MIB counters from /proc/net/snmp (RFC 4022 tcpRetransSegs): cheap to read,
// per network namespace, IPv4 and IPv6 TCP alike.
import { readFileSync } from 'node:fs';
import { IpdeadgateError } from '../errors';

/** Tcp: RetransSegs of this process's network namespace. */
export function readRetransSegs(file = '/proc/net/snmp'): number {
  return parseRetransSegs(readFileSync(file, 'latin1'));
}

export function parseRetransSegs(text: string): number {
  return parseTcpCounter(text, 'RetransSegs');
}

/**
 * Tcp: ActiveOpens of this process's network namespace (RFC 4022 tcpActiveOpens): connect() calls
 * that sent a SYN. When it moves, connection attempts are under way and SYN-SENT sockets are worth
 * a (state-filtered, cheap) look even before any of them retransmits.
 */
export function readActiveOpens(file = '/proc/net/snmp'): number {
  return parseTcpCounter(readFileSync(file, 'latin1'), 'ActiveOpens');
}

export function parseTcpCounter(text: string, name: string): number {
  const lines = text.split('\n').filter((l) => l.startsWith('Tcp:'));
  if (lines.length < 2) throw new IpdeadgateError('ERR_SNMP', 'no Tcp: lines in /proc/net/snmp');
  const names = lines[0]!.trim().split(/\s+/);
  const values = lines[1]!.trim().split(/\s+/);
  const i = names.indexOf(name);
  if (i < 0 || values[i] === undefined) throw new IpdeadgateError('ERR_SNMP', `no ${name} in /proc/net/snmp`);
  return Number(values[i]);
}
