// The failover flight recorder: unit tests of the ring, the window and the file bounds; in the lab,
// the file written when r1 dies holds the daemon's unanswered ARP requests (read with tcpdump),
// and `status` names it.
import { MemoryEventLog } from '../doubles';
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  FLIGHT_RECORDER_DEFAULTS,
  FlightRecorder,
  type FlightRecorderSettings,
} from '../../src/daemon/flightrec';
import {
  buildArpReply,
  buildArpRequest,
  NeighbourLink,
  type FrameTransport,
  type LinkFrame,
  parsePcap,
} from '../../src/sys/packet';
import { type Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLab } from '../lab/topologies';
import { waitDgdLabReady } from '../fixtures/neigh-lab';

const ME = { mac: '02:00:00:00:00:0a', ip: '198.18.1.10' };
const GW = { mac: '02:00:00:00:00:01', ip: '198.18.1.1' };

function arpFor(target: string): Buffer {
  return buildArpRequest({ senderMac: ME.mac, senderIp: ME.ip, targetIp: target });
}

class FakeTransport implements FrameTransport {
  sent: Buffer[] = [];
  private receiver: ((frame: Buffer, truncated: boolean) => void) | null = null;
  send(frame: Buffer): void {
    this.sent.push(Buffer.from(frame));
  }
  onFrame(receiver: (frame: Buffer, truncated: boolean) => void): void {
    this.receiver = receiver;
  }
  deliver(frame: Buffer): void {
    this.receiver!(frame, false);
  }
  close(): void {}
}

describe('NeighbourLink frame events', () => {
  it('reports frames it receives and frames it sends, as copies, only while someone listens', () => {
    const t = new FakeTransport();
    const link = NeighbourLink.withTransport('lan0', t, {
      mac: ME.mac,
      ipv4: [{ address: ME.ip, prefixLength: 24 }],
      ipv6: [],
    });
    const frames: LinkFrame[] = [];
    link.sendArpRequest(GW.ip); // nobody listens yet
    link.on('frame', (f: LinkFrame) => frames.push(f));
    link.sendArpRequest(GW.ip);
    const reply = buildArpReply({ senderMac: GW.mac, senderIp: GW.ip, targetMac: ME.mac, targetIp: ME.ip });
    t.deliver(reply);
    reply.fill(0); // the capture buffer is reused: the event must hold a copy
    assert.deepEqual(
      frames.map((f) => [f.ifname, f.direction]),
      [
        ['lan0', 'out'],
        ['lan0', 'in'],
      ],
    );
    assert.deepEqual(frames[0]!.data, t.sent[1]);
    assert.equal(frames[1]!.data.readUInt16BE(12), 0x0806);
    assert.ok(Math.abs(frames[1]!.tsMs - Date.now()) < 1000);
    link.close();
  });
});

