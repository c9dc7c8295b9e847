// Incidents in the lab, one lab and several checks: gw forwards a LAN host's TCP stream and runs
// one of its own, both through r1; `what-if r1` is asked first, then r1 dies silently. The
// incident record (`incidents ID --json`) must name every route and group the death changed (the
// same list what-if gave, including the route keep_last_route keeps and the route of a routing
// daemon that is not configured), the triggering flows, the verification and the capture; the
// capture (read back with tcpdump) must hold the triggering flows' retransmissions towards r1 and
// their first segment through r2, headers only. r1 comes back: the record ends with the restore,
// is read with the daemon stopped, and is still there after a restart.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { parsePcap } from '../../src/sys/packet';
import type { IncidentRecord, IncidentSummary } from '../../src/daemon/incidentstore';
import type { WhatIfReport } from '../../src/cli/whatif';
import { requireRoot, waitFor, type Lab } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { startFlowClient, startFlowServer } from '../lab/flows';
import { GW, forwardLab } from '../lab/gateway-topologies';

const PORT = 7000;
const CONFIG = 'dgd:\n  slow_poll_interval: 1s\nflight_recorder:\n  before: 10s\n  after: 3s\n';
/** Routes gw gets besides the lab's: the last route to a prefix, a BIRD route, a nexthop group. */
const EXTRA: string[][] = [
  ['route', 'add', '198.18.5.0/24', 'via', GW.r1_4, 'dev', 'up0'],
  ['route', 'add', '198.18.6.0/24', 'via', GW.r1_4, 'dev', 'up0', 'proto', 'bird', 'metric', '10'],
  ['route', 'add', '198.18.6.0/24', 'via', GW.r2_4, 'dev', 'up0', 'metric', '20'],
  ['nexthop', 'add', 'id', '101', 'via', GW.r1_4, 'dev', 'up0'],
  ['nexthop', 'add', 'id', '102', 'via', GW.r2_4, 'dev', 'up0'],
  ['nexthop', 'add', 'id', '110', 'group', '101/102'],
  ['route', 'add', '198.18.7.0/24', 'nhid', '110'],
];

