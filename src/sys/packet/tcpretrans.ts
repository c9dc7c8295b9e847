// TCP retransmissions as seen on the wire, for the capture's one-line decodes (capture.ts) and the
// watch on segments leaving towards gateways (wirewatch.ts).
import { TCP_FIN, TCP_RST, TCP_SYN, type TcpHeader } from './tcp';

/** a < b in sequence space (RFC 9293 3.4: arithmetic modulo 2^32). */
function seqLt(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}

interface FlowState {
  /** One past the highest sequence number sent on this flow so far (SYN and FIN count one). */
  nextSeq: number;
  /** How many times each recent segment start was sent again (bounded). */
  resent: Map<number, number>;
}

/**
 * Spots TCP retransmissions the way Wireshark's analysis does: a segment that carries data, SYN
 * or FIN and starts below the highest sequence number already seen in its direction was sent
 * before. A keep-alive (zero or one byte at next-1) is not one. Bounded in flows and segments.
 */
export class TcpRetransmissionTracker {
  private readonly flows = new Map<string, FlowState>();

  constructor(private readonly maxFlows = 4096) {}

  /**
   * 0 for a new segment; n for the n-th retransmission of this segment's start. `scope` keeps
   * separate books for the same flow (the next hop it was sent to: a segment sent again through
   * another router after a switch is that router's first copy, not its retransmission).
   */
  observe(src: string, dst: string, tcp: TcpHeader, scope = ''): number {
    const key = `${scope}|${src}|${tcp.srcPort}|${dst}|${tcp.dstPort}`;
    const segLen = tcp.payloadLength + (tcp.flags & TCP_SYN ? 1 : 0) + (tcp.flags & TCP_FIN ? 1 : 0);
    let flow = this.flows.get(key);
    if (flow) {
      // Most recently used last: the oldest flow is the first to go.
      this.flows.delete(key);
      this.flows.set(key, flow);
    }
    if (tcp.flags & TCP_RST || segLen === 0) return 0;
    const end = (tcp.seq + segLen) >>> 0;
    if (!flow) {
      flow = { nextSeq: end, resent: new Map() };
      this.flows.set(key, flow);
      if (this.flows.size > this.maxFlows) this.flows.delete(this.flows.keys().next().value!);
      return 0;
    }
    if (!seqLt(tcp.seq, flow.nextSeq)) {
      flow.nextSeq = end;
      return 0;
    }
    const keepAlive =
      segLen <= 1 && !(tcp.flags & (TCP_SYN | TCP_FIN)) && (tcp.seq + 1) >>> 0 === flow.nextSeq;
    if (keepAlive) return 0;
    if (seqLt(flow.nextSeq, end)) flow.nextSeq = end;
    const n = (flow.resent.get(tcp.seq) ?? 0) + 1;
    flow.resent.delete(tcp.seq);
    flow.resent.set(tcp.seq, n);
    if (flow.resent.size > 64) flow.resent.delete(flow.resent.keys().next().value!);
    return n;
  }

  get size(): number {
    return this.flows.size;
  }
}
