// `ipdeadgate tunnel`: a bad config exits 2 naming the file, line and key; a good one runs, serves
// status on --control, and exits 0 on SIGTERM.
import { strict as assert } from 'node:assert';
import { execFile, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { controlRequest } from '../../src/daemon/control';
import type { TunnelStatus } from '../../src/tunnel/node';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { freePort, sleep } from './helpers';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'ipdeadgate');

function run(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 15_000 }, (err, _out, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stderr: String(stderr) });
    });
  });
}

describe('tunnel: the ipdeadgate tunnel command', function () {
  this.timeout(30_000);
  let pki: TestPki;
  before(() => {
    pki = makePki(['gw1', 'ep']);
  });
  after(() => pki.cleanup());

  const write = (name: string, text: string): string => {
    const f = path.join(pki.dir, name);
    fs.writeFileSync(f, text);
    return f;
  };

  it('exits 2 on a bad config, naming the file, line and key', async () => {
    const cases: [string, RegExp][] = [
      [
        'tunnel:\n  role: gateway\n  name: gw1\n  tls: { ca: ca.pem, cert: gw1.pem, key: gw1.key }\n  listen: 127.0.0.1:9401\n',
        /bad1\.yaml:2: tunnel\.role: must be one of/,
      ],
      [
        'tunnel:\n  role: relay\n  name: r\n  tls: { ca: ca.pem, cert: gw1.pem, key: gw1.key }\n  listen: 127.0.0.1:9401\n  heartbeat: soon\n',
        /bad2\.yaml:6: tunnel\.heartbeat: "soon" is not a duration/,
      ],
      [
        'tunnel:\n  role: relay\n  name: r\n  tls: { ca: ca.pem, cert: gw1.pem, key: gw1.key }\n  links:\n    - { connect: nowhere }\n',
        /bad3\.yaml:6: tunnel\.links\.0\.connect: "nowhere" is not HOST:PORT/,
      ],
      [
        'tunnel:\n  role: relay\n  name: r\n  tls: { ca: ca.pem, cert: gw1.pem, key: gw1.key }\n  listen: 127.0.0.1:9401\n  max_session: 5\n',
        /bad4\.yaml:6: tunnel\.max_session: unknown key/,
      ],
    ];
    let i = 0;
    for (const [text, want] of cases) {
      const f = write(`bad${++i}.yaml`, text);
      const r = await run(['tunnel', '--config', f]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, want);
    }
  });

  it('runs a gateway proxy from a config with relative TLS paths, serves status on --control, exits 0 on SIGTERM', async () => {
    fs.copyFileSync(pki.nodes.gw1!.cert, path.join(pki.dir, 'node.pem'));
    fs.copyFileSync(pki.nodes.gw1!.key, path.join(pki.dir, 'node.key'));
    const f = write(
      'gw1.yaml',
      `tunnel:\n  role: gateway-proxy\n  name: gw1\n  tls: { ca: ca.pem, cert: node.pem, key: node.key }\n  listen: 127.0.0.1:${await freePort()}\n  services:\n    gateway: 127.0.0.1:9\n`,
    );
    const control = path.join(pki.dir, 'control.sock');
    const child = spawn(process.execPath, [BIN, 'tunnel', '--config', f, '--control', control], {
      stdio: 'pipe',
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    try {
      let status: { tunnel: TunnelStatus } | undefined;
      for (let i = 0; i < 100 && !status; i++) {
        await sleep(100);
        status = (await controlRequest(control, 'status').catch(() => undefined)) as typeof status;
      }
      assert.ok(status, `no status: ${stderr}`);
      assert.equal(status.tunnel.name, 'gw1');
      assert.equal(status.tunnel.role, 'gateway-proxy');
      assert.deepEqual(status.tunnel.sessions.refusals, {});
      // The CLI's text status of a tunnel-only process shows just the tunnel.
      const text = spawnSync(process.execPath, [BIN, 'status', '--control', control], { encoding: 'utf8' });
      assert.equal(text.status, 0, text.stderr);
      assert.match(text.stdout, /^tunnel gw1 \(gateway-proxy\): 0 link\(s\)\n {2}sessions: 0 open/);
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('out of descriptors (ulimit -n 64): the proxy survives the descriptor limit and serves again when descriptors are freed', async () => {
    const net = await import('node:net');
    const echo = net.createServer({ allowHalfOpen: true }, (c) => {
      c.on('error', () => undefined);
      c.pipe(c);
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    const echoPort = (echo.address() as import('node:net').AddressInfo).port;
    const [linkPort, fwdPort] = [await freePort(), await freePort()];
    for (const n of ['gw1', 'ep']) {
      fs.copyFileSync(pki.nodes[n]!.cert, path.join(pki.dir, `${n}.pem`));
      fs.copyFileSync(pki.nodes[n]!.key, path.join(pki.dir, `${n}.key`));
    }
    const gwCfg = write(
      'emfile-gw.yaml',
      `tunnel:\n  role: gateway-proxy\n  name: gw1\n  tls: { ca: ca.pem, cert: gw1.pem, key: gw1.key }\n  listen: 127.0.0.1:${linkPort}\n  services:\n    echo: 127.0.0.1:${echoPort}\n`,
    );
    const epCfg = write(
      'emfile-ep.yaml',
      `tunnel:\n  role: endpoint-proxy\n  name: ep\n  tls: { ca: ca.pem, cert: ep.pem, key: ep.key }\n  links:\n    - { connect: 127.0.0.1:${linkPort} }\n  forwards:\n    - { listen: 127.0.0.1:${fwdPort}, service: echo }\n`,
    );
    const control = path.join(pki.dir, 'emfile.sock');
    const gw = spawn(process.execPath, [BIN, 'tunnel', '--config', gwCfg], { stdio: 'ignore' });
    const ep = spawn(
      'bash',
      [
        '-c',
        `ulimit -n 64 && exec "${process.execPath}" "${BIN}" tunnel --config "${epCfg}" --control "${control}"`,
      ],
      { stdio: 'ignore' },
    );
    const clients: import('node:net').Socket[] = [];
    try {
      const st = async (): Promise<TunnelStatus | undefined> =>
        (
          (await controlRequest(control, 'status').catch(() => undefined)) as
            { tunnel: TunnelStatus } | undefined
        )?.tunnel;
      for (let i = 0; i < 100; i++) {
        const s = await st();
        if (s?.links[0]?.state === 'up') break;
        await sleep(100);
      }
      for (let i = 0; i < 120; i++) {
        const c = net.connect(fwdPort, '127.0.0.1');
        c.on('error', () => undefined);
        clients.push(c);
      }
      await sleep(1500);
      assert.equal(ep.exitCode, null, 'the proxy is still running');
      for (const c of clients) c.destroy();
      await sleep(1500);
      let after: TunnelStatus | undefined;
      for (let i = 0; i < 50 && !after; i++) {
        after = await st();
        if (!after) await sleep(100);
      }
      assert.ok(after, 'the control socket answers again');
      // libuv answers EMFILE on accept itself (it frees a reserve descriptor, accepts and closes the
      // pending connections), so the limit shows as sessions that never opened; AcceptBackoff
      // handles the EMFILE errors that do reach the server.
      assert.ok(
        after.sessions.opened < 120,
        `the descriptor limit was hit: ${JSON.stringify(after.sessions)}`,
      );
      // Recovered: a new session works end to end.
      const c = net.connect({ port: fwdPort, host: '127.0.0.1', allowHalfOpen: true });
      const chunks: Buffer[] = [];
      c.on('data', (d: Buffer) => chunks.push(d));
      await new Promise<void>((r, j) => c.once('connect', () => r()).once('error', j));
      c.end('still alive');
      await new Promise((r) => c.once('end', r));
      assert.equal(Buffer.concat(chunks).toString(), 'still alive');
    } finally {
      for (const c of clients) c.destroy();
      ep.kill('SIGKILL');
      gw.kill('SIGKILL');
      echo.close();
    }
  });
});
