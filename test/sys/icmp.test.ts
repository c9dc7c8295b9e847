import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import {
  encodeIcmpEcho,
  encodeIpv4Header,
  ICMP_ECHO_REPLY,
  ICMPV6_ECHO_REPLY,
  IPPROTO_ICMP,
  EchoSocket,
  type RawIcmpSocket,
} from '../../src/sys/packet';
import { type Lab, requireRoot } from '../lab/lab';
import { DGD, dgdLab } from '../lab/topologies';
import { waitDgdLabReady } from '../fixtures/neigh-lab';
import { nodeAsNobody } from '../fixtures/unprivileged';

const FIXTURE = 'dist/test/fixtures/neigh-echo.js';

interface EchoOut {
  results?: {
    dst: string;
    reply?: { rttMs: number } | null;
    error?: { name: string; code?: string; message: string };
    elapsedMs: number;
  }[];
  stats?: { sent: number; replies: number; timeouts: number; foreign: number };
  error?: { name: string; code?: string; message: string };
}

async function echoes(lab: Lab, host: string, args: object): Promise<EchoOut> {
  const r = await lab.node(host, FIXTURE, [JSON.stringify(args)]);
  assert.equal(r.stderr, '', r.stderr);
  return JSON.parse(r.stdout) as EchoOut;
}

describe('icmp: echo on raw sockets (lab)', function () {
  let lab: Lab;
  before(async function () {
    requireRoot(this);
    lab = await dgdLab();
    await waitDgdLabReady(lab);
  });
  after(async () => {
    await lab?.close();
  });

  it('IPv4 and IPv6 echoes to live routers come back with an RTT', async () => {
    for (const [family, dst] of [
      [4, DGD.r1_4],
      [6, DGD.r1_6],
    ] as const) {
      const out = await echoes(lab, 'client', { family, echoes: [{ dst, timeoutMs: 1000 }] });
      const r = out.results![0]!;
      assert.ok(r.reply, JSON.stringify(out));
      assert.ok(r.reply.rttMs > 0 && r.reply.rttMs < 100, `rtt ${r.reply.rttMs}`);
      assert.equal(out.stats!.replies, 1);
    }
  });

  it('bound to an interface, with large and empty payloads', async () => {
    const out = await echoes(lab, 'client', {
      family: 6,
      ifname: 'lan0',
      echoes: [
        { dst: DGD.r2_6, timeoutMs: 1000, payloadSize: 1400 },
        { dst: DGD.r2_6, timeoutMs: 1000, payloadSize: 0 },
      ],
    });
    assert.ok(
      out.results!.every((r) => r.reply),
      JSON.stringify(out),
    );
    const v4 = await echoes(lab, 'client', {
      family: 4,
      ifname: 'lan0',
      echoes: [{ dst: DGD.r2_4, timeoutMs: 1000, payloadSize: 3 }],
    });
    assert.ok(v4.results![0]!.reply, JSON.stringify(v4));
  });

  it('concurrent echoes to the same and different destinations are matched by id and sequence', async () => {
    const list = [];
    for (let i = 0; i < 5; i++)
      list.push({ dst: DGD.r1_4, timeoutMs: 1000 }, { dst: DGD.r2_4, timeoutMs: 1000 });
    list.push({ dst: '198.18.1.99', timeoutMs: 300 });
    const out = await echoes(lab, 'client', { family: 4, echoes: list });
    const res = out.results!;
    assert.equal(res.filter((r) => r.reply).length, 10, JSON.stringify(out));
    assert.equal(res[10]!.reply, null);
    assert.ok(res[10]!.elapsedMs >= 295 && res[10]!.elapsedMs < 600, `timeout after ${res[10]!.elapsedMs}`);
    assert.equal(out.stats!.replies, 10);
    assert.equal(out.stats!.timeouts, 1);
  });

  it("ignores another process's echo replies to the same destination", async () => {
    const ping = lab.spawn('client', ['ping', '-n', '-q', '-i', '0.01', '-c', '150', '-w', '5', DGD.r2_4]);
    try {
      await new Promise((r) => setTimeout(r, 100));
      const out = await echoes(lab, 'client', {
        family: 4,
        echoes: [
          { dst: DGD.r2_4, timeoutMs: 1000 },
          { dst: DGD.r2_4, timeoutMs: 1000 },
        ],
      });
      assert.ok(
        out.results!.every((r) => r.reply),
        JSON.stringify(out),
      );
      assert.equal(out.stats!.replies, 2);
    } finally {
      ping.kill('SIGINT');
    }
    // With a ping running elsewhere, a blocked destination still times out: ping's replies from
    // r2 never answer our echo to r1.
    await lab.blockPing('r1');
    const ping2 = lab.spawn('client', ['ping', '-n', '-q', '-i', '0.01', '-c', '150', '-w', '5', DGD.r2_4]);
    try {
      await new Promise((r) => setTimeout(r, 100));
      const out = await echoes(lab, 'client', { family: 4, echoes: [{ dst: DGD.r1_4, timeoutMs: 400 }] });
      assert.equal(out.results![0]!.reply, null, JSON.stringify(out));
      assert.ok(out.stats!.foreign > 0, `saw ${out.stats!.foreign} foreign replies`);
    } finally {
      ping2.kill('SIGINT');
      await lab.exec('r1', ['nft', 'delete', 'table', 'inet', 'idgnoping']);
    }
  });

  it('a blocked ping times out to null on time (IPv4 and IPv6)', async () => {
    await lab.blockPing('r2');
    try {
      for (const [family, dst] of [
        [4, DGD.r2_4],
        [6, DGD.r2_6],
      ] as const) {
        const out = await echoes(lab, 'client', { family, echoes: [{ dst, timeoutMs: 250 }] });
        const r = out.results![0]!;
        assert.equal(r.reply, null, JSON.stringify(out));
        assert.ok(r.elapsedMs >= 245 && r.elapsedMs < 500, `after ${r.elapsedMs}`);
      }
    } finally {
      await lab.exec('r2', ['nft', 'delete', 'table', 'inet', 'idgnoping']);
    }
  });

  it('a destination without a route fails with ENETUNREACH, not a timeout', async () => {
    // The server has no route to 198.19.0.0/16.
    const out = await echoes(lab, 'server', { family: 4, echoes: [{ dst: '198.19.5.5', timeoutMs: 1000 }] });
    const r = out.results![0]!;
    assert.equal(r.error?.code, 'ENETUNREACH', JSON.stringify(out));
    assert.match(r.error!.message, /ENETUNREACH: sending an ICMP echo to 198\.19\.5\.5/);
  });

  it('without CAP_NET_RAW: EPERM with a hint saying what is needed', async () => {
    const args = JSON.stringify({ family: 6, echoes: [] });
    const r = await lab.exec('client', nodeAsNobody(FIXTURE, args));
    const out = JSON.parse(r.stdout) as EchoOut;
    assert.equal(out.error?.code, 'EPERM', r.stdout + r.stderr);
    assert.match(
      out.error!.message,
      /^EPERM: opening a raw ICMPv6 socket needs .*CAP_NET_RAW \(run as root\)/,
    );
  });

  it('an unknown interface is a UsageError', async () => {
    const out = await echoes(lab, 'client', { family: 4, ifname: 'nosuch0', echoes: [] });
    assert.equal(out.error?.name, 'UsageError', JSON.stringify(out));
    assert.match(out.error!.message, /no network interface named "nosuch0"/);
  });
});

