// What a peer may announce, on loopback: without tunnel.peers, only the services its certificate
// names (URI SAN ipdeadgate:service:PATTERN); a relay's certificate names "*". A hostile peer with a
// valid certificate from the CA that announces someone else's service at hop 0 is ignored (an event
// and a counter), and the sessions still go to the node that serves it; tunnel.peers overrides the
// certificate both ways.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { ownCertificateGaps } from '../../src/tunnel/announcetrust';
import { tunnelConfigSchema, type TunnelConfigInput } from '../../src/tunnel/config';
import { certificateNames, certificateServices } from '../../src/tunnel/linktls';
import { TunnelNode } from '../../src/tunnel/node';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import * as fs from 'node:fs';
import { Events, freePort, readAll, until } from './helpers';

describe('tunnel: a peer announces only the services its certificate (or tunnel.peers) allows', function () {
  this.timeout(30_000);
  let pki: TestPki;
  const nodes: TunnelNode[] = [];
  const servers: net.Server[] = [];
  /** Connections each reply server took, by its prefix. */
  const taken: Record<string, number> = {};

  before(() => {
    pki = makePki(['ep', 'relay', 'gw', 'gw2', 'hostile'], {
      relay: ['*'],
      gw: ['web'],
      gw2: ['web'],
      hostile: ['other'],
    });
  });
  after(() => pki.cleanup());
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.close();
    for (const s of servers.splice(0)) s.close();
  });

  /** A TCP service that answers "<prefix>" + what it read, after the client's FIN. */
  async function replyServer(prefix: string): Promise<string> {
    taken[prefix] = 0;
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      taken[prefix]!++;
      s.on('error', () => undefined);
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('end', () => s.end(Buffer.concat([Buffer.from(prefix), ...chunks])));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push(server);
    return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  }

  async function start(
    name: string,
    c: Partial<TunnelConfigInput>,
  ): Promise<{ node: TunnelNode; events: Events }> {
    const events = new Events();
    const node = await TunnelNode.start(
      tunnelConfigSchema.parse({
        name,
        role: 'gateway-proxy',
        tls: { ca: pki.ca, ...pki.nodes[name]! },
        heartbeat: '500ms',
        ...c,
      }),
      { events },
    );
    nodes.push(node);
    return { node, events };
  }

  async function call(port: number, data: string): Promise<string> {
    const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    await new Promise<void>((r, j) => c.once('connect', r).once('error', j));
    const reply = readAll(c);
    c.end(data);
    return (await reply).toString();
  }

  /** ep with a forward to "web"; returns its link port and forward port. */
  async function startEp(c: Partial<TunnelConfigInput> = {}) {
    const [linkPort, fwdPort] = [await freePort(), await freePort()];
    const ep = await start('ep', {
      role: 'endpoint-proxy',
      listen: `127.0.0.1:${linkPort}`,
      forwards: [{ listen: `127.0.0.1:${fwdPort}`, service: 'web' }],
      ...c,
    });
    return { ...ep, linkPort, fwdPort };
  }
  const linkOf = (n: TunnelNode, peer: string) =>
    n.status().links.find((l) => l.peer === peer && l.state === 'up');

  it('reads the services a certificate names; they never count as node names', () => {
    const san =
      'DNS:gw1, URI:ipdeadgate:service:web, URI:ipdeadgate:service:endpoint-*, URI:ipdeadgate:service:bad name';
    assert.deepEqual(certificateServices(san), ['web', 'endpoint-*']);
    assert.deepEqual(certificateServices('DNS:gw1, URI:spiffe://example.org/tunnel/gw1'), []);
    // A service URI must not let the certificate pose as a node of that name.
    assert.deepEqual(
      certificateNames({
        subjectaltname: 'DNS:gw1, URI:ipdeadgate:service:gw2',
        subject: { CN: 'x' },
      } as never),
      ['gw1'],
    );
    const relay = fs.readFileSync(pki.nodes.relay!.cert);
    assert.deepEqual(ownCertificateGaps(relay, 'relay', []), []);
    assert.deepEqual(ownCertificateGaps(fs.readFileSync(pki.nodes.ep!.cert), 'relay', []), ['*']);
    assert.deepEqual(
      ownCertificateGaps(fs.readFileSync(pki.nodes.gw!.cert), 'gateway-proxy', ['web', 'db']),
      ['db'],
    );
  });

  it('a hostile peer whose certificate does not name "web" announces it at hop 0: ignored, sessions still go to the real one', async () => {
    const legitAt = await replyServer('legit:');
    const hostileAt = await replyServer('hostile:');
    const ep = await startEp();
    const relayPort = await freePort();
    await start('relay', {
      role: 'relay',
      listen: `127.0.0.1:${relayPort}`,
      links: [{ connect: `127.0.0.1:${ep.linkPort}` }],
    });
    // The real "web", one relay away (hop 1 at ep).
    await start('gw', { links: [{ connect: `127.0.0.1:${relayPort}` }], services: { web: legitAt } });
    // A valid certificate from the CA, for "hostile" and the service "other" only; it links to ep
    // directly and says it serves "web" itself (hop 0, fewer hops than the real one).
    const hostile = await start('hostile', {
      links: [{ connect: `127.0.0.1:${ep.linkPort}` }],
      services: { web: hostileAt },
    });
    // The hostile node is told at start that its certificate names no "web".
    const own = hostile.events.named('tunnel_certificate_names_no_service');
    assert.equal(own.length, 1);
    assert.deepEqual(own[0]!.services, ['web']);

    await until(() => linkOf(ep.node, 'relay')?.services.web === 1, 5000, 'web via the relay at 1 hop');
    await until(() => linkOf(ep.node, 'hostile') !== undefined, 5000, 'the hostile link up');
    await until(() => ep.events.named('tunnel_announcement_ignored').length > 0, 3000, 'the event');
    const ign = ep.events.named('tunnel_announcement_ignored')[0]!;
    assert.equal(ign.peer, 'hostile');
    assert.deepEqual(ign.services, ['web']);
    assert.equal(ign.rule, 'certificate');
    assert.match(String(ign.detail), /ipdeadgate:service:/);
    assert.equal(ign.level, 'warn');
    assert.deepEqual(linkOf(ep.node, 'hostile')!.services, {});
    assert.ok((ep.node.status().announcements_ignored?.certificate ?? 0) >= 1);

    for (let i = 0; i < 5; i++) assert.equal(await call(ep.fwdPort, `s${i}`), `legit:s${i}`);
    assert.equal(taken['hostile:'], 0, 'no session reached the hostile node');
    assert.equal(taken['legit:'], 5);
  });

  it('a certificate that names "web" may announce it at hop 0', async () => {
    const at = await replyServer('gw2:');
    const ep = await startEp();
    await start('gw2', { links: [{ connect: `127.0.0.1:${ep.linkPort}` }], services: { web: at } });
    await until(() => linkOf(ep.node, 'gw2')?.services.web === 0, 5000, 'web announced at hop 0');
    assert.equal(await call(ep.fwdPort, 'x'), 'gw2:x');
    assert.equal(ep.events.named('tunnel_announcement_ignored').length, 0);
    assert.deepEqual(ep.node.status().announcements_ignored, {});
  });

  it('tunnel.peers overrides the certificate both ways', async () => {
    const hostileAt = await replyServer('listed:');
    // Widens: the operator lists "hostile" with announce ["web"]: kept though its certificate
    // does not name it.
    const ep = await startEp({ peers: { hostile: { announce: ['web'] }, gw2: { announce: ['other'] } } });
    await start('hostile', {
      links: [{ connect: `127.0.0.1:${ep.linkPort}` }],
      services: { web: hostileAt },
    });
    await until(
      () => linkOf(ep.node, 'hostile')?.services.web === 0,
      5000,
      "hostile's web kept by tunnel.peers",
    );
    assert.equal(await call(ep.fwdPort, 'y'), 'listed:y');
    // Narrows: gw2's certificate names "web", but tunnel.peers allows it only "other".
    await start('gw2', { links: [{ connect: `127.0.0.1:${ep.linkPort}` }], services: { web: hostileAt } });
    await until(() => ep.events.named('tunnel_announcement_ignored').length > 0, 5000, 'the event');
    const ign = ep.events.named('tunnel_announcement_ignored')[0]!;
    assert.equal(ign.peer, 'gw2');
    assert.deepEqual(ign.services, ['web']);
    assert.equal(ign.rule, 'peers');
    assert.deepEqual(linkOf(ep.node, 'gw2')!.services, {});
    assert.equal(ep.node.status().announcements_ignored?.peers, 1);
  });
});
