// Detection in the field: interfaces that go down, come back, are deleted and re-created
// with a new ifindex, a reboot that hands out ifindexes in another order, and a daemon started
// without the capabilities it needs. Real kernels, one lab shared by every case:
//
//   client lan0 (198.18.1.10) ---- r1 (198.18.1.1)      default via r1 dev lan0 metric 100
//   client lan1 (198.18.3.10) ---- r2 (198.18.3.2)      default via r2 dev lan1 metric 200
//
// r1 is watched by active probing (100 ms), so a silent death is a verdict within half a second
// without any traffic. Each case leaves the lab as it found it.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { LabDaemon, type DaemonEvent } from '../lab/daemon';

const R1 = '198.18.1.1';
const R2 = '198.18.3.2';
const CONFIG =
  'dgd:\n' +
  '  slow_poll_interval: 1s\n' +
  '  revive_probes: 1\n' +
  `  active:\n    - { gateway: ${R1}, interval: 100ms, misses: 3 }\n`;

/** No active probing: after the restart only the journal says r1 is dead. */
const PASSIVE = 'dgd:\n  slow_poll_interval: 1s\n  revive_probes: 1\n';

interface GatewayJson {
  address: string;
  interface: string;
  ifindex: number;
  link: string;
  state: string;
  routes: { dst: string; state: string }[];
}

async function gateway(d: LabDaemon, address: string): Promise<GatewayJson | undefined> {
  const st = await d.status();
  return (st.gateways as unknown as GatewayJson[]).find((g) => g.address === address);
}

async function defaults(lab: Lab): Promise<string[]> {
  return (await lab.ip('client', ['-4', 'route', 'show', 'default']))
    .split('\n')
    .map((l) => l.replace(/\s+/g, ' ').trim())
    .filter(Boolean);
}

async function ifindexOf(lab: Lab, host: string, ifname: string): Promise<number> {
  const out = await lab.ip(host, ['-o', 'link', 'show', 'dev', ifname]);
  return Number(out.split(':')[0]);
}

/**
 * Open descriptors of the daemon (`ip netns exec` execs node, so the child's pid is the daemon's),
 * less its raw ICMP sockets: the echo socket opens lazily at the first verification. `packet` is
 * its AF_PACKET sockets (the libpcap handles), from the namespace's /proc/net/packet.
 */
function fdCount(d: LabDaemon): number {
  const pid = d.child.pid!;
  const raw = (inodes: string) =>
    fs.readFileSync(`/proc/${pid}/net/${inodes}`, 'utf8').trim().split('\n').length - 1;
  return fs.readdirSync(`/proc/${pid}/fd`).length - raw('raw');
}

/**
 * The daemon's steady descriptor count: the least of a few samples, since a status request or a
 * journal write holds one for a moment. A leaked descriptor keeps the count above it for good.
 */
async function steadyFds(d: LabDaemon): Promise<number> {
  let least = Infinity;
  for (let i = 0; i < 5; i++) {
    least = Math.min(least, fdCount(d));
    await new Promise((r) => setTimeout(r, 50));
  }
  return least;
}

/** Wait (bounded) for the descriptor count to come down to `n`. */
async function fdsBackTo(d: LabDaemon, n: number, what: string): Promise<void> {
  await waitFor(() => fdCount(d) <= n, 3000, `${what}: ${n} descriptors expected, ${fdTargets(d)}`);
}

/** What each descriptor is, for a failure's message; one closed while listed is left out. */
function fdTargets(d: LabDaemon): string {
  const dir = `/proc/${d.child.pid}/fd`;
  return fs
    .readdirSync(dir)
    .map((f) => {
      try {
        return `${f}:${fs.readlinkSync(path.join(dir, f))}`;
      } catch {
        return ''; // closed between the listing and the read (the daemon's own work goes on)
      }
    })
    .filter(Boolean)
    .join(' ');
}

/** libpcap handles the daemon keeps on a gateway interface: ARP/NDP, and the watch on TCP segments. */
const HANDLES = 2;

/** AF_PACKET sockets bound to an ifindex (the "Iface" column of /proc/net/packet). */
function packetSocketsOn(d: LabDaemon, ifindex: number): number {
  const rows = fs.readFileSync(`/proc/${d.child.pid}/net/packet`, 'utf8').trim().split('\n').slice(1);
  return rows.filter((r) => Number(r.trim().split(/\s+/)[4]) === ifindex).length;
}

