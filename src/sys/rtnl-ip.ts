// The rtnetlink facade's address helpers are the project's one IP/MAC module (./ipaddr.ts); this
// name stays for the modules that import it. rtnetlink reports link-layer addresses of any length.
export {
  formatCidr,
  formatIp,
  formatLinkAddress as formatMac,
  invalidArg,
  ipFamily,
  parseCidr,
  parseIp,
} from './ipaddr';
