// Incident records (src/daemon/incidents.ts, incidentstore.ts): built from detection's events only,
// kept in the state directory within their bounds, continued after a restart; the capture's TCP
// segment selection (src/daemon/flightrec.ts); the what-if plan (src/dgd/whatif.ts). The lab half
// is test/ops/incidents-lab.test.ts.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IncidentRecorder, type IncidentObserver } from '../../src/daemon/incidents';
import { IncidentStore, readIncident, readIncidentIndex, incidentsDir } from '../../src/daemon/incidentstore';
import { segmentHeaders, triggeringSegments, type RecordedSegment } from '../../src/daemon/flightrec';
import { formatIncident, formatIncidentList } from '../../src/cli/incidents';
import { planWhatIf, prefixContains, whereFlowGoes } from '../../src/dgd/whatif';
import { DaemonMetrics } from '../../src/daemon/metrics';
import type { KernelRoute } from '../../src/dgd/ports';

const GW = '198.18.1.1';
const IF = 'up0';

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'idg-incidents-'));
}

class Clock {
  t = Date.parse('2026-01-02T03:04:05.000Z');
  now = () => this.t;
}

function observer(): IncidentObserver & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    switched: (g, s) => calls.push(`switched ${g} ${s}`),
    resumed: (g, s) => calls.push(`resumed ${g} ${s}`),
    ended: (o) => calls.push(`ended ${o}`),
  };
}

/** Feed events at clock offsets (ms). */
function feed(
  rec: IncidentRecorder,
  clock: Clock,
  events: [number, string, Record<string, unknown>][],
): void {
  const base = clock.t;
  for (const [at, name, f] of events) {
    clock.t = base + at;
    rec.onEvent(name, f);
  }
}

const sample = {
  src: '198.18.10.10:40000',
  dst: '198.18.2.10:7000',
  state: 'ESTABLISHED',
  retransmits: 2,
  wire: true,
};

function failover(): [number, string, Record<string, unknown>][] {
  return [
    [0, 'trigger', { gateway: GW, interface: IF, reason: 'aggregate', sockets: 3, samples: [sample] }],
    [
      5,
      'trigger_socket',
      {
        gateway: GW,
        interface: IF,
        reason: 'aggregate',
        socket: { ...sample, src: '198.18.1.10:5000', wire: undefined },
      },
    ],
    [760, 'verify_step', { gateway: GW, interface: IF, at_ms: 0, step: 'purge' }],
    [760, 'verify_step', { gateway: GW, interface: IF, at_ms: 1, step: 'arp_probes', detail: '3 x 250 ms' }],
    [760, 'verify_step', { gateway: GW, interface: IF, at_ms: 750, step: 'deadline' }],
    [
      760,
      'verdict',
      {
        gateway: GW,
        interface: IF,
        alive: false,
        speculative: false,
        mac: null,
        arp_rtt_ms: null,
        echo_rtt_ms: null,
        probes_sent: 3,
        duration_ms: 750,
      },
    ],
    [
      761,
      'state',
      { gateway: GW, interface: IF, from: 'suspect', to: 'dead', phase: 'dead', reason: 'no ARP reply' },
    ],
    [
      770,
      'routes_withdrawn',
      {
        gateway: GW,
        interface: IF,
        reason: 'dead',
        routes: [
          'nexthop id 10 group 1/2 -> nexthop id 10 group 2',
          '198.18.2.0/24 via 198.18.1.1 table 254 metric 10',
        ],
      },
    ],
    [
      771,
      'route_kept',
      { gateway: GW, reason: 'keep_last_route', routes: ['198.18.5.0/24 via 198.18.1.1 table 254 metric 0'] },
    ],
    [
      772,
      'routes_handed_over',
      {
        gateway: GW,
        interface: IF,
        owner: 'frr',
        reason: 'dead',
        routes: ['198.18.9.0/24 via 198.18.1.1 table 254 metric 20 proto zebra'],
        applied: ['x'],
        kept: [],
        ok: true,
      },
    ],
    [
      773,
      'owner_told',
      { owner: 'frr', dead_gateways: [`${GW}%${IF}`], reason: 'dead', applied: ['x'], kept: [] },
    ],
    [
      780,
      'flows_resent',
      { gateway: GW, interface: IF, flows: 2, resent: 2, detail: [{ src: 'a', dst: 'b' }] },
    ],
    [
      790,
      'conntrack_followed',
      {
        gateway: GW,
        interface: IF,
        after: 'withdrawal',
        interfaces: [IF],
        examined: 5,
        deleted: 1,
        kept: 4,
        truncated: false,
        ms: 1,
      },
    ],
    [
      3761,
      'capture_written',
      {
        gateway: GW,
        interface: IF,
        file: '/x/c.pcap',
        dead_at: 'x',
        packets: 40,
        bytes: 4000,
        removed_files: [],
      },
    ],
    [
      3761,
      'capture_segments',
      {
        gateway: GW,
        file: '/x/c.pcap',
        segments: 12,
        first_via_new_gateway: {
          ts_ms: Date.parse('2026-01-02T03:04:05.000Z') + 800,
          flow: '198.18.10.10:40000 > 198.18.2.10:7000',
          mac: '02:00:00:00:00:02',
        },
      },
    ],
    ...Array.from({ length: 10 }, (_, i): [number, string, Record<string, unknown>] => [
      5000 + i * 1000,
      'poll',
      { gateway: GW, interface: IF, answers: 0, needed: 2 },
    ]),
    [20_000, 'poll', { gateway: GW, interface: IF, answers: 2, needed: 2 }],
    // As the engine emits them: the routes back, then the state (src/dgd/verdicts.ts revive).
    [
      20_001,
      'routes_restored',
      {
        gateway: GW,
        interface: IF,
        reason: 'revived',
        routes: ['198.18.2.0/24 via 198.18.1.1 table 254 metric 10'],
      },
    ],
    [
      20_010,
      'state',
      { gateway: GW, interface: IF, from: 'dead', to: 'active', phase: 'active', reason: 'answered' },
    ],
  ];
}

