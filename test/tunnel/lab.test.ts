// The tunnel in the lab: real namespaces, an nftables firewall that forwards one port in one
// direction, TLS links, upcalls and downcalls, faults, and the IY55176 check: after many sessions
// with faults, no socket of ours in CLOSE_WAIT and every proxy's descriptors back to baseline.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import {
  client,
  closeWait,
  fdCount,
  firewallLabSpec,
  installFirewall,
  startEcho,
  startNode,
  status,
  TUN,
  waitStatus,
  type RunningNode,
} from './labkit';
import { sleep } from './helpers';

type Transfer = { sent: number; got: number; sha_sent: string; sha_got: string };
type Many = { ok: number; failed: number; errors: Record<string, number> };

describe('tunnel lab: firewall, gateway proxies, endpoint proxy', function () {
  this.timeout(120_000);
  let lab: Lab;
  let pki: TestPki;
  let gw1: RunningNode;
  let gw2: RunningNode; // replaced when restarted after kill -9
  let ep: RunningNode;
  let gatewayEcho: ReturnType<typeof startEcho>;

  before(async function () {
    requireRoot(this);
    pki = makePki(['gw1', 'gw2', 'ep', 'probe'], {
      gw1: ['endpoint-e'],
      gw2: ['endpoint-e'],
      ep: ['gateway'],
    });
    lab = await Lab.create(firewallLabSpec());
    await installFirewall(lab);
    gatewayEcho = startEcho(lab, 'gateway', TUN.gateway, TUN.gatewayPort); // the real gateway's service
    startEcho(lab, 'endpoint', TUN.endpoint, TUN.endpointPort); // an endpoint's service (downcalls)
    const gwSpec = (name: 'gw1' | 'gw2') => ({
      host: name,
      name,
      role: 'gateway-proxy' as const,
      listen: `${TUN[name]}:${TUN.linkPort}`,
      // upcalls: endpoints connect here as if it were the gateway
      forwards: [{ listen: `${TUN[name]}:${TUN.gatewayPort}`, service: 'gateway' }],
      // downcalls: the gateway's connections to the endpoint are dialed from here
      services: { 'endpoint-e': `${TUN.endpoint}:${TUN.endpointPort}` },
      relayAfter: '0', // the faults below meet sessions on the native relay, short ones too
    });
    gw1 = startNode(lab, pki, gwSpec('gw1'));
    gw2 = startNode(lab, pki, gwSpec('gw2'));
    await sleep(300);
    ep = startNode(lab, pki, {
      host: 'ep',
      name: 'ep',
      role: 'endpoint-proxy',
      links: [`${TUN.gw1}:${TUN.linkPort}`, `${TUN.gw2}:${TUN.linkPort}`],
      services: { gateway: `${TUN.gateway}:${TUN.gatewayPort}` },
      forwards: [{ listen: `${TUN.ep}:${TUN.endpointPort}`, service: 'endpoint-e' }],
      relayAfter: '0',
    });
    await waitStatus(
      ep,
      (s) => s.links.filter((l) => l.state === 'up').length === 2,
      15_000,
      'both links up',
    );
  });

  after(async () => {
    await lab?.close();
    pki?.cleanup();
  });

  it('the firewall allows only ep -> outer zone port 9401: the endpoint cannot reach the gateway directly', async () => {
    const r = await lab.exec('endpoint', [
      'timeout',
      '3',
      'bash',
      '-c',
      `exec 3<>/dev/tcp/${TUN.gateway}/${TUN.gatewayPort}`,
    ]);
    assert.notEqual(r.code, 0, 'a direct connection through the firewall must fail');
    const s = await status(gw1);
    assert.equal(s.links[0]?.peer, 'ep');
    assert.equal(s.links[0]?.direction, 'accept');
  });

  it('upcall: 64 MiB from an endpoint through a gateway proxy to the gateway, sha256 intact, half-close', async () => {
    const r = await client<Transfer>(lab, 'endpoint', [
      'transfer',
      TUN.gw1,
      String(TUN.gatewayPort),
      String(64 * 1024 * 1024),
    ]);
    assert.equal(r.got, r.sent);
    assert.equal(r.sha_got, r.sha_sent);
    // The bridged bytes moved in the addon at both proxies (the faults below run on that path).
    assert.ok(((await status(ep)).sessions.relayed ?? 0) >= 1, 'relayed natively at the endpoint proxy');
    const gws = await Promise.all([status(gw1), status(gw2)]);
    assert.ok(
      gws.some((g) => (g.sessions.relayed ?? 0) >= 1),
      'relayed natively at a gateway proxy',
    );
  });

  it('downcall: 64 MiB from the gateway through the endpoint proxy to the endpoint, sha256 intact', async () => {
    const r = await client<Transfer>(lab, 'gateway', [
      'transfer',
      TUN.ep,
      String(TUN.endpointPort),
      String(64 * 1024 * 1024),
    ]);
    assert.equal(r.got, r.sent);
    assert.equal(r.sha_got, r.sha_sent);
  });

  it('RST propagates end to end: a client reset reaches the gateway service as a reset', async () => {
    const before = gatewayEcho.events.filter((e) => e === 'reset').length;
    const r = await client<{ reset: boolean }>(lab, 'endpoint', ['reset', TUN.gw1, String(TUN.gatewayPort)]);
    assert.equal(r.reset, true);
    await waitFor(
      () => gatewayEcho.events.filter((e) => e === 'reset').length > before,
      5000,
      'the reset at the gateway service',
    );
  });

  it('a peer with a foreign CA certificate, or none, is refused; an unlisted service is refused with a reason', async () => {
    const foreign = await client<{ outcome: string }>(lab, 'ep', [
      'tls-foreign',
      TUN.gw1,
      String(TUN.linkPort),
      pki.ca,
      pki.foreign.cert,
      pki.foreign.key,
    ]);
    assert.notEqual(foreign.outcome, 'data');
    const none = await client<{ outcome: string }>(lab, 'ep', [
      'tls-nocert',
      TUN.gw1,
      String(TUN.linkPort),
      pki.ca,
    ]);
    assert.notEqual(none.outcome, 'data');
    const open = await client<{ status: number; reason: string }>(lab, 'ep', [
      'open',
      TUN.gw1,
      String(TUN.linkPort),
      pki.ca,
      pki.nodes.probe!.cert,
      pki.nodes.probe!.key,
      'ssh',
    ]);
    assert.equal(open.status, 1);
    assert.match(open.reason, /no service named "ssh"/);
    const s = await status(gw1);
    assert.ok((s.sessions.refusals.unknown_service ?? 0) >= 1);
    assert.equal(
      s.links.filter((l) => l.peer !== 'probe' && l.state === 'up').length,
      1,
      'only ep holds a link',
    );
  });

  it("a second CA-signed certificate claiming another node's name is refused (name_mismatch), logged with the address and reason, and ep keeps its link", async () => {
    const before = (await status(gw1)).link_refusals?.name_mismatch ?? 0;
    const r = await client<{ bye?: { reason: string; detail: string } }>(lab, 'ep', [
      'open',
      TUN.gw1,
      String(TUN.linkPort),
      pki.ca,
      pki.nodes.probe!.cert,
      pki.nodes.probe!.key,
      'gateway',
      'ep', // the probe's certificate, the endpoint proxy's name
    ]);
    assert.equal(r.bye?.reason, 'name_mismatch', JSON.stringify(r));
    const s = await status(gw1);
    assert.equal(s.link_refusals?.name_mismatch, before + 1);
    const line = gw1.log.find((l) => /tunnel_link_refused/.test(l) && /name_mismatch/.test(l));
    assert.ok(line, `a log line for the refusal: ${gw1.log.slice(-5).join(' | ')}`);
    assert.match(line, new RegExp(`remote=${TUN.ep.replace(/\./g, '\\.')}:\\d+`));
    assert.equal(
      s.links.filter((l) => l.peer === 'ep' && l.state === 'up').length,
      1,
      'the real ep keeps its link',
    );
  });

  it('faults (link cut mid-transfer, proxy killed -9, lost FINs) over ~2000 sessions: failover works, no CLOSE_WAIT, descriptors back to baseline', async function () {
    this.timeout(150_000);
    const pids = { ep: ep.child.pid!, gw1: gw1.child.pid! };
    const quiet = async (): Promise<void> => {
      for (const n of [ep, gw1, gw2])
        await waitStatus(n, (s) => s.sessions.count === 0, 20_000, 'no sessions left');
    };
    await quiet();
    // gw2 is killed and restarted below: a new process, so only ep and gw1 have a baseline to return to.
    // The lowest of a few samples: a single one once caught a transient descriptor (a status query
    // being answered), and the end state then read one below "baseline".
    const lowest = async (pid: number): Promise<number> => {
      let min = Infinity;
      for (let i = 0; i < 10; i++) {
        min = Math.min(min, fdCount(pid));
        await new Promise((r) => setTimeout(r, 30));
      }
      return min;
    };
    const baseline = { ep: await lowest(pids.ep), gw1: await lowest(pids.gw1) };
    const upcalls = (via: string, n: number) =>
      client<Many>(lab, 'endpoint', ['many', via, String(TUN.gatewayPort), String(n), '25']);
    const downcalls = (n: number) =>
      client<Many>(lab, 'gateway', ['many', TUN.ep, String(TUN.endpointPort), String(n), '25']);
    let sessions = 0;

    // Normal load both ways.
    const [u1, u2, d1] = await Promise.all([upcalls(TUN.gw1, 300), upcalls(TUN.gw2, 300), downcalls(400)]);
    assert.equal(u1.failed + u2.failed + d1.failed, 0, JSON.stringify([u1, u2, d1]));
    sessions += 1000;

    // 1. gw1 silently cut (firewall drop) in the middle of a transfer and of held sessions.
    const held = client<{ open: number }>(
      lab,
      'gateway',
      ['hold', TUN.ep, String(TUN.endpointPort), '40', '6'],
      20_000,
    );
    const transfer = lab.node(
      'endpoint',
      'dist/test/fixtures/tunnel-client.js',
      ['transfer', TUN.gw1, String(TUN.gatewayPort), String(1024 * 1024 * 1024)],
      8000,
    );
    await sleep(700);
    await lab.killSilently('gw1', 'eth0');
    await waitStatus(
      ep,
      (s) => s.links.filter((l) => l.state === 'up').length === 1,
      10_000,
      'the heartbeat to drop the cut link',
    );
    await transfer; // fails or is killed at its bound: the endpoint's own socket hangs behind the drop
    // Failover: downcalls now all go through gw2.
    const d2 = await downcalls(200);
    assert.equal(d2.failed, 0, `failover: ${JSON.stringify(d2)}`);
    sessions += 240;
    await held;
    await lab.revive('gw1', 'eth0');
    await waitStatus(
      ep,
      (s) => s.links.filter((l) => l.state === 'up').length === 2,
      20_000,
      'the link to gw1 to come back',
    );

    // 2. gw2 killed with -9 while sessions are open; restarted.
    const held2 = client<{ open: number }>(
      lab,
      'gateway',
      ['hold', TUN.ep, String(TUN.endpointPort), '40', '3'],
      20_000,
    );
    const up2 = upcalls(TUN.gw2, 200);
    await sleep(500);
    gw2.child.kill('SIGKILL');
    await waitStatus(
      ep,
      (s) => s.links.filter((l) => l.state === 'up').length === 1,
      10_000,
      'the killed proxy to be noticed',
    );
    await Promise.all([held2, up2]);
    sessions += 240;
    gw2 = startNode(lab, pki, gw2.spec);
    await waitStatus(ep, (s) => s.links.filter((l) => l.state === 'up').length === 2, 20_000, 'gw2 back');

    // 3. Lost FINs: the gateway service's FINs never reach the endpoint proxy.
    const file = lab.tempPath('nft-lostfin');
    fs.writeFileSync(
      file,
      `table inet idglostfin {\n  chain out { type filter hook output priority 0; policy accept;\n    tcp sport ${TUN.gatewayPort} tcp flags & fin == fin drop\n  }\n}\n`,
    );
    await lab.execOk('gateway', ['nft', '-f', file]);
    const lost = await upcalls(TUN.gw1, 100);
    assert.equal(lost.ok, 0, 'without the FIN no session completes');
    await lab.execOk('gateway', ['nft', 'delete', 'table', 'inet', 'idglostfin']);
    sessions += 100;

    // Recovery: normal load again.
    const [u3, d3] = await Promise.all([upcalls(TUN.gw1, 250), downcalls(250)]);
    if (u3.failed + d3.failed > 0) {
      const diag = await Promise.all([ep, gw1, gw2].map((n) => status(n).then((x) => x.sessions)));
      assert.fail(
        `recovery: ${JSON.stringify([u3, d3])}; sessions ${JSON.stringify(diag)}; ep log ${ep.log.slice(-8).join(' | ')}`,
      );
    }
    sessions += 500;

    // The IY55176 check.
    await quiet();
    for (const host of ['ep', 'gw1', 'gw2'])
      assert.deepEqual(await closeWait(lab, host), [], `CLOSE_WAIT sockets in ${host}`);
    await waitFor(
      () => fdCount(pids.ep) <= baseline.ep,
      10_000,
      `ep descriptors back to ${baseline.ep} (now ${fdCount(pids.ep)})`,
    );
    await waitFor(
      () => fdCount(pids.gw1) <= baseline.gw1,
      10_000,
      `gw1 descriptors back to ${baseline.gw1} (now ${fdCount(pids.gw1)})`,
    );
    const st = await status(ep);
    assert.ok(st.sessions.close_timeouts >= 1, `close timeouts counted: ${JSON.stringify(st.sessions)}`);
    assert.ok(sessions >= 2000);
  });
});

