// The namespace's TCP MIB counters from /proc/net/snmp (RFC 4022 tcpRetransSegs): cheap to read,
// per network namespace, IPv4 and IPv6 TCP alike.
import { readFileSync } from 'node:fs';
import { IpdeadgateError } from '../errors';

/** Tcp: RetransSegs of this process's network namespace. */
export function readRetransSegs(file = '/proc/net/snmp'): number {
  return parseRetransSegs(readFileSync(file, 'latin1'));
}

export function parseRetransSegs(text: string): number {
  const lines = text.split('\n').filter((l) => l.startsWith('Tcp:'));
  if (lines.length < 2) throw new IpdeadgateError('ERR_SNMP', 'no Tcp: lines in /proc/net/snmp');
  const names = lines[0]!.trim().split(/\s+/);
  const values = lines[1]!.trim().split(/\s+/);
  const i = names.indexOf('RetransSegs');
  if (i < 0 || values[i] === undefined)
    throw new IpdeadgateError('ERR_SNMP', 'no RetransSegs in /proc/net/snmp');
  return Number(values[i]);
}
