// What a newcomer hit on the first day, one test each, through the real CLI where the
// problem showed there: a table number where `routes` says its name, "timer-0(nullms)", an EPIPE
// stack trace from `--help | head`, a stray daemon_stopped line before a failed start's error, an
// extra argument ignored, a missing control socket directory reported as EACCES. And check-config.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatStatus, formatTunnel } from '../../src/cli/status';
import { buildSocketRows, formatSocketTable } from '../../src/cli/sockets';
import type { TcpSocketEntry } from '../../src/sys/sockdiag';
import { REPO_ROOT } from '../lab/lab';

const CLI = path.join(REPO_ROOT, 'bin', 'ipdeadgate');

/**
 * Run the CLI. A `daemon` run as root goes into a fresh, empty network namespace (unshare -n): these
 * starts are meant to fail before touching any route, and even if one did not, it could never touch
 * the host's routes (lab rules).
 */
function cli(args: string[]) {
  const isolate = args[0] === 'daemon' && process.getuid?.() === 0;
  const argv = isolate ? ['unshare', '-n', process.execPath, CLI, ...args] : [process.execPath, CLI, ...args];
  return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 20_000 });
}

describe('newcomer papercuts (no privileges)', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-newcomer-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('text status names the table as routes does: main, not 254', () => {
    const route = { dst: '0.0.0.0/0', metric: 100, gateway: '198.18.1.1', nexthops: null };
    const text = formatStatus({
      enabled: true,
      tables: [254],
      pid: 1,
      started_at: '2026-01-01T00:00:00.000Z',
      config: null,
      tunnel: null,
      gateways: [
        {
          address: '198.18.1.1',
          interface: 'lan0',
          family: 4,
          state: 'active',
          mac: null,
          routes: [
            { ...route, table: 254, state: 'active' },
            { ...route, table: 100, state: 'withdrawn' },
          ],
          last_verification: null,
          verifications: 0,
          triggers: { retransmit: 0, neighbour_failed: 0, active_probe: 0, sighting: 0 },
          active_probing: null,
          dead_since_ms: null,
          next_poll: null,
          hold_down_ms: null,
          transitions: [],
        },
      ],
    } as unknown as Parameters<typeof formatStatus>[0]);
    assert.match(text, /route 0\.0\.0\.0\/0 via 198\.18\.1\.1 table main metric 100: active/);
    assert.match(text, /table 100 metric 100: withdrawn/);
    assert.doesNotMatch(text, /table 254/);
  });

  it('text status counts the announced services it ignored, by the rule that ignored them', () => {
    const tunnel = {
      name: 'gw1',
      role: 'gateway',
      links: [],
      sessions: { count: 0, opened: 0, close_timeouts: 0, reaped: 0, refusals: {} },
      announcements_ignored: { certificate: 3 },
    };
    const text = formatTunnel(tunnel as unknown as Parameters<typeof formatTunnel>[0]).join('\n');
    assert.match(
      text,
      /announced services ignored: 3 by its certificate \(event tunnel_announcement_ignored\)/,
    );
    const none = formatTunnel({ ...tunnel, announcements_ignored: {} } as unknown as Parameters<
      typeof formatTunnel
    >[0]).join('\n');
    assert.doesNotMatch(none, /ignored/);
  });

  it('sockets shows "-" for a socket with no timer pending, never "timer-0(nullms)"', async () => {
    const base: TcpSocketEntry = {
      family: 4,
      src: '198.18.1.10',
      srcPort: 40000,
      dst: '198.18.2.10',
      dstPort: 80,
      state: 'ESTABLISHED',
      inode: 1,
      uid: 0,
      ifindex: 0,
      timer: 0,
      timerRetransmits: 0,
      timerExpiresMs: 0,
      mark: null,
    };
    const rows = await buildSocketRows(
      [base, { ...base, srcPort: 40001, timer: 1, timerRetransmits: 2, timerExpiresMs: 812 }],
      async () => ({ gateway: '198.18.1.1', ifname: 'lan0' }) as never,
    );
    const idle = rows.find((r) => r.src.endsWith(':40000'))!;
    assert.equal(idle.timer, null);
    assert.equal(idle.timer_expires_ms, null);
    const table = formatSocketTable(rows);
    assert.doesNotMatch(table, /timer-0|null/);
    assert.match(table, /retransmit\(812ms\)/);
  });

  it('`ipdeadgate --help | head -2` prints two lines and no EPIPE stack trace', () => {
    for (let i = 0; i < 5; i++) {
      const r = spawnSync(
        'bash',
        ['-c', `set -o pipefail; "${process.execPath}" "${CLI}" --help | head -2`],
        {
          encoding: 'utf8',
          timeout: 20_000,
        },
      );
      assert.equal((r.stdout.match(/\n/g) ?? []).length, 2, r.stdout);
      assert.match(r.stdout, /^Usage: ipdeadgate/);
      assert.equal(r.stderr, '', 'no stack trace');
      assert.equal(r.status, 0);
    }
  });

  it('a failed start prints only its error: no stray {"event":"daemon_stopped"} first', () => {
    const bad = path.join(dir, 'bad.yaml');
    fs.writeFileSync(bad, 'dgd:\n  retransmit_threshold: banana\n');
    const r = cli([
      'daemon',
      '--config',
      bad,
      '--control',
      path.join(dir, 'c.sock'),
      '--state-dir',
      path.join(dir, 's'),
    ]);
    assert.equal(r.status, 2);
    assert.equal(r.stdout, '', 'nothing on stdout');
    assert.equal(
      r.stderr,
      `ipdeadgate: ${bad}:2: dgd.retransmit_threshold: must be a whole number from 1 to 15\n`,
    );
  });

  it('an extra argument is bad usage (`status foo`), exit 2', () => {
    const r = cli(['status', 'foo', '--control', path.join(dir, 'none.sock')]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /too many arguments for 'status'/);
    assert.equal(cli(['routes', 'x']).status, 2);
  });

  it('a control socket in a missing directory says so, not "listen EACCES"', () => {
    const d = cli([
      'daemon',
      '--control',
      path.join(dir, 'missing', 'c.sock'),
      '--state-dir',
      path.join(dir, 's2'),
    ]);
    assert.equal(d.status, 1);
    assert.match(d.stderr, /the directory .*missing does not exist/);
    assert.doesNotMatch(d.stderr, /EACCES/);
  });

  it('check-config: exit 0 for a valid config, 2 with the same message as a start for a bad one', () => {
    const ok = cli(['check-config', path.join(REPO_ROOT, 'packaging', 'ipdeadgate.yaml')]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /ipdeadgate\.yaml: ok \(detection on, tables main\)/);
    assert.equal(
      cli(['check-config', '--quiet', path.join(REPO_ROOT, 'examples', 'host-dgd.yaml')]).stdout,
      '',
    );
    for (const [name, text] of [
      ['unknown.yaml', 'dgd:\n  enabled: true\nbogus_key: 1\n'],
      ['value.yaml', 'dgd:\n  slow_poll_interval: 5h\n'],
      ['syntax.yaml', 'dgd: [\n'],
    ]) {
      const file = path.join(dir, name!);
      fs.writeFileSync(file, text!);
      const check = cli(['check-config', file]);
      const start = cli([
        'daemon',
        '--config',
        file,
        '--control',
        path.join(dir, 'c.sock'),
        '--state-dir',
        path.join(dir, 's'),
      ]);
      assert.equal(check.status, 2, `${name}: ${check.stderr}`);
      assert.equal(start.status, 2);
      assert.match(check.stderr, new RegExp(`^ipdeadgate: ${file.replace(/[.]/g, '\\.')}`));
      assert.equal(check.stderr, start.stderr, 'the same message as a start');
    }
    const missing = cli(['check-config', path.join(dir, 'nope.yaml')]);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /nope\.yaml: cannot read the config file \(ENOENT\)/);
  });
});
