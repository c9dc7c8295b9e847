// Flows resume the moment routes switch (src/dgd/resume.ts, src/sys/packet/tcpreplay.ts), on real
// sockets in the lab and observed on the wire with tcpdump: after r1's routes are withdrawn, the
// segment a flow through r1 was retransmitting leaves again at once towards r2; a flow that was
// retransmitting through r2 (alive, a server behind it silent) gets nothing from us; a connection
// whose SYN retransmits through r1 connects through r2 right after the switch. What can go wrong
// on a real host: a forged segment, TCP-MD5, source NAT, a socket's mark under `ip rule fwmark`.
// And the recorder's life, from `ipdeadgate status` and the daemon's packet sockets in the kernel:
// it closes when its flows recover, on a reload turning resume off and on `ipdeadgate off`; it
// follows a link flap; it records the cap and no more with flows over two gateways.
import { strict as assert } from 'node:assert';
import { readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon, type DaemonEvent } from '../lab/daemon';
import { DGD, dgdLabSpec } from '../lab/topologies';
import { MAX_RECORDED_FLOWS } from '../../src/dgd/resume';
import { startFlowClient, startFlowServer, startManyFlows } from '../lab/flows';

const PORT = 7000;

/**
 * A TCP_MD5SIG echo pair in Python (Node cannot set the option): `server PORT PEER` echoes each
 * 8-byte message of a client at PEER; `client PORT SERVER` sends one every 50 ms for 30 s and
 * prints "echo <epoch ms>" per answer. Both sign with the same key (RFC 2385).
 */
const MD5_FLOW = `
import socket, struct, sys, time
TCP_MD5SIG = 14
def key(sock, peer):
    fam = socket.AF_INET
    addr = struct.pack('=H', fam) + struct.pack('!H', 0) + socket.inet_aton(peer)
    addr += bytes(128 - len(addr))
    k = b'ipdeadgate-lab-md5'
    sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, addr + struct.pack('=BBHI', 0, 0, len(k), 0) + k + bytes(80 - len(k)))
role, port, peer = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if role == 'server':
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    key(l, peer)
    l.bind(('0.0.0.0', port))
    l.listen(4)
    print('listening', flush=True)
    c, _ = l.accept()
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
else:
    c = socket.socket()
    key(c, peer)
    c.connect((peer, port))
    c.setblocking(False)
    end = time.time() + 30
    while time.time() < end:
        c.send(b'md5echo!')
        time.sleep(0.05)
        try:
            while c.recv(4096):
                print('echo', int(time.time() * 1000), flush=True)
        except BlockingIOError:
            pass
`;

/**
 * A Python one-shot forging `count` TCP segments of the client's flow, `gap` ms apart, as a LAN
 * station's frame flooded by the bridge arrives at the client: Ethernet source the client's own
 * MAC, destination a MAC no station has. Sent from the switch's own side of the client's port
 * (what the bridge does with a flooded frame), so no bridge learns the client's MAC elsewhere. The
 * checksum is left wrong on purpose: flow resume used to fix it.
 */
const FORGE = `
import socket, struct, sys, time
src_mac, src, sport, dst, dport, seq, count, gap = sys.argv[1:9]
mac = bytes.fromhex(src_mac.replace(':', ''))
payload = b'FORGED!!'
tcp = struct.pack('!HHIIBBHHH', int(sport), int(dport), int(seq), 1, 5 << 4, 0x18, 502, 0, 0) + payload
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
frame = bytes.fromhex('02feedbeef99') + mac + bytes.fromhex('0800') + ip + tcp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('p-client', 0))
for _ in range(int(count)):
    s.send(frame)
    time.sleep(int(gap) / 1000)
`;

/**
 * A Python echo client whose socket carries SO_MARK (Node cannot set it): `HOST PORT MARK` sends
 * 8 bytes every 50 ms for 30 s to the lab's echo server, prints "port N" once connected and
 * "echo <epoch ms>" per answer.
 */
const MARK_FLOW = `
import socket, sys, time
SO_MARK = 36
host, port, mark = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0)
c = socket.socket()
c.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
c.connect((host, port))
print('port', c.getsockname()[1], flush=True)
c.setblocking(False)
end = time.time() + 30
while time.time() < end:
    try:
        c.send(b'marked!!')
    except BlockingIOError:
        pass
    time.sleep(0.05)
    try:
        while c.recv(4096):
            print('echo', int(time.time() * 1000), flush=True)
    except BlockingIOError:
        pass
`;

