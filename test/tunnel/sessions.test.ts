// A session's life in the lab (the IY55176 leak in ESTABLISHED form): clients that reset
// 0-5 ms after connecting, while the far proxy is still dialing the service; a link cut during the
// dial; a service slow to accept; and a churn of thousands of sessions with random resets, link
// cuts and refusals. After each: zero sessions, zero sockets of a session in any TCP state
// (ss in the lab namespaces) and every proxy's descriptors back to baseline.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lab, REPO_ROOT, requireRoot, waitFor } from '../lab/lab';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import { client, startEcho, startNode, status, waitStatus, type RunningNode } from './labkit';
import { sleep } from './helpers';

const A = {
  client: '198.18.4.20',
  gwp: '198.18.4.11',
  epp: '198.18.4.2',
  svc: '198.18.4.10',
  linkPort: 9401,
  fwdPort: 9494, // the gateway proxy's forward (upcalls)
  svcPort: 9494, // the service behind the endpoint proxy
  slowPort: 9495, // a second service, made slow to accept
  deadPort: 9496, // a third service nobody listens on (refused)
};

/** Sockets of sessions in a host, any TCP state but TIME-WAIT (which holds no descriptor) and LISTEN. */
async function sessionSockets(lab: Lab, host: string, ports: number[]): Promise<string[]> {
  const filter = ports.map((p) => `sport = :${p} or dport = :${p}`).join(' or ');
  const out = await lab.execOk(host, ['ss', '-Htan', 'exclude', 'time-wait', `( ${filter} )`]);
  return out.split('\n').filter((l) => l.trim() && !l.startsWith('LISTEN'));
}

type Resets = { connected: number; refused: number };

