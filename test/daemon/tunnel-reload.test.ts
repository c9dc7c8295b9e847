// SIGHUP of `ipdeadgate daemon` with a tunnel section: the real daemon (detection on, in the dgd
// lab's client namespace, gateways r1 and r2) runs a gateway proxy whose link goes over loopback to
// an `ipdeadgate tunnel` endpoint proxy in the same namespace. A session held open through the
// daemon's forward must keep flowing across every reload; a reload that adds a forward and a
// service makes both usable; a broken tunnel section is refused with an error event and changes
// nothing; detection keeps answering. The its run in order on one daemon (each builds on the last).
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { controlRequest } from '../../src/daemon/control';
import type { TunnelStatus } from '../../src/tunnel/node';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { LabDaemon, type DaemonEvent } from '../lab/daemon';
import { startFlowClient, startFlowServer, type FlowClient } from '../lab/flows';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { DGD, dgdLabSpec } from '../lab/topologies';
import { client } from '../tunnel/labkit';

const ECHO = 7000; // the flow server (an echo) in the client namespace, on [::]
const LINK = 9401; // ep1's link listener
const FWD = 9494; // the daemon's forward from the start: echo at ep1
const FWD_NEW = 9495; // the daemon's forward added on reload: echo2 at ep1
const EP_FWD = 9496; // ep1's forward to "back", a service the daemon adds on reload
const METRICS = 9741; // the daemon's Prometheus endpoint

/** What test/fixtures/tunnel-client.js `transfer` prints: the echo, or the socket error. */
interface Transfer {
  error?: string;
  sent: number;
  got: number;
  sha_sent: string;
  sha_got: string;
}