describe('flight recorder', () => {
  let dir: string;
  let now: number;
  const settings = (over: Partial<FlightRecorderSettings> = {}): FlightRecorderSettings => ({
    ...FLIGHT_RECORDER_DEFAULTS,
    before: 2000,
    after: 10,
    ...over,
  });

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-fr-'));
    now = Date.now();
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("keeps only the gateways' frames, bounded by time and bytes", () => {
    const log = new MemoryEventLog();
    const r = new FlightRecorder(dir, settings({ ring_bytes: 65_536 }), log, () => now);
    r.setGateways([GW.ip, '2001:DB8:1::1']);
    r.record({ ifname: 'lan0', tsMs: now, data: arpFor('198.18.1.99') }); // not a gateway
    r.record({ ifname: 'lan0', tsMs: now, data: arpFor(GW.ip) });
    assert.equal(r.status().ring_packets, 1);
    // Time: frames older than before + after + 1 s go.
    now += 5000;
    r.record({ ifname: 'lan0', tsMs: now, data: arpFor(GW.ip) });
    assert.equal(r.status().ring_packets, 1);
    // Bytes: 65536 / (42 + 16) frames at most.
    for (let i = 0; i < 2000; i++) r.record({ ifname: 'lan0', tsMs: now, data: arpFor(GW.ip) });
    const st = r.status();
    assert.ok(st.ring_bytes <= 65_536, `${st.ring_bytes}`);
    assert.equal(st.ring_packets, Math.floor(65_536 / 58));
  });

  it('writes a pcap of the window around a death on that interface, names it, and bounds the files', async () => {
    const log = new MemoryEventLog();
    const r = new FlightRecorder(dir, settings({ max_files: 2 }), log, () => now);
    const events = r.wrap(log);
    r.setGateways([GW.ip]);
    r.record({ ifname: 'lan0', tsMs: now - 3000, data: arpFor(GW.ip) }); // before the window
    for (let i = 0; i < 3; i++) r.record({ ifname: 'lan0', tsMs: now - 1000 + i * 250, data: arpFor(GW.ip) });
    r.record({ ifname: 'lan1', tsMs: now - 500, data: arpFor(GW.ip) }); // another interface
    events.event('state', { gateway: GW.ip, interface: 'lan0', from: 'suspect', to: 'dead', reason: 'test' });
    await waitFor(() => log.named('capture_written').length === 1, 2000, 'the capture');
    const info = r.lastCapture(GW.ip)!;
    assert.match(path.basename(info.file), /^\d{8}T\d{6}\.\d{3}Z_198\.18\.1\.1\.pcap$/);
    assert.equal(info.packets, 3);
    const p = parsePcap(fs.readFileSync(info.file));
    assert.equal(p.packets.length, 3);
    assert.ok(p.packets.every((x) => x.data.readUInt16BE(12) === 0x0806));
    // Three more deaths (with 1 ms between for distinct names): only max_files = 2 stay, newest.
    for (let i = 0; i < 3; i++) {
      now += 1;
      r.record({ ifname: 'lan0', tsMs: now, data: arpFor(GW.ip) });
      r.onDead(GW.ip, 'lan0');
      await waitFor(() => log.named('capture_written').length === 2 + i, 2000, 'the capture');
    }
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.pcap'));
    assert.equal(files.length, 2);
    assert.equal(path.join(dir, files.sort()[1]!), r.lastCapture(GW.ip)!.file);
    assert.equal(r.status().files, 2);
    // A new recorder on the same directory (a restart) still names the newest file.
    const again = new FlightRecorder(dir, settings(), log, () => now);
    await again.load();
    assert.equal(again.lastCapture(GW.ip)!.file, r.lastCapture(GW.ip)!.file);
    await r.close();
  });

  it('a death with nothing recorded writes no file; close() flushes a pending capture at once', async () => {
    const log = new MemoryEventLog();
    const r = new FlightRecorder(dir, settings({ after: 60_000 }), log, () => now);
    r.setGateways([GW.ip]);
    r.onDead('198.18.1.2', 'lan9'); // nothing was recorded on lan9
    r.record({ ifname: 'lan0', tsMs: now, data: arpFor(GW.ip) });
    r.onDead(GW.ip, 'lan0');
    const t0 = Date.now();
    await r.close();
    // Not the 60 s the pending capture was due after: close() wrote it at once.
    assert.ok(Date.now() - t0 < 30_000);
    assert.equal(log.named('capture_skipped').length, 1);
    assert.equal(log.named('capture_written').length, 1);
  });
});

describe('flight recorder in the daemon (lab)', function () {
  this.timeout(90_000);
  let lab: Lab;

  before(function () {
    requireRoot(this);
  });
  afterEach(async () => {
    await lab?.close();
  });

  it('after a failover the state directory holds a pcap with the unanswered ARP requests, and status names it', async () => {
    lab = await dgdLab();
    await waitDgdLabReady(lab);
    const d = await LabDaemon.start(
      lab,
      'client',
      'dgd:\n  slow_poll_interval: 1h\n  active:\n    - { gateway: 198.18.1.1, interval: 100ms, misses: 3 }\n' +
        'flight_recorder:\n  before: 5s\n  after: 1s\n',
    );
    await new Promise((r) => setTimeout(r, 1500)); // some live probing into the ring first
    await lab.killSilently('r1', 'lan0');
    const killedAt = Date.now(); // after nft returned: from here on r1 is silent
    await d.waitFor(
      (e) => e.event === 'state' && e.gateway === DGD.r1_4 && e.to === 'dead',
      15_000,
      'r1 dead',
    );
    const written = await d.waitFor(
      (e) => e.event === 'capture_written' && e.gateway === DGD.r1_4,
      10_000,
      'the capture',
    );
    const file = String(written.file);
    assert.ok(file.startsWith(path.join(d.stateDir, 'captures') + '/'), file);
    const st = (await d.status()) as unknown as {
      gateways: { address: string; last_capture: string | null }[];
    };
    assert.equal(st.gateways.find((g) => g.address === DGD.r1_4)!.last_capture, file);
    // tcpdump reads it: r1 answered before its death, then ARP requests for r1 go unanswered.
    const lines = execFileSync('tcpdump', ['-nn', '-tt', '-r', file], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .trim()
      .split('\n');
    const after = lines.filter((l) => parseFloat(l) * 1000 >= killedAt);
    const before = lines.filter((l) => parseFloat(l) * 1000 < killedAt);
    assert.ok(
      before.some((l) => l.includes(`Reply ${DGD.r1_4} is-at`)),
      `r1 answered before:\n${lines.join('\n')}`,
    );
    const requests = after.filter((l) => l.includes(`Request who-has ${DGD.r1_4} tell ${DGD.client4}`));
    assert.ok(requests.length >= 3, `unanswered requests after the death:\n${lines.join('\n')}`);
    assert.deepEqual(
      after.filter((l) => l.includes(`Reply ${DGD.r1_4}`)),
      [],
    );
    assert.equal(await d.stop(), 0);
  });
});
