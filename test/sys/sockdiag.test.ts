// sock_diag dump: real sockets in the lab (pairLab: a 198.18.0.1 / 2001:db8::1, b .2 / ::2), held
// against `ss -tinoe` run in the same namespace at the same moment.
import * as assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import type { Lab } from '../lab/lab';
import { REPO_ROOT, requireRoot } from '../lab/lab';
import { DGD, dgdLab, pairLab } from '../lab/topologies';
import { AbortError, SystemError } from '../../src/errors';
import {
  countTcpSockets,
  dumpTcpSocketPages,
  dumpTcpSockets,
  tcpStateMask,
  type TcpSocketEntry,
} from '../../src/sys/sockdiag';
import { nativeSystemError } from '../../src/sys/native';
import { parseSs, SS_STATE, type SsSocket } from '../fixtures/sockdiag-ss';

const PEER = 'dist/test/fixtures/sockdiag-peer.js';
const CLIENT = 'dist/test/fixtures/sockdiag-client.js';
const PORT = 5000;

type Json = Record<string, unknown>;

/** ss's timer names by idiag_timer (misc/ss.c tmr_name); ss prints no timer for 0. */
const SS_TIMER: readonly (string | null)[] = [null, 'on', 'keepalive', 'timewait', 'persist'];

/** JSON lines printed by a spawned fixture; `next(pred)` waits for a matching one. */
function jsonLines(child: ChildProcess): {
  next(pred: (v: Json) => boolean, timeoutMs: number): Promise<Json>;
} {
  const seen: Json[] = [];
  const waiters: { pred: (v: Json) => boolean; resolve: (v: Json) => void }[] = [];
  let buf = '';
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let v: Json;
      try {
        v = JSON.parse(line) as Json;
      } catch {
        continue;
      }
      seen.push(v);
      for (const w of [...waiters]) {
        if (!w.pred(v)) continue;
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(v);
      }
    }
  });
  return {
    next(pred, timeoutMs) {
      const hit = seen.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`fixture printed nothing matching in ${timeoutMs} ms; stderr: ${stderr}`)),
          timeoutMs,
        );
        waiters.push({
          pred,
          resolve: (v) => {
            clearTimeout(timer);
            resolve(v);
          },
        });
      });
    },
  };
}

/** Run the client fixture to completion in host a; its last JSON line is the result. */
async function client(lab: Lab, args: string[]): Promise<Json> {
  const r = await lab.node('a', CLIENT, args, 30_000);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  assert.equal(r.code, 0, `fixture ${args.join(' ')} failed (${r.code}): ${r.stdout}\n${r.stderr}`);
  return JSON.parse(last) as Json;
}

interface Sample {
  ours: TcpSocketEntry;
  ss: string;
}

function ssFor(sample: Sample): SsSocket {
  const e = sample.ours;
  const row = parseSs(sample.ss).find(
    (s) => s.local.port === e.srcPort && s.peer.port === e.dstPort && s.peer.addr.endsWith(e.dst),
  );
  assert.ok(row, `ss does not show ${e.src}:${e.srcPort} -> ${e.dst}:${e.dstPort}:\n${sample.ss}`);
  return row;
}

/** Our entry and ss's line for the same socket at the same moment agree on every shared field. */
function assertAgreesWithSs(sample: Sample): void {
  const e = sample.ours;
  const ss = ssFor(sample);
  const ctx = `ours ${JSON.stringify(e)}\nss ${JSON.stringify(ss)}`;
  assert.equal(ss.state, SS_STATE[e.state], ctx);
  assert.equal(ss.local.addr, e.src, ctx);
  assert.equal(ss.inode, e.inode, ctx);
  assert.equal(ss.uid, e.uid, ctx);
  assert.equal(ss.timer?.name ?? null, SS_TIMER[e.timer], ctx);
  assert.equal(ss.timer?.count ?? 0, e.timerRetransmits, ctx);
  assert.ok(e.info, ctx);
  assert.equal(ss.backoff, e.info.backoff, ctx);
  assert.equal(ss.totalRetrans, e.info.totalRetrans, ctx);
  assert.equal(ss.rtoMs, e.info.rtoMs, ctx);
  assert.equal(ss.unacked, e.info.unacked, ctx);
  assert.equal(ss.lost, e.info.lost, ctx);
}