describe('incident records', () => {
  let dir: string;
  beforeEach(() => (dir = tmpDir()));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a failover: trigger, steps in place, verdict, every route and group, owners, flows, conntrack, capture, polls, restore', async () => {
    const clock = new Clock();
    const obs = observer();
    const rec = new IncidentRecorder(new IncidentStore(dir), obs, clock.now);
    await rec.load();
    feed(rec, clock, failover());
    await rec.close();
    const [s] = await readIncidentIndex(dir);
    assert.ok(s);
    const r = await readIncident(dir, s.id);
    assert.equal(r.gateway, GW);
    assert.equal(r.interface, IF);
    assert.equal(r.verdict, 'dead');
    assert.equal(r.outcome, 'failover');
    assert.equal(r.started_at, '2026-01-02T03:04:05.000Z');
    assert.equal(r.ended_at, '2026-01-02T03:04:25.010Z');
    assert.deepEqual(r.durations, {
      to_verdict_ms: 760,
      to_switch_ms: 770,
      to_resume_ms: 800,
      outage_ms: 20_010,
    });
    assert.deepEqual(r.routes_withdrawn, ['198.18.2.0/24 via 198.18.1.1 table 254 metric 10']);
    assert.deepEqual(r.groups_changed, ['nexthop id 10 group 1/2 -> nexthop id 10 group 2']);
    assert.deepEqual(r.routes_kept, ['198.18.5.0/24 via 198.18.1.1 table 254 metric 0']);
    assert.equal(r.owners_told[0]!.owner, 'frr');
    assert.deepEqual(r.flows_resent && [r.flows_resent.flows, r.flows_resent.resent], [2, 2]);
    assert.equal(r.conntrack!.deleted, 1);
    assert.equal(r.trigger!.reason, 'aggregate');
    assert.equal(r.trigger!.sockets, 3);
    assert.equal(r.trigger!.samples.length, 2);
    assert.equal(r.capture!.file, '/x/c.pcap');
    assert.equal(r.capture!.segments, 12);
    assert.equal(r.capture!.first_segment_via_new_gateway!.mac, '02:00:00:00:00:02');
    assert.equal(r.polls, 11);
    // The verification steps sit where they ran (verdict at 760 ms, took 750 ms: from 10 ms).
    assert.deepEqual(
      r.verification.map((v) => [v.t_ms, v.step]),
      [
        [10, 'purge'],
        [11, 'arp_probes'],
        [760, 'deadline'],
      ],
    );
    const t = r.timeline.map((e) => e.t_ms);
    assert.deepEqual(
      t,
      [...t].sort((a, b) => a - b),
      'the timeline is in time order',
    );
    // Three unanswered polls shown, the rest counted; the answered one shown.
    assert.equal(r.timeline.filter((e) => e.event === 'poll').length, 4);
    assert.ok(r.timeline_dropped >= 7);
    assert.match(r.moved, /1 route, 1 group, frr told, 2 flows resent, 1 conntrack deleted, 1 route kept/);
    assert.deepEqual(obs.calls, [`switched ${GW} 0.77`, `resumed ${GW} 0.8`, 'ended failover']);
    const text = formatIncident(r);
    assert.match(text, /\+0 ms {2}trigger \(aggregate\)/);
    assert.match(text, /\+770 ms {2}withdrew 1 route\(s\), changed 1 group\(s\)/);
    assert.match(text, /tcpdump -nner \/x\/c\.pcap/);
    assert.match(formatIncidentList([s]), /198\.18\.1\.1 +up0 .* dead +failover +20\.010 s +0\.770 s/);
  });

  it('a capture written after a quick revival still lands in its incident', async () => {
    const clock = new Clock();
    const rec = new IncidentRecorder(new IncidentStore(dir), null, clock.now);
    await rec.load();
    const ev = failover();
    feed(rec, clock, [...ev.slice(0, 8), ...ev.slice(-2)]);
    clock.t += 3000;
    rec.onEvent('capture_written', {
      gateway: GW,
      interface: IF,
      file: '/x/late.pcap',
      packets: 9,
      bytes: 900,
    });
    await rec.close();
    const r = await readIncident(dir, 1);
    assert.notEqual(r.ended_at, null);
    assert.equal(r.capture?.file, '/x/late.pcap');
  });

  it('a downstream problem: nothing moved, ended at the alive verdict; one coming back within 5 min joins it again', async () => {
    const clock = new Clock();
    const obs = observer();
    const rec = new IncidentRecorder(new IncidentStore(dir), obs, clock.now);
    await rec.load();
    const alive = [
      [0, 'trigger', { gateway: GW, interface: IF, reason: 'retransmit', socket: sample }],
      [
        20,
        'verdict',
        {
          gateway: GW,
          interface: IF,
          alive: true,
          speculative: false,
          mac: '02:00:00:00:00:01',
          arp_rtt_ms: 0.1,
          echo_rtt_ms: null,
          probes_sent: 1,
          duration_ms: 1,
        },
      ],
      [21, 'downstream_problem', { gateway: GW, interface: IF, reason: 'retransmit', note: 'answered' }],
    ] as [number, string, Record<string, unknown>][];
    feed(rec, clock, alive);
    feed(rec, clock, [
      [2000, 'trigger', { gateway: GW, interface: IF, reason: 'retransmit', socket: sample }],
    ]);
    feed(rec, clock, [
      [400_000, 'trigger', { gateway: GW, interface: IF, reason: 'retransmit', socket: sample }],
    ]);
    await rec.close();
    const list = await readIncidentIndex(dir);
    assert.equal(
      list.length,
      2,
      'the second trigger joined the first incident; the third, over 5 min later, opened one',
    );
    assert.equal(list[0]!.outcome, 'downstream_problem');
    assert.equal(list[0]!.moved, 'nothing');
    assert.equal(list[0]!.outage_ms, null);
    assert.equal(list[1]!.ended_at, null);
    assert.deepEqual(obs.calls, ['ended downstream_problem']);
  });

  it('an open incident survives a restart and is continued; the count is bounded, the oldest removed', async () => {
    const clock = new Clock();
    const first = new IncidentRecorder(new IncidentStore(dir), null, clock.now);
    await first.load();
    feed(first, clock, failover().slice(0, 8));
    await first.close();
    const second = new IncidentRecorder(new IncidentStore(dir), null, clock.now);
    await second.load();
    assert.equal(second.openIncidents().length, 1);
    feed(second, clock, failover().slice(-3));
    await second.close();
    const r = await readIncident(dir, 1);
    assert.notEqual(r.ended_at, null);
    assert.deepEqual(r.routes_restored, ['198.18.2.0/24 via 198.18.1.1 table 254 metric 10']);
    assert.ok(
      r.timeline.some((e) => e.event === 'verdict') && r.timeline.some((e) => e.event === 'routes_restored'),
    );

    // Bounds: a store of 3 keeps the newest 3 records and their files.
    const small = new IncidentStore(dir, undefined, 3);
    const rec = new IncidentRecorder(small, null, clock.now);
    await rec.load();
    for (let i = 0; i < 5; i++) {
      clock.t += 60_000;
      feed(rec, clock, [
        [0, 'trigger', { gateway: `198.18.1.${i + 2}`, interface: IF, reason: 'retransmit', socket: sample }],
        [
          1,
          'downstream_problem',
          { gateway: `198.18.1.${i + 2}`, interface: IF, reason: 'retransmit', note: 'x' },
        ],
      ]);
      await small.flush();
    }
    await rec.close();
    const ids = (await readIncidentIndex(dir)).map((s) => s.id);
    assert.deepEqual(ids, [4, 5, 6]);
    assert.deepEqual(
      fs
        .readdirSync(incidentsDir(dir))
        .filter((n) => /^\d+\.json$/.test(n))
        .sort(),
      ['00000004.json', '00000005.json', '00000006.json'],
    );
    // Without the index (deleted), the list is rebuilt from the records.
    fs.rmSync(path.join(incidentsDir(dir), 'index.json'));
    assert.deepEqual(
      (await readIncidentIndex(dir)).map((s) => s.id),
      [4, 5, 6],
    );
    // An index with an entry that is not a summary (a bad outcome, a missing field) is not believed:
    // the list is rebuilt from the records, and fields the summaries do not have are not shown.
    const indexFile = path.join(incidentsDir(dir), 'index.json');
    const good = (await readIncidentIndex(dir)).map((s) => ({ ...s, extra: 'x' }));
    for (const bad of [{ ...good[0], outcome: 'bogus' }, { ...good[0], moved: undefined }, null]) {
      fs.writeFileSync(indexFile, JSON.stringify({ version: 1, incidents: [bad, ...good.slice(1)] }));
      const got = await readIncidentIndex(dir);
      assert.deepEqual(
        got.map((s) => [s.id, s.outcome]),
        [
          [4, good[0]!.outcome],
          [5, good[1]!.outcome],
          [6, good[2]!.outcome],
        ],
      );
      assert.ok(got.every((s) => !('extra' in s)));
    }
    await assert.rejects(readIncident(dir, 1), /no incident 1 in/);
  });

  it('a record on disk that its index does not name yet (a crash between the two writes) keeps its number', async () => {
    const clock = new Clock();
    const rec = new IncidentRecorder(new IncidentStore(dir), null, clock.now);
    await rec.load();
    feed(rec, clock, failover());
    await rec.close();
    const d = incidentsDir(dir);
    fs.copyFileSync(path.join(d, '00000001.json'), path.join(d, '00000007.json'));
    const store = new IncidentStore(dir);
    await store.load();
    assert.equal(store.allocateId(), 8);
  });

  it('a record stays within its size bound however many events an incident has', async () => {
    const clock = new Clock();
    const rec = new IncidentRecorder(new IncidentStore(dir), null, clock.now);
    await rec.load();
    feed(rec, clock, failover().slice(0, 7));
    const big = Array.from(
      { length: 200 },
      (_, i) => `198.18.${i}.0/24 via 198.18.1.1 table 254 metric 10 ${'x'.repeat(400)}`,
    );
    for (let i = 0; i < 2000; i++) {
      clock.t += 10;
      rec.onEvent('route_fight', {
        gateway: GW,
        interface: IF,
        route: big[0],
        note: 'x'.repeat(1000),
        routes: big,
      });
    }
    await rec.close();
    const file = path.join(incidentsDir(dir), '00000001.json');
    assert.ok(fs.statSync(file).size <= 64 * 1024, `${fs.statSync(file).size} bytes`);
    const r = await readIncident(dir, 1);
    assert.ok(r.timeline_dropped > 1000);
    assert.equal(r.timeline[0]!.event, 'trigger', 'the beginning (the cause) is kept');
  });
});

