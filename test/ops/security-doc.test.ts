// docs/security.md's openssl recipe makes what the tunnel accepts: the commands are taken from the
// page as written and run with Debian's openssl, and two node certificates from them complete a
// mutually authenticated TLS 1.3 handshake, each vouching for its node name as the link requires.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { certificateVouchesFor } from '../../src/tunnel/link';
import { REPO_ROOT } from '../lab/lab';

function recipe(): { ca: string; node: string } {
  const text = fs.readFileSync(path.join(REPO_ROOT, 'docs', 'security.md'), 'utf8');
  const block = /### A CA and node certificates with openssl[\s\S]*?```sh\n([\s\S]*?)```/.exec(text)?.[1];
  assert.ok(block, 'the recipe is in docs/security.md');
  const at = block.indexOf('# A node:');
  assert.ok(at > 0);
  return { ca: block.slice(0, at), node: block.slice(at) };
}

describe('docs/security.md: the PKI recipe', function () {
  this.timeout(60_000);
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-pki-doc-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('makes a CA and node certificates that link to each other over mutual TLS 1.3', async () => {
    const { ca, node } = recipe();
    const sh = (script: string) =>
      execFileSync('bash', ['-euo', 'pipefail', '-c', script], { cwd: dir, stdio: 'pipe' });
    sh(ca);
    sh(node);
    assert.match(node, /node=gwproxy-outer1\n/);
    sh(node.replace(/node=gwproxy-outer1\n/, 'node=relay-dmz1\n'));
    const read = (f: string) => fs.readFileSync(path.join(dir, f));
    assert.equal(
      fs.statSync(path.join(dir, 'gwproxy-outer1.key')).mode & 0o077,
      0,
      'keys are private (umask 077)',
    );
    const opts = (name: string) => ({
      ca: read('tunnel-ca.pem'),
      cert: read(`${name}.pem`),
      key: read(`${name}.key`),
      minVersion: 'TLSv1.3' as const,
      maxVersion: 'TLSv1.3' as const,
      rejectUnauthorized: true,
    });
    const seen = await new Promise<{ server: tls.PeerCertificate; client: tls.PeerCertificate }>(
      (resolve, reject) => {
        let serverSaw: tls.PeerCertificate | null = null;
        const server = tls.createServer({ ...opts('gwproxy-outer1'), requestCert: true }, (s) => {
          serverSaw = s.getPeerCertificate();
          s.end('ok');
        });
        server.listen(0, '127.0.0.1', () => {
          const port = (server.address() as { port: number }).port;
          const c = tls.connect(
            { ...opts('relay-dmz1'), host: '127.0.0.1', port, checkServerIdentity: () => undefined },
            () => {
              const clientSaw = c.getPeerCertificate();
              c.on('data', () => undefined);
              c.on('end', () => {
                server.close();
                resolve({ server: serverSaw!, client: clientSaw });
              });
            },
          );
          c.on('error', (e) => {
            server.close();
            reject(e);
          });
        });
      },
    );
    assert.ok(certificateVouchesFor(seen.client, 'gwproxy-outer1'));
    assert.ok(certificateVouchesFor(seen.server, 'relay-dmz1'));
    assert.ok(!certificateVouchesFor(seen.server, 'gwproxy-outer1'), 'a node cannot pose as another');
  });
});
