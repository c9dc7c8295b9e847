// Packet-capture debugging: the pcap writer (read back by tcpdump), the one-line decoder with TCP
// retransmissions, and `ipdeadgate capture` on real interfaces in the lab, including a failover.
import { strict as assert } from 'node:assert';
import { execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  PacketDescriber,
  TcpRetransmissionTracker,
  andFilters,
  frameAddresses,
  gatewayFilter,
  ETHERTYPE_IPV4,
  IPPROTO_TCP,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_SYN,
  buildArpReply,
  buildArpRequest,
  buildNeighbourAdvertisement,
  buildNeighbourSolicitation,
  encodeEthernet,
  encodeIcmpEcho,
  encodeIpv4Header,
  encodeTcp,
  ICMP_ECHO_REQUEST,
  IPPROTO_ICMP,
  PcapFileWriter,
  encodePcap,
  parsePcap,
  splitTimestamp,
} from '../../src/sys/packet';
import { type ExecResult, type Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLab, pairLab } from '../lab/topologies';
import { macOf, waitDgdLabReady } from '../fixtures/neigh-lab';

const A = { mac: '02:00:00:00:00:0a', ip: '198.18.0.1' };
const B = { mac: '02:00:00:00:00:0b', ip: '198.18.0.2' };

function tcpFrame(
  src: string,
  dst: string,
  sport: number,
  dport: number,
  seq: number,
  flags: number,
  payloadLen = 0,
): Buffer {
  const tcp = encodeTcp({
    srcPort: sport,
    dstPort: dport,
    seq,
    ack: 1,
    flags,
    payload: Buffer.alloc(payloadLen, 0x61),
  });
  const ip = encodeIpv4Header({ src, dst, protocol: IPPROTO_TCP, payloadLength: tcp.length });
  return encodeEthernet({ src: A.mac, dst: B.mac, ethertype: ETHERTYPE_IPV4 }, Buffer.concat([ip, tcp]));
}

function echoFrame(): Buffer {
  const icmp = encodeIcmpEcho({ type: ICMP_ECHO_REQUEST, id: 7, seq: 3, payload: Buffer.alloc(8) });
  const ip = encodeIpv4Header({ src: A.ip, dst: B.ip, protocol: IPPROTO_ICMP, payloadLength: icmp.length });
  return encodeEthernet({ src: A.mac, dst: B.mac, ethertype: ETHERTYPE_IPV4 }, Buffer.concat([ip, icmp]));
}

