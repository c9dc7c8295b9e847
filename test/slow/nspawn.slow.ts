// The Debian package under a real init, on the Debian hosts have today: a stock Debian 13 container
// booted with systemd-nspawn (systemd as PID 1) joins the lab's client host, and the .deb that
// scripts/package builds is installed inside with `apt-get install ./ipdeadgate.deb`, which pulls
// Debian's own nodejs (no other repository). Then the operator's day is played through systemctl:
// start returns once the daemon is ready, running as its own user with two capabilities; a silent
// router death is failed over; errors reach `journalctl -p err`; reload applies a changed config
// (and a bad one fails and changes nothing); stop restores a withdrawn route; kill -9 is followed
// by a restart that honours the journal; the tunnel template unit runs a node whose link to a peer
// in the lab comes up (its TLS through the OpenSSL that Debian's node links) and carries a
// session; an upgrade keeps config and state; purge removes them. The container is destroyed
// afterwards.
//
// Slow (a package build, a boot, apt in the container): run by `scripts/test --slow` (and
// .ci/run), not by the normal suite. The root file system (with Debian's nodejs .deb files and
// package lists, fetched from the host's own apt mirror) is cached outside the clone
// (/var/cache/ipdeadgate-test), built on first use by scripts/lib/nspawn-rootfs.
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Lab, REPO_ROOT, requireRoot, waitFor } from '../lab/lab';
import { startFlowClient, startFlowServer, type FlowClient } from '../lab/flows';
import { NspawnMachine, sweepStaleMachines } from '../lab/nspawn';
import { DGD, dgdLabSpec } from '../lab/topologies';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';

const PORT = 9311;
const CONFIG = '/etc/ipdeadgate/ipdeadgate.yaml';