function tcpFrame(
  dstMac: number,
  src: string,
  sport: number,
  dst: string,
  dport: number,
  payload: number,
): Buffer {
  const b = Buffer.alloc(14 + 20 + 20 + payload, 0xee);
  b.fill(0, 0, 54);
  b[5] = dstMac;
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(20 + 20 + payload, 16);
  b[23] = 6;
  src.split('.').forEach((x, i) => (b[26 + i] = Number(x)));
  dst.split('.').forEach((x, i) => (b[30 + i] = Number(x)));
  b.writeUInt16BE(sport, 34);
  b.writeUInt16BE(dport, 36);
  b[46] = 0x50;
  return b;
}

describe("flight recorder: the triggering flows' segments", () => {
  it('keeps headers only, and finds the first segment through another next hop after the verdict', () => {
    const f = tcpFrame(1, '198.18.10.10', 40000, '198.18.2.10', 7000, 100);
    const h = segmentHeaders(f)!;
    assert.equal(h.headerBytes, 54, 'Ethernet + IPv4 + TCP, no payload');
    assert.equal(h.origLen, 154);
    assert.equal(h.flow, '198.18.10.10|40000|198.18.2.10|7000');
    assert.equal(h.len, 100);
    assert.equal(h.mac, '00:00:00:00:00:01');
    const seg = (t: number, mac: number, sport = 40000, seq = t, len = 8): RecordedSegment => {
      const x = segmentHeaders(tcpFrame(mac, '198.18.10.10', sport, '198.18.2.10', 7000, 8))!;
      return {
        ifname: 'up0',
        tsMs: t,
        data: Buffer.alloc(54),
        origLen: x.origLen,
        flow: x.flow,
        mac: x.mac,
        seq,
        len,
      };
    };
    const flows = new Set(['198.18.10.10|40000|198.18.2.10|7000']);
    // 50000 sends one segment towards the dead MAC once: not included; 50001 sends one twice:
    // included; 50002 sends one again collapsed with the next (same first sequence number, longer):
    // included.
    const all = [
      seg(1, 1),
      seg(2, 1),
      seg(3, 1, 50000),
      seg(4, 1),
      seg(5, 1, 50001, 100),
      seg(6, 1, 50001, 100),
      seg(7, 1, 50002, 300),
      seg(8, 1, 50002, 308),
      seg(9, 1, 50002, 300, 16),
      seg(11, 1),
      seg(12, 2),
      seg(13, 2),
    ];
    const r = triggeringSegments(all, flows, 10);
    assert.deepEqual(r.flows, [
      '198.18.10.10:40000 > 198.18.2.10:7000',
      '198.18.10.10:50001 > 198.18.2.10:7000',
      '198.18.10.10:50002 > 198.18.2.10:7000',
    ]);
    assert.equal(r.segments.length, 11, 'the flow that sent nothing again is left out');
    assert.deepEqual(r.firstViaNew, {
      ts_ms: 12,
      flow: '198.18.10.10:40000 > 198.18.2.10:7000',
      mac: '00:00:00:00:00:02',
    });
    assert.equal(segmentHeaders(Buffer.alloc(20)), null);
  });
});