/** The next event matching pred that arrives after `since` (performance.now()). */
function next(d: LabDaemon, since: number, pred: (e: DaemonEvent) => boolean, what: string, ms = 10_000) {
  return d.waitFor((e) => e.seenAt > since && pred(e), ms, what);
}

/** A veth pair client:NAME <-> peer:lan0 with its addresses, up, as the lab made it (or with a given ifindex). */
async function makeLink(
  lab: Lab,
  name: 'lan0' | 'lan1',
  opts: { index?: number; peerMac?: string } = {},
): Promise<void> {
  const [peer, mine, theirs] =
    name === 'lan0' ? ['r1', '198.18.1.10/24', `${R1}/24`] : ['r2', '198.18.3.10/24', `${R2}/24`];
  const index = opts.index !== undefined ? ['index', String(opts.index)] : [];
  const mac = opts.peerMac ? ['address', opts.peerMac] : [];
  const peerArgs = ['name', 'lan0', ...mac, 'netns', lab.ns(peer)];
  await lab.ip('client', ['link', 'add', name, ...index, 'type', 'veth', 'peer', ...peerArgs]);
  await lab.ip('client', ['addr', 'add', mine, 'dev', name]);
  await lab.ip(peer, ['addr', 'add', theirs, 'dev', 'lan0']);
  await lab.ip(peer, ['link', 'set', 'lan0', 'up']);
  await lab.ip('client', ['link', 'set', name, 'up']);
}

/** Put the client's default routes back as the lab made them (what a network manager does on up). */
async function ensureDefaults(lab: Lab): Promise<void> {
  const have = (await defaults(lab)).join('\n');
  if (!have.includes(`via ${R1} dev lan0`))
    await lab.ip('client', ['route', 'replace', 'default', 'via', R1, 'dev', 'lan0', 'metric', '100']);
  if (!have.includes(`via ${R2} dev lan1`))
    await lab.ip('client', ['route', 'replace', 'default', 'via', R2, 'dev', 'lan1', 'metric', '200']);
}

async function reviveR1(lab: Lab): Promise<void> {
  // The drop table may have lost its chain with a deleted device; deleting the table is enough.
  await lab.exec('r1', ['nft', 'delete', 'table', 'netdev', 'idgdead_lan0']);
}