// ---------------------------------------------------------------------------------------------

/** A raw-socket stand-in: records sends, lets the test deliver messages and errors. */
class FakeRaw extends EventEmitter implements RawIcmpSocket {
  sent: { buf: Buffer; address: string }[] = [];
  closed = false;
  failSend: Error | null = null;
  send(
    buffer: Buffer,
    offset: number,
    length: number,
    address: string,
    before: () => void,
    after: (e: Error | null, n: number) => void,
  ): this {
    setImmediate(() => {
      before();
      if (this.failSend) return after(this.failSend, 0);
      this.sent.push({ buf: Buffer.from(buffer.subarray(offset, offset + length)), address });
      after(null, length);
    });
    return this;
  }
  setOption(): void {}
  close(): this {
    if (!this.closed) {
      this.closed = true;
      this.emit('close');
    }
    return this;
  }
  /** Reply to the i-th request as an IPv4 host would (IP header included). */
  reply4(i: number, from: string, tweak: (icmp: Buffer) => void = () => {}): void {
    const req = this.sent[i]!.buf;
    const icmp = encodeIcmpEcho({
      type: ICMP_ECHO_REPLY,
      id: req.readUInt16BE(4),
      seq: req.readUInt16BE(6),
      payload: req.subarray(8),
    });
    tweak(icmp);
    const ip = encodeIpv4Header({
      src: from,
      dst: '198.18.1.10',
      protocol: IPPROTO_ICMP,
      payloadLength: icmp.length,
    });
    this.emit('message', Buffer.concat([ip, icmp]), from);
  }
  reply6(i: number, from: string): void {
    const req = this.sent[i]!.buf;
    const icmp = encodeIcmpEcho({
      type: ICMPV6_ECHO_REPLY,
      id: req.readUInt16BE(4),
      seq: req.readUInt16BE(6),
      payload: req.subarray(8),
    });
    this.emit('message', icmp, from);
  }
}

