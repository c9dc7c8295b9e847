// The tunnel process runs without detection's capabilities (src/daemon/tunnelprivs.ts). The
// wrapper's arguments are checked for each kind of daemon, then really exec'd: a child started the
// way TunnelChild starts it reports its own capability sets from /proc, as root and as the
// packaged unit's own user (nobody here, with CAP_NET_ADMIN and CAP_NET_RAW ambient).
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { readCapSets, tunnelExecWrapper } from '../../src/daemon/tunnelprivs';
import { requireRoot } from '../lab/lab';
import { unprivilegedRoot } from '../fixtures/unprivileged';

const NET_BIND_SERVICE = 1n << 10n;
const NET_ADMIN = 1n << 12n;
const NET_RAW = 1n << 13n;
const ALL = (1n << 41n) - 1n;

/** Runs `node -e script` as the given argv prefix; its stdout. */
function run(prefix: string[], script: string): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(prefix[0], [...prefix.slice(1), process.execPath, '-e', script], (err, out, errOut) =>
      err ? reject(new Error(`${err.message}\n${errOut}`)) : resolve(out),
    ),
  );
}

describe("the tunnel process without detection's capabilities", () => {
  it('as root: everything goes from every set but CAP_NET_BIND_SERVICE, bounding set included', () => {
    const w = tunnelExecWrapper({ effective: ALL, bounding: ALL }, ['/usr/bin/setpriv', '/bin/setpriv']);
    assert.ok(w.path !== null, 'a wrapper');
    assert.deepEqual(w.args, [
      '--no-new-privs',
      '--inh-caps=-all',
      '--ambient-caps=-all',
      '--bounding-set=-all,+net_bind_service',
      '--',
    ]);
  });

  it('as the own user (CAP_NET_ADMIN and CAP_NET_RAW ambient): ambient and inheritable cleared, no bounding-set change (it would need CAP_SETPCAP)', () => {
    const caps = NET_ADMIN | NET_RAW;
    const w = tunnelExecWrapper({ effective: caps, bounding: caps });
    assert.ok(w.path !== null);
    assert.deepEqual(w.args, ['--no-new-privs', '--inh-caps=-all', '--ambient-caps=-all', '--']);
    // With CAP_NET_BIND_SERVICE too (a tunnel port below 1024), that one is kept, ambient.
    const b = tunnelExecWrapper({ effective: caps | NET_BIND_SERVICE, bounding: caps | NET_BIND_SERVICE });
    assert.ok(b.path !== null);
    assert.deepEqual(b.args, [
      '--no-new-privs',
      '--inh-caps=-all,+net_bind_service',
      '--ambient-caps=-all,+net_bind_service',
      '--',
    ]);
  });

  it('no capabilities: nothing to drop; no setpriv: says so (the daemon warns)', () => {
    assert.equal(tunnelExecWrapper({ effective: 0n, bounding: ALL }).path, null);
    const w = tunnelExecWrapper({ effective: ALL, bounding: ALL }, ['/nonexistent/setpriv']);
    assert.equal(w.path, null);
    assert.match(
      (w as { reason: string }).reason,
      /setpriv \(util-linux\) not found at \/nonexistent\/setpriv/,
    );
  });

  it('reads CapEff and CapBnd from /proc/self/status', () => {
    const c = readCapSets('Name:\tx\nCapEff:\t0000000000003000\nCapBnd:\t000001ffffffffff\n');
    assert.equal(c.effective, NET_ADMIN | NET_RAW);
    assert.equal(c.bounding, ALL);
  });

  describe("exec'd for real", function () {
    this.timeout(30_000);
    // A daemon (root, or the own user) starts a child as TunnelChild's fork does (execPath = the
    // wrapper, then node's argv); the child prints its capability sets.
    const CHILD = [
      "const s = require('fs').readFileSync('/proc/self/status', 'utf8');",
      "const f = (k) => s.split('\\n').find((l) => l.startsWith(k + ':')).split(/\\s+/)[1];",
      "process.stdout.write(JSON.stringify(['CapEff', 'CapPrm', 'CapBnd', 'CapAmb', 'NoNewPrivs'].map(f)));",
    ].join('\n');
    const forker = (root: string) =>
      [
        "const { spawn } = require('node:child_process');",
        `const { tunnelExecWrapper } = require(${JSON.stringify(path.join(root, 'dist/src/daemon/tunnelprivs.js'))});`,
        'const w = tunnelExecWrapper();',
        `const node = [process.execPath, '-e', ${JSON.stringify(CHILD)}];`,
        "const c = w.path === null ? spawn(node[0], node.slice(1), { stdio: 'inherit' })",
        "  : spawn(w.path, [...w.args, ...node], { stdio: 'inherit' });",
        "c.on('exit', (code) => process.exit(code ?? 1));",
      ].join('\n');

    it('from a root daemon: the child holds CAP_NET_BIND_SERVICE only, in every set, with no_new_privs', async function () {
      requireRoot(this);
      const out = await run(['env'], forker(path.resolve(__dirname, '../../..')));
      const [eff, prm, bnd, amb, nnp] = JSON.parse(out) as string[];
      assert.equal(BigInt(`0x${eff}`), NET_BIND_SERVICE, `CapEff ${eff}`);
      assert.equal(BigInt(`0x${prm}`), NET_BIND_SERVICE, `CapPrm ${prm}`);
      assert.equal(BigInt(`0x${bnd}`), NET_BIND_SERVICE, `CapBnd ${bnd}`);
      assert.equal(BigInt(`0x${amb}`), 0n, `CapAmb ${amb}`);
      assert.equal(nnp, '1');
    });

    it('from the own user with CAP_NET_ADMIN and CAP_NET_RAW ambient: the child holds none', async function () {
      requireRoot(this);
      const caps = '-all,+net_admin,+net_raw';
      const asOwn = [
        'setpriv',
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        `--inh-caps=${caps}`,
        `--ambient-caps=${caps}`,
        `--bounding-set=${caps}`,
        '--',
      ];
      const out = await run(asOwn, forker(unprivilegedRoot()));
      const [eff, prm, , amb, nnp] = JSON.parse(out) as string[];
      assert.equal(BigInt(`0x${eff}`), 0n, `CapEff ${eff}`);
      assert.equal(BigInt(`0x${prm}`), 0n, `CapPrm ${prm}`);
      assert.equal(BigInt(`0x${amb}`), 0n, `CapAmb ${amb}`);
      assert.equal(nnp, '1');
    });
  });
});