describe('sock_diag dump in the lab', function () {
  this.timeout(60_000);
  let lab: Lab;
  let peer: ChildProcess;

  before(async function () {
    requireRoot(this);
    lab = await pairLab();
    peer = lab.spawn('b', [process.execPath, `${REPO_ROOT}/${PEER}`, String(PORT)]);
    await jsonLines(peer).next((v) => v.listening === PORT, 10_000);
  });
  after(async () => {
    await lab?.close();
  });

  it('reports IPv4, IPv6 and IPv4-mapped sockets, with family and state filters', async () => {
    const r = await client(lab, ['mapped', '2001:db8::2', String(PORT)]);
    const all = r.all as TcpSocketEntry[];
    const self4Port = r.self4Port as number;
    const v6Port = r.v6Port as number;
    // The outgoing IPv4 socket (AF_INET) and the accepted one on the [::] listener (AF_INET6 with
    // ::ffff:198.18.0.1 in the kernel) are both family 4 with dotted addresses.
    const out4 = all.find((e) => e.srcPort === self4Port && e.dstPort === 7001);
    const in4 = all.find((e) => e.srcPort === 7001 && e.dstPort === self4Port);
    assert.deepEqual(
      [out4?.family, out4?.src, out4?.dst, out4?.state],
      [4, '198.18.0.1', '198.18.0.1', 'ESTABLISHED'],
    );
    assert.deepEqual(
      [in4?.family, in4?.src, in4?.dst, in4?.state],
      [4, '198.18.0.1', '198.18.0.1', 'ESTABLISHED'],
    );
    const v6 = all.find((e) => e.srcPort === v6Port);
    assert.deepEqual(
      [v6?.family, v6?.src, v6?.dst, v6?.dstPort, v6?.state],
      [6, '2001:db8::1', '2001:db8::2', PORT, 'ESTABLISHED'],
    );
    for (const e of [out4!, in4!, v6!]) {
      assert.ok(e.inode > 0, 'a connected socket has an inode');
      assert.equal(e.uid, 0);
      assert.equal(e.info, undefined, 'no tcp_info unless asked');
      assert.equal(e.timer, 0, 'an idle connection has no timer pending');
    }
    assert.ok(!all.some((e) => e.state === 'LISTEN'), 'LISTEN is not in the default states');
    // Both kernel families (IPv4 and IPv6 sockets, and the IPv4-mapped) in one walk of the
    // kernel's tables, whatever family is reported: the walk is what a dump costs.
    assert.deepEqual(r.requests, { 0: 1, 4: 1, 6: 1 }, 'one dump request per dump');
    // A kernel refusing that request gets one per family: the same sockets.
    assert.deepEqual(r.twoRequests, { 0: 2, 4: 2, 6: 1 });
    const key = (e: TcpSocketEntry) => `${e.family} ${e.src}:${e.srcPort} ${e.dst}:${e.dstPort} ${e.state}`;
    assert.deepEqual((r.twoRequestAll as TcpSocketEntry[]).map(key).sort(), all.map(key).sort());
    assert.deepEqual(
      (r.twoRequestOnly4 as TcpSocketEntry[]).map(key).sort(),
      (r.only4 as TcpSocketEntry[]).map(key).sort(),
    );
    const only4 = r.only4 as TcpSocketEntry[];
    const only6 = r.only6 as TcpSocketEntry[];
    assert.ok(
      only4.every((e) => e.family === 4) && only4.some((e) => e.srcPort === 7001),
      'family 4 has the mapped',
    );
    assert.ok(
      only6.every((e) => e.family === 6) && only6.some((e) => e.srcPort === v6Port),
      'family 6 has the v6',
    );
    assert.equal(only4.length + only6.length, all.length);
    const listen = r.listen as TcpSocketEntry[];
    assert.deepEqual(
      listen.map((e) => [e.family, e.src, e.srcPort, e.state]),
      [[6, '::', 7001, 'LISTEN']],
      'a [::] listener is family 6',
    );
    const both = r.listenAndEstablished as TcpSocketEntry[];
    assert.ok(both.some((e) => e.state === 'LISTEN') && both.some((e) => e.state === 'ESTABLISHED'));
    const established = both.find((e) => e.srcPort === v6Port);
    assert.equal(established?.info?.state, 'ESTABLISHED');
    assert.ok((established?.info?.rttMs ?? 0) > 0, 'tcp_info carries an rtt');
    assert.deepEqual(r.none, []);

    // countTcpSockets: the same numbers as a dump of the same idle sockets, per state and family.
    const every = r.dumpEveryState as TcpSocketEntry[];
    const counts = r.countEveryState as { total: number; byFamily: Record<string, number>; byState: Json };
    assert.ok(every.length >= 4, `sockets to count: ${every.length}`);
    const byState: Json = {};
    for (const e of every) byState[e.state] = ((byState[e.state] as number | undefined) ?? 0) + 1;
    assert.deepEqual(counts.byState, byState);
    assert.equal(counts.total, every.length);
    assert.deepEqual(counts.byFamily, {
      4: every.filter((e) => e.family === 4).length,
      6: every.filter((e) => e.family === 6).length,
    });
    const counted = (v: unknown): number => (v as { total: number }).total;
    assert.equal(counted(r.countDefault), every.filter((e) => e.state !== 'LISTEN').length);
    assert.equal(counted(r.countOnly6), every.filter((e) => e.family === 6 && e.state !== 'LISTEN').length);
    assert.equal(counted(r.countNone), 0);
    // dumpTcpSocketPages: pages of at most 2 that together are the dump, in its order.
    const pages = r.pages as TcpSocketEntry[][];
    assert.ok(pages.length >= 2 && pages.every((p) => p.length >= 1 && p.length <= 2));
    assert.deepEqual(
      pages.flat().map((e) => [e.src, e.srcPort, e.dst, e.dstPort, e.state, e.info?.state]),
      every.map((e) => [e.src, e.srcPort, e.dst, e.dstPort, e.state, e.info?.state]),
    );
  });

  it("reports each socket's mark (INET_DIAG_MARK, to CAP_NET_ADMIN only) and uid: its route lookup key", async () => {
    const r = await client(lab, ['keyed', '198.18.0.2', String(PORT)]);
    const key = (all: TcpSocketEntry[]) =>
      all.map((e) => [e.srcPort, e.mark, e.uid, e.state]).sort((x, y) => Number(x[0]) - Number(y[0]));
    assert.deepEqual(key(r.ours as TcpSocketEntry[]), [
      [41_001, 42, 0, 'ESTABLISHED'],
      [41_002, 0, 1000, 'ESTABLISHED'],
    ]);
    // Without CAP_NET_ADMIN the kernel leaves the mark out: unknown, not 0.
    assert.deepEqual(key(r.unprivileged as TcpSocketEntry[]), [
      [41_001, null, 0, 'ESTABLISHED'],
      [41_002, null, 1000, 'ESTABLISHED'],
    ]);
  });

  it('retransmission counters climb on a blackholed path and agree with ss -tinoe', async () => {
    const child = lab.spawn('a', [
      process.execPath,
      `${REPO_ROOT}/${CLIENT}`,
      'blackhole',
      '198.18.0.2',
      String(PORT),
    ]);
    const lines = jsonLines(child);
    await lines.next((v) => v.ready === true, 10_000);
    await lab.killSilently('b', 'eth0');
    try {
      child.stdin!.write('go\n');
      const r = await lines.next((v) => Array.isArray(v.samples), 20_000);
      const samples = r.samples as Sample[];
      assert.ok(samples.length >= 10, `enough samples (${samples.length})`);
      for (const s of samples) assertAgreesWithSs(s);
      // Consecutive retransmissions of the current segment: never go down, reach 3 within ~3.6 s
      // (RTO 200 ms doubling: 0.2, 0.6, 1.4, 3.0 s), the same in inet_diag_msg and tcp_info.
      const seq = samples.map((s) => s.ours.timerRetransmits);
      for (let i = 1; i < seq.length; i++) assert.ok(seq[i]! >= seq[i - 1]!, `monotonic: ${seq.join(',')}`);
      assert.ok(seq[seq.length - 1]! >= 3, `reached 3 consecutive retransmissions: ${seq.join(',')}`);
      for (const s of samples) {
        assert.equal(s.ours.info!.retransmits, s.ours.timerRetransmits);
        if (s.ours.timerRetransmits > 0) assert.equal(s.ours.timer, 1, 'retransmit timer pending');
      }
      // minRetransmits keeps exactly the retransmitting socket, not the idle ones around it.
      const scan = r.scan as TcpSocketEntry[];
      assert.ok((r.scanAllCount as number) > 1, 'there are other sockets to filter out');
      assert.deepEqual(
        scan.map((e) => [e.srcPort, e.dstPort, e.timer]),
        [[r.localPort, PORT, 1]],
      );
      assert.ok(scan[0]!.timerRetransmits >= 2);
      const last = samples[samples.length - 1]!.ours;
      assert.ok(
        last.info!.backoff >= 3 && last.info!.totalRetrans >= 3 && last.info!.rtoMs >= 800,
        JSON.stringify(last),
      );
    } finally {
      child.kill('SIGKILL');
      await lab.revive('b', 'eth0');
    }
  });

  it('sees a SYN-SENT socket to a silent peer (IPv6) with its SYN retransmissions', async () => {
    await lab.killSilently('b', 'eth0');
    try {
      const r = await client(lab, ['synsent', '2001:db8::2', String(PORT)]);
      const samples = r.samples as Sample[];
      assert.ok(samples.length >= 8, `enough samples (${samples.length})`);
      for (const s of samples) {
        assert.equal(s.ours.state, 'SYN-SENT');
        assert.equal(s.ours.family, 6);
        assert.equal(s.ours.dst, '2001:db8::2');
        assertAgreesWithSs(s);
      }
      // SYN retransmissions at 1 s and 3 s (initial RTO 1 s, doubling).
      const seq = samples.map((s) => s.ours.timerRetransmits);
      assert.ok(seq[0]! === 0 && seq[seq.length - 1]! >= 2, `SYN retransmissions counted: ${seq.join(',')}`);
      assert.ok(samples.every((s) => s.ours.timer === 1));
    } finally {
      await lab.revive('b', 'eth0');
    }
  });
});