describe('tunnel lab: a relay chain of two', function () {
  this.timeout(60_000);
  let lab: Lab;
  let pki: TestPki;

  before(async function () {
    requireRoot(this);
    pki = makePki(['gwp', 'r1', 'r2', 'epp'], { r1: ['*'], r2: ['*'], epp: ['gateway'] });
    const a = (host: string, last: number) => ({ host, iface: 'eth0', addrs: [`198.18.3.${last}/24`] });
    lab = await Lab.create({
      hosts: { server: {}, epp: {}, r1: {}, r2: {}, gwp: {}, client: {} },
      lans: [
        {
          name: 'chain',
          members: [a('server', 10), a('epp', 2), a('r1', 31), a('r2', 32), a('gwp', 11), a('client', 20)],
        },
      ],
    });
  });
  after(async () => {
    await lab?.close();
    pki?.cleanup();
  });

  it('client -> gateway proxy -> relay -> relay -> endpoint proxy -> server, routed by service name, sha256 intact', async () => {
    startEcho(lab, 'server', '198.18.3.10', 9494);
    const r1 = startNode(lab, pki, { host: 'r1', name: 'r1', role: 'relay', listen: '198.18.3.31:9401' });
    const r2 = startNode(lab, pki, {
      host: 'r2',
      name: 'r2',
      role: 'relay',
      listen: '198.18.3.32:9401',
      links: ['198.18.3.31:9401'],
    });
    const epp = startNode(lab, pki, {
      host: 'epp',
      name: 'epp',
      role: 'endpoint-proxy',
      links: ['198.18.3.31:9401'],
      services: { gateway: '198.18.3.10:9494' },
    });
    const gwp = startNode(lab, pki, {
      host: 'gwp',
      name: 'gwp',
      role: 'gateway-proxy',
      links: ['198.18.3.32:9401'],
      forwards: [{ listen: '198.18.3.11:9494', service: 'gateway' }],
    });
    const st = await waitStatus(
      gwp,
      (s) => s.links.some((l) => l.services.gateway === 2),
      15_000,
      'gateway announced two relays away',
    );
    assert.equal(st.links[0]!.peer, 'r2');
    const t = await client<Transfer>(lab, 'client', [
      'transfer',
      '198.18.3.11',
      '9494',
      String(16 * 1024 * 1024),
    ]);
    assert.equal(t.sha_got, t.sha_sent);
    const m = await client<Many>(lab, 'client', ['many', '198.18.3.11', '9494', '200', '20']);
    assert.equal(m.failed, 0, JSON.stringify(m));
    for (const relay of [r1, r2]) {
      const s = await waitStatus(relay, (x) => x.sessions.count === 0, 10_000, 'relay sessions to end');
      assert.equal(s.sessions.opened, 201, `${relay.spec.name} relayed every session`);
    }
    // At the default native_relay_after, the 16 MiB transfer went to the native relay mid-stream at
    // both proxies and the 200 short sessions stayed in JavaScript.
    for (const proxy of [gwp, epp])
      assert.equal((await status(proxy)).sessions.relayed, 1, `${proxy.spec.name}: one session relayed`);
    for (const host of ['gwp', 'r1', 'r2', 'epp'])
      assert.deepEqual(await closeWait(lab, host), [], `CLOSE_WAIT in ${host}`);
  });
});