function tcpdumpRead(file: string, filter: string[] = []): string {
  return execFileSync('tcpdump', ['-nn', '-r', file, ...filter], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

describe('pcap files', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-pcap-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('splits timestamps into seconds and µs/ns, carrying a rounded-up fraction', () => {
    assert.deepEqual(splitTimestamp(1_700_000_000_123.456), [1_700_000_000, 123_456]);
    assert.deepEqual(splitTimestamp(1_700_000_000_123.5, 'nano'), [1_700_000_000, 123_500_000]);
    assert.deepEqual(splitTimestamp(1_700_000_000_999.75 + 0.2498), [1_700_000_001, 0]);
    assert.throws(() => splitTimestamp(-1), RangeError);
  });

  for (const resolution of ['micro', 'nano'] as const) {
    it(`a ${resolution}second file is read back by our parser and by tcpdump -r`, () => {
      const file = path.join(dir, `x-${resolution}.pcap`);
      const t0 = Date.UTC(2024, 0, 2, 3, 4, 5) + 0.25;
      const w = PcapFileWriter.open(file, { resolution });
      w.write({ tsMs: t0, data: buildArpRequest({ senderMac: A.mac, senderIp: A.ip, targetIp: B.ip }) });
      w.write({
        tsMs: t0 + 1.5,
        data: buildArpReply({ senderMac: B.mac, senderIp: B.ip, targetMac: A.mac, targetIp: A.ip }),
      });
      w.write({ tsMs: t0 + 3, data: echoFrame() });
      w.close();
      w.close(); // idempotent
      const parsed = parsePcap(fs.readFileSync(file));
      assert.equal(parsed.resolution, resolution);
      assert.equal(parsed.linktype, 1);
      assert.equal(parsed.trailingBytes, 0);
      assert.equal(parsed.packets.length, 3);
      assert.ok(Math.abs(parsed.packets[1]!.tsMs - (t0 + 1.5)) < 0.002);
      const out = tcpdumpRead(file, ['-tt']);
      const lines = out.trim().split('\n');
      assert.equal(lines.length, 3, out);
      assert.match(lines[0]!, /^1704164645\.000250\d* ARP, Request who-has 198\.18\.0\.2 tell 198\.18\.0\.1/);
      assert.match(lines[1]!, /^1704164645\.001750\d* ARP, Reply 198\.18\.0\.2 is-at 02:00:00:00:00:0b/);
      assert.match(lines[2]!, /ICMP echo request, id 7, seq 3/);
    });
  }

  it('encodePcap builds the same bytes as the streaming writer', () => {
    const file = path.join(dir, 'y.pcap');
    const pkts = [{ tsMs: 1000.5, data: echoFrame() }];
    const w = PcapFileWriter.open(file);
    for (const p of pkts) w.write(p);
    w.close();
    assert.deepEqual(fs.readFileSync(file), encodePcap(pkts));
  });

  it('a file cut mid-record still parses to its last whole packet (what SIGKILL could leave)', () => {
    const whole = encodePcap([
      { tsMs: 1, data: echoFrame() },
      { tsMs: 2, data: echoFrame() },
    ]);
    const cut = whole.subarray(0, whole.length - 5);
    const p = parsePcap(cut);
    assert.equal(p.packets.length, 1);
    assert.ok(p.trailingBytes > 0);
  });

  it('a file that cannot be written is a clear error naming it', () => {
    assert.throws(
      () => PcapFileWriter.open(path.join(dir, 'no', 'such', 'dir', 'x.pcap')),
      (e: Error & { code?: string }) =>
        e.code === 'ENOENT' && /cannot write the capture file .*x\.pcap/.test(e.message),
    );
  });
});

describe('packet decoding', () => {
  it('describes ARP, NDP and ICMP in one line', () => {
    const d = new PacketDescriber();
    const req = d.describe(buildArpRequest({ senderMac: A.mac, senderIp: A.ip, targetIp: B.ip }));
    assert.equal(req.kind, 'arp-request');
    assert.equal(req.text, 'ARP who-has 198.18.0.2 tell 198.18.0.1 (02:00:00:00:00:0a)');
    const rep = d.describe(
      buildArpReply({ senderMac: B.mac, senderIp: B.ip, targetMac: A.mac, targetIp: A.ip }),
    );
    assert.equal(rep.kind, 'arp-reply');
    assert.match(rep.text, /^ARP reply 198\.18\.0\.2 is-at 02:00:00:00:00:0b/);
    const garp = d.describe(
      buildArpReply({ senderMac: B.mac, senderIp: B.ip, targetMac: 'ff:ff:ff:ff:ff:ff', targetIp: B.ip }),
    );
    assert.equal(garp.kind, 'garp');
    const ns = d.describe(
      buildNeighbourSolicitation({ srcMac: A.mac, srcIp: '2001:db8::1', target: '2001:db8::2' }),
    );
    assert.equal(ns.kind, 'ndp-ns');
    assert.equal(ns.text, 'NDP NS who-has 2001:db8::2 from 2001:db8::1 (02:00:00:00:00:0a)');
    const na = d.describe(
      buildNeighbourAdvertisement({
        srcMac: B.mac,
        srcIp: '2001:db8::2',
        dstMac: A.mac,
        dstIp: '2001:db8::1',
        target: '2001:db8::2',
      }),
    );
    assert.equal(na.kind, 'ndp-na');
    assert.match(
      na.text,
      /^NDP NA 2001:db8::2 is-at 02:00:00:00:00:0b to 2001:db8::1 \[solicited,override\]/,
    );
    const echo = d.describe(echoFrame());
    assert.equal(echo.kind, 'icmp-echo-request');
    assert.equal(echo.text, 'ICMP echo request 198.18.0.1 > 198.18.0.2 id 7 seq 3 ttl 64');
    const junk = d.describe(Buffer.alloc(10));
    assert.equal(junk.kind, 'malformed');
  });

  it('marks TCP retransmissions: a SYN again, data again, counted; not keep-alives or pure ACKs', () => {
    const d = new PacketDescriber();
    const f = (seq: number, flags: number, len = 0) =>
      d.describe(tcpFrame(A.ip, B.ip, 40000, 7000, seq, flags, len));
    assert.equal(f(100, TCP_SYN).kind, 'tcp');
    const syn2 = f(100, TCP_SYN);
    assert.equal(syn2.kind, 'tcp-retransmission');
    assert.match(syn2.text, /\[S\] seq 100 win 65535 len 0 RETRANSMISSION$/);
    assert.equal(f(101, TCP_ACK | TCP_PSH, 8).kind, 'tcp');
    assert.equal(f(109, TCP_ACK | TCP_PSH, 8).kind, 'tcp');
    assert.equal(f(117, TCP_ACK).kind, 'tcp', 'a pure ACK is never a retransmission');
    const again = f(109, TCP_ACK | TCP_PSH, 8);
    assert.equal(again.kind, 'tcp-retransmission');
    assert.match(
      again.text,
      /^TCP 198\.18\.0\.1:40000 > 198\.18\.0\.2:7000 \[P\.\] seq 109:117 ack 1 win 65535 len 8 RETRANSMISSION$/,
    );
    assert.match(f(109, TCP_ACK | TCP_PSH, 8).text, /RETRANSMISSION #2$/);
    assert.equal(f(116, TCP_ACK, 1).kind, 'tcp', 'a keep-alive (one byte at next-1) is not a retransmission');
    assert.equal(f(116, TCP_ACK, 0).kind, 'tcp');
    assert.equal(f(117, TCP_ACK | TCP_FIN).kind, 'tcp');
    assert.equal(f(117, TCP_ACK | TCP_FIN).kind, 'tcp-retransmission');
    // The other direction is its own flow.
    assert.equal(d.describe(tcpFrame(B.ip, A.ip, 7000, 40000, 100, TCP_SYN | TCP_ACK)).kind, 'tcp');
  });

  it('compares sequence numbers modulo 2^32 and stays bounded in flows', () => {
    const t = new TcpRetransmissionTracker(2);
    const hdr = (seq: number, sport = 1) => ({
      srcPort: sport,
      dstPort: 2,
      seq,
      ack: 0,
      flags: TCP_ACK,
      window: 1,
      headerLength: 20,
      payloadLength: 10,
    });
    assert.equal(t.observe('a', 'b', hdr(0xfffffff8)), 0);
    assert.equal(t.observe('a', 'b', hdr(2)), 0, 'wrapped past 2^32: new data');
    assert.equal(t.observe('a', 'b', hdr(0xfffffff8)), 1);
    t.observe('a', 'b', hdr(1, 3));
    t.observe('a', 'b', hdr(1, 4));
    assert.equal(t.size, 2);
  });

  it('finds the addresses a frame is about (the NS target too) and builds gateway filters', () => {
    assert.deepEqual(frameAddresses(buildArpRequest({ senderMac: A.mac, senderIp: A.ip, targetIp: B.ip })), [
      A.ip,
      B.ip,
    ]);
    assert.deepEqual(
      frameAddresses(
        buildNeighbourSolicitation({ srcMac: A.mac, srcIp: '2001:db8::1', target: '2001:db8::2' }),
      ),
      ['2001:db8::1', 'ff02::1:ff00:2', '2001:db8::2'],
    );
    assert.deepEqual(frameAddresses(Buffer.alloc(3)), []);
    assert.equal(
      gatewayFilter([{ address: '198.18.1.1', mac: '02:AA:00:00:00:01' }, { address: '2001:db8:1::1' }]),
      'host 198.18.1.1 or host 2001:db8:1::1 or ip6 dst ff02::1:ff00:1 or ether host 02:aa:00:00:00:01',
    );
    assert.equal(andFilters('host 1.2.3.4', ''), 'host 1.2.3.4');
    assert.equal(andFilters('a or b', 'tcp'), '(a or b) and (tcp)');
  });
});

interface RunningCapture {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Start `ipdeadgate capture ARGS` in a lab host; resolves once it listens on every interface. */
async function startCapture(lab: Lab, host: string, args: string[], listening = 1): Promise<RunningCapture> {
  const child = lab.spawnCli(host, ['capture', ...args]);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (c: string) => (out += c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let done = false;
  void exited.then(() => (done = true));
  await waitFor(
    () => done || (err.match(/listening on/g) ?? []).length >= listening,
    10_000,
    `capture to listen: ${err}`,
  );
  if (done) assert.fail(`capture exited at once: ${err}`);
  return { child, stdout: () => out, stderr: () => err, exited };
}

async function stopCapture(c: RunningCapture, sig: NodeJS.Signals): Promise<number | null> {
  c.child.kill(sig);
  return Promise.race([
    c.exited,
    new Promise<null>((_, rej) => setTimeout(() => rej(new Error(`capture did not exit on ${sig}`)), 10_000)),
  ]);
}

/** Exit 2, one clear line on stderr, no stack trace. */
function assertUsage(r: ExecResult, pattern: RegExp): void {
  assert.equal(r.code, 2, `exit ${r.code}: ${r.stdout}${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line expected: ${r.stderr}`);
  assert.match(lines[0]!, /^ipdeadgate: /);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |Assertion/);
}

describe('ipdeadgate capture (lab)', function () {
  this.timeout(60_000);
  let lab: Lab;
  let dir: string;

  before(function () {
    requireRoot(this);
  });

  afterEach(async () => {
    await lab?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a bad BPF filter and an unknown interface exit 2 with a clear message', async () => {
    lab = await pairLab();
    assertUsage(
      await lab.cli('a', ['capture', '-i', 'eth0', '-c', '1', 'port', 'notaport']),
      /bad capture filter "port notaport": .*pcap-filter/,
    );
    assertUsage(await lab.cli('a', ['capture', '-i', 'eth0', 'host']), /bad capture filter "host"/);
    assertUsage(
      await lab.cli('a', ['capture', '-i', 'nosuch0']),
      /no network interface named "nosuch0" in this network namespace/,
    );
    assertUsage(await lab.cli('a', ['capture', '-i', 'eth0', '--gateways']), /either -i IFACE or --gateways/);
    assertUsage(
      await lab.cli('a', ['capture', '-c', 'x', '-i', 'eth0']),
      /-c\/--count must be a whole number/,
    );
    // No gateway routes in the pair lab: --gateways (the default) says what to do instead.
    assertUsage(await lab.cli('a', ['capture']), /no gateway routes .* -i IFACE/);
  });

  it('decodes live traffic; -c ends it; SIGTERM and -G leave a file tcpdump reads', async () => {
    lab = await pairLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-cap-'));
    // -c: three ICMP packets, decoded.
    // Ping only once the capture says it listens (a fixed wait lost the first echo on a busy machine).
    const counted = await startCapture(lab, 'a', ['-i', 'eth0', '-c', '3', 'icmp']);
    await lab.exec('b', ['ping', '-c', '3', '-i', '0.2', '198.18.0.1']);
    const code = await Promise.race([
      counted.exited,
      new Promise<null>((_, rej) => setTimeout(() => rej(new Error('capture -c 3 did not end')), 20_000)),
    ]);
    const r = { code, stdout: counted.stdout(), stderr: counted.stderr() };
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 3, r.stdout);
    assert.match(
      lines[0]!,
      /^\d\d:\d\d:\d\d\.\d{6} eth0 ICMP echo request 198\.18\.0\.2 > 198\.18\.0\.1 id \d+ seq 1 ttl 64$/,
    );
    assert.match(lines[1]!, /ICMP echo reply 198\.18\.0\.1 > 198\.18\.0\.2/);
    assert.match(
      r.stderr,
      /capture: 3 packets on eth0 .*\(3 packets\)\n {2}by kind: icmp-echo-request 2, icmp-echo-reply 1/,
    );

    // SIGTERM: the file is closed and valid.
    const file = path.join(dir, 'term.pcap');
    const c = await startCapture(lab, 'a', ['-i', 'eth0', '-w', file, 'arp or icmp']);
    await lab.exec('a', ['ip', 'neigh', 'flush', 'dev', 'eth0']);
    await lab.exec('a', ['ping', '-c', '2', '-i', '0.2', '198.18.0.2']);
    await waitFor(() => (c.stdout().match(/\n/g) ?? []).length >= 4, 5000, 'decoded lines');
    assert.equal(await stopCapture(c, 'SIGTERM'), 0);
    assert.match(c.stderr(), /\(terminated\)[\s\S]*written: .*term\.pcap \(\d+ packets, \d+ bytes, pcap\)/);
    const read = tcpdumpRead(file);
    assert.match(read, /ARP, Request who-has 198\.18\.0\.2 tell 198\.18\.0\.1/);
    assert.match(read, /ARP, Reply 198\.18\.0\.2 is-at/);
    assert.match(read, /198\.18\.0\.1 > 198\.18\.0\.2: ICMP echo request/);
    assert.equal(parsePcap(fs.readFileSync(file)).trailingBytes, 0);
    // Same lines in our decode and in tcpdump's reading of our file.
    assert.equal(c.stdout().trim().split('\n').length, read.trim().split('\n').length);

    // -G 1: ends by itself after a second, with an empty but valid file.
    const quiet = path.join(dir, 'quiet.pcap');
    const g = await lab.cli('a', ['capture', '-i', 'eth0', '-G', '1', '-w', quiet, 'udp port 9'], 10_000);
    assert.equal(g.code, 0, g.stderr);
    assert.match(g.stderr, /capture: 0 packets on eth0 in 1\.\d s \(1 s elapsed\)/);
    assert.equal(tcpdumpRead(quiet), '');
  });

  it('during a lab failover, --gateways shows the retransmissions and the unanswered ARP probes; Ctrl-C summarises; tcpdump -r reads the file', async function () {
    this.timeout(90_000);
    lab = await dgdLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-cap-'));
    await waitDgdLabReady(lab);
    const r1mac = await macOf(lab, 'r1', 'lan0');
    lab.spawn('server', [process.execPath, path.join(__dirname, '..', 'lab', 'flow.js'), 'server', '7000']);
    const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 1h\n');
    const file = path.join(dir, 'failover.pcap');
    const c = await startCapture(lab, 'client', ['--gateways', '-w', file]);
    assert.match(
      c.stderr(),
      new RegExp(
        `listening on lan0 with filter: host ${DGD.r1_4.replace(/\./g, '\\.')} .*ether host ${r1mac}`,
      ),
    );
    const flow = lab.spawn('client', [
      process.execPath,
      path.join(__dirname, '..', 'lab', 'flow.js'),
      'client',
      DGD.server4,
      '7000',
      '50',
      '20000',
    ]);
    let echoes = 0;
    flow.stdout!.on('data', (b: Buffer) => (echoes += (b.toString().match(/"seq"/g) ?? []).length));
    await waitFor(() => echoes >= 10, 5000, 'the flow to run');
    await lab.killSilently('r1', 'lan0');
    const killedAt = Date.now(); // after nft returned: from here on r1 is silent
    await d.waitFor(
      (e) => e.event === 'routes_withdrawn' && e.gateway === DGD.r1_4,
      15_000,
      'routes withdrawn',
    );
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await stopCapture(c, 'SIGINT'), 0);
    const out = c.stdout();
    if (process.env.IDG_SHOW_CAPTURE) process.stderr.write(out + c.stderr());
    assert.match(out, /lan0 TCP 198\.18\.1\.10:\d+ > 198\.18\.2\.10:7000 \[P\.\] .* RETRANSMISSION/);
    assert.match(out, /lan0 ARP who-has 198\.18\.1\.1 tell 198\.18\.1\.10/);
    assert.match(
      c.stderr(),
      /capture: \d+ packets on lan0 in [\d.]+ s \(interrupted\)\n {2}by kind: .*arp-request \d+.*\n {2}written: /,
    );
    assert.match(c.stderr(), /tcp-retransmission \d+/);
    // tcpdump reads the file: after r1's death, ARP who-has for r1 (the daemon's probes) and no reply.
    const afterDeath = tcpdumpRead(file, ['-tt', '-e'])
      .trim()
      .split('\n')
      .filter((l) => parseFloat(l) * 1000 >= killedAt);
    const probes = afterDeath.filter((l) => l.includes(`Request who-has ${DGD.r1_4} tell ${DGD.client4}`));
    assert.ok(probes.length >= 3, `ARP probes for r1 after its death:\n${afterDeath.join('\n')}`);
    assert.deepEqual(
      afterDeath.filter((l) => l.includes(`Reply ${DGD.r1_4} is-at`)),
      [],
      'r1 is dead: no reply',
    );
    assert.equal(await d.stop(), 0);
  });
});
