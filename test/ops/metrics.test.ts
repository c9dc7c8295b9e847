// Prometheus metrics: derived from the engine's events and from status() at scrape time, parsed by
// an independent exposition-format parser (parse-prometheus-text-format); in the lab, scraped over
// HTTP from a running daemon before and after a failover and a revival.
import { MemoryEventLog } from '../doubles';
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import parsePrometheusTextFormat, { type ParsedFamily } from 'parse-prometheus-text-format';
import type { DgdStatus } from '../../src/dgd/engine';
import { parseConfig } from '../../src/daemon/config';
import { DaemonMetrics, parseListen } from '../../src/daemon/metrics';
import { DaemonOps } from '../../src/daemon/ops';
import type { TunnelStatus } from '../../src/tunnel/node';
import { type Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLab } from '../lab/topologies';
import { waitDgdLabReady } from '../fixtures/neigh-lab';

type Families = Map<string, ParsedFamily> & { text: string };

/** Parse (the parser throws on any invalid line) and keep the text for labelled histograms. */
function parse(text: string): Families {
  const fams = new Map(parsePrometheusTextFormat(text).map((f) => [f.name, f])) as Families;
  fams.text = text;
  return fams;
}

/** The value of one sample (labels must all match); null when absent. */
function value(fams: Families, name: string, labels: Record<string, string> = {}): number | null {
  const f = fams.get(name);
  const s = f?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  if (!s) return null;
  return Number(s.value ?? s.count);
}

/** The sum of every sample matching the labels (e.g. both values of `speculative`). */
function total(fams: Families, name: string, labels: Record<string, string> = {}): number {
  return (fams.get(name)?.metrics ?? [])
    .filter((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))
    .reduce((a, m) => a + Number(m.value), 0);
}

/**
 * The _count of a labelled histogram. parse-prometheus-text-format 1.1 flattens histograms into
 * one unlabelled sample (it keeps _count and _sum only without labels), so after it has validated
 * the text and the family's type, the _count line is read from the text itself.
 */
