// A second `ipdeadgate daemon` (or a wrong argument) never harms the first: a shared state dir is
// refused by its lock, a shared control path leaves the first one's socket in place, a control
// path naming a regular file leaves that file alone, a state dir another user owns is refused,
// and a YAML alias bomb exits 2 naming the file. Each refusal exits before any route is touched.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { controlRequest } from '../../src/daemon/control';
import { type Lab, requireRoot } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { dgdLab } from '../lab/topologies';

describe('a second daemon and wrong arguments (lab)', function () {
  this.timeout(90_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });
  after(async () => {
    await lab?.close();
  });

  it('refuses to share a state dir or a control socket, and never unlinks what is not its own', async () => {
    lab = await dgdLab();
    const first = await LabDaemon.start(lab, 'client', 'dgd:\n  slow_poll_interval: 1s\n');
    const routes = () => lab!.ip('client', ['route', 'show', 'table', 'main']);
    const before = await routes();
    const daemon = (control: string, stateDir: string, config?: string) =>
      lab!.cli('client', [
        'daemon',
        '--control',
        control,
        '--state-dir',
        stateDir,
        ...(config ? ['--config', config] : []),
      ]);

    // The same state dir, another control socket: refused by the lock, naming the first's pid.
    let r = await daemon(lab.tempPath('second.sock'), first.stateDir);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`another ipdeadgate \\(pid ${first.child.pid}\\) uses the state dir`));

    // The same control socket, another state dir: refused, and the first one's socket stays.
    r = await daemon(first.control, lab.tempPath('second-state'));
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /already listening on/);
    assert.ok(fs.lstatSync(first.control).isSocket());
    assert.equal(
      ((await controlRequest(first.control, 'status', {}, 5000)) as { pid: number }).pid,
      first.child.pid,
    );

    // --control naming the config (two arguments swapped): the file is left alone.
    const cfg = lab.tempPath('swapped.yaml');
    fs.writeFileSync(cfg, 'dgd: {}\n');
    r = await daemon(cfg, lab.tempPath('third-state'), cfg);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /swapped\.yaml exists and is not a socket/);
    assert.equal(fs.readFileSync(cfg, 'utf8'), 'dgd: {}\n');

    // A state dir owned by another user: refused before anything is read from it.
    const theirs = lab.tempPath('their-state');
    fs.mkdirSync(theirs, { mode: 0o700 });
    fs.chownSync(theirs, 65534, 65534);
    r = await daemon(lab.tempPath('fourth.sock'), theirs);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /the state dir .*their-state belongs to uid 65534, not to the daemon's uid 0/);

    // A YAML alias bomb: a config error naming the file, exit 2.
    const bomb = lab.tempPath('bomb.yaml');
    const lines = ['a: &a [x,x,x,x,x,x,x,x,x]'];
    for (let i = 0; i < 8; i++) {
      const [p, n] = [String.fromCharCode(97 + i), String.fromCharCode(98 + i)];
      lines.push(`${n}: &${n} [${Array(9).fill(`*${p}`).join(',')}]`);
    }
    fs.writeFileSync(bomb, lines.join('\n') + '\n');
    r = await daemon(lab.tempPath('fifth.sock'), lab.tempPath('fifth-state'), bomb);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /bomb\.yaml: YAML error: /);

    assert.equal(await routes(), before, 'no route was touched');
    assert.equal(first.exitCode, null);
    assert.equal(await first.stop(), 0);
    assert.throws(() => fs.lstatSync(first.control), /ENOENT/, 'the first removes its own socket at stop');
  });
});
