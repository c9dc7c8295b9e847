// A session's life in the lab (issue 9, the IY55176 leak in ESTABLISHED form): clients that reset
// 0-5 ms after connecting, while the far proxy is still dialing the service; a link cut during the
// dial; a service slow to accept; and a churn of thousands of sessions with random resets, link
// cuts and refusals. After each: zero sessions, zero sockets of a session in any TCP state
// (ss in the lab namespaces) and every proxy's descriptors back to baseline.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { Lab, requireRoot, waitFor } from '../lab/lab';
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
    pki = makePki(['gwp', 'epp']);
    const m = (host: keyof typeof A, iface = 'eth0') => ({ host, iface, addrs: [`${A[host]}/24`] });
    lab = await Lab.create({
      hosts: { client: {}, gwp: {}, epp: {}, svc: {} },
      lans: [{ name: 'sess', bridge: true, members: [m('client'), m('gwp'), m('epp'), m('svc')] }],
    });
    startEcho(lab, 'svc', A.svc, A.svcPort);
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
    baseline.gwp = fdCount(gwp.child.pid!);
    baseline.epp = fdCount(epp.child.pid!);
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
      await waitFor(() => fdCount(pid) === baseline[n], 5000, `${n} descriptors`).catch(async () => {
        const now = fds(pid);
        const inodes = now.filter((f) => !baseFds[n].includes(f)).map((f) => /\d+/.exec(f)?.[0] ?? f);
        const ss = (await lab.execOk(n, ['ss', '-anpe'])).split('\n');
        const extra = inodes.map((i) => ss.find((l) => l.includes(`ino:${i} `)) ?? `${i}: not in ss`);
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
});