interface FlowResumeStatus {
  on: boolean;
  recorded_flows: number;
  recorders: { interface: string; flows: number; open: boolean; opens: number; frames: number }[];
}

async function flowResume(d: LabDaemon): Promise<FlowResumeStatus> {
  return (await d.status()).flow_resume as FlowResumeStatus;
}

/**
 * The daemon's packet sockets, as the kernel lists them (its namespace's /proc/net/packet, matched
 * against its fds): the ARP/NDP and wire-watch sockets, plus one per open flow-resume capture.
 */
function packetSockets(d: LabDaemon): number {
  const pid = d.child.pid!;
  const inodes = new Set(
    readFileSync(`/proc/${pid}/net/packet`, 'utf8')
      .trim()
      .split('\n')
      .slice(1)
      .map((l) => l.trim().split(/\s+/).at(-1)),
  );
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let link: string;
    try {
      link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m && inodes.has(m[1])) n++;
  }
  return n;
}

/** The daemon's open file descriptors. */
function openFds(d: LabDaemon): number {
  return readdirSync(`/proc/${d.child.pid!}/fd`).length;
}

/** Make `host` drop TCP to PORT (a server gone silent behind a live gateway); returns the undo. */
async function silence(lab: Lab, host: string): Promise<() => Promise<void>> {
  const file = lab.tempPath(`nft-silent-${host}`);
  writeFileSync(
    file,
    `table inet idgsilent {\n  chain in { type filter hook input priority 0; policy accept;\n    tcp dport ${PORT} drop\n  }\n}\n`,
  );
  await lab.execOk(host, ['nft', '-f', file]);
  return async () => {
    await lab.execOk(host, ['nft', 'delete', 'table', 'inet', 'idgsilent']);
  };
}

interface WirePacket {
  t: number;
  dstMac: string;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
  seq: number;
  payload: number;
}

/**
 * The TCP segments on the client's lan0 that match `filter`, as tcpdump -e -tt -S -n prints them
 * (the array fills as they arrive; the lab ends tcpdump with its hosts).
 */
function watchWire(lab: Lab, filter: string): WirePacket[] {
  const child = lab.spawn('client', [
    'tcpdump',
    '-i',
    'lan0',
    '-l',
    '--immediate-mode',
    '-n',
    '-e',
    '-tt',
    '-S',
    filter,
  ]);
  return tcpdumpLines(child);
}

/** tcpdump -e -tt -S -n lines of TCP segments, as they are printed. */
function tcpdumpLines(child: ChildProcess): WirePacket[] {
  const out: WirePacket[] = [];
  let buf = '';
  const re =
    /^(\d+\.\d+) \S+ > ([0-9a-f:]{17}), .*?: (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[[^\]]*\], seq (\d+)(?::(\d+))?/;
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (c: string) => {
    buf += c;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const m = re.exec(line);
      if (!m) continue;
      out.push({
        t: Number(m[1]) * 1000,
        dstMac: m[2]!,
        src: m[3]!,
        srcPort: Number(m[4]),
        dst: m[5]!,
        dstPort: Number(m[6]),
        seq: Number(m[7]),
        payload: m[8] ? Number(m[8]) - Number(m[7]) : 0,
      });
    }
  });
  return out;
}

/** Waits for the daemon to withdraw `gateway`'s routes, then for its flows_resent event. */
async function switchedAndResent(
  d: LabDaemon,
  gateway: string,
  withdrawTimeoutMs = 15_000,
): Promise<{ tw: number; resent: DaemonEvent }> {
  const withdrawn = await d.waitFor(
    (e) => e.event === 'routes_withdrawn' && e.gateway === gateway,
    withdrawTimeoutMs,
    'routes withdrawn',
  );
  const resent = await d.waitFor((e) => e.event === 'flows_resent', 5000, 'flows_resent');
  return { tw: Date.parse(withdrawn.time), resent };
}