function route(dst: string, gateway: string, metric: number, extra: Partial<KernelRoute> = {}): KernelRoute {
  return {
    family: 4,
    dst,
    table: 254,
    tos: 0,
    metric,
    gateway,
    ifindex: 2,
    ifname: 'up0',
    nexthops: null,
    protocol: 3,
    ...extra,
  } as KernelRoute;
}

describe('what-if plan', () => {
  const base = {
    address: GW,
    ifindexes: [2],
    ifname: () => 'up0',
    objects: new Map(),
    journal: [],
    groupJournal: [],
    deadKeys: [],
    keepLastRoute: true,
    ownersConfigured: [],
  };

  it('names each route as a real withdrawal would, with where its traffic goes', () => {
    const p = planWhatIf({
      ...base,
      routes: [route('198.18.2.0/24', GW, 10), route('198.18.2.0/24', '198.18.1.2', 20)],
    });
    assert.deepEqual(p.withdrawn, ['198.18.2.0/24 via 198.18.1.1 table 254 metric 10 proto boot']);
    assert.deepEqual(p.routes[0]!.instead, ['198.18.2.0/24 via 198.18.1.2 table 254 metric 20 proto boot']);
    assert.deepEqual(p.warnings, []);
  });

  it('a flow goes where the plan sends the most specific route through the gateway that holds its destination', () => {
    const routes = [
      route('198.18.0.0/15', GW, 5),
      route('198.18.2.0/24', GW, 10),
      route('198.18.2.0/24', '198.18.1.2', 20),
      route('198.18.5.0/24', GW, 0),
    ];
    const p = planWhatIf({ ...base, routes });
    const key = `${GW}%2`;
    assert.deepEqual(whereFlowGoes(p, routes, new Map(), key, '198.18.2.10', 254), {
      route: '198.18.2.0/24 via 198.18.1.1 table 254 metric 10 proto boot',
      to: 'by 198.18.2.0/24 via 198.18.1.2 table 254 metric 20 proto boot',
    });
    assert.match(
      whereFlowGoes(p, routes, new Map(), key, '198.18.5.1', 254).to,
      /kept through the dead gateway/,
    );
    assert.match(
      whereFlowGoes(p, routes, new Map(), key, '198.18.9.1', 254).to,
      /kept/,
      'the /15 is the last route too',
    );
    assert.ok(prefixContains('default', '192.0.2.1'));
    assert.ok(!prefixContains('198.18.2.0/24', '198.18.3.1'));
    assert.ok(!prefixContains('2001:db8::/32', '198.18.3.1'));
    assert.ok(prefixContains('2001:db8::/32', '2001:db8:1::1'));
  });

  it('says loudly when keep_last_route keeps the only route, and when an unconfigured routing daemon owns routes', () => {
    const p = planWhatIf({
      ...base,
      routes: [
        route('198.18.5.0/24', GW, 0),
        route('198.18.6.0/24', GW, 10, { protocol: 12 }),
        route('198.18.6.0/24', '198.18.1.2', 20),
      ],
    });
    assert.deepEqual(p.kept, ['198.18.5.0/24 via 198.18.1.1 table 254 metric 0 proto boot']);
    assert.deepEqual(p.withdrawn, ['198.18.6.0/24 via 198.18.1.1 table 254 metric 10 proto bird']);
    assert.equal(p.unconfigured_owner_routes[0]!.owner, 'bird');
    assert.match(p.warnings.join('\n'), /NOTHING WOULD MOVE for 1 route/);
    assert.match(p.warnings.join('\n'), /bird, which is not configured in dgd.owners/);
    const handed = planWhatIf({
      ...base,
      ownersConfigured: ['bird'],
      routes: [route('198.18.6.0/24', GW, 10, { protocol: 12 })],
    });
    assert.deepEqual(handed.withdrawn, []);
    assert.deepEqual(handed.handed_over, [
      { owner: 'bird', routes: ['198.18.6.0/24 via 198.18.1.1 table 254 metric 10 proto bird'] },
    ]);
    const none = planWhatIf({ ...base, ifindexes: [], routes: [] });
    assert.match(none.warnings.join('\n'), /NOTHING WOULD MOVE: no route/);
  });
});

describe('incident metrics', () => {
  it('time to switch and to resume per gateway, incidents by outcome (each outcome at 0 first)', async () => {
    const m = new DaemonMetrics();
    const obs = m.incidentObserver();
    assert.equal(m.incidentObserver(), obs, 'created once');
    let text = await m.registry.metrics();
    assert.match(text, /^ipdeadgate_incidents_total\{outcome="nothing_moved"\} 0$/m);
    obs.switched(GW, 0.8);
    obs.resumed(GW, 0.9);
    obs.ended('failover');
    text = await m.registry.metrics();
    assert.match(text, /^ipdeadgate_incident_switch_seconds_bucket\{le="1",gateway="198\.18\.1\.1"\} 1$/m);
    assert.match(
      text,
      /^ipdeadgate_incident_switch_seconds_bucket\{le="0\.75",gateway="198\.18\.1\.1"\} 0$/m,
    );
    assert.match(text, /^ipdeadgate_incident_resume_seconds_count\{gateway="198\.18\.1\.1"\} 1$/m);
    assert.match(text, /^ipdeadgate_incidents_total\{outcome="failover"\} 1$/m);
    await m.close();
  });
});