async function json<T>(lab: Lab, args: string[]): Promise<T> {
  const r = await lab.cli('gw', args);
  assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

describe('incidents (lab)', function () {
  this.timeout(120_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });
  after(async () => {
    await lab?.close();
  });

  it('r1 dies under local and forwarded flows: what-if foretold the routes; the record, its capture and a restart agree', async () => {
    const l = (lab = await forwardLab({ routing: 'metric' }));
    for (const a of EXTRA) await l.execOk('gw', ['ip', ...a]);
    const mac = async (host: string) => (await l.execOk(host, ['cat', '/sys/class/net/lan0/address'])).trim();
    const r1Mac = await mac('r1');
    const r2Mac = await mac('r2');
    await startFlowServer(l, 'server', PORT).listening;
    const d = await LabDaemon.start(l, 'gw', CONFIG);
    const stateArgs = ['--state-dir', d.stateDir];
    const local = startFlowClient(l, 'gw', GW.server4, PORT, { intervalMs: 50, durationMs: 40_000 });
    const fwd = startFlowClient(l, 'lanhost', GW.server4, PORT, { intervalMs: 50, durationMs: 40_000 });
    await waitFor(() => local.echoes.length >= 10 && fwd.echoes.length >= 10, 10_000, 'both flows');

    // --- what-if: a dry run, nothing changes.
    const routesBefore = await l.execOk('gw', ['ip', 'route', 'show']);
    const w = await json<WhatIfReport>(l, [
      'what-if',
      GW.r1_4,
      '--json',
      '--config',
      l.tempPath('gw-config.yaml'),
      '--control',
      d.control,
      ...stateArgs,
    ]);
    assert.equal(await l.execOk('gw', ['ip', 'route', 'show']), routesBefore, 'what-if changed nothing');
    assert.equal(w.would_move, true);
    assert.deepEqual(w.interfaces, ['up0']);
    assert.ok(
      w.kept.some((r) => r.startsWith('198.18.5.0/24 via 198.18.1.1')),
      JSON.stringify(w.kept),
    );
    assert.match(w.warnings.join('\n'), /NOTHING WOULD MOVE for 1 route/);
    assert.equal(w.unconfigured_owner_routes[0]?.owner, 'bird');
    assert.match(w.warnings.join('\n'), /bird, which is not configured in dgd.owners/);
    assert.deepEqual(
      w.groups.map((g) => g.group),
      ['nexthop id 110 group 101/102'],
    );
    assert.ok(w.flows.local >= 1 && w.flows.forwarded >= 1, JSON.stringify(w.flows));
    for (const f of w.flows.samples.filter((x) => x.flow.endsWith(`${GW.server4}:${PORT}`)))
      assert.match(f.to, /^by 198\.18\.2\.0\/24 via 198\.18\.1\.2 /, JSON.stringify(f));
    const wText = await l.cli('gw', [
      'what-if',
      GW.r1_4,
      '--config',
      l.tempPath('gw-config.yaml'),
      '--control',
      d.control,
      ...stateArgs,
    ]);
    if (process.env.IDG_EXAMPLE_DIR)
      fs.writeFileSync(`${process.env.IDG_EXAMPLE_DIR}/what-if.txt`, wText.stdout);

    // --- the death.
    await l.killSilently('r1', 'lan0');
    const withdrawn = await d.waitFor(
      (e) => e.event === 'routes_withdrawn' && e.gateway === GW.r1_4,
      20_000,
      'routes withdrawn',
    );
    assert.deepEqual(
      [...(withdrawn.routes as string[])].sort(),
      [...w.withdrawn].sort(),
      'what-if named the same changes',
    );
    const kept = d
      .named('route_kept')
      .filter((e) => e.gateway === GW.r1_4)
      .flatMap((e) => e.routes as string[]);
    assert.deepEqual(kept.sort(), [...w.kept].sort());
    await d.waitFor((e) => e.event === 'capture_segments' && e.gateway === GW.r1_4, 15_000, 'the capture');
    // The incident begins at the first event that blames r1 (a speculative verification starts
    // before the trigger, on a socket's first retransmission).
    const firstTrigger = d.events.find(
      (e) =>
        e.gateway === GW.r1_4 &&
        (e.event === 'trigger' ||
          e.event === 'speculative_verify' ||
          (e.event === 'state' && e.to !== 'active')),
    )!;

    const st = (await d.status()) as unknown as {
      gateways: { address: string; open_incident: number | null }[];
      incidents: { open: number[] };
    };
    const openId = st.gateways.find((g) => g.address === GW.r1_4)?.open_incident;
    assert.ok(typeof openId === 'number' && st.incidents.open.includes(openId), JSON.stringify(st.incidents));
    const list = await json<IncidentSummary[]>(l, ['incidents', '--json', ...stateArgs]);
    const mine = list.find((s) => s.gateway === GW.r1_4 && s.verdict === 'dead');
    assert.ok(mine, JSON.stringify(list));
    assert.equal(mine.id, openId, 'status names the incident under way');
    const rec = await json<IncidentRecord>(l, ['incidents', String(mine.id), '--json', ...stateArgs]);
    assert.equal(rec.interface, 'up0');
    assert.equal(rec.outcome, 'failover');
    assert.deepEqual(
      [...rec.routes_withdrawn, ...rec.groups_changed].sort(),
      [...(withdrawn.routes as string[])].sort(),
      'every route and group changed',
    );
    assert.deepEqual([...rec.routes_kept].sort(), [...w.kept].sort());
    // The log line's time and the record's are read separately: within a few ms.
    assert.ok(Math.abs(Date.parse(rec.started_at) - Date.parse(firstTrigger.time)) <= 20, rec.started_at);
    const switchMs = Date.parse(withdrawn.time) - Date.parse(firstTrigger.time);
    assert.ok(
      Math.abs(rec.durations.to_switch_ms! - switchMs) <= 50,
      `${rec.durations.to_switch_ms} vs ${switchMs}`,
    );
    assert.ok(
      rec.trigger && rec.trigger.samples.some((s) => s.dst === `${GW.server4}:${PORT}`),
      JSON.stringify(rec.trigger),
    );
    assert.ok(
      rec.verification.some((v) => v.step.endsWith('_probes')),
      JSON.stringify(rec.verification),
    );
    for (const ev of ['trigger', 'verdict', 'state', 'routes_withdrawn', 'capture_written'])
      assert.ok(
        rec.timeline.some((e) => e.event === ev),
        `${ev} in the timeline`,
      );
    const t = rec.timeline.map((e) => e.t_ms);
    assert.deepEqual(
      t,
      [...t].sort((a, b) => a - b),
    );

    // --- the capture: the triggering retransmissions towards r1, then the first segment via r2.
    const cap = rec.capture!;
    assert.ok(cap && fs.existsSync(cap.file), JSON.stringify(cap));
    assert.equal(cap.first_segment_via_new_gateway?.mac, r2Mac);
    const lines = execFileSync('tcpdump', ['-nne', '-tt', '-r', cap.file, 'tcp'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .trim()
      .split('\n');
    // Both the local flow (gw's own socket) and the forwarded one (the LAN host's) are in it, each
    // with a segment sent again towards r1's MAC; after the verdict a segment goes through r2.
    const capFlows = cap.flows ?? [];
    const tcpdumpForm = (f: string) => f.replace(/:(\d+) > /, '.$1 > ').replace(/:(\d+)$/, '.$1');
    const deadAt = Date.parse(
      d.events.find((e) => e.event === 'state' && e.gateway === GW.r1_4 && e.to === 'dead')!.time,
    );
    for (const src of [GW.gwUp4, GW.lanhost4]) {
      const f = capFlows.find((x) => x.startsWith(`${src}:`) && x.endsWith(`${GW.server4}:${PORT}`));
      assert.ok(f, `a flow from ${src} in the capture: ${JSON.stringify(capFlows)}`);
      const ofFlow = lines.filter((x) => x.includes(tcpdumpForm(f)));
      const seqs = ofFlow
        .filter((x) => x.includes(`> ${r1Mac}`))
        .map((x) => /seq (\d+):\d+/.exec(x)?.[1])
        .filter((s): s is string => !!s);
      assert.ok(
        seqs.length > new Set(seqs).size,
        `${f}: a segment sent again towards r1 (from the same sequence number; it may be longer):\n${ofFlow.join('\n')}`,
      );
    }
    const ofFlows = lines.filter((x) => capFlows.some((f) => x.includes(tcpdumpForm(f))));
    assert.ok(
      ofFlows.some((x) => x.includes(`> ${r2Mac}`) && parseFloat(x) * 1000 >= deadAt - 5),
      `a segment through r2 after the verdict:\n${ofFlows.join('\n')}`,
    );
    // Headers only: no TCP segment in the file holds a byte past its TCP header.
    for (const p of parsePcap(fs.readFileSync(cap.file)).packets) {
      if (p.data.readUInt16BE(12) !== 0x0800 || p.data[23] !== 6) continue;
      const l4 = 14 + (p.data[14]! & 0x0f) * 4;
      assert.equal(p.data.length, l4 + (p.data[l4 + 12]! >> 4) * 4, 'headers only');
    }

    // --- revival: the record ends with the restore.
    await l.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === GW.r1_4, 30_000, 'routes restored');
    const ended = await waitFor(
      async () => {
        const r = await json<IncidentRecord>(l, ['incidents', String(mine.id), '--json', ...stateArgs]);
        return r.ended_at !== null ? r : null;
      },
      10_000,
      'the record to end',
    );
    assert.ok(ended!.outage_ms! > ended!.switch_ms!);
    assert.ok(ended!.routes_restored.length > 0);
    if (process.env.IDG_EXAMPLE_DIR) {
      fs.copyFileSync(cap.file, `${process.env.IDG_EXAMPLE_DIR}/capture.pcap`);
      fs.writeFileSync(
        `${process.env.IDG_EXAMPLE_DIR}/incidents.txt`,
        (await l.cli('gw', ['incidents', ...stateArgs])).stdout,
      );
      fs.writeFileSync(
        `${process.env.IDG_EXAMPLE_DIR}/incident.txt`,
        (await l.cli('gw', ['incidents', String(mine.id), ...stateArgs])).stdout,
      );
    }

    // --- without the daemon, and after a restart: the same record.
    assert.equal(await d.stop(), 0);
    const offline = await json<IncidentRecord>(l, ['incidents', String(mine.id), '--json', ...stateArgs]);
    assert.deepEqual(offline.routes_withdrawn, ended!.routes_withdrawn);
    assert.equal(offline.ended_at, ended!.ended_at);
    const again = await LabDaemon.restart(d, CONFIG);
    const after = await json<IncidentSummary[]>(l, ['incidents', '--json', ...stateArgs]);
    assert.deepEqual(after.find((s) => s.id === mine.id)?.started_at, mine.started_at);
    const text = await l.cli('gw', ['incidents', ...stateArgs]);
    assert.match(text.stdout, new RegExp(`^${mine.id} +${GW.r1_4.replace(/\./g, '\\.')} +up0 `, 'm'));
    assert.equal(await again.stop(), 0);
  });
});