describe('sock_diag dump: options and errors', () => {
  it('rejects an already aborted signal without dumping', async () => {
    await assert.rejects(dumpTcpSockets({ signal: AbortSignal.abort() }), AbortError);
  });

  it('an abort during the dump rejects with AbortError', async () => {
    const ac = new AbortController();
    const p = dumpTcpSockets({ signal: ac.signal, info: true });
    ac.abort();
    await assert.rejects(p, AbortError);
  });

  it('rejects unknown states and families with a TypeError naming them', async () => {
    await assert.rejects(
      dumpTcpSockets({ states: ['ESTABLISHED', 'BOGUS' as never] }),
      /unknown TCP state "BOGUS"/,
    );
    await assert.rejects(dumpTcpSockets({ family: 5 as never }), /family must be 4, 6 or 'all'/);
    await assert.rejects(dumpTcpSockets({ minRetransmits: -1 }), RangeError);
    await assert.rejects(dumpTcpSockets({ minRetransmits: 1.5 }), RangeError);
    await assert.rejects(countTcpSockets({ family: 5 as never }), /family must be 4, 6 or 'all'/);
    await assert.rejects(countTcpSockets({ signal: AbortSignal.abort() }), AbortError);
    await assert.rejects(dumpTcpSocketPages({ pageSize: 0 }).next(), /pageSize must be a whole number/);
  });

  it('asks the kernel for request sockets along with SYN-RECV', () => {
    assert.equal(tcpStateMask(['SYN-RECV']), (1 << 3) | (1 << 12));
    assert.equal(tcpStateMask(['ESTABLISHED', 'LISTEN']), (1 << 1) | (1 << 10));
  });

  it('turns a native errno error into a SystemError with advice', () => {
    const native = Object.assign(new Error('x'), {
      code: 'ENOENT',
      errno: 2,
      syscall: 'sendmsg',
      description: 'No such file or directory',
    });
    const e = nativeSystemError(native, 'dumping TCP sockets with sock_diag', {
      ENOENT: 'modprobe tcp_diag',
    });
    assert.ok(e instanceof SystemError);
    assert.equal(e.code, 'ENOENT');
    assert.equal(e.errno, 2);
    assert.equal(e.syscall, 'sendmsg');
    assert.equal(
      e.message,
      'ENOENT: dumping TCP sockets with sock_diag failed (sendmsg: No such file or directory); modprobe tcp_diag',
    );
  });
});