describe('detection in the field: interfaces, reboots, capabilities (lab)', function () {
  this.timeout(60_000);
  let lab: Lab;

  before(async function () {
    requireRoot(this);
    lab = await Lab.create({
      hosts: {
        client: {
          ip: [
            ['route', 'add', 'default', 'via', R1, 'dev', 'lan0', 'metric', '100'],
            ['route', 'add', 'default', 'via', R2, 'dev', 'lan1', 'metric', '200'],
          ],
        },
        r1: { router: true },
        r2: { router: true },
      },
      lans: [
        {
          name: 'a',
          members: [
            { host: 'client', iface: 'lan0', addrs: ['198.18.1.10/24'] },
            { host: 'r1', iface: 'lan0', addrs: [`${R1}/24`] },
          ],
        },
        {
          name: 'b',
          members: [
            { host: 'client', iface: 'lan1', addrs: ['198.18.3.10/24'] },
            { host: 'r2', iface: 'lan0', addrs: [`${R2}/24`] },
          ],
        },
      ],
    });
  });

  after(async () => {
    await lab?.close();
  });

  const daemons: LabDaemon[] = [];
  const startDaemon = async (): Promise<LabDaemon> => {
    const d = await LabDaemon.start(lab, 'client', CONFIG);
    daemons.push(d);
    return d;
  };

  afterEach(async () => {
    if (!lab) return;
    for (const d of daemons.splice(0)) await d.signal('SIGKILL').catch(() => undefined);
    await reviveR1(lab);
    for (const name of ['lan0', 'lan1'] as const)
      if ((await lab.exec('client', ['ip', 'link', 'show', 'dev', name])).code !== 0)
        await makeLink(lab, name);
    await lab.ip('client', ['link', 'set', 'lan0', 'up']);
    await ensureDefaults(lab);
  });

  it('a link flap under a live daemon, with no route withdrawn and then with one: no crash, no leak, the capture reopens, the route comes back', async () => {
    const d = await startDaemon();
    await d.waitFor(
      (e) => e.event === 'capture_opened' && e.interface === 'lan0',
      10_000,
      'the ARP/NDP handle on lan0',
    );
    const fds = await steadyFds(d);

    // 1. Nothing withdrawn: down, then up (the kernel drops the route via r1 on down; the network
    //    manager puts it back on up).
    let t = performance.now();
    await lab.ip('client', ['link', 'set', 'lan0', 'down']);
    await next(
      d,
      t,
      (e) => e.event === 'gateway_interface' && e.gateway === R1 && e.to === 'down',
      'r1 seen down',
    );
    await next(
      d,
      t,
      (e) => e.event === 'capture_closed' && e.interface === 'lan0',
      'the lan0 capture closed',
    );
    const down = await gateway(d, R1);
    assert.equal(down?.link, 'down', 'status shows the interface down');
    assert.equal(down?.state, 'active', 'a link going down is not a dead gateway');
    t = performance.now();
    await lab.ip('client', ['link', 'set', 'lan0', 'up']);
    await ensureDefaults(lab);
    await next(
      d,
      t,
      (e) => e.event === 'capture_opened' && e.interface === 'lan0',
      'the lan0 capture reopened',
    );
    await waitFor(async () => (await gateway(d, R1))?.link === 'up', 5000, 'r1 up in status');
    assert.equal(d.exitCode, null, 'the daemon is alive');
    await fdsBackTo(d, fds, 'no descriptor leaked over the flap');
    // Its address removed and added again (the kernel drops the route with it): nothing breaks.
    await lab.ip('client', ['addr', 'del', '198.18.1.10/24', 'dev', 'lan0']);
    await new Promise((r) => setTimeout(r, 300)); // active probes go out from 0.0.0.0 meanwhile
    await lab.ip('client', ['addr', 'add', '198.18.1.10/24', 'dev', 'lan0']);
    await ensureDefaults(lab);
    assert.equal(d.exitCode, null, 'the daemon is alive');
    assert.equal((await gateway(d, R1))?.state, 'active');

    // 2. With a route withdrawn: r1 dies, its route goes; the link flaps meanwhile; r1 comes back
    //    while the link is down; once up, r1 is polled at once and its route restored on lan0.
    t = performance.now();
    await lab.killSilently('r1', 'lan0');
    await next(d, t, (e) => e.event === 'routes_withdrawn' && e.gateway === R1, 'r1 withdrawn');
    assert.deepEqual(await defaults(lab), [`default via ${R2} dev lan1 metric 200`]);
    await lab.ip('client', ['link', 'set', 'lan0', 'down']);
    await next(
      d,
      t,
      (e) => e.event === 'gateway_interface' && e.gateway === R1 && e.to === 'down',
      'r1 down again',
    );
    const waiting = await gateway(d, R1);
    assert.equal(waiting?.state, 'dead');
    assert.equal(waiting?.link, 'down');
    assert.ok(
      waiting?.routes.some((r) => r.state === 'withdrawn'),
      'the withdrawn route waits in the journal',
    );
    await reviveR1(lab);
    t = performance.now();
    await lab.ip('client', ['link', 'set', 'lan0', 'up']);
    await next(
      d,
      t,
      (e) => e.event === 'routes_restored' && e.gateway === R1,
      'r1 restored after the link is up',
    );
    assert.ok(
      (await defaults(lab)).includes(`default via ${R1} dev lan0 metric 100`),
      (await defaults(lab)).join(' | '),
    );
    // (A status request or a journal write may hold a descriptor for a moment: wait for the count
    // to settle; a leaked one never would.)
    await fdsBackTo(d, fds, 'no descriptor leaked');
    assert.equal(
      packetSocketsOn(d, await ifindexOf(lab, 'client', 'lan0')),
      HANDLES,
      'the libpcap handles on lan0, once each',
    );
    assert.equal(await d.stop(), 0);
  });

  it('an interface deleted and re-created with a new ifindex: the daemon lives, status says absent, the capture reopens, the withdrawn route is restored on the new interface', async () => {
    const d = await startDaemon();
    await d.waitFor(
      (e) => e.event === 'capture_opened' && e.interface === 'lan0',
      10_000,
      'the ARP/NDP handle on lan0',
    );
    let t = performance.now();
    await lab.killSilently('r1', 'lan0');
    await next(d, t, (e) => e.event === 'routes_withdrawn' && e.gateway === R1, 'r1 withdrawn');
    const fds = await steadyFds(d);
    const oldIndex = await ifindexOf(lab, 'client', 'lan0');
    // Only the client's side is re-created in the field (a VLAN, a bond): the router keeps its MAC.
    const r1Mac = (await lab.execOk('r1', ['cat', '/sys/class/net/lan0/address'])).trim();
    assert.equal(packetSocketsOn(d, oldIndex), HANDLES);

    t = performance.now();
    await lab.ip('client', ['link', 'del', 'lan0']);
    await next(
      d,
      t,
      (e) => e.event === 'gateway_interface' && e.gateway === R1 && e.to === 'absent',
      'r1 absent',
    );
    const gone = await gateway(d, R1);
    assert.equal(gone?.link, 'absent');
    assert.equal(gone?.state, 'dead');
    assert.ok(gone?.routes.some((r) => r.state === 'withdrawn'));
    await fdsBackTo(d, fds - HANDLES, 'the handles on the deleted interface closed');
    assert.equal(packetSocketsOn(d, oldIndex), 0);

    t = performance.now();
    await makeLink(lab, 'lan0', { peerMac: r1Mac }); // the same name, a new ifindex
    await reviveR1(lab); // (a netdev chain follows a device name re-created on newer kernels)
    const newIndex = await ifindexOf(lab, 'client', 'lan0');
    assert.notEqual(newIndex, oldIndex);
    const moved = await next(
      d,
      t,
      (e) => e.event === 'interface_renumbered' && e.interface === 'lan0',
      'lan0 renumbered',
    );
    assert.equal(moved.ifindex, newIndex);
    await next(d, t, (e) => e.event === 'capture_opened' && e.interface === 'lan0', 'the capture reopened');
    const restored = await next(
      d,
      t,
      (e) => e.event === 'routes_restored' && e.gateway === R1,
      'r1 restored',
    );
    const now = await defaults(lab);
    assert.ok(
      now.includes(`default via ${R1} dev lan0 metric 100`),
      `${now.join(' | ')}; ${JSON.stringify(restored)}; ${JSON.stringify(d.events.filter((e) => e.seenAt > t && !/verify_step|verdict/.test(e.event)))}`,
    );
    const back = await gateway(d, R1);
    assert.equal(back?.ifindex, newIndex);
    assert.equal(back?.link, 'up');
    assert.equal(back?.state, 'active');
    await fdsBackTo(d, fds, 'the handles again, nothing leaked');
    assert.equal(packetSocketsOn(d, newIndex), HANDLES);
    assert.equal(await d.stop(), 0);
  });

  it('after a reboot (new boot id, ifindexes shuffled) routes go by interface name, never by an old ifindex', async () => {
    const d = await startDaemon();
    const t = performance.now();
    await lab.killSilently('r1', 'lan0');
    await next(d, t, (e) => e.event === 'routes_withdrawn' && e.gateway === R1, 'r1 withdrawn');
    await d.signal('SIGKILL').catch(() => undefined);
    // The journal says which boot it was written in; make that an earlier one.
    const file = path.join(d.stateDir, 'withdrawn-routes.json');
    const journal = JSON.parse(fs.readFileSync(file, 'utf8')) as { entries: Record<string, unknown>[] };
    assert.equal(journal.entries.length, 1);
    for (const e of journal.entries) e.boot_id = '00000000-0000-4000-8000-000000000001';
    fs.writeFileSync(file, JSON.stringify(journal));

    // "Reboot": both interfaces come back in the other order, lan1 with lan0's old ifindex, and the
    // boot configuration adds both default routes again (r1 is still dead).
    const old0 = await ifindexOf(lab, 'client', 'lan0');
    await lab.ip('client', ['link', 'del', 'lan0']);
    await lab.ip('client', ['link', 'del', 'lan1']);
    await makeLink(lab, 'lan1', { index: old0 });
    await makeLink(lab, 'lan0');
    await ensureDefaults(lab);
    assert.equal(await ifindexOf(lab, 'client', 'lan1'), old0);

    const d2 = await LabDaemon.restart(d, PASSIVE);
    daemons.push(d2);
    const loaded = await d2.waitFor((e) => e.event === 'journal_loaded', 5000, 'the journal loaded');
    assert.equal(loaded.earlier_boot, 1);
    // r1 is still dead: its route, re-added at boot, is withdrawn again, from lan0 by name.
    await waitFor(
      async () => !(await defaults(lab)).some((l) => l.includes(`via ${R1}`)),
      5000,
      'the route via dead r1 withdrawn again',
    );
    const r1s = ((await d2.status()).gateways as unknown as GatewayJson[]).filter((g) => g.address === R1);
    assert.deepEqual(
      r1s.map((g) => [g.interface, g.ifindex, g.state]),
      [['lan0', await ifindexOf(lab, 'client', 'lan0'), 'dead']],
      'r1 is known on lan0 only, at its new ifindex, and dead',
    );
    await reviveR1(lab);
    await d2.waitFor((e) => e.event === 'routes_restored' && e.gateway === R1, 10_000, 'r1 restored');
    const after = await defaults(lab);
    assert.ok(after.includes(`default via ${R1} dev lan0 metric 100`), after.join(' | '));
    assert.ok(!after.some((l) => l.includes(`via ${R1} dev lan1`)), 'nothing restored onto the old ifindex');
    assert.equal(await d2.stop(), 0);
  });

  it('ipdeadgate capture on an interface that goes down waits for it and captures again when it is back', async () => {
    const cap = lab.spawnCli('client', ['capture', '-i', 'lan0', '-c', '1', 'arp']);
    let err = '';
    let out = '';
    cap.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
    cap.stdout!.setEncoding('utf8').on('data', (c: string) => (out += c));
    const exited = new Promise<number | null>((r) => cap.once('exit', (code) => r(code)));
    await waitFor(() => /listening on lan0/.test(err), 10_000, `the capture to start: ${err}`);
    await lab.ip('client', ['link', 'set', 'lan0', 'down']);
    await waitFor(() => /lan0 went down or away/.test(err), 5000, `the capture to see lan0 go: ${err}`);
    await lab.ip('client', ['link', 'set', 'lan0', 'up']);
    await waitFor(() => /lan0 is back/.test(err), 5000, `the capture to reopen: ${err}`);
    // An ARP exchange on the reopened interface ends the capture (-c 1).
    await ensureDefaults(lab);
    await lab.exec('client', ['ping', '-c', '1', '-W', '1', R1]);
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 5000))]);
    assert.equal(code, 0, `capture exit: ${String(code)}; stderr: ${err}`);
    assert.match(out, /ARP/);
  });

  it('without CAP_NET_ADMIN or CAP_NET_RAW the daemon exits 1 with one line naming each missing capability', async () => {
    const run = (drop: string) =>
      lab.exec(
        'client',
        [
          'setpriv',
          `--inh-caps=${drop}`,
          `--bounding-set=${drop}`,
          '--',
          process.execPath,
          path.join(__dirname, '..', '..', '..', 'bin', 'ipdeadgate'),
          'daemon',
          '--control',
          lab.tempPath('nocap.sock'),
          '--state-dir',
          lab.tempPath('nocap-state'),
        ],
        10_000,
      );
    const both = await run('-net_admin,-net_raw');
    assert.equal(both.code, 1, both.stderr);
    const lines = both.stderr.trim().split('\n');
    assert.equal(lines.length, 1, both.stderr);
    assert.match(lines[0]!, /CAP_NET_ADMIN/);
    assert.match(lines[0]!, /CAP_NET_RAW/);
    const raw = await run('-net_raw');
    assert.equal(raw.code, 1, raw.stderr);
    const missing = raw.stderr.split(';')[0]!;
    assert.match(missing, /missing CAP_NET_RAW/);
    assert.doesNotMatch(missing, /CAP_NET_ADMIN/);
    assert.ok(!fs.existsSync(lab.tempPath('nocap-state')), 'nothing was set up before refusing');
  });
});