describe('tunnel lab: every session ends (resets during the dial, link cuts, slow services, churn)', function () {
  this.timeout(90_000);
  let lab: Lab;
  let pki: TestPki;
  let gwp: RunningNode;
  let epp: RunningNode;
  const baseline = { gwp: 0, epp: 0 };
  const baseFds = { gwp: [] as string[], epp: [] as string[] };
  /**
   * A process's descriptors, less its Unix sockets: the tests' own status queries come and go on
   * the control socket while a proxy is watched, and they are not sessions.
   */
  const fds = (pid: number): string[] => {
    const unix = new Set(
      fs
        .readFileSync(`/proc/${pid}/net/unix`, 'utf8')
        .split('\n')
        .slice(1)
        .map((l) => l.trim().split(/\s+/)[6]),
    );
    const out: string[] = [];
    for (const f of fs.readdirSync(`/proc/${pid}/fd`)) {
      let target: string;
      try {
        target = fs.readlinkSync(`/proc/${pid}/fd/${f}`);
      } catch {
        continue; // closed meanwhile
      }
      const ino = /^socket:\[(\d+)\]$/.exec(target)?.[1];
      if (ino && unix.has(ino)) continue;
      out.push(target);
    }
    return out;
  };
  const fdCount = (pid: number): number => fds(pid).length;

  before(async function () {
    requireRoot(this);
    pki = makePki(['gwp', 'epp'], { epp: ['svc', 'slow', 'dead'] });
    const m = (host: keyof typeof A, iface = 'eth0') => ({ host, iface, addrs: [`${A[host]}/24`] });
    lab = await Lab.create({
      hosts: { client: {}, gwp: {}, epp: {}, svc: {} },
      lans: [{ name: 'sess', bridge: true, members: [m('client'), m('gwp'), m('epp'), m('svc')] }],
    });
    startEcho(lab, 'svc', A.svc, A.svcPort);
    // A service slow to accept: a full backlog (listen(0), no accept()), so dials to it hang.
    const slow = lab.spawn('svc', [
      'python3',
      path.join(REPO_ROOT, 'test', 'fixtures', 'tunnel-slow-listener.py'),
      A.svc,
      String(A.slowPort),
      '3600',
    ]);
    await new Promise<void>((resolve, reject) => {
      slow.stdout?.once('data', () => resolve());
      slow.once('exit', (code) => reject(new Error(`slow listener exited ${code}`)));
    });
    gwp = startNode(lab, pki, {
      host: 'gwp',
      name: 'gwp',
      role: 'gateway-proxy',
      listen: `${A.gwp}:${A.linkPort}`,
      forwards: [
        { listen: `${A.gwp}:${A.fwdPort}`, service: 'svc' },
        { listen: `${A.gwp}:${A.slowPort}`, service: 'slow' },
        { listen: `${A.gwp}:${A.deadPort}`, service: 'dead' },
      ],
      closeTimeout: '2s',
      relayAfter: '0', // every bridged session ends on the native relay's path
    });
    await sleep(200);
    epp = startNode(lab, pki, {
      host: 'epp',
      name: 'epp',
      role: 'endpoint-proxy',
      links: [`${A.gwp}:${A.linkPort}`],
      services: {
        svc: `${A.svc}:${A.svcPort}`,
        slow: `${A.svc}:${A.slowPort}`,
        dead: `${A.svc}:${A.deadPort}`,
      },
      closeTimeout: '2s',
      dialTimeout: '3s',
      relayAfter: '0',
    });
    await waitStatus(
      gwp,
      (s) => s.links.some((l) => l.state === 'up' && l.services.svc !== undefined),
      15_000,
      'link up',
    );
    // One whole session first, so every lazily opened descriptor (the reaper's, libuv's) exists.
    const r = await client<{ failed: number }>(lab, 'client', ['many', A.gwp, String(A.fwdPort), '4', '1']);
    assert.equal(r.failed, 0);
    await quiet();
    // The steady count: the least of a second's samples (a status query or a reaper pass may hold
    // a descriptor for a moment).
    baseline.gwp = Infinity;
    baseline.epp = Infinity;
    for (let i = 0; i < 10; i++) {
      baseline.gwp = Math.min(baseline.gwp, fdCount(gwp.child.pid!));
      baseline.epp = Math.min(baseline.epp, fdCount(epp.child.pid!));
      await sleep(100);
    }
    baseFds.gwp = fds(gwp.child.pid!);
    baseFds.epp = fds(epp.child.pid!);
  });

  after(async () => {
    await lab?.close();
    pki?.cleanup();
  });

  async function quiet(ms = 10_000): Promise<void> {
    for (const n of [gwp, epp]) await waitStatus(n, (s) => s.sessions.count === 0, ms, 'no sessions left');
  }

  /** Zero sessions, zero session sockets on both proxies, descriptors at baseline. */
  async function assertClean(what: string): Promise<void> {
    try {
      await quiet(8000);
    } catch (e) {
      const st = await Promise.all([gwp, epp].map((n) => status(n).then((s) => s.sessions)));
      throw new Error(`${what}: ${(e as Error).message}; sessions ${JSON.stringify(st)}`);
    }
    const ports = [A.fwdPort, A.slowPort, A.deadPort];
    await waitFor(
      async () => (await sessionSockets(lab, 'epp', ports)).length === 0,
      5000,
      `${what}: epp sockets ${JSON.stringify(await sessionSockets(lab, 'epp', ports))}`,
    ).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify(await sessionSockets(lab, 'epp', ports))}`);
    });
    assert.deepEqual(await sessionSockets(lab, 'gwp', ports), [], `${what}: gwp sockets`);
    for (const n of ['gwp', 'epp'] as const) {
      const pid = (n === 'gwp' ? gwp : epp).child.pid!;
      await waitFor(() => fdCount(pid) <= baseline[n], 5000, `${n} descriptors`).catch(async () => {
        const now = fds(pid);
        const inodes = now.filter((f) => !baseFds[n].includes(f)).map((f) => /\d+/.exec(f)?.[0] ?? f);
        const ss = (await lab.execOk(n, ['ss', '-anpe'])).split('\n');
        const table = (f: string): string[] => {
          try {
            return fs.readFileSync(`/proc/${pid}/net/${f}`, 'utf8').split('\n');
          } catch {
            return [];
          }
        };
        const procLine = (i: string): string => {
          for (const f of ['tcp', 'tcp6', 'udp', 'netlink', 'raw', 'packet']) {
            const l = table(f).find((x) => x.trim().split(/\s+/).includes(i));
            if (l) return `${f}: ${l.trim()}`;
          }
          return 'nowhere in /proc/net';
        };
        const extra = inodes.map((i) => ss.find((l) => l.includes(`ino:${i} `)) ?? `${i}: ${procLine(i)}`);
        throw new Error(
          `${what}: ${n} descriptors back to ${baseline[n]} (now ${now.length}:\n${extra.join('\n')})`,
        );
      });
    }
  }

  it('500 clients that reset 0-5 ms after connecting (the far proxy still dialing): no session, socket or descriptor left', async () => {
    const before = (await status(epp)).sessions.opened;
    const r = await client<Resets>(lab, 'client', ['resets', A.gwp, String(A.fwdPort), '500', '25', '5']);
    assert.equal(r.connected, 500, JSON.stringify(r));
    assert.ok((await status(epp)).sessions.opened > before, 'sessions reached the endpoint proxy');
    await assertClean('after 500 resets');
  });

  async function ends(n: RunningNode): Promise<Record<string, number>> {
    return ((await status(n)).sessions.ends ?? {}) as Record<string, number>;
  }

  /** Cut the link silently on the endpoint proxy's side (the heartbeat finds it), or restore it. */
  async function cutLink(): Promise<void> {
    const file = lab.tempPath('nft-cut');
    fs.writeFileSync(
      file,
      `table inet idgcut {\n  chain out { type filter hook output priority 0; tcp dport ${A.linkPort} drop; }\n` +
        `  chain in { type filter hook input priority 0; tcp sport ${A.linkPort} drop; }\n}\n`,
    );
    await lab.execOk('epp', ['nft', '-f', file]);
  }
  async function restoreLink(): Promise<void> {
    await lab.execOk('epp', ['nft', 'delete', 'table', 'inet', 'idgcut']);
    await waitStatus(
      gwp,
      (s) => s.links.some((l) => l.state === 'up' && l.services.svc !== undefined),
      20_000,
      'the link back up',
    );
  }
  const linkDown = (n: RunningNode) =>
    waitStatus(n, (s) => !s.links.some((l) => l.state === 'up'), 10_000, 'the heartbeat to drop the link');

  it('a service that refuses: 100 sessions refused, each client reset, nothing left', async () => {
    const before = { epp: await ends(epp), gwp: await ends(gwp) };
    const r = await client<{ other: number }>(lab, 'client', [
      'churn',
      A.gwp,
      String(A.deadPort),
      '100',
      '20',
      '0',
      String(A.deadPort),
    ]);
    assert.ok(r.other >= 1);
    await assertClean('after refusals');
    const after = { epp: await ends(epp), gwp: await ends(gwp) };
    assert.ok((after.epp.dial_failed ?? 0) > (before.epp.dial_failed ?? 0), JSON.stringify(after));
    assert.ok((after.gwp.refused ?? 0) > (before.gwp.refused ?? 0), JSON.stringify(after));
  });

  it('a service slow to accept (full backlog): clients that reset during the dial end their sessions at once, before dial_timeout', async () => {
    const counts = async () => ({
      gwp: await ends(gwp),
      epp: await ends(epp),
      opened: (await status(epp)).sessions.opened,
    });
    const before = await counts();
    const r = await client<Resets>(lab, 'client', ['resets', A.gwp, String(A.slowPort), '40', '40', '300']);
    assert.equal(r.connected, 40);
    await assertClean('after resets during slow dials');
    const after = await counts();
    const delta = (side: 'gwp' | 'epp', exit: string): number =>
      (after[side][exit] ?? 0) - (before[side][exit] ?? 0);
    const st = JSON.stringify(after);
    // A session that waited for its dial to time out would be counted as dial_timeout, not reset.
    assert.equal(delta('epp', 'dial_timeout'), 0, 'no session needed dial_timeout');
    // Every client's RST was taken for one by the gateway proxy, even when libuv reported it as an
    // end of stream (its data and RST both queued before the first read): never passed on as a FIN.
    assert.equal(delta('gwp', 'local_reset'), 40, st);
    // Every session that began on the endpoint proxy ended by the stream's reset. A stream reset
    // before the endpoint proxy had read its request never becomes a session (nothing is dialed):
    // that is a client that reset within moments of connecting, so a few of the 40 may not begin.
    // The resets are spread over 300 ms, so most sessions are dialing when theirs comes.
    const opened = after.opened - before.opened;
    assert.equal(delta('epp', 'stream_reset'), opened, st);
    assert.ok(opened >= 20, `most sessions reached the dial: ${opened} ${st}`);
  });

  it('a service slow to accept, clients that wait: dial_timeout ends each session with a refusal and resets the client', async () => {
    const before = await ends(epp);
    const r = await client<{ open: number; reset: number; ended: number }>(lab, 'client', [
      'hold',
      A.gwp,
      String(A.slowPort),
      '10',
      '5',
    ]);
    assert.equal(
      r.open,
      0,
      `every client was answered: ${JSON.stringify(r)} ${JSON.stringify((await status(epp)).sessions)}`,
    );
    await assertClean('after dial timeouts');
    const after = await ends(epp);
    assert.ok((after.dial_timeout ?? 0) - (before.dial_timeout ?? 0) >= 9, JSON.stringify(after));
  });

  it('the link cut while the far proxy dials (heartbeat loss): every session ends on both proxies', async () => {
    const held = client<{ open: number }>(
      lab,
      'client',
      ['hold', A.gwp, String(A.slowPort), '20', '4'],
      20_000,
    );
    await waitStatus(epp, (s) => (s.sessions.states?.dialing ?? 0) >= 15, 5000, '15 sessions dialing');
    await cutLink();
    try {
      await Promise.all([linkDown(epp), linkDown(gwp)]);
      await quiet(3000);
      for (const host of ['gwp', 'epp'])
        assert.deepEqual(await sessionSockets(lab, host, [A.slowPort, A.fwdPort]), [], `${host} sockets`);
      const e = await ends(epp);
      assert.ok((e.stream_reset ?? 0) >= 15, JSON.stringify(e));
    } finally {
      await restoreLink();
    }
    const h = await held;
    assert.equal(h.open, 0, 'every client was reset');
    await assertClean('after the link cut');
  });

  it('churn: 2000 sessions with random client resets at random moments, refusals, slow dials and two link cuts: zero sessions, sockets and extra descriptors after', async function () {
    this.timeout(120_000);
    const t0 = Date.now();
    const churn = client<{ ok: number; reset: number; failed: number; other: number }>(
      lab,
      'client',
      ['churn', A.gwp, String(A.fwdPort), '2000', '40', '20', `${A.deadPort},${A.slowPort}`],
      90_000,
    );
    let cuts = 0;
    const cutter = (async () => {
      for (let i = 0; i < 2; i++) {
        await sleep(1500);
        await cutLink();
        await linkDown(epp);
        await restoreLink();
        cuts++;
      }
    })();
    const [r] = await Promise.all([churn, cutter]);
    assert.equal(cuts, 2);
    assert.equal(r.ok + r.reset + r.failed + r.other, 2000, JSON.stringify(r));
    assert.ok(r.ok >= 100, `sessions completed between the cuts: ${JSON.stringify(r)}`);
    await assertClean('after the churn');
    const st = await Promise.all([gwp, epp].map((n) => status(n)));
    console.log(
      `      churn: ${JSON.stringify(r)} in ${Date.now() - t0} ms; ends gwp ${JSON.stringify(st[0]!.sessions.ends)} epp ${JSON.stringify(st[1]!.sessions.ends)}`,
    );
  });

  it('process stop (SIGTERM, go-away) with sessions bridged and dialing: the other proxy ends them all', async () => {
    const held = client<{ open: number }>(
      lab,
      'client',
      ['hold', A.gwp, String(A.fwdPort), '20', '3'],
      20_000,
    );
    const dialing = client<{ open: number }>(
      lab,
      'client',
      ['hold', A.gwp, String(A.slowPort), '10', '3'],
      20_000,
    );
    await waitStatus(
      epp,
      (s) => (s.sessions.states?.dialing ?? 0) >= 8 && (s.sessions.states?.bridged ?? 0) >= 18,
      5000,
      'sessions bridged and dialing',
    );
    const exited = new Promise<number | null>((r) => gwp.child.once('exit', (code) => r(code)));
    gwp.child.kill('SIGTERM');
    assert.equal(await exited, 0);
    await waitStatus(epp, (s) => s.sessions.count === 0, 5000, 'no sessions on epp');
    assert.deepEqual(await sessionSockets(lab, 'epp', [A.fwdPort, A.slowPort]), [], 'epp sockets');
    await waitFor(
      () => fdCount(epp.child.pid!) <= baseline.epp,
      5000,
      'epp descriptors at or below baseline',
    );
    await Promise.all([held, dialing]);
  });
});
