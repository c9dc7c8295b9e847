// Flow resume (src/dgd/resume.ts) against fake ports: which flows are recorded and resent, and
// which never are. The lab test (test/dgd/lab.test.ts) shows the same on real sockets.
import { MemoryEventLog } from '../doubles';
import { strict as assert } from 'node:assert';
import { FlowResumer, MAX_FLOWS_PER_GATEWAY } from '../../src/dgd/resume';
import type { ResendOutcome, ResumeFlow, ResumePorts } from '../../src/dgd/ports';
import type { RouteChoice, ScannedSocket } from '../../src/dgd/ports';

const R1 = '198.18.1.1';
const R2 = '198.18.1.2';

function sock(srcPort: number, dst: string, extra: Partial<ScannedSocket> = {}): ScannedSocket {
  return {
    family: 4,
    src: '198.18.1.10',
    srcPort,
    dst,
    dstPort: 7000,
    state: 'ESTABLISHED',
    inode: srcPort,
    timer: 1,
    timerRetransmits: 2,
    timerExpiresMs: 400,
    ...extra,
  };
}

class FakeResumePorts implements ResumePorts {
  /** Where each destination is routed now. */
  routes = new Map<string, string | null>();
  watched = new Map<string, ResumeFlow[]>();
  resent: string[] = [];
  lookups = 0;

  async lookupRoute(dst: string): Promise<RouteChoice> {
    this.lookups++;
    const gateway = this.routes.has(dst) ? this.routes.get(dst)! : R1;
    return { gateway, ifindex: 2, ifname: 'lan0' };
  }

  watchFlows(ifname: string, flows: ResumeFlow[]): void {
    this.watched.set(ifname, [...flows]);
  }

  async resendSegment(_ifname: string, flow: ResumeFlow): Promise<ResendOutcome> {
    this.resent.push(`${flow.dst}:${flow.srcPort}`);
    return { sent: true, seq: 1, syn: false, bytes: 8, ageMs: 10 };
  }
}

function setup(): { ports: FakeResumePorts; log: MemoryEventLog; resumer: FlowResumer; slept: number[] } {
  const ports = new FakeResumePorts();
  const log = new MemoryEventLog();
  const slept: number[] = [];
  const resumer = new FlowResumer(ports, log, async (ms) => void slept.push(ms));
  return { ports, log, resumer, slept };
}

describe('flow resume: which flows are resent', () => {
  it('resends only flows that were retransmitting through the dead gateway, once, after their route moved', async () => {
    const { ports, log, resumer } = setup();
    ports.routes.set('198.18.3.10', R2); // through the other gateway
    ports.routes.set('198.18.1.20', null); // a directly connected peer
    await resumer.observe([
      sock(1, '198.18.2.10'),
      sock(2, '198.18.3.10'),
      sock(3, '198.18.1.20'),
      sock(4, '198.18.2.11', { timer: 0, timerRetransmits: 0 }), // healthy
      sock(5, '198.18.2.12', { ifindex: 7 }), // bound to an interface
    ]);
    assert.deepEqual(
      (ports.watched.get('lan0') ?? []).map((f) => f.srcPort).sort(),
      [1, 2],
      'recorded: the flows retransmitting through a gateway',
    );
    ports.routes.set('198.18.2.10', R2); // r1's routes were withdrawn
    await resumer.routesSwitched({ address: R1, ifindex: 2, ifname: 'lan0' });
    assert.deepEqual(ports.resent, ['198.18.2.10:1'], 'only the flow through r1');
    const ev = log.named('flows_resent')[0]!;
    assert.equal(ev.flows, 1);
    assert.equal(ev.resent, 1);
    // Still retransmitting in the next scan: not resent again, nor recorded again.
    await resumer.observe([sock(1, '198.18.2.10'), sock(2, '198.18.3.10')]);
    await resumer.routesSwitched({ address: R1, ifindex: 2, ifname: 'lan0' });
    assert.deepEqual(ports.resent, ['198.18.2.10:1']);
    assert.equal(resumer.watching, 1, 'only flow 2, through r2, is still recorded');
  });

  it('does not resend a flow whose route still goes through the dead gateway (no other route)', async () => {
    const { ports, log, resumer } = setup();
    await resumer.observe([sock(1, '198.18.2.10')]);
    await resumer.routesSwitched({ address: R1, ifindex: 2, ifname: 'lan0' });
    assert.deepEqual(ports.resent, []);
    const detail = (log.named('flows_resent')[0]!.detail as { reason?: string }[])[0]!;
    assert.equal(detail.reason, 'no other route');
  });

  it('forgets flows that stop retransmitting, and stops recording when none is left', async () => {
    const { ports, resumer } = setup();
    await resumer.observe([sock(1, '198.18.2.10'), sock(2, '198.18.2.11')]);
    assert.equal(ports.watched.get('lan0')?.length, 2);
    let calls = 0;
    const watch = ports.watchFlows.bind(ports);
    ports.watchFlows = (i, f) => {
      calls++;
      watch(i, f);
    };
    await resumer.observe([sock(2, '198.18.2.11')]);
    assert.equal(calls, 0, 'a flow leaving does not reopen the capture');
    assert.equal(resumer.watching, 1);
    await resumer.observe([sock(2, '198.18.2.11'), sock(3, '198.18.2.12')]);
    assert.deepEqual(
      ports.watched.get('lan0')!.map((f) => f.srcPort),
      [2, 3],
      'a flow joining does, with exactly the flows retransmitting now',
    );
    await resumer.observe([]);
    assert.deepEqual(ports.watched.get('lan0'), []);
    assert.equal(resumer.watching, 0);
  });

  it('records at most MAX_FLOWS_PER_GATEWAY flows per gateway', async () => {
    const { ports, resumer } = setup();
    const many = Array.from({ length: MAX_FLOWS_PER_GATEWAY + 20 }, (_, i) => sock(1000 + i, '198.18.2.10'));
    await resumer.observe(many);
    assert.equal(ports.watched.get('lan0')?.length, MAX_FLOWS_PER_GATEWAY);
    ports.routes.set('198.18.2.10', R2);
    await resumer.routesSwitched({ address: R1, ifindex: 2, ifname: 'lan0' });
    assert.equal(ports.resent.length, MAX_FLOWS_PER_GATEWAY);
  });

  it('waits for the SYN-ACK of a resent SYN before returning (the caller flushes the neighbour next)', async () => {
    const { ports, resumer, slept } = setup();
    ports.resendSegment = async () => ({ sent: true, seq: 5, syn: true, bytes: 0, ageMs: 3 });
    await resumer.observe([sock(1, '198.18.2.10', { state: 'SYN-SENT' })]);
    ports.routes.set('198.18.2.10', R2);
    await resumer.routesSwitched({ address: R1, ifindex: 2, ifname: 'lan0' });
    assert.equal(slept.length, 1);
  });
});
