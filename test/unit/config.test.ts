import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { ConfigError } from '../../src/errors';
import { defaultConfig, loadConfig, parseConfig } from '../../src/daemon/config';

function expectConfigError(text: string, line: number | undefined, key: string, message: RegExp): void {
  assert.throws(
    () => parseConfig(text, 'ipdeadgate.yaml'),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, String(e));
      assert.equal(e.line, line, e.message);
      assert.equal(e.key, key, e.message);
      assert.match(e.message, message);
      assert.ok(e.message.startsWith(`ipdeadgate.yaml${line ? `:${line}` : ''}: `), e.message);
      return true;
    },
  );
}

describe('config', () => {
  it('has the documented defaults', () => {
    const c = defaultConfig();
    assert.equal(c.dgd.enabled, true);
    assert.equal(c.dgd.retransmit_threshold, 3);
    assert.equal(c.dgd.scan_interval, 200);
    assert.equal(c.dgd.verify_probes, 3);
    assert.equal(c.dgd.verify_timeout, 250);
    assert.equal(c.dgd.slow_poll_interval, 120_000);
    assert.equal(c.dgd.revive_probes, 2);
    assert.equal(c.dgd.keep_last_route, true);
    assert.deepEqual(c.dgd.tables, ['main']);
    assert.deepEqual(c.dgd.active, []);
    assert.equal(c.metrics.listen, undefined);
  });

  it('parses the documented example config (docs/configuration.md)', () => {
    const c = parseConfig(
      [
        'dgd:',
        '  enabled: true',
        '  retransmit_threshold: 3',
        '  scan_interval: 200ms',
        '  verify_probes: 3',
        '  verify_timeout: 250ms',
        '  slow_poll_interval: 2m',
        '  revive_probes: 2',
        '  keep_last_route: true',
        '  tables: [main]',
        '  gateways: []',
        '  active:',
        '    - { gateway: 198.18.1.1, interval: 100ms, misses: 3 }',
        'tunnel: {}',
        'metrics:',
        '  listen: 127.0.0.1:9741',
      ].join('\n'),
    );
    assert.deepEqual(c.dgd.active, [{ gateway: '198.18.1.1', interval: 100, misses: 3 }]);
    assert.equal(c.metrics.listen, '127.0.0.1:9741');
  });

  it('an empty file means the defaults', () => {
    assert.deepEqual(parseConfig(''), defaultConfig());
  });

  it('names file, line and key for a bad duration', () => {
    expectConfigError(
      'dgd:\n  enabled: true\n  scan_interval: 2x\n',
      3,
      'dgd.scan_interval',
      /"2x" is not a duration/,
    );
  });

  it('names an out-of-range value', () => {
    expectConfigError(
      'dgd:\n  slow_poll_interval: 2h\n',
      2,
      'dgd.slow_poll_interval',
      /out of range \(1s \.\. 1h\)/,
    );
    expectConfigError(
      'dgd:\n  retransmit_threshold: 0\n',
      2,
      'dgd.retransmit_threshold',
      /whole number from 1 to 15/,
    );
  });

  it('names an unknown key and lists the known ones', () => {
    expectConfigError(
      'dgd:\n  enabled: true\n  scan_intervall: 1s\n',
      3,
      'dgd.scan_intervall',
      /unknown key .*scan_interval/,
    );
    expectConfigError('dgdd: {}\n', 1, 'dgdd', /unknown key/);
  });

  it('names a bad gateway address inside a list', () => {
    expectConfigError(
      'dgd:\n  active:\n    - gateway: 198.18.1.1\n    - gateway: not-an-ip\n',
      4,
      'dgd.active.1.gateway',
      /"not-an-ip" is not an IP address/,
    );
  });

  it('dgd.owners: a routing daemon named with nothing after it takes the defaults; bad paths and keys are named', () => {
    const c = parseConfig('dgd:\n  owners:\n    frr:\n    bird:\n');
    assert.deepEqual(c.dgd.owners, { frr: { vtysh: 'vtysh' }, bird: { socket: '/run/bird/bird.ctl' } });
    assert.deepEqual(parseConfig('').dgd.owners, {});
    expectConfigError(
      'dgd:\n  owners:\n    frr:\n      vty_socket: run/frr\n',
      4,
      'dgd.owners.frr.vty_socket',
      /must be an absolute path/,
    );
    expectConfigError(
      'dgd:\n  owners:\n    bird:\n      sock: /run/bird/bird.ctl\n',
      4,
      'dgd.owners.bird.sock',
      /unknown key \(expected one of: socket\)/,
    );
    expectConfigError(
      'dgd:\n  owners:\n    quagga: {}\n',
      3,
      'dgd.owners.quagga',
      /expected one of: frr, bird/,
    );
  });

  it('names a wrong type', () => {
    expectConfigError('dgd:\n  keep_last_route: yes please\n', 2, 'dgd.keep_last_route', /boolean/);
  });

  it('reports YAML syntax errors with a line', () => {
    assert.throws(
      () => parseConfig('dgd:\n  enabled: true\n   bad: [\n', 'x.yaml'),
      (e: unknown) =>
        e instanceof ConfigError && e.line === 2 && /^x\.yaml:2: YAML syntax error: /.test(e.message),
    );
  });

  it('reports a missing file without a stack trace', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'idg-config-'));
    try {
      await assert.rejects(loadConfig(path.join(dir, 'nope.yaml')), /cannot read the config file \(ENOENT\)/);
      writeFileSync(path.join(dir, 'ok.yaml'), 'dgd: { verify_probes: 5 }\n');
      assert.equal((await loadConfig(path.join(dir, 'ok.yaml'))).dgd.verify_probes, 5);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
