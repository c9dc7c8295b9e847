// Flow resume (src/dgd/resume.ts) against fake ports: which flows are recorded and resent, and
// which never are, and how much work an incident costs. The lab tests (test/dgd/resume-lab.test.ts) shows the same on real sockets.
import { MemoryEventLog } from '../doubles';
import { strict as assert } from 'node:assert';
import { FlowResumer, MAX_RECORDED_FLOWS } from '../../src/dgd/resume';
import type { ResendOutcome, ResumeFlow, ResumePorts } from '../../src/dgd/ports';
import type { FlowKey, RouteChoice, ScannedSocket } from '../../src/dgd/ports';

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
  /** Where each destination is routed now (by the socket's key). */
  routes = new Map<string, string | null>();
  /** Where a raw copy (no ports, no source) would go, when not where the socket goes. */
  rawRoutes = new Map<string, string | null>();
  watched = new Map<string, ResumeFlow[]>();
  watchCalls = 0;
  forgotten: number[] = [];
  resent: string[] = [];
  lookups = 0;
  /** What the pre-send dump returns; default: the last observed sockets, one retransmission on. */
  now: ScannedSocket[] | null = null;
  last: readonly ScannedSocket[] = [];
  /** Lookups of these destinations wait until released. */
  blocked = new Set<string>();
  private release: (() => void)[] = [];

  async lookupRoute(dst: string, _src: string | null, key?: FlowKey): Promise<RouteChoice> {
    this.lookups++;
    if (this.blocked.has(dst)) await new Promise<void>((r) => this.release.push(r));
    const table = key?.sport === undefined && this.rawRoutes.has(dst) ? this.rawRoutes : this.routes;
    const gateway = table.has(dst) ? table.get(dst)! : R1;
    return { gateway, ifindex: 2, ifname: 'lan0' };
  }

  unblock(): void {
    this.blocked.clear();
    for (const r of this.release.splice(0)) r();
  }

  async scanSockets(): Promise<ScannedSocket[]> {
    return this.now ?? this.last.map((s) => ({ ...s, timerRetransmits: s.timerRetransmits + 1 }));
  }

  watchFlows(ifname: string, flows: ResumeFlow[]): void {
    this.watchCalls++;
    this.watched.set(ifname, [...flows]);
  }

  forgetFlow(_ifname: string, flow: ResumeFlow): void {
    this.forgotten.push(flow.srcPort);
  }

  async resendSegment(ifname: string, flow: ResumeFlow): Promise<ResendOutcome> {
    // As the daemon's: what was recorded of a flow goes with its recorder.
    if (!this.watched.get(ifname)?.some((f) => f.srcPort === flow.srcPort && f.dst === flow.dst))
      return { sent: false, reason: 'nothing of it was recorded' };
    this.resent.push(`${flow.dst}:${flow.srcPort}`);
    return { sent: true, seq: 1, syn: false, bytes: 8, ageMs: 10 };
  }
}

function setup(): {
  ports: FakeResumePorts;
  log: MemoryEventLog;
  resumer: FlowResumer;
  slept: number[];
  observe: (s: ScannedSocket[]) => Promise<void>;
} {
  const ports = new FakeResumePorts();
  const log = new MemoryEventLog();
  const slept: number[] = [];
  const resumer = new FlowResumer(ports, log, async (ms) => void slept.push(ms));
  const observe = (sockets: ScannedSocket[]) => {
    ports.last = sockets;
    return resumer.observe(sockets);
  };
  return { ports, log, resumer, slept, observe };
}

const switchR1 = (r: FlowResumer) => r.routesSwitched({ address: R1, ifindex: 2, ifname: 'lan0' });
const reasons = (log: MemoryEventLog) =>
  (log.named('flows_resent').at(-1)!.detail as { resent: boolean; reason?: string }[]).map(
    (d) => d.reason ?? 'resent',
  );