function hostRun(cmd: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { cwd: REPO_ROOT, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (err, out, errOut) => {
        if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${errOut}`));
        else resolve(String(out));
      },
    );
  });
}

interface StatusJson {
  enabled: boolean;
  pid: number;
  gateways: { address: string; state: string; active_probing: unknown; routes: { state: string }[] }[];
}

describe('the Debian package under systemd (systemd-nspawn, a stock Debian 13)', function () {
  this.timeout(20 * 60_000);
  let lab: Lab;
  let m: NspawnMachine;
  let pki: TestPki | undefined;
  const flows: FlowClient[] = [];
  let pkgDir = '';
  let deb = '';

  const defaults4 = async () =>
    (await lab.ip('client', ['-4', 'route', 'show', 'default'])).trim().split('\n').filter(Boolean);
  const status = async (control?: string): Promise<StatusJson> =>
    JSON.parse(
      await m.execOk(['ipdeadgate', 'status', '--json', ...(control ? ['--control', control] : [])]),
    ) as StatusJson;
  const gateway = async (addr: string) => (await status()).gateways.find((g) => g.address === addr);
  const show = async (unit: string, prop: string) =>
    (await m.execOk(['systemctl', 'show', '-p', prop, '--value', unit])).trim();
  /** Several properties read at one instant (separate reads race with a restart). */
  const props = async (unit: string, names: string[]) =>
    Object.fromEntries(
      (await m.execOk(['systemctl', 'show', unit, ...names.map((n) => `--property=${n}`)]))
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    ) as Record<string, string>;
  /** Active again, under a new main process (not the old one, not none). */
  const restartedFrom = (p: Record<string, string>, oldPid: string) =>
    p.ActiveState === 'active' && p.MainPID !== oldPid && p.MainPID !== '0';
  /** The service's journal since `cursor` (or all of it), as JSON events. */
  const journal = async (args: string[] = []) =>
    (await m.execOk(['journalctl', '-u', 'ipdeadgate', '-o', 'cat', '--no-pager', ...args]))
      .split('\n')
      .filter(Boolean);
  const events = async (name: string, args: string[] = []) =>
    (await journal(args))
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((e) => e.event === name);
  const flowThroughR1 = () => {
    const f = startFlowClient(lab, 'client', DGD.server4, PORT, { intervalMs: 50, durationMs: 30_000 });
    flows.push(f);
    return f;
  };

  before(async function () {
    requireRoot(this);
    for (const tool of ['systemd-nspawn', 'debootstrap', 'nsenter'])
      await hostRun('sh', ['-c', `command -v ${tool}`], 5000).catch(() => {
        throw new Error(`${tool} is missing: scripts/setup installs it (systemd-container, debootstrap)`);
      });
    sweepStaleMachines();
    pkgDir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-pkg-'));
    const [built, rootfs] = await Promise.all([
      hostRun(path.join(REPO_ROOT, 'scripts', 'package'), ['--out', pkgDir], 10 * 60_000),
      hostRun(path.join(REPO_ROOT, 'scripts', 'lib', 'nspawn-rootfs'), ['trixie'], 15 * 60_000),
    ]);
    deb = built.trim().split('\n').pop()!;
    assert.match(path.basename(deb), /^ipdeadgate_\d+\.\d+\.\d+-\d+_amd64\.deb$/);
    lab = await Lab.create(dgdLabSpec());
    await startFlowServer(lab, 'server', PORT).listening;
    m = await NspawnMachine.boot({
      rootfs: rootfs.trim().split('\n').pop()!,
      netnsPath: `/run/netns/${lab.ns('client')}`,
      name: `idg-test-${process.pid}`,
    });
    m.copyIn(deb, '/root/ipdeadgate.deb');
  });

  afterEach(async function () {
    // A failed step shows what the service said, to find why without re-running the slow test.
    if (this.currentTest?.state !== 'failed' || !m) return;
    const j = await m.exec(['journalctl', '-n', '40', '--no-pager', '-o', 'short-monotonic']);
    process.stderr.write(`--- the container's journal (last 40 lines) ---\n${j.stdout}${j.stderr}\n`);
  });

  after(async () => {
    for (const f of flows) f.child.kill('SIGKILL');
    await m?.close();
    await lab?.close();
    pki?.cleanup();
    if (pkgDir) fs.rmSync(pkgDir, { recursive: true, force: true });
  });

  it("installs with apt on a stock Debian 13, pulling Debian's own nodejs: program under /usr/lib, command, units, conffile, man page, its own user; nothing started", async () => {
    assert.match(await m.execOk(['cat', '/etc/debian_version']), /^13\./);
    assert.notEqual((await m.exec(['dpkg-query', '-W', 'nodejs'])).code, 0, 'no nodejs before');
    // As an operator does: apt resolves the dependencies from Debian. The container has no way
    // out: they come from the rootfs's apt cache, which came from the mirror (apt finds them
    // there and downloads nothing; anything missing would fail).
    const out = await m.execOk(
      [
        'env',
        'DEBIAN_FRONTEND=noninteractive',
        'apt-get',
        'install',
        '-y',
        '--no-install-recommends',
        '/root/ipdeadgate.deb',
      ],
      5 * 60_000,
    );
    assert.match(out, /Setting up nodejs /);
    assert.match(out, /Setting up ipdeadgate/);
    // Debian's nodejs (a +dfsg Debian revision), not a repacked one from elsewhere.
    const nodeVersion = await m.execOk(['dpkg-query', '-W', '-f=${Version}', 'nodejs']);
    assert.match(nodeVersion, /^20\.\d+\.\d+\+dfsg-/);
    assert.match(await m.execOk(['node', '--version']), /^v20\./);
    // The package's own user and group, from sysusers.d.
    assert.match(await m.execOk(['getent', 'passwd', 'ipdeadgate']), /^ipdeadgate:x:\d+:\d+:/);
    assert.equal((await m.execOk(['stat', '-c', '%U %a', '/var/lib/ipdeadgate'])).trim(), 'ipdeadgate 700');
    assert.equal(
      (await m.execOk(['readlink', '-f', '/usr/bin/ipdeadgate'])).trim(),
      '/usr/lib/ipdeadgate/bin/ipdeadgate',
    );
    assert.match(await m.execOk(['ipdeadgate', '--version']), /^\d+\.\d+\.\d+/);
    assert.match(await m.execOk(['dpkg-query', '-W', '-f=${Conffiles}', 'ipdeadgate']), new RegExp(CONFIG));
    for (const f of [
      '/lib/systemd/system/ipdeadgate.service',
      '/lib/systemd/system/ipdeadgate-tunnel@.service',
      '/usr/share/man/man8/ipdeadgate.8.gz',
      '/usr/share/bash-completion/completions/ipdeadgate',
      '/usr/share/doc/ipdeadgate/security.md',
      '/usr/lib/ipdeadgate/build/Release/ipdeadgate_native.node',
    ])
      await m.execOk(['test', '-f', f]);
    // Nothing for building or tests came along.
    const deps = await m.execOk(['dpkg-query', '-W', '-f=${Depends}', 'ipdeadgate']);
    assert.match(deps, /nodejs \(>= 20\)/);
    assert.match(deps, /libpcap0\.8/);
    assert.doesNotMatch(deps, /iperf3|socat|openssh|g\+\+|make|libpcap-dev|tcpdump/);
    assert.equal((await m.exec(['systemctl', 'is-active', 'ipdeadgate'])).stdout.trim(), 'inactive');
    assert.match(await m.execOk(['ipdeadgate', 'check-config', CONFIG]), /ok/);
  });

  it('systemctl enable --now returns once the daemon is ready: status answers at once', async () => {
    await m.execOk(['systemctl', 'enable', '--now', 'ipdeadgate'], 90_000);
    // No wait, no retry: Type=notify means READY=1 came after the control socket listened.
    const st = await status();
    assert.equal(st.enabled, true);
    for (const gw of [DGD.r1_4, DGD.r2_4])
      assert.equal(st.gateways.find((g) => g.address === gw)?.state, 'active');
    assert.equal(await show('ipdeadgate', 'Type'), 'notify');
    assert.match(await show('ipdeadgate', 'StatusText'), /serving on \/run\/ipdeadgate\/ipdeadgate\.sock/);
    assert.equal(await show('ipdeadgate', 'WatchdogUSec'), '20s');
    const pid = Number(await show('ipdeadgate', 'MainPID'));
    assert.equal(pid, st.pid);
    // Exactly CAP_NET_ADMIN (12) and CAP_NET_RAW (13), effective and bounding.
    const caps = await m.execOk(['grep', '-E', '^Cap(Eff|Bnd):', `/proc/${pid}/status`]);
    assert.match(caps, /CapEff:\s+0000000000003000/);
    assert.match(caps, /CapBnd:\s+0000000000003000/);
    // Its own user, not root; the state directory and the control socket are that user's.
    const uid = Number(/^Uid:\s+(\d+)/m.exec(await m.execOk(['cat', `/proc/${pid}/status`]))![1]);
    assert.notEqual(uid, 0, 'the daemon is not root');
    assert.equal((await m.execOk(['id', '-u', 'ipdeadgate'])).trim(), String(uid));
    assert.equal((await m.execOk(['stat', '-c', '%U %a', '/var/lib/ipdeadgate'])).trim(), 'ipdeadgate 700');
    assert.equal(
      (await m.execOk(['stat', '-L', '-c', '%U %G %a', '/run/ipdeadgate.sock'])).trim(),
      'ipdeadgate ipdeadgate 660',
    );
  });

  it("systemd-analyze security rates the running unit no worse than as root (2.3 on Debian 13's systemd)", async () => {
    const out = await m.execOk(['systemd-analyze', 'security', '--no-pager', 'ipdeadgate.service']);
    const level = /Overall exposure level for ipdeadgate\.service: ([\d.]+)/.exec(out);
    assert.ok(level, out.slice(-500));
    assert.ok(Number(level[1]) <= 2.3, `exposure ${level[1]}`);
    assert.match(out, /✓ User=\/DynamicUser=/);
  });

  it('an operator in group ipdeadgate uses the control socket; a user outside it cannot', async () => {
    await m.execOk(['useradd', '--create-home', '--groups', 'ipdeadgate', 'oper']);
    await m.execOk(['useradd', '--create-home', 'other']);
    const asUser = (user: string) =>
      m.exec([
        'setpriv',
        `--reuid=${user}`,
        `--regid=${user}`,
        '--init-groups',
        'ipdeadgate',
        'status',
        '--json',
      ]);
    const ok = await asUser('oper');
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.equal((JSON.parse(ok.stdout) as StatusJson).enabled, true);
    const refused = await asUser('other');
    assert.notEqual(refused.code, 0);
    assert.match(refused.stdout + refused.stderr, /EACCES|permission denied/i);
  });

  it('a routing daemon installed after ipdeadgate: its group is joined at the next start, and no unit fails without it', async () => {
    // No FRR or BIRD in the container: the unit started above without their groups. BIRD's
    // package would make group bird; the restart adds the daemon's user to it.
    await m.execOk(['groupadd', '--system', 'bird']);
    await m.execOk(['systemctl', 'restart', 'ipdeadgate'], 90_000);
    const pid = await show('ipdeadgate', 'MainPID');
    const gid = (await m.execOk(['getent', 'group', 'bird'])).split(':')[2]!;
    const groups = /^Groups:\s*(.*)$/m.exec(await m.execOk(['cat', `/proc/${pid}/status`]))![1]!;
    assert.ok(groups.split(/\s+/).includes(gid), `Groups: ${groups} has bird (${gid})`);
    assert.match(
      await m.execOk(['journalctl', '-u', 'ipdeadgate', '--no-pager', '-o', 'cat']),
      /joined group bird/,
    );
  });

  it('a silent router death is failed over', async () => {
    const flow = flowThroughR1();
    await waitFor(() => flow.echoes.length >= 10, 10_000, 'the flow to run');
    await lab.killSilently('r1', 'lan0');
    await waitFor(async () => (await gateway(DGD.r1_4))?.state === 'dead', 30_000, 'r1 dead', 250);
    const left = await defaults4();
    assert.equal(left.length, 1, left.join(' | '));
    assert.match(left[0]!, new RegExp(`via ${DGD.r2_4.replace(/\./g, '\\.')}`));
    assert.ok((await events('routes_withdrawn')).length >= 1);
    // Journaled in the StateDirectory before the kernel changed.
    assert.match(await m.execOk(['ls', '/var/lib/ipdeadgate']), /\S/);
    const t = Date.now();
    await waitFor(() => flow.echoes.some((e) => e.t > t), 15_000, 'the flow to resume through r2');
  });

  it('errors reach journalctl -p err; a bad config fails systemctl reload and changes nothing', async () => {
    const good = await m.execOk(['cat', CONFIG]);
    const pid = await show('ipdeadgate', 'MainPID');
    m.writeFile(CONFIG, good + '\nbogus_key: 1\n');
    const r = await m.exec(['systemctl', 'reload', 'ipdeadgate'], 60_000);
    assert.notEqual(r.code, 0, 'reload of a bad config must fail');
    // Past the check (SIGHUP by hand): the daemon refuses it and logs an error.
    await m.execOk(['systemctl', 'kill', '-s', 'HUP', '--kill-whom=main', 'ipdeadgate']);
    await waitFor(async () => (await events('config_refused')).length > 0, 10_000, 'config_refused', 200);
    const errs = await journal(['-p', 'err']);
    assert.ok(
      errs.some((l) => l.includes('"config_refused"')),
      errs.join('\n'),
    );
    assert.ok(
      errs.some((l) => /bogus_key/.test(l) && l.startsWith('ipdeadgate:')),
      `check-config's error: ${errs.join('\n')}`,
    );
    assert.ok(!errs.some((l) => l.includes('"daemon_started"')), 'info lines stay out of -p err');
    assert.equal(await show('ipdeadgate', 'MainPID'), pid, 'still the same daemon');
    assert.equal(await show('ipdeadgate', 'ActiveState'), 'active');
    m.writeFile(CONFIG, good);
  });

  it('systemctl reload applies a changed config', async () => {
    const good = await m.execOk(['cat', CONFIG]);
    assert.equal((await gateway(DGD.r2_4))?.active_probing, null);
    m.writeFile(
      CONFIG,
      good.replace(/^ {2}active: \[\].*$/m, `  active: [{ gateway: ${DGD.r2_4}, interval: 1s, misses: 3 }]`),
    );
    await m.execOk(['systemctl', 'reload', 'ipdeadgate'], 60_000);
    await waitFor(async () => (await gateway(DGD.r2_4))?.active_probing, 10_000, 'active probing of r2', 200);
    assert.ok((await events('config_reloaded')).length >= 1);
    m.writeFile(CONFIG, good);
    await m.execOk(['systemctl', 'reload', 'ipdeadgate'], 60_000);
  });

  it('systemctl stop restores the withdrawn route', async () => {
    assert.equal((await defaults4()).length, 1, 'r1 route still withdrawn');
    await m.execOk(['systemctl', 'stop', 'ipdeadgate'], 60_000);
    const routes = await defaults4();
    assert.equal(routes.length, 2, routes.join(' | '));
    assert.ok(
      routes.some((r) => r.includes(`via ${DGD.r1_4}`) && /metric 100/.test(r)),
      routes.join(' | '),
    );
    assert.ok((await events('daemon_stopped')).length >= 1);
  });

  it('kill -9: systemd restarts the daemon and the new one honours the journal', async () => {
    await m.execOk(['systemctl', 'start', 'ipdeadgate'], 90_000);
    const flow = flowThroughR1();
    await waitFor(async () => (await gateway(DGD.r1_4))?.state === 'dead', 30_000, 'r1 dead again', 250);
    void flow;
    assert.equal((await defaults4()).length, 1);
    const pid = await show('ipdeadgate', 'MainPID');
    const restartsBefore = Number(await show('ipdeadgate', 'NRestarts'));
    await m.execOk(['systemctl', 'kill', '-s', 'KILL', '--kill-whom=main', 'ipdeadgate']);
    await waitFor(
      async () => restartedFrom(await props('ipdeadgate', ['ActiveState', 'MainPID']), pid),
      30_000,
      'the restart',
      250,
    );
    assert.equal(Number(await show('ipdeadgate', 'NRestarts')), restartsBefore + 1);
    // The journal of the killed daemon was loaded; the route through the dead gateway stays out.
    await waitFor(async () => (await events('journal_loaded')).length > 0, 10_000, 'journal_loaded', 200);
    assert.equal((await defaults4()).length, 1, 'the route via r1 is still withdrawn');
    const r1 = await gateway(DGD.r1_4);
    assert.ok(
      r1?.routes.some((r) => r.state === 'withdrawn'),
      JSON.stringify(r1),
    );
    // And it can still be put back: stop restores it.
    await m.execOk(['systemctl', 'stop', 'ipdeadgate'], 60_000);
    assert.equal((await defaults4()).length, 2);
    await m.execOk(['systemctl', 'start', 'ipdeadgate'], 90_000);
  });

  it('the watchdog is fed from the event loop, and a stuck daemon is killed and restarted', async () => {
    // The shipped 20 s made short for the test with a drop-in.
    m.writeFile(
      '/etc/systemd/system/ipdeadgate.service.d/watchdog.conf',
      '[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n',
    );
    await m.execOk(['systemctl', 'daemon-reload']);
    // The unit allows 5 starts a minute (StartLimitBurst): this test's own restarts are not the
    // operator's crash loop the limit is for.
    await m.execOk(['systemctl', 'reset-failed', 'ipdeadgate']);
    await m.execOk(['systemctl', 'restart', 'ipdeadgate'], 90_000);
    const pid = await show('ipdeadgate', 'MainPID');
    const restarts = Number(await show('ipdeadgate', 'NRestarts'));
    // Three watchdog periods: a daemon that did not send WATCHDOG=1 would have been killed.
    await new Promise((r) => setTimeout(r, 6500));
    assert.equal(await show('ipdeadgate', 'MainPID'), pid, 'fed: the same daemon');
    assert.equal(await show('ipdeadgate', 'ActiveState'), 'active');
    // A stopped process's event loop is stuck: no WATCHDOG=1, so systemd kills and restarts it.
    await m.execOk(['kill', '-STOP', pid]);
    await waitFor(
      async () => restartedFrom(await props('ipdeadgate', ['ActiveState', 'MainPID']), pid),
      30_000,
      'the watchdog restart',
      250,
    );
    assert.equal(Number(await show('ipdeadgate', 'NRestarts')), restarts + 1);
    assert.match(
      (await m.execOk(['journalctl', '-u', 'ipdeadgate', '--no-pager'])).toString(),
      /[Ww]atchdog timeout/,
    );
    await m.execOk(['rm', '-r', '/etc/systemd/system/ipdeadgate.service.d']);
    await m.execOk(['systemctl', 'daemon-reload']);
    await m.execOk(['systemctl', 'restart', 'ipdeadgate'], 90_000);
  });

  it('the tunnel template unit runs a tunnel node from /etc/ipdeadgate/tunnel-NAME.yaml', async () => {
    pki = makePki(['gw-t1', 'ep-t1']);
    // The service the gateway proxy dials: an echo server on r2, on the container's LAN (the
    // server behind the routers may be unreachable just now: r1 is dead, its route still in place
    // until traffic shows it, and a connect through its FAILED neighbour entry fails at once).
    await startFlowServer(lab, 'r2', PORT + 1).listening;
    m.writeFile('/etc/ipdeadgate/tls/ca.pem', fs.readFileSync(pki.ca), 0o644);
    m.writeFile('/etc/ipdeadgate/tls/gw-t1.pem', fs.readFileSync(pki.nodes['gw-t1']!.cert), 0o644);
    m.writeFile('/etc/ipdeadgate/tls/gw-t1.key', fs.readFileSync(pki.nodes['gw-t1']!.key), 0o600);
    m.writeFile(
      '/etc/ipdeadgate/tunnel-t1.yaml',
      [
        'tunnel:',
        '  role: gateway-proxy',
        '  name: gw-t1',
        '  tls: { ca: tls/ca.pem, cert: tls/gw-t1.pem, key: tls/gw-t1.key }',
        `  listen: ${DGD.client4}:9401`,
        '  links: []',
        `  services: { echo: ${DGD.r2_4}:${PORT + 1} }`,
        '',
      ].join('\n'),
      0o600,
    );
    await m.execOk(['systemctl', 'start', 'ipdeadgate-tunnel@t1'], 90_000);
    assert.equal(await show('ipdeadgate-tunnel@t1', 'ActiveState'), 'active');
    const st = JSON.parse(
      await m.execOk([
        'ipdeadgate',
        'status',
        '--json',
        '--control',
        '/run/ipdeadgate-tunnel-t1/control.sock',
      ]),
    ) as { tunnel: { name: string } };
    assert.equal(st.tunnel.name, 'gw-t1');
    assert.match(await lab.execOk('client', ['ss', '-Hltn', `sport = :9401`]), /LISTEN/);
    const caps = await m.execOk([
      'grep',
      '^CapEff:',
      `/proc/${await show('ipdeadgate-tunnel@t1', 'MainPID')}/status`,
    ]);
    assert.match(caps, /0000000000000400/, 'only CAP_NET_BIND_SERVICE');

    // A peer in the lab (r2, on the container's LAN; the host's Node) dials the container's node:
    // the link comes up, its TLS on the container's side through the OpenSSL Debian's node links,
    // and carries a session to the echo server.
    const epDir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-ep-'));
    const epConfig = path.join(epDir, 'ep.yaml');
    const epControl = path.join(epDir, 'ep.sock');
    fs.writeFileSync(
      epConfig,
      [
        'tunnel:',
        '  role: endpoint-proxy',
        '  name: ep-t1',
        `  tls: { ca: ${pki.ca}, cert: ${pki.nodes['ep-t1']!.cert}, key: ${pki.nodes['ep-t1']!.key} }`,
        `  links: [{ connect: "${DGD.client4}:9401" }]`,
        `  forwards: [{ listen: "127.0.0.1:9402", service: echo }]`,
        '',
      ].join('\n'),
    );
    const ep = lab.spawnCli('r2', ['tunnel', '--config', epConfig, '--control', epControl]);
    try {
      await waitFor(
        async () => {
          const r = await lab.cli('r2', ['status', '--json', '--control', epControl]);
          if (r.code !== 0) return false;
          const t = (JSON.parse(r.stdout) as { tunnel: { links: { state: string }[] } }).tunnel;
          return t.links.some((l) => l.state === 'up');
        },
        30_000,
        'the link from the lab to the container to come up',
        250,
      );
      const gw = JSON.parse(
        await m.execOk([
          'ipdeadgate',
          'status',
          '--json',
          '--control',
          '/run/ipdeadgate-tunnel-t1/control.sock',
        ]),
      ) as { tunnel: { links: { state: string; peer: string }[] } };
      assert.ok(
        gw.tunnel.links.some((l) => l.state === 'up' && l.peer === 'ep-t1'),
        JSON.stringify(gw.tunnel.links),
      );
      const session = startFlowClient(lab, 'r2', '127.0.0.1', 9402, { intervalMs: 50, durationMs: 10_000 });
      flows.push(session);
      await waitFor(() => session.echoes.length >= 5, 15_000, 'a session through the link');
    } finally {
      ep.kill('SIGTERM');
      fs.rmSync(epDir, { recursive: true, force: true });
    }
  });

  it('an upgrade restarts the running units, keeps the edited config, and never brings back a dead gateway', async () => {
    const flow = flowThroughR1();
    void flow;
    await waitFor(async () => (await gateway(DGD.r1_4))?.state === 'dead', 30_000, 'r1 dead', 250);
    assert.equal((await defaults4()).length, 1, 'the route via r1 is withdrawn');
    m.writeFile(CONFIG, (await m.execOk(['cat', CONFIG])) + '# edited by the operator\n');
    const pids = [await show('ipdeadgate', 'MainPID'), await show('ipdeadgate-tunnel@t1', 'MainPID')];
    const loadedBefore = (await events('journal_loaded')).length;
    // Every route change in the client's namespace during the upgrade.
    const monitor = lab.spawn('client', ['ip', 'monitor', 'route']);
    let changes = '';
    monitor.stdout!.on('data', (b: Buffer) => (changes += b.toString()));
    await new Promise((r) => setTimeout(r, 300));
    await m.execOk(['dpkg', '-i', '/root/ipdeadgate.deb'], 5 * 60_000);
    await new Promise((r) => setTimeout(r, 500));
    monitor.kill();
    assert.equal(await show('ipdeadgate', 'ActiveState'), 'active');
    assert.equal(await show('ipdeadgate-tunnel@t1', 'ActiveState'), 'active');
    assert.notEqual(await show('ipdeadgate', 'MainPID'), pids[0]);
    assert.notEqual(await show('ipdeadgate-tunnel@t1', 'MainPID'), pids[1]);
    assert.match(await m.execOk(['cat', CONFIG]), /# edited by the operator/);
    // The old daemon left (SIGUSR2) with the route journaled; the new one took the journal over.
    assert.ok((await events('daemon_stopped')).some((e) => e.routes_kept === true));
    assert.equal((await events('journal_loaded')).length, loadedBefore + 1);
    assert.ok(
      !changes.includes(`via ${DGD.r1_4} `),
      `no route via r1 came back during the upgrade:\n${changes}`,
    );
    assert.equal((await defaults4()).length, 1);
    assert.ok((await gateway(DGD.r1_4))?.routes.some((r) => r.state === 'withdrawn'));
  });

  it('the on/off setting survives an upgrade', async () => {
    await m.execOk(['ipdeadgate', 'off']);
    assert.equal((await defaults4()).length, 2, 'off restores');
    await m.execOk(['dpkg', '-i', '/root/ipdeadgate.deb'], 5 * 60_000);
    assert.equal((await status()).enabled, false, 'the off setting in /var/lib/ipdeadgate survived');
    await m.execOk(['ipdeadgate', 'on']);
  });

  it('purge stops the units and removes the state and the config', async () => {
    await m.execOk(['dpkg', '--purge', 'ipdeadgate'], 5 * 60_000);
    assert.equal((await m.exec(['systemctl', 'is-active', 'ipdeadgate'])).stdout.trim(), 'inactive');
    assert.equal(
      (await m.exec(['systemctl', 'is-active', 'ipdeadgate-tunnel@t1'])).stdout.trim(),
      'inactive',
    );
    for (const gone of [
      '/var/lib/ipdeadgate',
      CONFIG,
      '/usr/bin/ipdeadgate',
      '/usr/lib/ipdeadgate',
      '/run/ipdeadgate.sock',
    ])
      assert.notEqual((await m.exec(['test', '-e', gone])).code, 0, `${gone} is gone`);
    assert.equal((await defaults4()).length, 2, 'both default routes in place');
  });

  it('the container is destroyed: no machine, mount or directory left', async () => {
    const dir = m.dir;
    await m.close();
    assert.ok(!fs.existsSync(dir), `${dir} removed`);
    assert.ok(!fs.readFileSync('/proc/mounts', 'utf8').includes(dir), 'no mount left');
    const ps = await hostRun('ps', ['-eo', 'args'], 5000);
    assert.ok(!ps.includes(`idg-test-${process.pid}`), 'no systemd-nspawn left');
  });
});