describe('flows resume when routes switch (lab, on the wire)', function () {
  this.timeout(60_000);
  let lab: Lab;

  before(function () {
    requireRoot(this);
  });

  afterEach(async () => {
    await lab?.close();
  });

  for (const family of [4, 6] as const)
    it(`IPv${family}: a connection whose SYN retransmits through the dead gateway connects through r2 right after the switch`, async () => {
      const server = family === 4 ? DGD.server4 : DGD.server6;
      lab = await Lab.create(dgdLabSpec());
      await startFlowServer(lab, 'server', PORT).listening;
      await lab.blockPing('r1');
      const r2Mac = (await lab.execOk('r2', ['cat', '/sys/class/net/lan0/address'])).trim();
      const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2m\n');
      // A first flow through r1, so r1's neighbour entry is valid (a host that was using r1).
      const warm = startFlowClient(lab, 'client', server, PORT, { durationMs: 300 });
      await waitFor(() => warm.echoes.length >= 3, 5000, 'a first flow through r1');
      await new Promise((r) => warm.child.once('exit', r));
      const wire = watchWire(
        lab,
        // libpcap's tcp[] does not reach into IPv6: the flags byte is at 40 + 13 without extension headers.
        family === 4
          ? `tcp port ${PORT} and tcp[tcpflags] & tcp-syn != 0`
          : `tcp port ${PORT} and ip6[53] & 2 != 0`,
      );
      await new Promise((r) => setTimeout(r, 300));
      await lab.killSilently('r1', 'lan0');
      const c = startFlowClient(lab, 'client', server, PORT, { durationMs: 20_000 });
      const withdrawn = await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
      const tw = Date.parse(withdrawn.time);
      await waitFor(() => c.connectedAt !== null || c.errors.length > 0, 5000, 'the connection');
      assert.deepEqual(c.errors, [], 'the connection was not aborted');
      const resent = await d.waitFor((e) => e.event === 'flows_resent', 5000, 'flows_resent');
      const detail = (resent.detail as { resent: boolean; syn?: boolean; seq?: number }[])[0]!;
      assert.deepEqual([detail.resent, detail.syn], [true, true], JSON.stringify(resent));
      const syns = wire.filter((p) => p.dst === server && p.dstPort === PORT);
      const before = syns.filter((p) => p.t < tw && p.dstMac !== r2Mac);
      const after = syns.find((p) => p.t >= tw - 5 && p.dstMac === r2Mac);
      assert.ok(before.length >= 1 && after, `SYNs on the wire: ${JSON.stringify(syns)}`);
      assert.equal(after.seq, before.at(-1)!.seq, 'the same SYN, through r2');
      assert.equal(after.seq, detail.seq);
      // Without the resend the connection is mostly aborted (EHOSTUNREACH) when the neighbour entry
      // holding its parked SYN is flushed; otherwise its next SYN leaves 1 s or more later.
      assert.ok(c.connectedAt! - tw < 300, `connected ${c.connectedAt! - tw} ms after the switch`);
      await d.stop();
    });

  for (const [family, timestamps] of [
    [4, true],
    [6, true],
    [4, false],
  ] as const) {
    it(`IPv${family}${timestamps ? '' : ', tcp_timestamps=0'}: the flow through the dead gateway retransmits through the new route at once; a flow through another gateway is left alone`, async () => {
      lab = await Lab.create(dgdLabSpec());
      // Without timestamps the copy carries none to advance (in the lab's namespace only).
      if (!timestamps) await lab.execOk('client', ['sysctl', '-qw', 'net.ipv4.tcp_timestamps=0']);
      const server = family === 4 ? DGD.server4 : DGD.server6;
      const viaR2 = family === 4 ? DGD.r2s4 : DGD.r2s6; // r2's own WAN address, routed via r2 below
      const r2 = family === 4 ? DGD.r2_4 : DGD.r2_6;
      await lab.ip('client', [
        family === 6 ? '-6' : '-4',
        'route',
        'add',
        family === 4 ? `${viaR2}/32` : `${viaR2}/128`,
        'via',
        r2,
        'dev',
        'lan0',
      ]);
      await startFlowServer(lab, 'server', PORT).listening;
      await startFlowServer(lab, 'r2', PORT).listening;
      await lab.blockPing('r1');
      const r2Mac = (await lab.execOk('r2', ['cat', '/sys/class/net/lan0/address'])).trim();
      const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2m\n');
      const wire = watchWire(lab, `tcp port ${PORT}`);
      const a = startFlowClient(lab, 'client', server, PORT, { durationMs: 30_000 });
      const b = startFlowClient(lab, 'client', viaR2, PORT, { durationMs: 30_000 });
      await waitFor(() => a.echoes.length >= 10 && b.echoes.length >= 10, 8000, 'both flows to run');
      const aPort = wire.find((p) => p.dst === server && p.payload > 0)!.srcPort;
      const bPort = wire.find((p) => p.dst === viaR2 && p.payload > 0)!.srcPort;
      // b's server goes silent (r2 itself stays alive and answers ARP/NDP): b retransmits via r2.
      await lab.exec('r2', ['nft', 'add', 'table', 'inet', 'silent']);
      await lab.exec('r2', [
        'nft',
        'add',
        'chain',
        'inet',
        'silent',
        'in',
        '{ type filter hook input priority 0; policy accept; }',
      ]);
      await lab.execOk('r2', [
        'nft',
        'add',
        'rule',
        'inet',
        'silent',
        'in',
        'tcp',
        'dport',
        String(PORT),
        'drop',
      ]);
      await new Promise((r) => setTimeout(r, 500));
      await lab.killSilently('r1', 'lan0');
      const { tw, resent } = await switchedAndResent(d, family === 4 ? DGD.r1_4 : DGD.r1_6);
      await waitFor(() => a.echoes.some((e) => e.t > tw), 5000, 'flow a to resume');
      await new Promise((r) => setTimeout(r, 300));

      // The daemon resent flow a's segment, and only a's.
      const detail = resent.detail as { src: string; resent: boolean; seq?: number }[];
      assert.deepEqual(
        detail.map((x) => [x.src.endsWith(`:${aPort}`), x.resent]),
        [[true, true]],
        JSON.stringify(resent),
      );
      // On the wire: a's data segments towards r1 before the switch (the retransmissions), then
      // the same first unacknowledged byte towards r2 within a moment of the switch.
      const aOut = wire.filter((p) => p.srcPort === aPort && p.dst === server && p.payload > 0);
      const stuck = aOut.filter((p) => p.t < tw && p.dstMac !== r2Mac).at(-1);
      assert.ok(stuck, `a's retransmissions towards r1 were seen: ${JSON.stringify(aOut)}`);
      const first = aOut.find((p) => p.t >= tw - 5 && p.dstMac === r2Mac);
      assert.ok(first, `a sent through r2 after the switch: ${JSON.stringify(aOut)}`);
      assert.equal(first.seq, stuck.seq, 'it is the segment a was retransmitting');
      assert.equal(first.seq, detail[0]!.seq);
      // Without the resend the kernel's next retransmission would come 0.8 s (IPv4) to 1.6 s later.
      assert.ok(first.t - tw < 300, `a's segment left ${Math.round(first.t - tw)} ms after the switch`);
      // b was retransmitting through r2 the whole time, on its own backed-off timer (its next
      // retransmission is not due within this window): nothing of b's leaves right after the switch.
      const bOut = wire.filter(
        (p) => p.srcPort === bPort && p.dst === viaR2 && p.t >= tw - 5 && p.t <= tw + 150,
      );
      assert.deepEqual(bOut, [], 'no segment of b right after the switch');
      assert.ok(
        wire.some((p) => p.srcPort === bPort && p.t < tw && p.t > tw - 2000),
        'b was retransmitting before the switch',
      );
      await d.stop();
    });
  }

  it("IPv4: a forged segment of a stuck flow, flooded by a LAN station with the host's own MAC, is never resent", async () => {
    lab = await Lab.create(dgdLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    await lab.blockPing('r1');
    const clientMac = (await lab.execOk('client', ['cat', '/sys/class/net/lan0/address'])).trim();
    const r2Mac = (await lab.execOk('r2', ['cat', '/sys/class/net/lan0/address'])).trim();
    const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2m\n');
    const wire = watchWire(lab, `tcp port ${PORT}`);
    const a = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 30_000 });
    await waitFor(() => a.echoes.length >= 10, 8000, 'the flow to run');
    const aPort = wire.find((p) => p.dst === DGD.server4 && p.payload > 0)!.srcPort;
    await lab.killSilently('r1', 'lan0');
    // Once a has sent a segment twice (it is stuck), forge segments below its snd_una, the kind a
    // recorder keeping "the lowest sequence number" would take if it believed them.
    const stuck = await waitFor(
      () => {
        const out = wire.filter((p) => p.srcPort === aPort && p.payload > 0);
        return out.find((p, i) => out.findIndex((q) => q.seq === p.seq) !== i);
      },
      8000,
      'a retransmission of a',
    );
    const forgedSeq = (stuck!.seq - 100_000) >>> 0;
    const forger = lab.spawn('sw-lan', [
      'python3',
      '-c',
      FORGE,
      clientMac,
      DGD.client4,
      String(aPort),
      DGD.server4,
      String(PORT),
      String(forgedSeq),
      '300',
      '20',
    ]);
    const { tw, resent } = await switchedAndResent(d, DGD.r1_4);
    forger.kill();
    await waitFor(() => a.echoes.some((e) => e.t > tw), 5000, 'flow a to resume');
    const forgedSeen = wire.filter((p) => p.srcPort === aPort && p.seq === forgedSeq && p.t < tw);
    assert.ok(forgedSeen.length > 0, 'the forged segments reached the client (flooded)');
    const detail = (resent.detail as { resent: boolean; seq?: number }[])[0]!;
    assert.equal(detail.resent, true, JSON.stringify(resent));
    assert.equal(detail.seq, stuck!.seq, 'the segment a was retransmitting, not the forged one');
    // tcpdump's lines arrive after the flow's own echo: wait for a's segments towards r2 to show.
    const towardsR2 = () => wire.filter((p) => p.srcPort === aPort && p.t >= tw - 5 && p.dstMac === r2Mac);
    await waitFor(() => towardsR2().length > 0, 5000, "a's segments towards r2 on the wire");
    const outAfter = towardsR2();
    assert.ok(
      outAfter.every((p) => p.seq !== forgedSeq),
      `nothing forged left towards r2: ${JSON.stringify(outAfter)}`,
    );
    await d.stop();
  });

  it('IPv4: a TCP_MD5SIG flow gets its signed segment again byte for byte with a right checksum, and resumes', async () => {
    lab = await Lab.create(dgdLabSpec());
    await lab.blockPing('r1');
    const server = lab.spawn('server', ['python3', '-c', MD5_FLOW, 'server', String(PORT), DGD.client4]);
    await waitFor(() => server.stdout!.read() !== null, 5000, 'the MD5 server to listen');
    const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2m\n');
    const client = lab.spawn('client', ['python3', '-c', MD5_FLOW, 'client', String(PORT), DGD.server4]);
    const echoes: number[] = [];
    // Python writes a print's parts one by one: read whole lines.
    createInterface({ input: client.stdout! }).on('line', (line) => {
      const m = /^echo (\d+)$/.exec(line);
      if (m) echoes.push(Number(m[1]));
    });
    await waitFor(() => echoes.length >= 10, 8000, 'the signed flow to run');
    const csumErrors = async () =>
      Number(
        /TcpInCsumErrors\s+(\d+)/.exec(
          (await lab.exec('server', ['nstat', '-az', 'TcpInCsumErrors'])).stdout,
        )?.[1] ?? 0,
      );
    const before = await csumErrors();
    await lab.killSilently('r1', 'lan0');
    const { tw, resent } = await switchedAndResent(d, DGD.r1_4);
    const detail = (resent.detail as { resent: boolean; bytes?: number }[])[0]!;
    assert.equal(detail.resent, true, JSON.stringify(resent));
    await waitFor(() => echoes.some((t) => t > tw), 5000, 'the signed flow to resume');
    // The copy reached the server with a checksum it accepts (it used to carry the NIC-offload
    // partial sum, which the peer drops before checking the signature).
    assert.equal(await csumErrors(), before, 'no TCP checksum error at the server');
    await d.stop();
  });

  it('IPv4: a flow under source NAT is not resent, and says why', async () => {
    lab = await Lab.create(dgdLabSpec());
    // The client's own connections leave as 198.18.1.11: the wire never shows the socket's address.
    await lab.ip('client', ['addr', 'add', '198.18.1.11/24', 'dev', 'lan0']);
    const nat = lab.tempPath('nft-snat');
    writeFileSync(
      nat,
      `table ip idgsnat {\n  chain post {\n    type nat hook postrouting priority 100;\n    ip daddr ${DGD.server4} tcp dport ${PORT} snat to 198.18.1.11\n  }\n}\n`,
    );
    await lab.execOk('client', ['nft', '-f', nat]);
    await startFlowServer(lab, 'server', PORT).listening;
    await lab.blockPing('r1');
    const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2m\n');
    const a = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 30_000 });
    await waitFor(() => a.echoes.length >= 10, 8000, 'the flow to run');
    await lab.killSilently('r1', 'lan0');
    const { resent } = await switchedAndResent(d, DGD.r1_4);
    const detail = (resent.detail as { resent: boolean; reason?: string }[])[0]!;
    assert.equal(detail.resent, false, JSON.stringify(resent));
    assert.match(String(detail.reason), /NAT/);
    await d.stop();
  });
  it('IPv4: a socket with a mark under `ip rule fwmark` is not resent and says why; no copy of it ever leaves through r2', async () => {
    lab = await Lab.create(dgdLabSpec());
    // The marked socket is routed by table 142: through r1, else into its tunnel device (wg0 here, one
    // end of a veth pair whose other end drops what it gets): a WireGuard-style underlay pinned to one uplink. The daemon manages
    // table 142 too, and withdraws its route through r1 when r1 dies. A raw copy would carry no
    // mark and follow main, through r2: a path this socket never takes.
    await lab.ip('client', ['link', 'add', 'wg0', 'type', 'veth', 'peer', 'name', 'wg0p']);
    await lab.ip('client', ['link', 'set', 'wg0p', 'up']);
    await lab.ip('client', ['link', 'set', 'wg0', 'up']);
    await lab.ip('client', ['rule', 'add', 'fwmark', '0x42', 'lookup', '142', 'priority', '100']);
    await lab.ip('client', [
      'route',
      'add',
      `${DGD.server4}/32`,
      'via',
      DGD.r1_4,
      'dev',
      'lan0',
      'table',
      '142',
    ]);
    await lab.ip('client', ['route', 'add', 'default', 'dev', 'wg0', 'table', '142', 'metric', '200']);
    await startFlowServer(lab, 'server', PORT).listening;
    await lab.blockPing('r1');
    const r2Mac = (await lab.execOk('r2', ['cat', '/sys/class/net/lan0/address'])).trim();
    const d = await LabDaemon.start(
      lab,
      'client',
      'dgd:\n  slow_poll_interval: 2m\n  tables: [main, 142]\n  keep_last_route: false\n',
    );
    const wire = watchWire(lab, `tcp port ${PORT}`);
    const a = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 30_000 });
    const marked = lab.spawn('client', ['python3', '-c', MARK_FLOW, DGD.server4, String(PORT), '0x42']);
    let mPort = 0;
    const mEchoes: number[] = [];
    // Python writes a print's parts one by one: read whole lines.
    createInterface({ input: marked.stdout! }).on('line', (line) => {
      const [what, n] = line.split(' ');
      if (what === 'port') mPort = Number(n);
      if (what === 'echo') mEchoes.push(Number(n));
    });
    await waitFor(() => a.echoes.length >= 10 && mEchoes.length >= 10, 8000, 'both flows to run');
    const aPort = wire.find((p) => p.dst === DGD.server4 && p.payload > 0 && p.srcPort !== mPort)!.srcPort;
    await lab.killSilently('r1', 'lan0');
    const { tw, resent } = await switchedAndResent(d, DGD.r1_4);
    // Copies leave before the event; tcpdump prints them within a moment.
    await new Promise((r) => setTimeout(r, 300));
    const detail = resent.detail as { src: string; resent: boolean; reason?: string }[];
    const of = (port: number) => detail.find((x) => x.src.endsWith(`:${port}`));
    // The unmarked flow beside it was recorded against r1 too, and is judged on its own (resent,
    // unless its only retransmission since recording was parked in r1's neighbour entry, a limit
    // failover.md describes; seen once in a dozen runs here).
    assert.ok(of(aPort), JSON.stringify(resent));
    assert.doesNotMatch(String(of(aPort)!.reason), /mark/);
    const mOut = wire.filter((p) => p.srcPort === mPort && p.dst === DGD.server4 && p.payload > 0);
    assert.ok(
      mOut.some((p) => p.t < tw && p.dstMac !== r2Mac),
      `the marked flow went through r1: ${JSON.stringify(mOut)}`,
    );
    assert.deepEqual(
      mOut.filter((p) => p.dstMac === r2Mac),
      [],
      'nothing of the marked flow left through r2',
    );
    assert.equal(of(mPort)?.resent, false, JSON.stringify(resent));
    assert.match(String(of(mPort)!.reason), /mark 0x42/);
    await d.stop();
  });

  it('IPv4: a recorded flow that recovers leaves its recorder, whose capture closes; a reload turning resend_on_switch off closes it while the flow still retransmits, and so does ipdeadgate off', async () => {
    lab = await Lab.create(dgdLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2m\n');
    const a = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 30_000 });
    await waitFor(() => a.echoes.length >= 5, 8000, 'the flow to run');
    const idle = packetSockets(d);
    assert.deepEqual((await flowResume(d)).recorders, []);
    const recorded = async () => {
      const r = await flowResume(d);
      return r.recorders.some((x) => x.interface === 'lan0' && x.open && x.flows === 1) ? r : null;
    };
    // The server goes silent behind r1, which stays alive: the flow retransmits through r1.
    let speak = await silence(lab, 'server');
    assert.equal((await waitFor(recorded, 8000, 'the flow to be recorded'))!.recorded_flows, 1);
    await waitFor(() => packetSockets(d) === idle + 1, 3000, 'one capture open');
    await speak();
    const back = Date.now();
    await waitFor(() => a.echoes.some((e) => e.t > back), 8000, 'the flow to recover');
    const closed = await waitFor(
      async () => {
        const r = await flowResume(d);
        return r.recorders.length === 0 ? r : null;
      },
      5000,
      'the recorder to drop the flow and close',
    );
    assert.deepEqual([closed!.on, closed!.recorded_flows], [true, 0]);
    await waitFor(() => packetSockets(d) === idle, 3000, 'its capture closed');

    speak = await silence(lab, 'server');
    await waitFor(recorded, 8000, 'the flow to be recorded again');
    writeFileSync(
      lab.tempPath('client-config.yaml'),
      'dgd:\n  slow_poll_interval: 2m\n  resend_on_switch: false\n',
    );
    await d.signal('SIGHUP');
    await d.waitFor((e) => e.event === 'config_reloaded', 5000, 'the reload');
    const off = await flowResume(d);
    assert.deepEqual([off.on, off.recorded_flows, off.recorders], [false, 0, []]);
    await waitFor(() => packetSockets(d) === idle, 3000, 'the capture closed by the reload');
    // Scans go on while the flow still retransmits: nothing opens a capture again.
    await new Promise((r) => setTimeout(r, 1000));
    const later = await d.status();
    assert.ok((later.last_scan as { retransmitting: number }).retransmitting >= 1, 'still retransmitting');
    assert.deepEqual((later.flow_resume as FlowResumeStatus).recorders, []);
    assert.equal(packetSockets(d), idle);
    // Turned on again by a reload, it records the flow again; `ipdeadgate off` closes it.
    writeFileSync(lab.tempPath('client-config.yaml'), 'dgd:\n  slow_poll_interval: 2m\n');
    await d.signal('SIGHUP');
    await waitFor(recorded, 8000, 'the flow to be recorded after resume is turned on again');
    assert.equal((await d.cli(['off'])).code, 0);
    const detectionOff = await flowResume(d);
    assert.deepEqual([detectionOff.on, detectionOff.recorded_flows, detectionOff.recorders], [false, 0, []]);
    await speak();
    await d.stop();
  });
  it('IPv4: the interface flaps while a flow is recorded: the capture closes with the link, opens again after and records the flow, whose segment is resent when its gateway dies; no socket is left behind', async () => {
    lab = await Lab.create(dgdLabSpec());
    // The flow retransmits throughout: its backed-off timer is capped at a second where the kernel
    // allows it (6.15 and later), so that its next segment after r1's death is not 6 to 12 s away.
    await lab.exec('client', ['sysctl', '-qw', 'net.ipv4.tcp_rto_max_ms=1000']);
    await startFlowServer(lab, 'server', PORT).listening;
    await lab.blockPing('r1');
    const r2Mac = (await lab.execOk('r2', ['cat', '/sys/class/net/lan0/address'])).trim();
    const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2m\n');
    const a = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 30_000 });
    await waitFor(() => a.echoes.length >= 5, 8000, 'the flow to run');
    const idle = packetSockets(d);
    const fds = openFds(d);
    const lan0 = async () => (await flowResume(d)).recorders.find((r) => r.interface === 'lan0');
    const recording = async () => {
      const r = await lan0();
      return r?.open && r.flows === 1 ? r : null;
    };
    // The server goes silent behind r1, which stays alive: the flow retransmits through r1.
    const speak = await silence(lab, 'server');
    await waitFor(recording, 8000, 'the flow to be recorded');
    await lab.ip('client', ['link', 'set', 'lan0', 'down']);
    await waitFor(async () => !(await lan0())?.open, 5000, 'the capture to close with the link');
    await lab.ip('client', ['link', 'set', 'lan0', 'up']);
    // The kernel dropped the routes through lan0 with the link; the host puts them back.
    for (const [via, metric] of [
      [DGD.r1_4, '100'],
      [DGD.r2_4, '200'],
    ])
      await lab.ip('client', ['route', 'replace', 'default', 'via', via, 'dev', 'lan0', 'metric', metric]);
    await waitFor(recording, 8000, 'the capture to open again after the flap');
    // Now r1 dies and the server speaks again: what the flow sends next is recorded only by the
    // capture opened after the flap, and it must be resent through r2.
    const wire = watchWire(lab, `tcp port ${PORT}`);
    await new Promise((r) => setTimeout(r, 300));
    await lab.killSilently('r1', 'lan0');
    await speak();
    const { tw, resent } = await switchedAndResent(d, DGD.r1_4, 20_000);
    const detail = (resent.detail as { resent: boolean; seq?: number }[])[0]!;
    assert.equal(detail.resent, true, JSON.stringify(resent));
    await waitFor(() => a.echoes.some((e) => e.t > tw), 5000, 'the flow to resume');
    // tcpdump's lines arrive after the flow's own echo: wait for the segment to show.
    await waitFor(
      () => wire.some((p) => p.seq === detail.seq && p.dstMac === r2Mac && p.t >= tw - 5),
      5000,
      'the segment through r2 on the wire',
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(wire.filter((p) => p.payload > 0))}`);
    });
    await waitFor(async () => (await lan0()) === undefined, 5000, 'the recorder to close');
    // The packet sockets the daemon had before the flap (ARP/NDP, wire watch), and no more.
    await waitFor(() => packetSockets(d) === idle, 5000, `${idle} packet sockets (${packetSockets(d)})`);
    // And one more descriptor in all: the raw socket that sent the copy (kept for the next one).
    await waitFor(() => openFds(d) === fds + 1, 5000, `${fds + 1} descriptors (${openFds(d)})`);
    assert.equal(d.exitCode, null, 'the daemon is running');
    await d.stop();
  });
  it('IPv4: more flows than the cap over two gateways on one interface: one recorder filters for exactly the cap, and resume watches no flow it does not record', async () => {
    lab = await Lab.create(dgdLabSpec());
    const viaR2 = DGD.r2s4; // r2's own WAN address, routed via r2
    await lab.ip('client', ['route', 'add', `${viaR2}/32`, 'via', DGD.r2_4, 'dev', 'lan0']);
    await startFlowServer(lab, 'server', PORT).listening;
    await startFlowServer(lab, 'r2', PORT).listening;
    await lab.blockPing('r1');
    const d = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 2m\n');
    const each = 40;
    await startManyFlows(lab, 'client', viaR2, PORT, each, { durationMs: 30_000 });
    await startManyFlows(lab, 'client', DGD.server4, PORT, each, { durationMs: 30_000 });
    const idle = packetSockets(d);
    const recording = (n: number) => async () => {
      const r = await flowResume(d);
      const lan0 = r.recorders.find((x) => x.interface === 'lan0');
      return r.recorded_flows === n && lan0?.open && lan0.flows === n ? r : null;
    };
    // r2's server goes silent first: all its flows are recorded (under the cap).
    await silence(lab, 'r2');
    await waitFor(recording(each), 8000, `${each} flows through r2 to be recorded`);
    // Then r1's: only what the cap leaves of them is recorded, and resume watches no more.
    await silence(lab, 'server');
    await waitFor(recording(MAX_RECORDED_FLOWS), 8000, `${MAX_RECORDED_FLOWS} flows to be recorded`);
    // One capture, its filter for all of them compiled and open in the kernel.
    await waitFor(() => packetSockets(d) === idle + 1, 3000, 'one capture open');
    await lab.killSilently('r1', 'lan0');
    const resent = await d.waitFor(
      (e) => e.event === 'flows_resent' && e.gateway === DGD.r1_4,
      15_000,
      'flows_resent for r1',
    );
    assert.equal(resent.flows, MAX_RECORDED_FLOWS - each, JSON.stringify(resent));
    await d.stop();
  });
});
