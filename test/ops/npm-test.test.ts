// `npm test`, the command a Node contributor types first, runs the suite: it is scripts/test,
// whose mocha glob finds every compiled test file; and .mocharc.json names no spec of its own,
// because mocha adds a config's spec to the files given on the command line (running one file,
// `mocha dist/test/x/y.test.js`, would run everything).
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../lab/lab';

const GLOB = 'dist/test/**/*.test.js';

function sourceTests(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceTests(p);
    return e.name.endsWith('.test.ts') ? [path.relative(REPO_ROOT, p)] : [];
  });
}

describe('npm test', () => {
  it('is scripts/test, which runs every test file through one mocha glob', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    assert.equal(pkg.scripts.test, 'scripts/test');
    const script = fs.readFileSync(path.join(REPO_ROOT, 'scripts', 'test'), 'utf8');
    assert.match(script, new RegExp(`exec node_modules/\\.bin/mocha '${GLOB.replace(/\*/g, '\\*')}'`));
    const rc = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, '.mocharc.json'), 'utf8')) as object;
    assert.ok(!('spec' in rc), '.mocharc.json has no spec (it would be added to every explicit run)');
  });

  it('the glob finds exactly the compiled test files of test/**/*.test.ts (this one among them)', function () {
    this.timeout(60_000);
    // --dry-run loads every file and lists its tests without running them; the spec reporter
    // prints each suite's title.
    const out = execFileSync(
      path.join(REPO_ROOT, 'node_modules', '.bin', 'mocha'),
      ['--dry-run', '--reporter', 'json', GLOB],
      { cwd: REPO_ROOT, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
    );
    const report = JSON.parse(out.slice(out.indexOf('{'))) as {
      tests: { file: string; fullTitle: string }[];
    };
    const files = new Set(report.tests.map((t) => path.relative(REPO_ROOT, t.file)));
    const expected = sourceTests(path.join(REPO_ROOT, 'test'))
      .filter((f) => fs.readFileSync(path.join(REPO_ROOT, f), 'utf8').includes('it('))
      .map((f) => path.join('dist', f.replace(/\.ts$/, '.js')));
    assert.deepEqual([...files].sort(), expected.sort());
    assert.ok(report.tests.some((t) => t.fullTitle.startsWith('npm test ')));
  });
});