describe('flow resume: which flows are resent', () => {
  it('resends only flows that were retransmitting through the dead gateway, once, after their route moved', async () => {
    const { ports, log, resumer, observe } = setup();
    ports.routes.set('198.18.3.10', R2); // through the other gateway
    ports.routes.set('198.18.1.20', null); // a directly connected peer
    await observe([
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
    await switchR1(resumer);
    assert.deepEqual(ports.resent, ['198.18.2.10:1'], 'only the flow through r1');
    const ev = log.named('flows_resent')[0]!;
    assert.equal(ev.flows, 1);
    assert.equal(ev.resent, 1);
    // Still retransmitting in the next scan: not resent again, nor recorded again.
    await observe([sock(1, '198.18.2.10'), sock(2, '198.18.3.10')]);
    await switchR1(resumer);
    assert.deepEqual(ports.resent, ['198.18.2.10:1']);
    assert.equal(resumer.watching, 1, 'only flow 2, through r2, is still recorded');
  });

  it('does not resend a flow whose route still goes through the dead gateway (no other route)', async () => {
    const { ports, log, resumer, observe } = setup();
    await observe([sock(1, '198.18.2.10')]);
    await switchR1(resumer);
    assert.deepEqual(ports.resent, []);
    assert.deepEqual(reasons(log), ['no other route']);
  });

  it('drops a flow from its recorder the moment it recovers, and closes the recorder when none is left', async () => {
    const { ports, resumer, observe } = setup();
    await observe([sock(1, '198.18.2.10'), sock(2, '198.18.2.11')]);
    assert.equal(ports.watched.get('lan0')?.length, 2);
    await observe([sock(2, '198.18.2.11')]);
    assert.deepEqual(
      ports.watched.get('lan0')!.map((f) => f.srcPort),
      [2],
      'the recovered flow is no longer captured',
    );
    assert.equal(resumer.watching, 1);
    await observe([sock(2, '198.18.2.11'), sock(3, '198.18.2.12')]);
    assert.deepEqual(
      ports.watched.get('lan0')!.map((f) => f.srcPort),
      [2, 3],
      'a flow joining does, with exactly the flows retransmitting now',
    );
    await observe([]);
    assert.deepEqual(ports.watched.get('lan0'), [], 'none left: the capture closes');
    assert.equal(resumer.watching, 0);
  });

  it('stop() (a reload turning resume off) closes every recorder and forgets every flow', async () => {
    const { ports, resumer, observe } = setup();
    await observe([sock(1, '198.18.2.10'), sock(2, '198.18.2.11')]);
    resumer.stop();
    assert.deepEqual(ports.watched.get('lan0'), []);
    assert.equal(resumer.watching, 0);
  });

  it('more than the cap over two gateways on one interface: one cap per interface, the rest looked up once and left alone', async () => {
    const { ports, resumer, observe } = setup();
    for (let i = 0; i < 50; i++) ports.routes.set(`198.18.3.${i}`, R2);
    const many = [
      ...Array.from({ length: 50 }, (_, i) => sock(1000 + i, `198.18.2.${i}`)),
      ...Array.from({ length: 50 }, (_, i) => sock(2000 + i, `198.18.3.${i}`)),
    ];
    await observe(many);
    assert.equal(ports.watched.get('lan0')?.length, MAX_RECORDED_FLOWS, 'the recorder gets exactly the cap');
    assert.equal(
      resumer.watching,
      MAX_RECORDED_FLOWS,
      'and resume watches no flow the recorder does not record',
    );
    const lookups = ports.lookups;
    assert.equal(lookups, 100, 'one lookup per flow');
    for (let scan = 0; scan < 5; scan++) await observe(many);
    assert.equal(ports.lookups, lookups, 'flows over the cap are remembered, not looked up again each scan');
  });

  it('a scan arriving while one is taken in replaces any other waiting: the work is bounded', async () => {
    const { ports, resumer, observe } = setup();
    ports.blocked.add('198.18.2.10');
    const first = observe([sock(1, '198.18.2.10')]);
    const waiting: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) waiting.push(observe([sock(100 + i, '198.18.2.99')]));
    ports.unblock();
    await Promise.all([first, ...waiting]);
    assert.equal(ports.lookups, 2, 'the first scan and only the latest of the fifty that waited');
    assert.deepEqual(
      ports.watched.get('lan0')!.map((f) => f.srcPort),
      [149],
    );
    assert.ok(resumer.watching === 1);
  });

  it('the switch never waits for a scan being taken in', async () => {
    const { ports, resumer, observe } = setup();
    await observe([sock(1, '198.18.2.10')]);
    ports.blocked.add('198.18.2.77');
    const stuck = observe([sock(1, '198.18.2.10'), sock(2, '198.18.2.77')]);
    ports.routes.set('198.18.2.10', R2);
    let done = false;
    const sw = switchR1(resumer).then(() => (done = true));
    // Lookups of other destinations answer at once; a switch that queued behind the scan would not.
    for (let i = 0; i < 20 && !done; i++) await new Promise((r) => setImmediate(r));
    assert.ok(done, 'routesSwitched finished while the scan was still stuck in a lookup');
    assert.deepEqual(ports.resent, ['198.18.2.10:1']);
    ports.unblock();
    await Promise.all([stuck, sw]);
  });

  it('a scan taken in while the switch asks the sockets again leaves the flows being resent in their recorder', async () => {
    const { ports, resumer, observe } = setup();
    const s = sock(1, '198.18.2.10');
    await observe([s]);
    ports.routes.set('198.18.2.10', R2);
    // The periodic scan comes while the switch waits for its own dump of the sockets.
    const dump = ports.scanSockets.bind(ports);
    ports.scanSockets = async () => {
      await observe([{ ...s, timerRetransmits: 3 }]);
      return dump();
    };
    await switchR1(resumer);
    assert.deepEqual(ports.resent, ['198.18.2.10:1']);
    assert.deepEqual(ports.watched.get('lan0'), [], 'and its recorder closes once they are sent');
  });

  it('waits for the SYN-ACK of a resent SYN before returning (the caller flushes the neighbour next)', async () => {
    const { ports, resumer, slept, observe } = setup();
    ports.resendSegment = async () => ({ sent: true, seq: 5, syn: true, bytes: 0, ageMs: 3 });
    await observe([sock(1, '198.18.2.10', { state: 'SYN-SENT' })]);
    ports.routes.set('198.18.2.10', R2);
    await switchR1(resumer);
    assert.equal(slept.length, 1);
  });
});

describe('flow resume: the socket is asked again just before sending', () => {
  async function stuckThenSwitched(
    now: (s: ScannedSocket) => ScannedSocket[],
    extra: Partial<ScannedSocket> = {},
  ) {
    const t = setup();
    const s = sock(1, '198.18.2.10', extra);
    await t.observe([s]);
    t.ports.now = now(s);
    t.ports.routes.set('198.18.2.10', R2);
    await switchR1(t.resumer);
    return t;
  }

  it('a socket closed between the scan and the switch gets nothing', async () => {
    const { ports, log } = await stuckThenSwitched(() => []);
    assert.deepEqual(ports.resent, []);
    assert.deepEqual(reasons(log), ['the socket is gone or no longer retransmitting']);
  });

  it('a socket that recovered meanwhile gets nothing', async () => {
    const { ports, log } = await stuckThenSwitched((s) => [{ ...s, timer: 0, timerRetransmits: 0 }]);
    assert.deepEqual(ports.resent, []);
    assert.deepEqual(reasons(log), ['the socket is gone or no longer retransmitting']);
  });

  it('another socket on the same addresses and ports (another inode) gets nothing', async () => {
    const { ports, log } = await stuckThenSwitched((s) => [{ ...s, inode: 999, timerRetransmits: 3 }]);
    assert.deepEqual(ports.resent, []);
    assert.deepEqual(reasons(log), ['its addresses and ports are another socket now']);
  });

  it('without a retransmission since recording began, what was recorded need not be snd_una: nothing is sent', async () => {
    const { ports, log } = await stuckThenSwitched((s) => [{ ...s }]);
    assert.deepEqual(ports.resent, []);
    assert.deepEqual(reasons(log), ['no retransmission of it since recording began']);
  });

  it('a scan that shows fewer retransmissions (an ACK moved snd_una) starts the record afresh', async () => {
    const { ports, resumer, observe } = setup();
    await observe([sock(1, '198.18.2.10', { timerRetransmits: 3 })]);
    await observe([sock(1, '198.18.2.10', { timerRetransmits: 1 })]);
    assert.deepEqual(ports.forgotten, [1]);
    ports.now = [sock(1, '198.18.2.10', { timerRetransmits: 1 })];
    ports.routes.set('198.18.2.10', R2);
    await switchR1(resumer);
    assert.deepEqual(ports.resent, [], 'no retransmission since the record began again');
  });

  it('a socket with a mark is not resent: the copy would not carry it', async () => {
    const { ports, log } = await stuckThenSwitched((s) => [{ ...s, timerRetransmits: 3, mark: 0x51 }], {
      mark: 0x51,
    });
    assert.deepEqual(ports.resent, []);
    assert.match(reasons(log)[0]!, /mark 0x51/);
  });

  it('a copy that a policy rule would route elsewhere than the socket is not sent', async () => {
    const t = setup();
    await t.observe([sock(1, '198.18.2.10')]);
    t.ports.routes.set('198.18.2.10', R2);
    t.ports.rawRoutes.set('198.18.2.10', '198.18.1.3');
    await switchR1(t.resumer);
    assert.deepEqual(t.ports.resent, []);
    assert.match(reasons(t.log)[0]!, /a copy would leave via 198\.18\.1\.3 .* the socket via 198\.18\.1\.2/);
  });
});
