// What the ARP/NDP link needs to know of its interface and to ask the kernel for: the interface's
// addresses (and which of them to speak from), and the packet socket's filter. Split from
// neighlink.ts, which does the talking.
import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { ipv4ToBytes, ipv6ToBytes, normalizeIp, normalizeMac } from '../ipaddr';

/** The addresses of an interface the link needs to send from. */
export interface InterfaceAddresses {
  mac: string;
  ipv4: { address: string; prefixLength: number }[];
  ipv6: { address: string; prefixLength: number }[];
}

/**
 * BPF: every ARP packet, and ICMPv6 RA (134), NS (135), NA (136). `ip6[40]` is the ICMPv6 type when
 * no extension header precedes it, which RFC 4861 messages never have in practice.
 */
export const NEIGHBOUR_BPF_FILTER = 'arp or (icmp6 and (ip6[40] == 134 or ip6[40] == 135 or ip6[40] == 136))';

/**
 * The handle's filter: frames to our MAC, to a group address (broadcast, multicast) or from us,
 * carrying ARP or ND; and, only for gateways under verification, ICMP/ICMPv6 echo requests and
 * replies to or from them, for the flight recorder's picture of a verification (the echo that forces
 * the kernel's own resolution). Echoes make no sightings and count as `ignored`; outside a
 * verification the kernel drops them, so a ping flood through the gateway costs nothing here.
 */
export function neighbourFilter(ourMac: string, verifying: Iterable<string> = []): string {
  const terms = [NEIGHBOUR_BPF_FILTER];
  for (const ip of verifying) {
    terms.push(
      isIPv4(ip)
        ? `(icmp and host ${ip} and (icmp[icmptype] == icmp-echo or icmp[icmptype] == icmp-echoreply))`
        : `(icmp6 and host ${ip} and (ip6[40] == 128 or ip6[40] == 129))`,
    );
  }
  const mac = normalizeMac(ourMac);
  return `(ether dst ${mac} or ether multicast or ether src ${mac}) and (${terms.join(' or ')})`;
}

/** Read an interface's MAC and addresses in the current network namespace; null if it does not exist. */
export function readInterfaceAddresses(ifname: string): InterfaceAddresses | null {
  const entries = networkInterfaces()[ifname];
  let mac: string | null = null;
  const ipv4: InterfaceAddresses['ipv4'] = [];
  const ipv6: InterfaceAddresses['ipv6'] = [];
  for (const e of entries ?? []) {
    if (e.mac && e.mac !== '00:00:00:00:00:00') mac = e.mac;
    const prefixLength = Number(e.cidr?.split('/')[1] ?? (e.family === 'IPv4' ? 32 : 128));
    if (e.family === 'IPv4') ipv4.push({ address: e.address, prefixLength });
    else ipv6.push({ address: normalizeIp(e.address), prefixLength });
  }
  if (!mac) {
    // An interface without addresses is missing from networkInterfaces(); sysfs still knows it
    // (ip netns exec mounts the namespace's own /sys).
    try {
      mac = readFileSync(`/sys/class/net/${ifname}/address`, 'utf8').trim();
    } catch {
      if (!entries) return null;
    }
  }
  if (!mac) return null;
  return { mac: normalizeMac(mac), ipv4, ipv6 };
}

function samePrefix(a: Buffer, b: Buffer, bits: number): boolean {
  for (let i = 0; i < a.length && bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((a[i]! & mask) !== (b[i]! & mask)) return false;
  }
  return true;
}

/** The IPv4 address to put in an ARP request's sender field: ours on the target's subnet first. */
export function pickArpSender(addrs: InterfaceAddresses, targetIp: string): string {
  const t = ipv4ToBytes(targetIp);
  const onSubnet = addrs.ipv4.find((a) => samePrefix(ipv4ToBytes(a.address), t, a.prefixLength));
  // With no IPv4 address at all, an RFC 5227 ARP probe (sender 0.0.0.0) still gets an answer.
  return (onSubnet ?? addrs.ipv4[0])?.address ?? '0.0.0.0';
}

function isLinkLocal6(ip: string): boolean {
  const b = ipv6ToBytes(ip);
  return b[0] === 0xfe && (b[1]! & 0xc0) === 0x80;
}

/**
 * The IPv6 source of a solicitation: a link-local target gets our link-local address; a global one
 * our address on its prefix, then any global, then link-local. With none at all the unspecified
 * address (the target then answers to all-nodes, RFC 4861 7.2.4).
 */
export function pickNsSource(addrs: InterfaceAddresses, targetIp: string): string {
  const linkLocal = addrs.ipv6.find((a) => isLinkLocal6(a.address))?.address;
  if (isLinkLocal6(targetIp)) return linkLocal ?? addrs.ipv6[0]?.address ?? '::';
  const t = ipv6ToBytes(targetIp);
  const globals = addrs.ipv6.filter((a) => !isLinkLocal6(a.address));
  const onPrefix = globals.find((a) => samePrefix(ipv6ToBytes(a.address), t, a.prefixLength));
  return (onPrefix ?? globals[0])?.address ?? linkLocal ?? '::';
}
