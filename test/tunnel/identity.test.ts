// Identities and refusals on loopback: a node's announced name is bound to its
// certificate; tunnel.peers says who may link, announce and open what; and every refused link is
// seen: an event with the peer's address and the reason on the refusing side, and on the dialer's.
import { strict as assert } from 'node:assert';
import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { tunnelConfigSchema, type TunnelConfigInput } from '../../src/tunnel/config';
import { certificateNames, LINK_ALPN } from '../../src/tunnel/link';
import { MuxSession } from '../../src/tunnel/muxsession';
import { TunnelNode } from '../../src/tunnel/node';
import { CONTROL_SERVICE, encodeOpen, readAnswer, Refusal } from '../../src/tunnel/protocol';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { Events, freePort, sleep, until } from './helpers';

describe('tunnel: identities bound to certificates, peers authorized, every refusal seen', function () {
  this.timeout(30_000);
  let pki: TestPki;
  const nodes: TunnelNode[] = [];

  before(() => {
    pki = makePki(['gw1', 'ep', 'relay'], { ep: ['gateway', 'other'] });
  });
  after(() => pki.cleanup());
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.close();
  });

  async function start(
    name: string,
    c: Partial<TunnelConfigInput>,
    tlsFiles: { cert: string; key: string } = pki.nodes[name]!,
  ): Promise<{ node: TunnelNode; events: Events }> {
    const events = new Events();
    const node = await TunnelNode.start(
      tunnelConfigSchema.parse({
        name,
        role: 'gateway-proxy',
        tls: { ca: pki.ca, ...tlsFiles },
        heartbeat: '500ms',
        handshake_timeout: '400ms',
        ...c,
      }),
      { events },
    );
    nodes.push(node);
    return { node, events };
  }

  it('reads the names a certificate vouches for: DNS and URI SANs, CN only without them', () => {
    const pem = fs.readFileSync(pki.nodes.gw1!.cert);
    const x = new X509Certificate(pem);
    assert.match(x.subjectAltName ?? '', /DNS:gw1/);
    assert.deepEqual(
      certificateNames({
        subjectaltname: 'DNS:gw1, URI:spiffe://example.org/tunnel/gw2',
        subject: { CN: 'x' },
      } as never),
      ['gw1', 'gw2'],
    );
    assert.deepEqual(certificateNames({ subject: { CN: 'only-cn' } } as never), ['only-cn']);
    assert.deepEqual(
      certificateNames({ subjectaltname: 'IP Address:198.18.0.1', subject: { CN: 'c' } } as never),
      ['c'],
    );
  });

  it("a CA-signed certificate claiming another node's name is refused (name_mismatch), logged on both sides", async () => {
    const port = await freePort();
    const gw = await start('gw1', { listen: `127.0.0.1:${port}` });
    // "relay"'s certificate, but the node says it is "ep".
    const imposter = await start(
      'ep',
      { role: 'endpoint-proxy', links: [{ connect: `127.0.0.1:${port}` }] },
      pki.nodes.relay!,
    );
    await until(() => gw.events.named('tunnel_link_refused').length > 0, 5000, 'the refusal event');
    const ev = gw.events.named('tunnel_link_refused')[0]!;
    assert.equal(ev.reason, 'name_mismatch');
    assert.equal(ev.direction, 'accept');
    assert.match(String(ev.remote), /^127\.0\.0\.1:\d+$/);
    assert.match(String(ev.detail), /says it is "ep" but its certificate is for \["relay"\]/);
    await until(
      () => imposter.events.named('tunnel_link_refused').length > 0,
      5000,
      "the dialer's own event",
    );
    const mine = imposter.events.named('tunnel_link_refused')[0]!;
    assert.equal(mine.reason, 'refused_by_peer');
    assert.match(String(mine.detail), /name_mismatch/);
    assert.equal(gw.node.status().links.filter((l) => l.state === 'up').length, 0);
    assert.ok((gw.node.status().link_refusals?.name_mismatch ?? 0) >= 1);
    assert.equal(gw.events.named('tunnel_link_up').length, 0, 'the imposter never got a link');
  });

  it('the dialer checks the acceptor too: a listener whose certificate is for another name is refused', async () => {
    const port = await freePort();
    await start('gw1', { listen: `127.0.0.1:${port}` }, pki.nodes.relay!);
    const ep = await start('ep', { role: 'endpoint-proxy', links: [{ connect: `127.0.0.1:${port}` }] });
    await until(() => ep.events.named('tunnel_link_refused').length > 0, 5000, 'the refusal');
    assert.equal(ep.events.named('tunnel_link_refused')[0]!.reason, 'name_mismatch');
    assert.equal(ep.events.named('tunnel_link_refused')[0]!.direction, 'dial');
  });

  it('refused peers are logged with address and reason: expired, not yet valid, wrong purpose, unknown CA, no certificate, no ALPN, handshake timeout', async () => {
    const port = await freePort();
    const gw = await start('gw1', { listen: `127.0.0.1:${port}` });
    const ca = fs.readFileSync(pki.ca);
    const attempt = (opts: tls.ConnectionOptions): Promise<string> =>
      new Promise((resolve) => {
        const s = tls.connect({
          host: '127.0.0.1',
          port,
          ca,
          minVersion: 'TLSv1.3',
          checkServerIdentity: () => undefined,
          ALPNProtocols: [LINK_ALPN],
          ...opts,
        });
        s.on('data', () => undefined);
        s.once('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code}`));
        s.once('close', () => resolve('closed'));
        setTimeout(() => (s.destroy(), resolve('timeout')), 2000).unref();
      });
    const files = (f: { cert: string; key: string }) => ({
      cert: fs.readFileSync(f.cert),
      key: fs.readFileSync(f.key),
    });
    const cases: [string, tls.ConnectionOptions][] = [
      ['cert_expired', files(pki.special.expired)],
      ['cert_not_yet_valid', files(pki.special.notyet)],
      ['wrong_purpose', files(pki.special.serveronly)],
      ['unknown_ca', files(pki.foreign)],
      ['no_certificate', {}],
      ['protocol_version', { ...files(pki.nodes.ep!), ALPNProtocols: [] }],
    ];
    for (const [reason, opts] of cases) {
      const before = gw.events.named('tunnel_link_refused').length;
      const outcome = await attempt(opts);
      assert.notEqual(outcome, 'timeout', `${reason}: the connection is closed at once`);
      await until(() => gw.events.named('tunnel_link_refused').length > before, 3000, `${reason} event`);
      const ev = gw.events.named('tunnel_link_refused').at(-1)!;
      assert.equal(ev.reason, reason, JSON.stringify(ev));
      assert.match(String(ev.remote), /^127\.0\.0\.1:\d+$/);
      assert.equal(ev.level, 'warn');
    }
    // An ALPN the server does not speak: refused in the handshake with a TLS alert.
    const other = await attempt({ ...files(pki.nodes.ep!), ALPNProtocols: ['ipdeadgate/99'] });
    assert.match(other, /NO_APPLICATION_PROTOCOL/, 'the TLS no_application_protocol alert');
    await until(
      () => gw.events.named('tunnel_link_refused').at(-1)?.reason === 'protocol_version',
      3000,
      'the ALPN refusal',
    );
    // A peer that connects and says nothing.
    const before = gw.events.named('tunnel_link_refused').length;
    const mute = net.connect(port, '127.0.0.1');
    mute.on('error', () => undefined);
    await until(() => gw.events.named('tunnel_link_refused').length > before, 3000, 'the handshake timeout');
    assert.equal(gw.events.named('tunnel_link_refused').at(-1)!.reason, 'handshake_timeout');
    mute.destroy();
    const counts = gw.node.status().link_refusals!;
    for (const [reason] of cases) assert.ok((counts[reason] ?? 0) >= 1, `${reason} counted`);
  });

  it('the dialer logs its own refusal: a listener with an expired certificate', async () => {
    const port = await freePort();
    await start('special-expired', { listen: `127.0.0.1:${port}` }, pki.special.expired);
    const ep = await start('ep', { role: 'endpoint-proxy', links: [{ connect: `127.0.0.1:${port}` }] });
    await until(() => ep.events.named('tunnel_link_refused').length > 0, 5000, 'the refusal');
    const ev = ep.events.named('tunnel_link_refused')[0]!;
    assert.equal(ev.reason, 'cert_expired');
    assert.equal(ev.direction, 'dial');
    assert.equal(ep.node.status().links[0]!.state, 'connecting');
    assert.match(ep.node.status().links[0]!.last_error ?? '', /expired/);
  });

  it("an acceptor that refuses the dialer's certificate tells it why: the dialer logs the reason too", async () => {
    const port = await freePort();
    const gw = await start('gw1', { listen: `127.0.0.1:${port}` });
    const ep = await start(
      'special-expired',
      { role: 'endpoint-proxy', links: [{ connect: `127.0.0.1:${port}` }] },
      pki.special.expired,
    );
    await until(() => ep.events.named('tunnel_link_refused').length > 0, 5000, "the dialer's event");
    const mine = ep.events.named('tunnel_link_refused')[0]!;
    assert.equal(mine.reason, 'refused_by_peer');
    assert.equal(mine.direction, 'dial');
    assert.match(String(mine.detail), /the peer refused the link: cert_expired: /);
    assert.equal(gw.events.named('tunnel_link_refused')[0]!.reason, 'cert_expired');
  });

  it('refusal events are rate-limited; the counter counts every one', async () => {
    const port = await freePort();
    const gw = await start('gw1', { listen: `127.0.0.1:${port}` });
    const ca = fs.readFileSync(pki.ca);
    await Promise.all(
      Array.from(
        { length: 20 },
        () =>
          new Promise<void>((resolve) => {
            const s = tls.connect({
              host: '127.0.0.1',
              port,
              ca,
              checkServerIdentity: () => undefined,
              ALPNProtocols: [LINK_ALPN],
            });
            s.on('error', () => undefined);
            s.once('close', () => resolve());
            s.on('data', () => undefined);
          }),
      ),
    );
    await until(() => (gw.node.status().link_refusals?.no_certificate ?? 0) === 20, 3000, '20 counted');
    assert.equal(gw.events.named('tunnel_link_refused').length, 5, 'at most 5 events per reason in 10 s');
  });

  it('tunnel.peers: an unlisted peer is refused; a service a peer may not announce is ignored with an event; a service it may not open is refused', async () => {
    const port = await freePort();
    const echo = net.createServer((s) => {
      s.on('error', () => undefined);
      s.pipe(s);
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    try {
      const echoAt = `127.0.0.1:${(echo.address() as net.AddressInfo).port}`;
      const gw = await start('gw1', {
        listen: `127.0.0.1:${port}`,
        services: { 'endpoint-e': echoAt, secret: echoAt },
        peers: { ep: { announce: ['gateway'], open: ['endpoint-*'] } },
      });
      await start('ep', {
        role: 'endpoint-proxy',
        links: [{ connect: `127.0.0.1:${port}` }],
        services: { gateway: echoAt, 'mail-relay': echoAt },
      });
      await until(
        () => gw.node.status().links.some((l) => l.peer === 'ep' && l.state === 'up'),
        5000,
        'ep linked',
      );
      await until(
        () => gw.events.named('tunnel_announcement_ignored').length > 0,
        3000,
        'the ignored announcement',
      );
      const ign = gw.events.named('tunnel_announcement_ignored')[0]!;
      assert.equal(ign.peer, 'ep');
      assert.deepEqual(ign.services, ['mail-relay']);
      assert.deepEqual(gw.node.status().links.find((l) => l.peer === 'ep')!.services, { gateway: 0 });
      // An unlisted peer with a valid certificate and its own name.
      const relay = await start('relay', { role: 'relay', links: [{ connect: `127.0.0.1:${port}` }] });
      await until(
        () => gw.events.named('tunnel_link_refused').some((e) => e.reason === 'peer_not_allowed'),
        5000,
        'peer_not_allowed',
      );
      await until(() => relay.events.named('tunnel_link_refused').length > 0, 3000, "relay's own event");
      // Opening: ep may open endpoint-*, not secret.
      const sock = tls.connect({
        host: '127.0.0.1',
        port,
        ca: fs.readFileSync(pki.ca),
        ...{ cert: fs.readFileSync(pki.nodes.ep!.cert), key: fs.readFileSync(pki.nodes.ep!.key) },
        checkServerIdentity: () => undefined,
        ALPNProtocols: [LINK_ALPN],
      });
      await new Promise<void>((r, j) => sock.once('secureConnect', r).once('error', j));
      const m = new MuxSession(sock, { role: 'client' });
      try {
        const control = m.open(encodeOpen(CONTROL_SERVICE));
        await readAnswer(control);
        control.write(
          JSON.stringify({ type: 'hello', name: 'ep', role: 'endpoint-proxy', services: {} }) + '\n',
        );
        await sleep(100);
        const denied = await readAnswer(m.open(encodeOpen('secret')));
        assert.equal(denied.status, Refusal.NotAllowed);
        assert.match(denied.reason, /ep may not open "secret"/);
        const ok = await readAnswer(m.open(encodeOpen('endpoint-e')));
        assert.equal(ok.status, 0);
      } finally {
        m.close();
      }
      assert.equal(gw.node.status().sessions.refusals.not_allowed, 1);
    } finally {
      echo.close();
    }
  });

  it('a reload that narrows what a peer may announce filters again; one that drops the peer ends its link', async () => {
    const port = await freePort();
    const base = { listen: `127.0.0.1:${port}` };
    const gw = await start('gw1', base);
    await start('ep', {
      role: 'endpoint-proxy',
      links: [{ connect: `127.0.0.1:${port}` }],
      services: { gateway: '127.0.0.1:9', other: '127.0.0.1:9' },
    });
    const epLink = () => gw.node.status().links.find((l) => l.peer === 'ep' && l.state === 'up');
    await until(() => epLink()?.services.other === 0, 5000, 'ep announces two services');
    const cfg = (peers: Record<string, { announce?: string[]; open?: string[] }>) => ({
      ...gw.node.cfg,
      peers: Object.fromEntries(
        Object.entries(peers).map(([k, v]) => [k, { announce: v.announce ?? ['*'], open: v.open ?? ['*'] }]),
      ),
    });
    assert.deepEqual(await gw.node.reload(cfg({ ep: { announce: ['gateway'] } })), ['peers']);
    assert.deepEqual(epLink()!.services, { gateway: 0 });
    assert.deepEqual(gw.events.named('tunnel_announcement_ignored').at(-1)!.services, ['other']);
    await gw.node.reload(cfg({ relay: {} }));
    await until(() => !epLink(), 3000, "ep's link to end");
    assert.equal(gw.events.named('tunnel_link_refused').at(-1)!.reason, 'peer_not_allowed');
  });
});
