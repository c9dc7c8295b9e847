// TCP_INFO and SO_ERROR by fd: on live lab connections (pairLab), after a refused connect, and on bad
// descriptors (no network needed for those).
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { constants as osConstants } from 'node:os';
import type { Lab } from '../lab/lab';
import { requireRoot } from '../lab/lab';
import { pairLabWithPeer } from '../fixtures/sockdiag-lab';
import { IpdeadgateError, SystemError } from '../../src/errors';
import type { TcpInfoFields, TcpSocketEntry } from '../../src/sys/sockdiag';
import { fdOf, socketErrorByFd, tcpInfoByFd } from '../../src/sys/tcpinfo';

const PORT = 5000;

async function client(lab: Lab, args: string[]): Promise<Record<string, unknown>> {
  const r = await lab.node('a', 'dist/test/fixtures/sockdiag-client.js', args, 30_000);
  assert.equal(r.code, 0, `fixture ${args.join(' ')} failed (${r.code}): ${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

/** The SystemError a bad descriptor gives: code, errno, syscall and a message saying what to do. */
function isSystemError(code: string, syscall: string, advice: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof SystemError, `not a SystemError: ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.errno, osConstants.errno[code as keyof typeof osConstants.errno]);
    assert.equal(e.syscall, syscall);
    assert.match(e.message, new RegExp(`^${code}: `));
    assert.match(e.message, advice);
    return true;
  };
}

describe('TCP_INFO and SO_ERROR by fd in the lab', function () {
  this.timeout(60_000);
  let lab: Lab;

  before(async function () {
    requireRoot(this);
    ({ lab } = await pairLabWithPeer(PORT));
  });
  after(async () => {
    await lab?.close();
  });

  for (const [family, host] of [
    ['IPv4', '198.18.0.2'],
    ['IPv6', '2001:db8::2'],
  ] as const) {
    it(`reads TCP_INFO of a live ${family} connection, matching the sock_diag dump`, async () => {
      const r = await client(lab, ['tcpinfo', host, String(PORT)]);
      const info = r.info as TcpInfoFields;
      const entry = r.entry as TcpSocketEntry;
      assert.ok((r.echoed as number) > 0, 'the connection carried data both ways');
      assert.equal(info.state, 'ESTABLISHED');
      // Measured, and small; a delayed ACK (40 ms) on the first line can still weigh in the smoothed rtt.
      assert.ok(info.rttMs > 0 && info.rttMs < 200, `rtt measured: ${info.rttMs}`);
      assert.ok(info.rtoMs >= 200, `rto is at least TCP_RTO_MIN: ${info.rtoMs}`);
      assert.equal(info.retransmits, 0);
      assert.equal(info.totalRetrans, 0);
      assert.equal(info.unacked, 0);
      assert.ok((info.bytesAcked ?? 0) > 0 && (info.bytesReceived ?? 0) > 0, JSON.stringify(info));
      assert.equal(r.soError, 0, 'no pending error on a healthy socket');
      // The dump sees the same socket (same inode as /proc/self/fd) with the same tcp_info.
      assert.equal(entry.inode, r.inode);
      assert.equal(entry.srcPort, r.localPort);
      assert.equal(entry.info?.state, 'ESTABLISHED');
      assert.equal(entry.info?.rttMs, info.rttMs);
      assert.equal(entry.info?.bytesReceived, info.bytesReceived);
    });
  }

  it('reads ECONNREFUSED with SO_ERROR after a refused connect, which clears it', async () => {
    const r = await client(lab, ['refused', '198.18.0.2', '5999']);
    assert.equal(r.first, osConstants.errno.ECONNREFUSED);
    assert.equal(r.second, 0, 'SO_ERROR is cleared by reading it');
  });
});

describe('TCP_INFO and SO_ERROR: bad descriptors', () => {
  const sockPath = `/tmp/idg-${process.pid}-tcpinfo.sock`;
  let server: net.Server | undefined;
  let unixClient: net.Socket | undefined;

  after(() => {
    unixClient?.destroy();
    server?.close();
    fs.rmSync(sockPath, { force: true });
  });

  it('a closed fd gives an EBADF SystemError that says what to do, never a crash', () => {
    const fd = fs.openSync('/dev/null', 'r');
    fs.closeSync(fd);
    assert.throws(() => tcpInfoByFd(fd), isSystemError('EBADF', 'getsockopt', /not open.*open TCP socket/));
    assert.throws(() => socketErrorByFd(fd), isSystemError('EBADF', 'getsockopt', /not open/));
    assert.throws(() => tcpInfoByFd(-1), isSystemError('EBADF', 'getsockopt', /not open/));
    assert.throws(() => tcpInfoByFd(2 ** 31 - 1), isSystemError('EBADF', 'getsockopt', /not open/));
  });

  it('a descriptor that is not a socket gives ENOTSOCK', () => {
    const fd = fs.openSync('/dev/null', 'r');
    try {
      assert.throws(() => tcpInfoByFd(fd), isSystemError('ENOTSOCK', 'getsockopt', /not a socket/));
      assert.throws(() => socketErrorByFd(fd), isSystemError('ENOTSOCK', 'getsockopt', /not a socket/));
    } finally {
      fs.closeSync(fd);
    }
  });

  it('a socket that is not TCP gives a SystemError saying so', async () => {
    fs.rmSync(sockPath, { force: true });
    server = net.createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => server!.listen(sockPath, r));
    unixClient = net.connect(sockPath);
    await new Promise((r) => unixClient!.once('connect', r));
    const fd = fdOf(unixClient);
    assert.throws(
      () => tcpInfoByFd(fd),
      (e: unknown) =>
        e instanceof SystemError &&
        /^(ENOTSUP|EOPNOTSUPP|ENOPROTOOPT)$/.test(e.code) &&
        /not a TCP socket/.test(e.message),
    );
    assert.equal(socketErrorByFd(fd), 0, 'SO_ERROR works on any socket');
  });

  it('rejects non-integer descriptors with a TypeError before any syscall', () => {
    for (const bad of [1.5, NaN, '3', undefined]) assert.throws(() => tcpInfoByFd(bad as number), TypeError);
    assert.throws(() => socketErrorByFd(Infinity), TypeError);
  });

  it('fdOf explains a socket without a descriptor', () => {
    assert.throws(
      () => fdOf(new net.Socket()),
      (e: unknown) => e instanceof IpdeadgateError && e.code === 'ERR_NO_FD' && /no handle/.test(e.message),
    );
  });
});
