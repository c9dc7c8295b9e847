// Logs: one JSON line per event (or one text line with --log-format text), filtered by log.level,
// from the logger itself and from a daemon running in the lab.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { PassThrough } from 'node:stream';
import { createLogger, eventLog } from '../../src/daemon/log';
import { type Lab, requireRoot, waitFor } from '../lab/lab';
import { pairLab } from '../lab/topologies';

function capture(): { stream: PassThrough; lines: () => string[] } {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (c: Buffer) => (text += c.toString()));
  return { stream, lines: () => text.split('\n').filter(Boolean) };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('logs', () => {
  it('json: one line per event with time, level and event; debug only at level debug', async () => {
    const out = capture();
    const logger = createLogger({ level: 'info', format: 'json', stream: out.stream });
    const log = eventLog(logger);
    log.event('verdict', { gateway: '198.18.1.1', alive: false, arp_rtt_ms: null });
    log.event('verify_step', { step: 'arp' }, 'debug');
    logger.level = 'debug';
    log.event('verify_step', { step: 'arp' }, 'debug');
    await tick();
    const lines = out.lines().map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 2);
    assert.deepEqual(Object.keys(lines[0]!).slice(0, 3), ['level', 'time', 'event']);
    assert.equal(lines[0]!.level, 'info');
    assert.match(String(lines[0]!.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(lines[0]!.event, 'verdict');
    assert.equal(lines[0]!.alive, false);
    assert.equal(lines[0]!.arp_rtt_ms, null);
    assert.equal(lines[1]!.level, 'debug');
  });

  it('text: "TIME LEVEL EVENT key=value ...", values with spaces quoted', async () => {
    const out = capture();
    const log = eventLog(createLogger({ level: 'warn', format: 'text', stream: out.stream }));
    log.event('daemon_started', { pid: 1 }); // below warn: dropped
    log.event('route_kept', { gateway: '198.18.1.1', reason: 'keep last route', routes: ['a'] }, 'warn');
    await tick();
    assert.deepEqual(
      out.lines().map((l) => l.replace(/^\S+ /, 'TIME ')),
      ['TIME WARN  route_kept gateway=198.18.1.1 reason="keep last route" routes=["a"]'],
    );
  });
});

describe('daemon logs (lab)', function () {
  this.timeout(60_000);
  let lab: Lab;

  before(function () {
    requireRoot(this);
  });
  afterEach(async () => {
    await lab?.close();
  });

  async function runDaemon(
    yaml: string,
    extra: string[],
  ): Promise<{ out: () => string; stop: () => Promise<number | null>; control: string }> {
    const cfg = lab.tempPath('logs.yaml');
    fs.writeFileSync(cfg, yaml);
    const control = lab.tempPath('logs.sock');
    const child = lab.spawnCli('a', [
      'daemon',
      '--config',
      cfg,
      '--control',
      control,
      '--state-dir',
      lab.tempPath('logs-state'),
      ...extra,
    ]);
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    await waitFor(
      async () => (await lab.cli('a', ['status', '--json', '--control', control])).code === 0,
      15_000,
      `the daemon to answer: ${err}`,
      100,
    );
    return {
      out: () => out,
      control,
      stop: async () => {
        child.kill('SIGTERM');
        return exited;
      },
    };
  }

  it('--log-format text prints one human line per event', async () => {
    lab = await pairLab();
    const d = await runDaemon('log:\n  level: info\n', ['--log-format', 'text']);
    assert.equal(await d.stop(), 0);
    const lines = d.out().trim().split('\n');
    assert.ok(
      lines.some((l) => /^\d{4}-\d\d-\d\dT\S+Z INFO {2}daemon_started pid=\d+ config="?\/tmp\/\S+ /.test(l)),
      d.out(),
    );
    assert.ok(
      lines.some((l) => /INFO {2}daemon_stopped$/.test(l)),
      d.out(),
    );
    assert.ok(
      lines.every((l) => !l.startsWith('{')),
      'no JSON in text mode',
    );
  });

  it('log.level: warn silences info events; JSON is the default format', async () => {
    lab = await pairLab();
    const d = await runDaemon('log:\n  level: warn\n', []);
    assert.equal(await d.stop(), 0);
    const events = d
      .out()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { level: string; event: string });
    // daemon_started and dgd_started are info; the config was applied before the first of them.
    assert.deepEqual(
      events.filter((e) => e.level === 'info' || e.level === 'debug'),
      [],
    );
  });

  it('log.format: text in the config is used when --log-format is not given; the flag wins over it', async () => {
    lab = await pairLab();
    let d = await runDaemon('log:\n  format: text\n', []);
    assert.equal(await d.stop(), 0);
    assert.ok(
      d
        .out()
        .trim()
        .split('\n')
        .every((l) => !l.startsWith('{') && / INFO {2}\w+/.test(l)),
      d.out(),
    );
    d = await runDaemon('log:\n  format: text\n', ['--log-format', 'json']);
    assert.equal(await d.stop(), 0);
    assert.ok(
      d
        .out()
        .trim()
        .split('\n')
        .every((l) => l.startsWith('{')),
      d.out(),
    );
  });
});
