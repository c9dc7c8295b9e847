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
    pki = makePki(['gw1', 'ep'], { gw1: ['gateway', 'echo', 'echo2'] });
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

  it('exits 2 on an unreadable or malformed TLS file, naming the file and the key', async () => {
    write('garbage.pem', 'this is not PEM\n');
    fs.copyFileSync(pki.nodes.ep!.key, path.join(pki.dir, 'other.key'));
    fs.copyFileSync(pki.nodes.gw1!.cert, path.join(pki.dir, 'gw1.pem'));
    fs.copyFileSync(pki.nodes.gw1!.key, path.join(pki.dir, 'gw1.key'));
    const cases: [string, RegExp][] = [
      [
        '{ ca: missing.pem, cert: gw1.pem, key: gw1.key }',
        /missing\.pem: tunnel\.tls\.ca: cannot read the file: ENOENT/,
      ],
      [
        '{ ca: garbage.pem, cert: gw1.pem, key: gw1.key }',
        /garbage\.pem: tunnel\.tls\.ca: not a PEM certificate/,
      ],
      [
        '{ ca: ca.pem, cert: garbage.pem, key: gw1.key }',
        /garbage\.pem: tunnel\.tls\.cert: not a PEM certificate/,
      ],
      [
        '{ ca: ca.pem, cert: gw1.pem, key: garbage.pem }',
        /garbage\.pem: tunnel\.tls\.key: not a PEM private key/,
      ],
      [
        '{ ca: ca.pem, cert: gw1.pem, key: other.key }',
        /other\.key: tunnel\.tls\.key: is not the private key of the certificate/,
      ],
    ];
    let i = 0;
    for (const [tlsLine, want] of cases) {
      const f = write(
        `badtls${++i}.yaml`,
        `tunnel:\n  role: relay\n  name: gw1\n  tls: ${tlsLine}\n  listen: 127.0.0.1:${await freePort()}\n`,
      );
      const r = await run(['tunnel', '--config', f]);
      assert.equal(r.code, 2, `${tlsLine}: ${r.stderr}`);
      assert.match(r.stderr, want);
      assert.match(
        r.stderr.trim().split('\n')[0]!,
        /tunnel\.tls\.(ca|cert|key): /,
        'one line naming file and key first',
      );
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

  it('SIGHUP reloads: a new forward, service and limits apply, a removed forward stops accepting, sessions the change does not touch go on; a bad file or a name change is refused and the old config stays', async function () {
    this.timeout(40_000);
    const net = await import('node:net');
    const echo = net.createServer({ allowHalfOpen: true }, (c) => {
      c.on('error', () => undefined);
      c.pipe(c);
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    const echoAt = `127.0.0.1:${(echo.address() as import('node:net').AddressInfo).port}`;
    const [linkPort, fwd1, fwd2] = [await freePort(), await freePort(), await freePort()];
    for (const n of ['gw1', 'ep']) {
      fs.copyFileSync(pki.nodes[n]!.cert, path.join(pki.dir, `${n}.pem`));
      fs.copyFileSync(pki.nodes[n]!.key, path.join(pki.dir, `${n}.key`));
    }
    const gwText = (services: string) =>
      `tunnel:\n  role: gateway-proxy\n  name: gw1\n  tls: { ca: ca.pem, cert: gw1.pem, key: gw1.key }\n  listen: 127.0.0.1:${linkPort}\n  services:\n${services}`;
    const epText = (forwards: string, extra = '') =>
      `tunnel:\n  role: endpoint-proxy\n  name: ep\n  tls: { ca: ca.pem, cert: ep.pem, key: ep.key }\n  links:\n    - { connect: 127.0.0.1:${linkPort} }\n  forwards:\n${forwards}${extra}`;
    const gwCfg = write('hup-gw.yaml', gwText(`    echo: ${echoAt}\n`));
    const epCfg = write('hup-ep.yaml', epText(`    - { listen: 127.0.0.1:${fwd1}, service: echo }\n`));
    const gwControl = path.join(pki.dir, 'hup-gw.sock');
    const epControl = path.join(pki.dir, 'hup-ep.sock');
    const spawnNode = (cfg: string, control: string) =>
      spawn(process.execPath, [BIN, 'tunnel', '--config', cfg, '--control', control], { stdio: 'pipe' });
    const gw = spawnNode(gwCfg, gwControl);
    const ep = spawnNode(epCfg, epControl);
    const lines: Record<string, string[]> = { gw: [], ep: [] };
    for (const [k, c] of [
      ['gw', gw],
      ['ep', ep],
    ] as const)
      c.stdout.on('data', (d: Buffer) => lines[k]!.push(...d.toString().split('\n').filter(Boolean)));
    const st = async (control: string): Promise<TunnelStatus | undefined> =>
      (
        (await controlRequest(control, 'status').catch(() => undefined)) as
          { tunnel: TunnelStatus } | undefined
      )?.tunnel;
    const waitFor = async (fn: () => Promise<boolean> | boolean, what: string): Promise<void> => {
      for (let i = 0; i < 100; i++) {
        if (await fn()) return;
        await sleep(100);
      }
      throw new Error(`timed out waiting for ${what}; ep: ${lines.ep!.slice(-3).join(' | ')}`);
    };
    const events = (k: string, name: string) =>
      lines[k]!.map((l) => JSON.parse(l) as Record<string, unknown>).filter((e) => e.event === name);
    const echoOnce = async (port: number, text: string): Promise<string> => {
      const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      const chunks: Buffer[] = [];
      c.on('data', (d: Buffer) => chunks.push(d));
      await new Promise<void>((r, j) => c.once('connect', () => r()).once('error', j));
      c.end(text);
      await new Promise<void>((r, j) => c.once('end', () => r()).once('error', j));
      return Buffer.concat(chunks).toString();
    };
    try {
      await waitFor(async () => (await st(epControl))?.links[0]?.services.echo === 0, 'the link');
      // A session held open through fwd1 for the whole test.
      const held = net.connect({ port: fwd1, host: '127.0.0.1' });
      const heldData: Buffer[] = [];
      held.on('data', (d: Buffer) => heldData.push(d));
      await new Promise<void>((r) => held.once('connect', () => r()));
      const heldEcho = async (text: string): Promise<void> => {
        const before = Buffer.concat(heldData).length;
        held.write(text);
        await waitFor(
          () => Buffer.concat(heldData).length >= before + text.length,
          `the held session's echo of ${text}`,
        );
      };
      await heldEcho('one');
      const reconnects = (await st(epControl))!.links[0]!.reconnects;

      // 1. ep: a second forward, a new limit. gw: a second service.
      fs.writeFileSync(
        epCfg,
        epText(
          `    - { listen: 127.0.0.1:${fwd1}, service: echo }\n    - { listen: 127.0.0.1:${fwd2}, service: echo2 }\n`,
          '  max_sessions: 50\n',
        ),
      );
      fs.writeFileSync(gwCfg, gwText(`    echo: ${echoAt}\n    echo2: ${echoAt}\n`));
      ep.kill('SIGHUP');
      gw.kill('SIGHUP');
      await waitFor(() => events('ep', 'config_reloaded').length === 1, 'ep reloaded');
      await waitFor(() => events('gw', 'config_reloaded').length === 1, 'gw reloaded');
      assert.deepEqual(events('ep', 'config_reloaded')[0]!.changed, ['forwards', 'max_sessions']);
      assert.deepEqual(events('gw', 'config_reloaded')[0]!.changed, ['services']);
      await waitFor(async () => (await st(epControl))?.links[0]?.services.echo2 === 0, 'echo2 announced');
      assert.equal(await echoOnce(fwd2, 'via the new forward'), 'via the new forward');
      await heldEcho('two');
      assert.equal((await st(epControl))!.links[0]!.reconnects, reconnects, 'the link was never dropped');

      // 2. A bad file, then a name change: refused, the running config stays.
      fs.writeFileSync(epCfg, 'tunnel:\n  role: endpoint-proxy\n  name: [oops\n');
      ep.kill('SIGHUP');
      await waitFor(() => events('ep', 'config_refused').length === 1, 'the bad file refused');
      assert.match(String(events('ep', 'config_refused')[0]!.error), /hup-ep\.yaml/);
      fs.writeFileSync(
        epCfg,
        epText(`    - { listen: 127.0.0.1:${fwd1}, service: echo }\n`).replace('name: ep', 'name: ep2'),
      );
      ep.kill('SIGHUP');
      await waitFor(() => events('ep', 'config_refused').length === 2, 'the name change refused');
      assert.match(String(events('ep', 'config_refused')[1]!.error), /tunnel\.name cannot change on reload/);
      assert.equal(ep.exitCode, null, 'still running');
      assert.equal(await echoOnce(fwd2, 'old config kept'), 'old config kept');

      // 3. fwd2 removed: it stops accepting; the held session on fwd1 goes on.
      fs.writeFileSync(epCfg, epText(`    - { listen: 127.0.0.1:${fwd1}, service: echo }\n`));
      ep.kill('SIGHUP');
      await waitFor(() => events('ep', 'config_reloaded').length === 2, 'ep reloaded again');
      await assert.rejects(echoOnce(fwd2, 'x'), /ECONNREFUSED/);
      await heldEcho('three');
      assert.equal((await st(epControl))!.sessions.count, 1, 'only the held session');
      held.destroy();
      for (const k of ['gw', 'ep'])
        for (const l of lines[k]!)
          assert.ok((JSON.parse(l) as { event?: string }).event, `every line has an event: ${l}`);
    } finally {
      ep.kill('SIGKILL');
      gw.kill('SIGKILL');
      echo.close();
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
