// The npm package: `npm pack` makes a tarball with the built JavaScript, and `npm install -g` of it
// into a scratch prefix builds the native addons (ours, raw-socket, netlink) and puts
// `ipdeadgate` on PATH. Slow (npm fetches and compiles the dependencies): scripts/test --slow.
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { REPO_ROOT, requireRoot } from '../lab/lab';

function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { timeout: 10 * 60_000, maxBuffer: 64 * 1024 * 1024, ...opts },
      (err, out, errOut) => {
        if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${out}${errOut}`));
        else resolve(String(out));
      },
    );
  });
}

describe('the npm package', function () {
  this.timeout(15 * 60_000);
  let dir = '';

  before(function () {
    // Not privileged itself, but `unshare -n` below (and CI runs as root) keeps the check off the host.
    requireRoot(this);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-npm-'));
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('npm pack holds the built dist/ and no tests; npm install -g builds the addons and puts ipdeadgate on PATH', async () => {
    const packed = JSON.parse(
      await run('npm', ['pack', '--json', '--pack-destination', dir, '--loglevel=error'], { cwd: REPO_ROOT }),
    ) as { filename: string; files: { path: string }[] }[];
    const files = packed[0]!.files.map((f) => f.path);
    for (const f of [
      'bin/ipdeadgate',
      'dist/src/cli/main.js',
      'dist/src/sys/native.js',
      'binding.gyp',
      'native/sdnotify.cc',
    ])
      assert.ok(files.includes(f), `${f} in the tarball`);
    assert.ok(!files.some((f) => f.startsWith('dist/test/') || f.startsWith('test/') || f.endsWith('.map')));
    const prefix = path.join(dir, 'prefix');
    await run(
      'npm',
      [
        'install',
        '-g',
        '--prefix',
        prefix,
        path.join(dir, packed[0]!.filename),
        '--no-audit',
        '--no-fund',
        '--loglevel=error',
      ],
      {
        cwd: dir,
      },
    );
    const env = { ...process.env, PATH: `${path.join(prefix, 'bin')}:${process.env.PATH}` };
    assert.match(await run('ipdeadgate', ['--version'], { env, cwd: '/' }), /^\d+\.\d+\.\d+\n$/);
    const root = path.join(prefix, 'lib', 'node_modules', 'ipdeadgate');
    assert.match(
      await run('ipdeadgate', ['check-config', path.join(root, 'packaging', 'ipdeadgate.yaml')], {
        env,
        cwd: '/',
      }),
      /: ok/,
    );
    // Every native module loads: ours (built by the package's install script) and the dependencies'.
    await run(
      process.execPath,
      [
        '-e',
        `for (const m of ['build/Release/ipdeadgate_native.node', 'node_modules/raw-socket', 'node_modules/netlink']) require(${JSON.stringify(root)} + '/' + m);`,
      ],
      { cwd: '/' },
    );
    // And the addon works: sock_diag in a fresh, empty network namespace sees no sockets.
    assert.equal(
      (
        await run('unshare', ['-n', path.join(prefix, 'bin', 'ipdeadgate'), 'sockets', '--json'], { env })
      ).trim(),
      '[]',
    );
  });
});