const tick = () => new Promise((r) => setImmediate(r));

describe('icmp: matching and errors over a fake raw socket', () => {
  it('matches id, sequence, source and token; everything else is foreign', async () => {
    const raw = new FakeRaw();
    const s = EchoSocket.withSocket(4, raw);
    const p = s.echo('198.18.1.1', { timeoutMs: 200 });
    await tick();
    raw.reply4(0, '198.18.1.2'); // wrong source
    raw.reply4(0, '198.18.1.1', (icmp) => {
      icmp.writeUInt16BE((s.id + 1) & 0xffff, 4); // another process's id
      icmp.writeUInt16BE(0, 2);
      icmp.writeUInt16BE(checksum(icmp), 2);
    });
    raw.reply4(0, '198.18.1.1', (icmp) => {
      icmp[8]! ^= 0xff; // token differs
      icmp.writeUInt16BE(0, 2);
      icmp.writeUInt16BE(checksum(icmp), 2);
    });
    raw.emit('message', Buffer.from([0x45, 0, 0]), '198.18.1.1'); // truncated
    assert.equal(s.inFlight, 1);
    raw.reply4(0, '198.18.1.1');
    const r = await p;
    assert.ok(r && r.rttMs >= 0);
    assert.equal(s.stats.foreign, 3);
    assert.equal(s.stats.malformed, 1);
    s.close();
  });

  it('IPv6 replies carry no IP header; a link-local destination gets the socket interface as zone', async () => {
    const raw = new FakeRaw();
    const s = EchoSocket.withSocket(6, raw, { ifname: 'lan0' });
    const p = s.echo('fe80::1', { timeoutMs: 200 });
    await tick();
    assert.equal(raw.sent[0]!.address, 'fe80::1%lan0');
    raw.reply6(0, 'fe80::1');
    assert.ok(await p);
    s.close();
  });

  it("raw-socket's 'error' without an Error object fails echoes in flight with a meaningful error", async () => {
    const raw = new FakeRaw();
    const s = EchoSocket.withSocket(4, raw, { ifname: 'lan0' });
    const p = s.echo('198.18.1.1', { timeoutMs: 1000 });
    await tick();
    raw.emit('error'); // what raw-socket really does on a poll failure
    raw.close(); // ... and then it closes the socket
    await assert.rejects(p, (e: Error & { code?: string }) => {
      assert.equal(e.code, 'ERR_RAW_SOCKET');
      assert.match(e.message, /raw ICMP socket on lan0 failed: its poller reported an error/);
      return true;
    });
    await assert.rejects(s.echo('198.18.1.1', { timeoutMs: 10 }), /poller reported an error/);
    s.close();
  });

  it('a read error with its Error leaves the socket usable', async () => {
    const raw = new FakeRaw();
    const s = EchoSocket.withSocket(4, raw);
    raw.emit('error', new Error('Resource temporarily unavailable'));
    assert.equal(s.stats.recvErrors, 1);
    const p = s.echo('198.18.1.1', { timeoutMs: 200 });
    await tick();
    raw.reply4(0, '198.18.1.1');
    assert.ok(await p);
    s.close();
  });

  it('send errors become SystemErrors with the errno name', async () => {
    const raw = new FakeRaw();
    raw.failSend = new Error('Network is unreachable');
    const s = EchoSocket.withSocket(4, raw);
    await assert.rejects(
      s.echo('198.19.0.1', { timeoutMs: 200 }),
      (e: Error & { code?: string; syscall?: string }) => {
        return e.code === 'ENETUNREACH' && e.syscall === 'sendto';
      },
    );
    s.close();
  });

  it('timeouts, abort, close, bad arguments', async () => {
    const raw = new FakeRaw();
    const s = EchoSocket.withSocket(4, raw);
    assert.equal(await s.echo('198.18.1.1', { timeoutMs: 20 }), null);
    assert.equal(s.stats.timeouts, 1);
    const ac = new AbortController();
    const p = s.echo('198.18.1.1', { timeoutMs: 1000, signal: ac.signal });
    ac.abort();
    await assert.rejects(p, (e: Error & { code?: string }) => e.code === 'ABORT_ERR');
    await assert.rejects(s.echo('2001:db8::1', { timeoutMs: 10 }), TypeError);
    await assert.rejects(s.echo('198.18.1.1', { timeoutMs: 10, payloadSize: -1 }), RangeError);
    const q = s.echo('198.18.1.1', { timeoutMs: 1000 });
    s.close();
    s.close();
    await assert.rejects(q, (e: Error & { code?: string }) => e.code === 'ERR_CLOSED');
    assert.equal(raw.closed, true);
    assert.equal(s.inFlight, 0);
  });
});

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}
