// The control socket's group (`ipdeadgate daemon --control-group`, the packaged unit's
// `--control-group ipdeadgate`): operators in the group reach it, others do not. Real uids: the
// client runs under setpriv as a user who is (or is not) in the group, and the kernel's permission
// check at connect() decides.
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { ControlServer } from '../../src/daemon/control';
import { groupId } from '../../src/cli/daemon';
import { peerUidOf } from '../../src/sys/peercred';
import { requireRoot } from '../lab/lab';
import { unprivilegedRoot } from '../fixtures/unprivileged';

/**
 * `ipdeadgate status --json` as uid 4242 with the given supplementary groups; its exit and output.
 * Asynchronous: the server answers from this process's event loop.
 */
function statusAs(sock: string, groups: number[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) =>
    execFile(
      'setpriv',
      [
        '--reuid=4242',
        '--regid=4242',
        groups.length ? `--groups=${groups.join(',')}` : '--clear-groups',
        process.execPath,
        // uid 4242 cannot reach a clone in root's 0700 home: the world-readable copy of the build.
        path.join(unprivilegedRoot(), 'bin', 'ipdeadgate'),
        'status',
        '--json',
        '--control',
        sock,
      ],
      { encoding: 'utf8', timeout: 30_000 },
      (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out: stdout + stderr }),
    ),
  );
}

describe('control socket group', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'idg-ctlgrp-'));
    chmodSync(dir, 0o755);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('--control-group names a group by name or number; an unknown one is a usage error', () => {
    const file = path.join(dir, 'group');
    writeFileSync(file, 'root:x:0:\nipdeadgate:x:998:alice,bob\n');
    assert.equal(groupId('ipdeadgate', file), 998);
    assert.equal(groupId('1234', file), 1234);
    assert.throws(() => groupId('nope', file), /--control-group: no group "nope"/);
  });

  it("members of the group use the socket (mode 0660, the group's); a user outside it is refused by the kernel", function () {
    requireRoot(this);
    const sock = path.join(dir, 'c.sock');
    const gid = 4343;
    const server = new ControlServer(sock, peerUidOf, undefined, gid).handle('status', async () => ({
      enabled: true,
      gateways: [],
    }));
    return (async () => {
      await server.listen();
      try {
        const st = statSync(sock);
        assert.equal(st.mode & 0o777, 0o660);
        assert.equal(st.gid, gid);
        const member = await statusAs(sock, [gid]);
        assert.equal(member.code, 0, member.out);
        assert.match(member.out, /"enabled": ?true/);
        const outsider = await statusAs(sock, []);
        assert.notEqual(outsider.code, 0, outsider.out);
        assert.match(outsider.out, /EACCES|permission denied/i);
      } finally {
        await server.close();
      }
    })();
  });

  it('without a group the socket stays 0600: a user who is not root or the daemon is refused', function () {
    requireRoot(this);
    const sock = path.join(dir, 'c.sock');
    const server = new ControlServer(sock, peerUidOf).handle('status', async () => ({ enabled: true }));
    return (async () => {
      await server.listen();
      try {
        assert.equal(statSync(sock).mode & 0o777, 0o600);
        assert.notEqual((await statusAs(sock, [0])).code, 0);
      } finally {
        await server.close();
      }
    })();
  });
});