function histogramCount(fams: Families, name: string, labels: Record<string, string>): number {
  assert.equal(fams.get(name)?.type, 'HISTOGRAM');
  for (const line of fams.text.split('\n')) {
    const m = /^(\w+)\{(.*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== `${name}_count`) continue;
    const have = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return 0;
}

function gatewayStatus(state: 'active' | 'suspect' | 'dead'): DgdStatus {
  return {
    enabled: true,
    tables: [254],
    gateways: [
      {
        address: '198.18.1.1',
        interface: 'lan0',
        family: 4,
        state,
        mac: null,
        routes: [],
        last_verification: null,
        verifications: 0,
        triggers: {} as DgdStatus['gateways'][number]['triggers'],
        active_probing: null,
        dead_since_ms: null,
        next_poll: null,
        hold_down_ms: null,
        transitions: [],
      },
    ],
    withdrawn_routes:
      state === 'dead'
        ? [
            {
              dst: '0.0.0.0/0',
              table: 254,
              metric: 100,
              gateway: '198.18.1.1',
              nexthops: null,
              removed_gateways: ['198.18.1.1'],
            },
          ]
        : [],
    last_scan: { at: new Date().toISOString(), duration_ms: 1.5, sockets: 42, retransmitting: 2 },
    flow_resume: {
      on: true,
      recorded_flows: 2,
      recorders: [{ interface: 'lan0', flows: 2, open: true, opens: 1, frames: 7 }],
    },
  } as unknown as DgdStatus;
}

const TUNNEL: TunnelStatus = {
  name: 'gw1',
  role: 'gateway-proxy',
  links: [
    {
      peer: 'ep1',
      address: '198.18.3.1:9401',
      direction: 'dial',
      state: 'up',
      rtt_ms: 2.5,
      bytes_in: 1000,
      bytes_out: 2000,
      reconnects: 1,
      streams: 3,
      services: {},
    },
    {
      peer: '',
      address: '198.18.3.2:9401',
      direction: 'dial',
      state: 'connecting',
      rtt_ms: null,
      bytes_in: 0,
      bytes_out: 0,
      reconnects: 4,
      streams: 0,
      services: {},
    },
  ],
  sessions: {
    count: 3,
    opened: 10,
    close_timeouts: 2,
    reaped: 1,
    watcher_resets: 0,
    refusals: { unknown_service: 5, max_sessions: 1 },
    refused_by_peer: {},
    accept_errors: 0,
    ends: { completed: 7, dial_failed: 2 },
  },
  link_refusals: { cert_expired: 3, name_mismatch: 1 },
};

describe('metrics', () => {
  it('derives DGD counters and histograms from events and gauges from status, in valid exposition text', async () => {
    let state: 'active' | 'suspect' | 'dead' = 'active';
    const m = new DaemonMetrics({ dgd: () => gatewayStatus(state) });
    const log = new MemoryEventLog();
    const events = m.wrap(log);
    const gw = '198.18.1.1';
    let fams = parse(await m.scrape());
    assert.equal(value(fams, 'ipdeadgate_gateway_state', { gateway: gw, state: 'active' }), 1);
    assert.equal(value(fams, 'ipdeadgate_gateway_state', { gateway: gw, state: 'dead' }), 0);
    // Known gateway, nothing happened yet: its counters exist at 0 (increase() sees a first death).
    assert.equal(value(fams, 'ipdeadgate_gateway_deaths_total', { gateway: gw }), 0);
    assert.equal(value(fams, 'ipdeadgate_gateway_revivals_total', { gateway: gw }), 0);
    assert.equal(value(fams, 'ipdeadgate_routes_withdrawn_total', { gateway: gw }), 0);
    assert.equal(value(fams, 'ipdeadgate_triggers_total', { gateway: gw, reason: 'neighbour_failed' }), 0);
    assert.equal(value(fams, 'ipdeadgate_verifications_total', { gateway: gw, outcome: 'dead' }), 0);
    assert.equal(value(fams, 'ipdeadgate_gateway_deaths_total', { gateway: '198.18.9.9' }), null);
    const build = fams.get('ipdeadgate_build_info')!.metrics[0]!;
    assert.equal(Number(build.value), 1);
    assert.match(build.labels!.version!, /^\d+\.\d+\.\d+/);
    assert.equal(build.labels!.node_version, process.versions.node);
    assert.equal(value(fams, 'ipdeadgate_scan_sockets', { kind: 'scanned' }), 42);
    assert.equal(value(fams, 'ipdeadgate_scan_duration_seconds'), 0.0015);
    assert.equal(value(fams, 'ipdeadgate_resume_recorded_flows', { interface: 'lan0' }), 2);
    assert.equal(value(fams, 'ipdeadgate_resume_captures_open', { interface: 'lan0' }), 1);
    assert.equal(
      fams.get('ipdeadgate_tunnel_sessions')?.metrics.length ?? 0,
      0,
      'no tunnel: no tunnel samples',
    );

    events.event('verdict', { gateway: gw, alive: true, speculative: true, arp_rtt_ms: 0.3, duration_ms: 1 });
    events.event('trigger', { gateway: gw, reason: 'retransmissions' });
    events.event('state', { gateway: gw, from: 'active', to: 'suspect' });
    events.event('verdict', {
      gateway: gw,
      alive: false,
      speculative: false,
      arp_rtt_ms: null,
      duration_ms: 750,
    });
    events.event('state', { gateway: gw, from: 'suspect', to: 'dead' });
    events.event('routes_withdrawn', { gateway: gw, routes: ['a', 'b'] });
    events.event('routes_handed_over', { gateway: gw, owner: 'frr', routes: ['c'] });
    events.event('conntrack_followed', { gateway: gw, after: 'withdrawal', deleted: 5, examined: 6 });
    state = 'dead';
    assert.equal(log.events.length, 8, 'every event still reaches the log');
    fams = parse(await m.scrape());
    assert.equal(value(fams, 'ipdeadgate_gateway_state', { gateway: gw, state: 'dead' }), 1);
    assert.equal(value(fams, 'ipdeadgate_gateway_deaths_total', { gateway: gw }), 1);
    assert.equal(
      value(fams, 'ipdeadgate_verifications_total', { gateway: gw, outcome: 'dead', speculative: 'false' }),
      1,
    );
    assert.equal(
      value(fams, 'ipdeadgate_verifications_total', { gateway: gw, outcome: 'alive', speculative: 'true' }),
      1,
    );
    assert.equal(value(fams, 'ipdeadgate_triggers_total', { gateway: gw, reason: 'retransmissions' }), 1);
    assert.equal(value(fams, 'ipdeadgate_routes_withdrawn_total', { gateway: gw }), 2);
    assert.equal(value(fams, 'ipdeadgate_routes_handed_over_total', { gateway: gw, owner: 'frr' }), 1);
    assert.equal(value(fams, 'ipdeadgate_withdrawn_routes'), 1);
    assert.equal(value(fams, 'ipdeadgate_conntrack_deleted_total', { gateway: gw, after: 'withdrawal' }), 5);
    assert.equal(value(fams, 'ipdeadgate_conntrack_deleted_total', { gateway: gw, after: 'restore' }), 0);
    assert.equal(
      value(fams, 'ipdeadgate_state_transitions_total', { gateway: gw, from: 'suspect', to: 'dead' }),
      1,
    );
    assert.equal(
      histogramCount(fams, 'ipdeadgate_neighbour_rtt_seconds', { gateway: gw, protocol: 'arp' }),
      1,
    );
    assert.equal(fams.get('ipdeadgate_neighbour_rtt_seconds')!.type, 'HISTOGRAM');
    assert.equal(fams.get('ipdeadgate_gateway_deaths_total')!.type, 'COUNTER');
    assert.equal(value(fams, 'ipdeadgate_events_total', { event: 'verdict', level: 'info' }), 2);
    assert.ok(fams.has('ipdeadgate_process_resident_memory_bytes'), 'process metrics are there too');
  });

  it('reads the tunnel from TunnelNode.status() at scrape time through the ops seam', async () => {
    const ops = new DaemonOps('/nonexistent-state-dir', parseConfig(''));
    let fams = parse(await ops.metrics.scrape());
    assert.equal(value(fams, 'ipdeadgate_tunnel_sessions'), null);
    let tunnel = TUNNEL;
    ops.setTunnelSource(() => tunnel);
    fams = parse(await ops.metrics.scrape());
    assert.equal(value(fams, 'ipdeadgate_tunnel_sessions'), 3);
    assert.equal(value(fams, 'ipdeadgate_tunnel_sessions_opened_total'), 10);
    assert.equal(value(fams, 'ipdeadgate_tunnel_close_timeouts_total'), 2);
    assert.equal(value(fams, 'ipdeadgate_tunnel_reaped_sockets_total'), 1);
    assert.equal(value(fams, 'ipdeadgate_tunnel_refusals_total', { reason: 'unknown_service' }), 5);
    assert.equal(value(fams, 'ipdeadgate_tunnel_link_refusals_total', { reason: 'cert_expired' }), 3);
    assert.equal(value(fams, 'ipdeadgate_tunnel_link_refusals_total', { reason: 'name_mismatch' }), 1);
    assert.equal(value(fams, 'ipdeadgate_tunnel_session_ends_total', { reason: 'dial_failed' }), 2);
    assert.equal(value(fams, 'ipdeadgate_tunnel_links', { state: 'up' }), 1);
    assert.equal(value(fams, 'ipdeadgate_tunnel_links', { state: 'connecting' }), 1);
    assert.equal(value(fams, 'ipdeadgate_tunnel_link_bytes_total', { peer: 'ep1', flow: 'out' }), 2000);
    assert.equal(value(fams, 'ipdeadgate_tunnel_link_rtt_seconds', { peer: 'ep1' }), 0.0025);
    assert.equal(value(fams, 'ipdeadgate_tunnel_link_reconnects_total', { address: '198.18.3.2:9401' }), 4);
    // Totals follow the status: a later scrape shows the new values, not a sum of scrapes.
    tunnel = { ...TUNNEL, sessions: { ...TUNNEL.sessions, opened: 12 } };
    fams = parse(await ops.metrics.scrape());
    assert.equal(value(fams, 'ipdeadgate_tunnel_sessions_opened_total'), 12);
    ops.setTunnelSource(null);
    fams = parse(await ops.metrics.scrape());
    assert.equal(value(fams, 'ipdeadgate_tunnel_sessions'), null);
    await ops.close();
  });

  it('announces each gateway once when it appears and when it goes, with its counters at 0 at once', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-ops-'));
    const ops = new DaemonOps(dir, parseConfig(''));
    const log = new MemoryEventLog();
    ops.wrapEvents(log);
    const st = gatewayStatus('active');
    const second = { ...st.gateways[0]!, address: '198.18.1.2' };
    let gateways = [st.gateways[0]!];
    await ops.start({ status: () => ({ ...st, gateways }) }, { link: async () => new EventEmitter() });
    try {
      assert.deepEqual(log.named('gateway_appeared'), [
        { event: 'gateway_appeared', level: 'info', gateway: '198.18.1.1', interface: 'lan0' },
      ]);
      gateways = [second];
      // The next scrape already has the new gateway's zeroes, before the refresh announces it.
      const fams = parse(await ops.metrics.scrape());
      assert.equal(value(fams, 'ipdeadgate_gateway_deaths_total', { gateway: '198.18.1.2' }), 0);
      await waitFor(() => log.named('gateway_gone').length > 0, 5000, 'the refresh');
      assert.deepEqual(
        log.events
          .filter((e) => e.event.startsWith('gateway_'))
          .map((e) => `${e.event} ${String(e.gateway)}`),
        ['gateway_appeared 198.18.1.1', 'gateway_appeared 198.18.1.2', 'gateway_gone 198.18.1.1'],
      );
    } finally {
      await ops.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serves GET /metrics over HTTP and refuses an address in use with a clear error', async () => {
    const m = new DaemonMetrics({});
    const { port } = await m.listen('127.0.0.1:0');
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.ok(parse(await res.text()).has('ipdeadgate_verifications_total'));
    assert.equal((await fetch(`http://127.0.0.1:${port}/nope`)).status, 404);
    assert.equal((await fetch(`http://127.0.0.1:${port}/metrics`, { method: 'POST' })).status, 405);
    const other = new DaemonMetrics({});
    await assert.rejects(
      other.listen(`127.0.0.1:${port}`),
      /EADDRINUSE: serving metrics on 127\.0\.0\.1:\d+ \(metrics\.listen\)/,
    );
    await m.close();
    await m.close();
    assert.deepEqual(parseListen('[::1]:9741'), { host: '::1', port: 9741 });
  });
});

describe('metrics from a daemon in the lab', function () {
  this.timeout(90_000);
  let lab: Lab;

  before(function () {
    requireRoot(this);
  });
  afterEach(async () => {
    await lab?.close();
  });

  async function scrape(): Promise<Families> {
    const script =
      "fetch('http://127.0.0.1:9741/metrics').then(r=>r.text()).then(t=>process.stdout.write(t),e=>{console.error(e.message);process.exit(1)})";
    const r = await lab.exec('client', [process.execPath, '-e', script]);
    assert.equal(r.code, 0, r.stderr);
    return parse(r.stdout);
  }

  it('change as they should across a failover and a revival', async () => {
    lab = await dgdLab();
    await waitDgdLabReady(lab);
    const gw = DGD.r1_4;
    const flowJs = path.join(__dirname, '..', 'lab', 'flow.js');
    lab.spawn('server', [process.execPath, flowJs, 'server', '7000']);
    const d = await LabDaemon.start(
      lab,
      'client',
      'dgd:\n  slow_poll_interval: 1s\n  revive_probes: 1\nmetrics:\n  listen: 127.0.0.1:9741\n',
    );
    await d.waitFor((e) => e.event === 'metrics_listening', 5000, 'metrics endpoint');
    await waitFor(
      async () => value(await scrape(), 'ipdeadgate_scan_sockets', { kind: 'scanned' }) !== null,
      5000,
      'a first scan',
    );
    const before = await scrape();
    assert.equal(value(before, 'ipdeadgate_gateway_state', { gateway: gw, state: 'active' }), 1);
    assert.equal(value(before, 'ipdeadgate_gateway_deaths_total', { gateway: gw }), 0);
    assert.ok(d.events.some((e) => e.event === 'gateway_appeared' && e.gateway === gw));
    assert.equal(value(before, 'ipdeadgate_withdrawn_routes'), 0);
    assert.equal(value(before, 'ipdeadgate_dgd_enabled'), 1);

    // A TCP flow through r1: its retransmissions trigger the verification when r1 dies.
    const flow = lab.spawn('client', [
      process.execPath,
      flowJs,
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
    await d.waitFor((e) => e.event === 'routes_withdrawn' && e.gateway === gw, 15_000, 'routes withdrawn');
    const dead = await scrape();
    assert.equal(value(dead, 'ipdeadgate_gateway_state', { gateway: gw, state: 'dead' }), 1);
    assert.equal(value(dead, 'ipdeadgate_gateway_state', { gateway: gw, state: 'active' }), 0);
    assert.equal(value(dead, 'ipdeadgate_gateway_deaths_total', { gateway: gw }), 1);
    assert.ok(total(dead, 'ipdeadgate_verifications_total', { gateway: gw, outcome: 'dead' }) >= 1);
    assert.ok(value(dead, 'ipdeadgate_triggers_total', { gateway: gw, reason: 'retransmit' })! >= 1);
    assert.ok(value(dead, 'ipdeadgate_routes_withdrawn_total', { gateway: gw })! >= 1);
    assert.ok(value(dead, 'ipdeadgate_withdrawn_routes')! >= 1);

    await lab.revive('r1', 'lan0');
    await d.waitFor((e) => e.event === 'routes_restored' && e.gateway === gw, 15_000, 'routes restored');
    await d.waitFor((e) => e.event === 'capture_written' && e.gateway === gw, 10_000, 'the flight recorder');
    const back = await scrape();
    assert.equal(value(back, 'ipdeadgate_gateway_state', { gateway: gw, state: 'active' }), 1);
    assert.equal(value(back, 'ipdeadgate_gateway_revivals_total', { gateway: gw }), 1);
    assert.equal(value(back, 'ipdeadgate_withdrawn_routes'), 0);
    assert.ok(value(back, 'ipdeadgate_routes_restored_total', { gateway: gw })! >= 1);
    assert.ok(
      histogramCount(back, 'ipdeadgate_neighbour_rtt_seconds', { gateway: gw, protocol: 'arp' }) >= 1,
      'the reviving ARP reply was timed',
    );
    assert.equal(value(back, 'ipdeadgate_flight_recorder_captures_total', { gateway: gw }), 1);
    assert.equal(await d.stop(), 0);
  });
});
