// The suite must pass from a clone that only root can reach, as in /root (mode 0700). The
// tests that run a command as nobody once failed there ("Cannot find module
// '/root/ipdeadgate/bin/ipdeadgate'"). This runs exactly those tests again from a copy of the built
// tree inside a fresh 0700 directory, as a separate mocha run, and expects them to pass.
import { strict as assert } from 'node:assert';
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { REPO_ROOT, requireRoot } from '../lab/lab';

/** The tests that run a command as another user (their titles). */
const AS_NOBODY_TESTS = [
  'without CAP_NET_RAW: EPERM with a hint',
  'without root: exit 1 and one line saying what privilege is needed',
  'a non-root client is refused by the control socket',
];

/** Everything of the working tree (built or not) but its git metadata: test files read docs and examples. */
function copyInto(dir: string): void {
  for (const part of fs.readdirSync(REPO_ROOT)) {
    if (part === '.git') continue;
    const from = path.join(REPO_ROOT, part);
    try {
      // Hard links where the file system allows (fast; nothing here changes a file's mode).
      execFileSync('cp', ['-al', from, dir], { stdio: 'pipe' });
    } catch {
      execFileSync('cp', ['-a', from, dir]);
    }
  }
}

describe('tests run from a clone in a 0700 directory ', function () {
  this.timeout(240_000);
  let home: string | null = null;

  before(function () {
    requireRoot(this);
  });

  after(() => {
    if (home) fs.rmSync(home, { recursive: true, force: true });
  });

  it('the tests that run commands as nobody pass from a copy under a 0700 home', async () => {
    // Like /root: a directory only its owner (root) may enter, with the clone inside it.
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-home-'));
    assert.equal(fs.statSync(home).mode & 0o777, 0o700);
    const clone = path.join(home, 'ipdeadgate');
    fs.mkdirSync(clone);
    copyInto(clone);
    const grep = AS_NOBODY_TESTS.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|');
    const r = await new Promise<{ code: number; out: string }>((resolve) => {
      execFile(
        process.execPath,
        [
          path.join(clone, 'node_modules', 'mocha', 'bin', 'mocha.js'),
          'dist/test/**/*.test.js',
          '--grep',
          grep,
        ],
        { cwd: clone, env: { ...process.env, CI: 'true' }, maxBuffer: 16 << 20, timeout: 220_000 },
        (err, stdout, stderr) =>
          resolve({ code: err ? ((err.code as number) ?? 1) : 0, out: stdout + stderr }),
      );
    });
    const summary = /tests: (\d+) passed, (\d+) failed, (\d+) skipped/.exec(r.out);
    assert.ok(summary, `no summary line from the nested run:\n${r.out}`);
    // Four tests (probe, control socket, ICMP, ARP/NDP) match; each must run and pass.
    assert.equal(Number(summary[2]), 0, r.out);
    assert.equal(Number(summary[3]), 0, r.out);
    assert.ok(Number(summary[1]) >= 4, `expected at least 4 tests to run:\n${r.out}`);
    assert.equal(r.code, 0, r.out);
  });
});
