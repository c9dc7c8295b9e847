// The two halves together: `ipdeadgate daemon` with detection on and a tunnel link whose path
// goes through r1. When r1 dies silently, detection fails over, and the link and its sessions
// survive without reconnecting.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { startFlowClient, startFlowServer } from '../lab/flows';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLabSpec } from '../lab/topologies';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { controlRequest } from '../../src/daemon/control';
import type { TunnelStatus } from '../../src/tunnel/node';

describe('detection and the tunnel in one daemon', function () {
  this.timeout(90_000);
  let lab: Lab;
  let pki: TestPki;

  before(function () {
    requireRoot(this);
  });
  afterEach(async () => {
    await lab?.close();
    pki?.cleanup();
  });

  it('r1 dies under a link: detection fails over, the link and its session survive without reconnecting', async () => {
    lab = await Lab.create(dgdLabSpec());
    pki = makePki(['gw1', 'ep1'], { ep1: ['echo'] });
    // The server side: an echo service and an endpoint proxy accepting the link.
    await startFlowServer(lab, 'server', 7000).listening;
    const epCfg = path.join(pki.dir, 'ep1.yaml');
    fs.writeFileSync(
      epCfg,
      'tunnel:\n  role: endpoint-proxy\n  name: ep1\n  tls: { ca: ca.pem, cert: ep1.pem, key: ep1.key }\n' +
        '  listen: 0.0.0.0:9401\n  services:\n    echo: 127.0.0.1:7000\n',
    );
    const ep = lab.spawnCli('server', [
      'tunnel',
      '--config',
      epCfg,
      '--control',
      path.join(pki.dir, 'ep1.sock'),
    ]);
    let epErr = '';
    ep.stderr!.on('data', (c: Buffer) => (epErr += c.toString()));
    // The client: one daemon, detection with the defaults plus a gateway proxy dialing the link.
    const yaml =
      'dgd:\n  slow_poll_interval: 2m\n' +
      `tunnel:\n  role: gateway-proxy\n  name: gw1\n  tls: { ca: ${pki.dir}/ca.pem, cert: ${pki.dir}/gw1.pem, key: ${pki.dir}/gw1.key }\n` +
      `  links:\n    - { connect: ${DGD.server4}:9401 }\n  forwards:\n    - { listen: 127.0.0.1:9494, service: echo }\n` +
      '  heartbeat: 10s\n  heartbeat_misses: 3\n';
    const d = await LabDaemon.start(lab, 'client', yaml);
    const tunnel = async () =>
      ((await controlRequest(d.control, 'status')) as { tunnel: TunnelStatus }).tunnel;
    await waitFor(
      async () => (await tunnel()).links.some((l) => l.state === 'up'),
      15_000,
      `the link to come up (${epErr})`,
    );

    // A session through the tunnel: the flow client talks to the local forward.
    const flow = startFlowClient(lab, 'client', '127.0.0.1', 9494, { durationMs: 20_000 });
    await waitFor(() => flow.echoes.length >= 10, 10_000, 'the session to carry data');
    const before = (await tunnel()).links[0]!;

    await lab.killSilently('r1', 'lan0');
    const withdrawn = await d.waitFor(
      (e) => e.event === 'routes_withdrawn',
      15_000,
      'detection to fail over',
    );
    const trigger = d.named('trigger')[0]!;
    assert.match(JSON.stringify(trigger.socket), /9401/, 'the link socket itself triggered detection');
    await waitFor(
      () => flow.echoes.some((e) => e.t > Date.parse(withdrawn.time)),
      15_000,
      'the session to resume',
    );

    const after = (await tunnel()).links[0]!;
    assert.equal(after.state, 'up');
    assert.equal(after.reconnects, before.reconnects, 'the link never reconnected');
    assert.deepEqual(flow.errors, [], 'the session never broke');
    const st = await d.status();
    assert.equal(st.gateways.find((g) => g.address === DGD.r1_4)!.state, 'dead');
    assert.ok((st.tunnel as TunnelStatus).sessions.count >= 1, 'status shows the tunnel sessions');
    const text = await d.cli(['status']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /gateway 198\.18\.1\.1 on lan0: DEAD/);
    assert.match(text.stdout, /tunnel gw1 \(gateway-proxy\): 1 link\(s\)/);
    assert.match(
      text.stdout,
      // The dialer may have tried before ep1 listened: the failover itself adds no reconnect (above).
      new RegExp(
        `link ep1 to 198\\.18\\.2\\.10:9401: UP, rtt [\\d.]+ ms, .* reconnects ${after.reconnects}; services: echo`,
      ),
    );
    assert.match(text.stdout, /sessions: [1-9]\d* open/);
    assert.equal(await d.stop(), 0);
  });
});