describe('daemon: SIGHUP with a tunnel section', function () {
  this.timeout(60_000);
  let lab: Lab | undefined;
  let pki: TestPki | undefined;
  let d: LabDaemon;
  let ep: ChildProcess;
  let epLog = '';
  let flow: FlowClient;
  let cfgPath: string;
  let reconnects: number;

  const daemonYaml = (extra: { services?: string; forwards?: string; tail?: string } = {}): string =>
    `dgd:\n  slow_poll_interval: 2m\nmetrics:\n  listen: 127.0.0.1:${METRICS}\n` +
    `tunnel:\n  role: gateway-proxy\n  name: gw1\n` +
    `  tls: { ca: ${pki!.dir}/ca.pem, cert: ${pki!.dir}/gw1.pem, key: ${pki!.dir}/gw1.key }\n` +
    `  links:\n    - { connect: 127.0.0.1:${LINK} }\n` +
    (extra.services ? `  services:\n${extra.services}` : '') +
    `  forwards:\n    - { listen: 127.0.0.1:${FWD}, service: echo }\n${extra.forwards ?? ''}` +
    (extra.tail ?? '');
  const GOOD = {
    services: `    back: 127.0.0.1:${ECHO}\n`,
    forwards: `    - { listen: 127.0.0.1:${FWD_NEW}, service: echo2 }\n`,
  };

  const tunnel = async (): Promise<TunnelStatus> =>
    ((await controlRequest(d.control, 'status', {}, 5000)) as { tunnel: TunnelStatus }).tunnel;
  const epTunnel = async (): Promise<TunnelStatus | undefined> =>
    (
      (await controlRequest(path.join(pki!.dir, 'ep1.sock'), 'status', {}, 5000).catch(() => undefined)) as
        { tunnel: TunnelStatus } | undefined
    )?.tunnel;
  const transfer = (port: number): Promise<Transfer> =>
    client<Transfer>(lab!, 'client', ['transfer', '127.0.0.1', String(port), '20000'], 10_000);
  /** Echo 20 KB through a port in the client namespace; the bytes must come back intact. */
  const echoes = async (port: number): Promise<void> => {
    const r = await transfer(port);
    assert.equal(r.error, undefined, `port ${port}: ${JSON.stringify(r)}`);
    assert.equal(r.sent, 20_000, `port ${port}: ${JSON.stringify(r)}`);
    assert.equal(r.got, r.sent, `port ${port}: ${JSON.stringify(r)}`);
    assert.equal(r.sha_got, r.sha_sent, `port ${port}`);
  };
  /** The held session still carries bytes: echoes that arrive after `t0` (epoch ms). */
  const stillFlowing = async (t0: number, what: string): Promise<void> => {
    await waitFor(
      () => flow.echoes.filter((e) => e.t > t0).length >= 5,
      5000,
      `${what}: the held session's echoes`,
    );
    assert.deepEqual(flow.errors, [], 'the held session never broke');
    assert.equal(flow.child.exitCode, null, 'the held session is still open');
  };
  /** SIGHUP with `yaml` in the config file; resolves with the first event after it matching `pred`. */
  const hup = async (yaml: string, pred: (e: DaemonEvent) => boolean, what: string): Promise<DaemonEvent> => {
    const from = d.events.length;
    fs.writeFileSync(cfgPath, yaml);
    await d.signal('SIGHUP');
    return d.waitFor((e) => d.events.indexOf(e) >= from && pred(e), 5000, what);
  };
  /** Events named `name` since index `from`. */
  const since = (from: number, name: string): DaemonEvent[] =>
    d.events.slice(from).filter((e) => e.event === name);

  before(async function () {
    requireRoot(this);
    lab = await Lab.create(dgdLabSpec());
    pki = makePki(['gw1', 'ep1'], { gw1: ['back'], ep1: ['echo', 'echo2'] });
    await startFlowServer(lab, 'client', ECHO).listening;
    // ep1: an `ipdeadgate tunnel` endpoint proxy on loopback, offering echo and echo2 (the same
    // echo) to the daemon, and forwarding EP_FWD to "back", which the daemon offers only after
    // the first reload.
    const epCfg = path.join(pki.dir, 'ep1.yaml');
    fs.writeFileSync(
      epCfg,
      'tunnel:\n  role: endpoint-proxy\n  name: ep1\n  tls: { ca: ca.pem, cert: ep1.pem, key: ep1.key }\n' +
        `  listen: 127.0.0.1:${LINK}\n  services:\n    echo: 127.0.0.1:${ECHO}\n    echo2: 127.0.0.1:${ECHO}\n` +
        `  forwards:\n    - { listen: 127.0.0.1:${EP_FWD}, service: back }\n`,
    );
    ep = lab.spawnCli('client', ['tunnel', '--config', epCfg, '--control', path.join(pki.dir, 'ep1.sock')]);
    ep.stderr!.on('data', (c: Buffer) => (epLog += c.toString()));
    d = await LabDaemon.start(lab, 'client', daemonYaml());
    cfgPath = lab.tempPath('client-config.yaml'); // where LabDaemon.start wrote it
    assert.ok(fs.existsSync(cfgPath), cfgPath);
    await waitFor(
      async () => (await tunnel()).links[0]?.services.echo !== undefined,
      10_000,
      'the link to ep1, announcing echo',
    ).catch((err: Error) => {
      throw new Error(`${err.message}; ep1 stderr: ${epLog}`);
    });
    flow = startFlowClient(lab, 'client', '127.0.0.1', FWD, { intervalMs: 50, durationMs: 30_000 });
    await waitFor(() => flow.echoes.length >= 5, 5000, 'the held session to carry data');
    reconnects = (await tunnel()).links[0]!.reconnects;
  });

  after(async () => {
    try {
      if (d && d.exitCode === null) assert.equal(await d.stop(), 0, 'the daemon exits 0 on SIGTERM');
    } finally {
      await lab?.close(); // every process in its namespaces, the namespaces, its temp files
      pki?.cleanup();
    }
  });

  it('a reload that adds a forward and a service makes both usable; the held session goes on over the same link', async () => {
    // Before: "back" is not offered, so ep1's forward to it has no route.
    const refused = await transfer(EP_FWD);
    assert.match(String(refused.error), /ECONNRESET/, JSON.stringify(refused));
    const from = d.events.length;
    const t0 = Date.now();
    const ev = await hup(daemonYaml(GOOD), (e) => /config_(reloaded|refused)$/.test(e.event), 'the reload');
    assert.equal(ev.event, 'tunnel_config_reloaded', JSON.stringify(ev));
    assert.deepEqual([...(ev.changed as string[])].sort(), ['forwards', 'services']);
    await d.waitFor(
      (e) => d.events.indexOf(e) >= from && e.event === 'config_reloaded',
      5000,
      'config_reloaded',
    );
    // The new forward (to echo2 at ep1) and the new service (back, reached through ep1's forward).
    await echoes(FWD_NEW);
    await waitFor(
      async () => (await epTunnel())?.links[0]?.services.back !== undefined,
      5000,
      'back announced',
    );
    await echoes(EP_FWD);
    await echoes(FWD);
    await stillFlowing(t0, 'after the reload');
    const link = (await tunnel()).links[0]!;
    assert.equal(link.state, 'up');
    assert.equal(link.reconnects, reconnects, 'the link was never dropped');
    assert.deepEqual(since(from, 'tunnel_config_refused'), []);
    assert.deepEqual(since(from, 'config_refused'), []);
  });

  it('a broken tunnel section (an unknown key, a port out of range) is refused with an error naming file, line and key; everything keeps running', async () => {
    const cases: [string, RegExp][] = [
      [
        daemonYaml({ ...GOOD, tail: '  max_session: 5\n' }),
        /client-config\.yaml:\d+: tunnel\.max_session: unknown key/,
      ],
      [
        daemonYaml({
          ...GOOD,
          forwards: `${GOOD.forwards}    - { listen: 127.0.0.1:70000, service: echo }\n`,
        }),
        /client-config\.yaml:\d+: tunnel\.forwards\.2\.listen: "127\.0\.0\.1:70000" is not HOST:PORT/,
      ],
    ];
    for (const [yaml, want] of cases) {
      const from = d.events.length;
      const t0 = Date.now();
      const ev = await hup(yaml, (e) => /config_(reloaded|refused)$/.test(e.event), `the refusal of ${want}`);
      assert.equal(ev.event, 'config_refused', JSON.stringify(ev));
      assert.equal(ev.level, 'error');
      assert.match(String(ev.error), want);
      await stillFlowing(t0, `after ${want}`);
      assert.equal(d.exitCode, null, 'the daemon still runs');
      assert.deepEqual(since(from, 'tunnel_config_reloaded'), [], 'nothing of it applied');
      assert.deepEqual(since(from, 'config_reloaded'), [], 'nothing of it applied');
    }
    // The running tunnel config is the one of the last good reload: every forward and service.
    await echoes(FWD);
    await echoes(FWD_NEW);
    await echoes(EP_FWD);
    const link = (await tunnel()).links[0]!;
    assert.equal(link.reconnects, reconnects, 'the link was never dropped');
  });

  it('a tunnel section whose new forward cannot bind (a port in use) is refused with an error event; nothing of that file is applied', async () => {
    const from = d.events.length;
    const t0 = Date.now();
    // LINK is ep1's listener in the same namespace: the new forward cannot bind.
    const ev = await hup(
      daemonYaml({
        ...GOOD,
        forwards: `${GOOD.forwards}    - { listen: 127.0.0.1:${LINK}, service: echo }\n`,
      }),
      (e) => e.event === 'tunnel_config_refused' || e.event === 'tunnel_config_reloaded',
      'the refusal of a forward on a port in use',
    );
    assert.equal(ev.event, 'tunnel_config_refused', JSON.stringify(ev));
    assert.equal(ev.level, 'error');
    assert.match(String(ev.error), new RegExp(`EADDRINUSE|${LINK}`));
    await stillFlowing(t0, 'after the refusal');
    await echoes(FWD);
    await echoes(FWD_NEW);
    await echoes(EP_FWD);
    assert.deepEqual(since(from, 'config_refused'), []);
    // All or nothing: the rest of that file was not applied either (no config_reloaded after it).
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(
      since(from, 'config_reloaded'),
      [],
      'a reload whose tunnel part is refused applies nothing',
    );
  });

  it('the reload events are counted in ipdeadgate_events_total ("every log event"), so a refused reload raises the error alert', async () => {
    // The daemon's own Prometheus endpoint, scraped from inside the namespace (as test/ops/metrics).
    const script = `fetch('http://127.0.0.1:${METRICS}/metrics').then(r=>r.text()).then(t=>process.stdout.write(t),e=>{console.error(e.message);process.exit(1)})`;
    const r = await lab!.exec('client', [process.execPath, '-e', script]);
    assert.equal(r.code, 0, r.stderr);
    const counted = (event: string, level: string): number => {
      const m = new RegExp(
        `^ipdeadgate_events_total\\{event="${event}",level="${level}"\\} (\\d+)$`,
        'm',
      ).exec(r.stdout);
      return m ? Number(m[1]) : 0;
    };
    // Counted: the engine's config_reloaded goes through the daemon's counting event log.
    assert.equal(counted('config_reloaded', 'info'), d.named('config_reloaded').length);
    // What the daemon's reload logs itself (src/daemon/daemon.ts Daemon.reload) must be counted too.
    const logged = (name: string) => d.named(name).length;
    assert.ok(
      logged('config_refused') >= 2 && logged('tunnel_config_refused') >= 1,
      'the earlier its refused',
    );
    assert.deepEqual(
      {
        config_refused: counted('config_refused', 'error'),
        tunnel_config_refused: counted('tunnel_config_refused', 'error'),
        tunnel_config_reloaded: counted('tunnel_config_reloaded', 'info'),
      },
      {
        config_refused: logged('config_refused'),
        tunnel_config_refused: logged('tunnel_config_refused'),
        tunnel_config_reloaded: logged('tunnel_config_reloaded'),
      },
      'ipdeadgate_events_total against the log lines',
    );
  });

  it('detection keeps running across the reloads: status answers and shows r1 and r2 alive, detection on', async () => {
    const st = await d.status();
    assert.equal(st.enabled, true);
    for (const gw of [DGD.r1_4, DGD.r2_4, DGD.r1_6, DGD.r2_6]) {
      const g = st.gateways.find((x) => x.address === gw);
      assert.ok(g, `${gw} in status: ${JSON.stringify(st.gateways.map((x) => x.address))}`);
      assert.notEqual(g.state, 'dead', `${gw}: ${g.state}`);
    }
    const t = st.tunnel as TunnelStatus;
    assert.equal(t.name, 'gw1');
    assert.ok(t.sessions.count >= 1, 'the held session is in status');
    assert.deepEqual(d.named('error'), [], 'no error events');
    assert.deepEqual(flow.errors, []);
  });

  it('the tunnel runs in a process of its own: killing it leaves detection running, and it is started again', async () => {
    const st = await d.status();
    const tunnelPid = st.tunnel_pid as number;
    assert.equal(typeof tunnelPid, 'number');
    assert.notEqual(tunnelPid, d.child.pid, 'not the daemon itself');
    // Without detection's capabilities: a flaw in what parses peers' bytes cannot reach routes.
    const caps = (pid: number, k: string) =>
      BigInt(
        `0x${new RegExp(`^${k}:\\s*(\\S+)`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]}`,
      );
    assert.equal(caps(tunnelPid, 'CapEff'), 1n << 10n, 'the tunnel process holds CAP_NET_BIND_SERVICE only');
    assert.equal(caps(tunnelPid, 'CapBnd'), 1n << 10n, 'and cannot get the others back');
    assert.notEqual(caps(d.child.pid!, 'CapEff') & (1n << 12n), 0n, 'the daemon keeps CAP_NET_ADMIN');
    process.kill(tunnelPid, 'SIGKILL');
    await d.waitFor((e) => e.event === 'tunnel_process_exited', 10_000, 'the exit to be noticed');
    await d.waitFor((e) => e.event === 'tunnel_process_restarted', 20_000, 'the tunnel to start again');
    const after = await d.status();
    assert.equal(after.enabled, true);
    assert.equal(d.exitCode, null);
    assert.notEqual(after.tunnel_pid, tunnelPid);
    // The restarted node dials its link again and the forward carries bytes.
    await waitFor(async () => (await tunnel())?.links[0]?.state === 'up', 20_000, 'the link back');
    await echoes(FWD);
  });
});