describe('ipdeadgate sockets (dgd lab)', function () {
  this.timeout(60_000);
  let lab: Lab;

  before(async function () {
    requireRoot(this);
    lab = await dgdLab();
    for (const host of ['server', 'r2']) {
      const peer = lab.spawn(host, [process.execPath, `${REPO_ROOT}/${PEER}`, String(PORT)]);
      await jsonLines(peer).next((v) => v.listening === PORT, 10_000);
    }
  });
  after(async () => {
    await lab?.close();
  });

  it('shows the gateway and climbing retransmits of connections through a dead router, none for a direct peer', async () => {
    const start = (dst: string): { child: ChildProcess; ready: Promise<Json> } => {
      const child = lab.spawn('client', [
        process.execPath,
        `${REPO_ROOT}/${CLIENT}`,
        'blackhole',
        dst,
        String(PORT),
      ]);
      return { child, ready: jsonLines(child).next((v) => v.ready === true, 10_000) };
    };
    const via4 = start(DGD.server4);
    const via6 = start(DGD.server6);
    const direct = start(DGD.r2_4);
    const [r4, r6, rd] = await Promise.all([via4.ready, via6.ready, direct.ready]);
    await lab.killSilently('r1', 'lan0');
    try {
      via4.child.stdin!.write('go\n');
      via6.child.stdin!.write('go\n');
      await new Promise((r) => setTimeout(r, 1700)); // retransmissions at ~0.2, 0.6, 1.4 s
      const res = await lab.cli('client', ['sockets', '--json']);
      assert.equal(res.code, 0, res.stderr);
      const rows = JSON.parse(res.stdout) as Record<string, unknown>[];
      const row = (src: string): Record<string, unknown> | undefined => rows.find((r) => r.src === src);
      const v4 = row(`${DGD.client4}:${r4.localPort}`);
      const v6 = row(`[${DGD.client6}]:${r6.localPort}`);
      const d = row(`${DGD.client4}:${rd.localPort}`);
      assert.ok(v4 && v6 && d, res.stdout);
      assert.deepEqual(
        [v4.dst, v4.state, v4.gateway, v4.interface],
        [`${DGD.server4}:${PORT}`, 'ESTABLISHED', DGD.r1_4, 'lan0'],
      );
      assert.equal(v6.route_error, null, JSON.stringify(v6));
      assert.deepEqual([v6.dst, v6.gateway, v6.interface], [`[${DGD.server6}]:${PORT}`, DGD.r1_6, 'lan0']);
      for (const r of [v4, v6]) {
        assert.ok((r.retransmits as number) >= 2, `consecutive retransmits: ${JSON.stringify(r)}`);
        assert.ok((r.total_retrans as number) >= (r.retransmits as number));
        assert.ok((r.rto_ms as number) >= 400 && r.timer === 'retransmit', JSON.stringify(r));
      }
      assert.deepEqual(
        [d.dst, d.gateway, d.interface, d.retransmits],
        [`${DGD.r2_4}:${PORT}`, null, 'lan0', 0],
      );
      assert.equal(d.route_error, null);

      const filtered = await lab.cli('client', ['sockets', '--json', '--min-retrans', '2']);
      const kept = (JSON.parse(filtered.stdout) as Record<string, unknown>[]).map((r) => r.src);
      assert.ok(kept.includes(v4.src) && kept.includes(v6.src) && !kept.includes(d.src), filtered.stdout);

      const text = await lab.cli('client', ['sockets']);
      assert.equal(text.code, 0, text.stderr);
      const lines = text.stdout.trimEnd().split('\n');
      assert.match(
        lines[0]!,
        /^STATE\s+SRC\s+DST\s+GATEWAY\s+IFACE\s+RETRANS\s+TOTAL\s+RTO_MS\s+RTT_MS\s+TIMER$/,
      );
      const col = lines[0]!.indexOf('GATEWAY');
      assert.ok(
        lines.slice(1).every((l) => l.length > col && l[col - 1] === ' '),
        'columns are aligned',
      );
      assert.ok(lines.some((l) => l.includes(`${DGD.server4}:${PORT}`) && l.includes(DGD.r1_4)));

      const bad = await lab.cli('client', ['sockets', '--min-retrans', '-1']);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--min-retrans must be a whole number/);
      assert.doesNotMatch(bad.stderr, /\n\s+at /, 'no stack trace');
    } finally {
      for (const c of [via4.child, via6.child, direct.child]) c.kill('SIGKILL');
      await lab.revive('r1', 'lan0');
    }
  });
});
