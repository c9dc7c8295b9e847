// sd_notify through the addon, against a real unix datagram socket (a python3 receiver, since Node
// has none), and the journal's priority prefixes, against a real stdout.
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openServiceNotifier } from '../../src/sys/sdnotify';
import { REPO_ROOT, waitFor } from '../lab/lab';

const RECEIVER = `
import socket, sys, json
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = sys.argv[1]
s.bind('\\0' + addr[1:] if addr.startswith('@') else addr)
print(json.dumps({"ready": True}), flush=True)
s.settimeout(10)
try:
    while True:
        print(json.dumps({"msg": s.recv(4096).decode()}), flush=True)
except socket.timeout:
    pass
`;

interface Receiver {
  child: ChildProcess;
  messages: string[];
}

async function receiver(addr: string): Promise<Receiver> {
  const child = spawn('python3', ['-c', RECEIVER, addr], { stdio: ['ignore', 'pipe', 'inherit'] });
  const r: Receiver = { child, messages: [] };
  let ready = false;
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (c: string) => {
    buf += c;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = JSON.parse(buf.slice(0, nl)) as { ready?: boolean; msg?: string };
      buf = buf.slice(nl + 1);
      if (line.ready) ready = true;
      if (line.msg !== undefined) r.messages.push(line.msg);
    }
  });
  await waitFor(() => ready, 10_000, 'the datagram receiver');
  return r;
}

describe('sd_notify (native datagram) and journal priorities', () => {
  let dir: string;
  const children: ChildProcess[] = [];
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-sdnotify-'));
  });
  after(() => {
    for (const c of children) c.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('sends READY=1 and STATUS as one datagram to a path socket, and takes NOTIFY_SOCKET out of the environment', async () => {
    const sock = path.join(dir, 'notify.sock');
    const r = await receiver(sock);
    children.push(r.child);
    const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: sock, KEEP: '1' };
    const n = openServiceNotifier({ env });
    assert.equal(n.active, true);
    assert.equal(env.NOTIFY_SOCKET, undefined, 'children must not notify on our behalf');
    assert.equal(env.KEEP, '1');
    assert.equal(n.notify('READY=1', 'STATUS=serving'), true);
    await waitFor(() => r.messages.length === 1, 5000, 'the datagram');
    assert.equal(r.messages[0], 'READY=1\nSTATUS=serving');
  });

  it('reaches an abstract socket ("@name", as systemd uses)', async () => {
    const name = `@idg-sdnotify-${process.pid}`;
    const r = await receiver(name);
    children.push(r.child);
    const n = openServiceNotifier({ env: { NOTIFY_SOCKET: name } });
    n.notify('STOPPING=1');
    await waitFor(() => r.messages.includes('STOPPING=1'), 5000, 'the datagram');
  });

  it('feeds the watchdog every half WATCHDOG_USEC from the event loop, and stops', async () => {
    const sock = path.join(dir, 'wd.sock');
    const r = await receiver(sock);
    children.push(r.child);
    const n = openServiceNotifier({ env: { NOTIFY_SOCKET: sock, WATCHDOG_USEC: '200000' } });
    assert.equal(n.watchdogMs, 200);
    const stop = n.startWatchdog();
    // The interval timer is unref'd (it must not keep a stopping daemon alive): keep the loop busy.
    await new Promise((res) => setTimeout(res, 560));
    stop();
    const fed = r.messages.filter((m) => m === 'WATCHDOG=1').length;
    // 1 at once + one per 100 ms; a loaded machine may delay a timer or two.
    assert.ok(fed >= 3 && fed <= 7, `WATCHDOG=1 sent ${fed} times in 560 ms at 100 ms`);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(r.messages.filter((m) => m === 'WATCHDOG=1').length, fed, 'nothing after stop');
  });

  it('arms no watchdog for another pid (WATCHDOG_PID) or without a socket', () => {
    assert.equal(
      openServiceNotifier({
        env: { NOTIFY_SOCKET: '/x', WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' },
        pid: 2,
      }).watchdogMs,
      null,
    );
    const off = openServiceNotifier({ env: { WATCHDOG_USEC: '1000000' } });
    assert.equal(off.active, false);
    assert.equal(off.watchdogMs, null);
    assert.equal(off.notify('READY=1'), false);
  });

  it('a failed send is reported with errno and path, never thrown', () => {
    const errors: Error[] = [];
    const n = openServiceNotifier({
      env: { NOTIFY_SOCKET: path.join(dir, 'nobody-listens.sock') },
      onError: (e) => errors.push(e),
    });
    assert.equal(n.notify('READY=1'), false);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.message, /^ENOENT: sd_notify to .*nobody-listens\.sock failed \(sendto: /);
    assert.equal((errors[0] as Error & { code: string }).code, 'ENOENT');
  });

  it('log lines start with their syslog priority only when stdout is the journal stream', () => {
    const script = `
      const fs = require('node:fs');
      const st = fs.fstatSync(1);
      if (process.argv[1] === 'journal') process.env.JOURNAL_STREAM = st.dev + ':' + st.ino;
      else process.env.JOURNAL_STREAM = '1:1';
      const { createLogger, eventLog } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist', 'src', 'daemon', 'log.js'))});
      const log = eventLog(createLogger({ format: process.argv[2] }));
      log.event('a', {}, 'error'); log.event('b', {}, 'warn'); log.event('c', {}, 'info');
    `;
    const out = (mode: string, format: string) =>
      spawnSync(process.execPath, ['-e', script, mode, format], { encoding: 'utf8' })
        .stdout.trim()
        .split('\n');
    const json = out('journal', 'json');
    assert.deepEqual(
      json.map((l) => l.slice(0, 4)),
      ['<3>{', '<4>{', '<6>{'],
    );
    assert.equal((JSON.parse(json[0]!.slice(3)) as { event: string }).event, 'a');
    assert.deepEqual(
      out('journal', 'text').map((l) => l.slice(0, 3)),
      ['<3>', '<4>', '<6>'],
    );
    // Another stream (a file, a pipe, a terminal): no prefixes.
    assert.ok(out('other', 'json').every((l) => l.startsWith('{')));
  });
});
