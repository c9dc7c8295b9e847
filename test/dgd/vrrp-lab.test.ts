// A keepalived VRRP pair without a virtual MAC (keepalived's default) as the client's gateway: the
// new master announces the virtual address from its own MAC, the kernel's neighbour entry follows,
// and so must detection. Real keepalived, run inside the lab's router namespaces with its own config
// and pid files (scripts/setup installs the package and never leaves its service running).
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { Lab, requireRoot, waitFor, type LabSpec } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLabSpec } from '../lab/topologies';
import { startFlowClient, startFlowServer, type FlowClient } from '../lab/flows';
import { macOf } from '../fixtures/neigh-lab';

const PORT = 7000;
const VIP = '198.18.1.254';
const WAN_VIP = '198.18.2.254';
const KEEPALIVED = '/usr/sbin/keepalived';

/**
 * The dead gateway lab with the client's default route and the server's return route via VIPs. The
 * client has a second default route (via r2's own address, metric 200), so the VIP's is not its
 * last one: keep_last_route would otherwise keep it whatever detection decides.
 */
function vrrpSpec(): LabSpec {
  const spec = dgdLabSpec();
  spec.hosts.client!.ip = [
    ['route', 'add', 'default', 'via', VIP, 'dev', 'lan0', 'metric', '100'],
    ['route', 'add', 'default', 'via', DGD.r2_4, 'dev', 'lan0', 'metric', '200'],
  ];
  spec.hosts.server!.ip = [['route', 'add', '198.18.1.0/24', 'via', WAN_VIP, 'dev', 'wan0']];
  return spec;
}

/**
 * keepalived's config for one router: the LAN and WAN virtual addresses in one sync group, VRRPv3
 * adverts every 100 ms (a takeover within about 0.4 s keeps the test short), no virtual MAC.
 */
function keepalivedConf(host: string, priority: number, nopreempt: boolean): string {
  const instance = (name: string, iface: string, vrid: number, vip: string) =>
    `vrrp_instance ${name} {\n  state BACKUP\n  interface ${iface}\n  virtual_router_id ${vrid}\n` +
    `  priority ${priority}\n  advert_int 0.1\n${nopreempt ? '  nopreempt\n' : ''}` +
    `  virtual_ipaddress {\n    ${vip}/24 dev ${iface}\n  }\n}\n`;
  return (
    `global_defs {\n  router_id ${host}\n  vrrp_version 3\n  enable_script_security\n}\n` +
    `vrrp_sync_group G {\n  group {\n    LAN\n    WAN\n  }\n}\n` +
    instance('LAN', 'lan0', 51, VIP) +
    instance('WAN', 'wan0', 52, WAN_VIP)
  );
}

class Router {
  private child: ChildProcess | null = null;
  constructor(
    private readonly lab: Lab,
    readonly host: string,
    private readonly priority: number,
    private readonly nopreempt: boolean,
  ) {}

  start(): void {
    const conf = this.lab.tempPath(`keepalived-${this.host}.conf`);
    fs.writeFileSync(conf, keepalivedConf(this.host, this.priority, this.nopreempt));
    const pid = (n: string) => this.lab.tempPath(`keepalived-${this.host}-${n}.pid`);
    this.child = this.lab.spawn(
      this.host,
      [KEEPALIVED, '-n', '-G', '-P', '-f', conf, '-p', pid('main'), '-r', pid('vrrp'), '-i', this.host],
      { stdio: 'ignore' },
    );
  }

  /**
   * A router that goes down at once: its LAN falls silent (no more adverts: the backup takes over
   * when its master-down timer expires), and keepalived is stopped behind it.
   */
  async die(): Promise<void> {
    await this.lab.killSilently(this.host, 'lan0');
    const c = this.child;
    if (c && c.exitCode === null) {
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    }
  }

  async revive(): Promise<void> {
    await this.lab.revive(this.host, 'lan0');
    this.start();
  }

  async holdsVip(): Promise<boolean> {
    return (await this.lab.ip(this.host, ['-4', 'addr', 'show', 'dev', 'lan0'])).includes(`${VIP}/`);
  }
}

describe('a keepalived VRRP pair without a virtual MAC as the gateway', function () {
  this.timeout(120_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
    if (!fs.existsSync(KEEPALIVED)) throw new Error(`${KEEPALIVED} is missing: run scripts/setup`);
  });

  afterEach(async () => {
    await lab?.close();
    lab = undefined;
  });

  for (const nopreempt of [false, true]) {
    it(`${nopreempt ? 'nopreempt' : 'preempt'}: the VIP's route stays through the takeover and the failback, at the defaults`, async () => {
      lab = await Lab.create(vrrpSpec());
      const r1 = new Router(lab, 'r1', 200, nopreempt);
      const r2 = new Router(lab, 'r2', 100, nopreempt);
      r1.start();
      await waitFor(() => r1.holdsVip(), 15_000, 'r1 to become master', 100);
      r2.start();
      await startFlowServer(lab, 'server', PORT).listening;
      const mac = { r1: await macOf(lab, 'r1', 'lan0'), r2: await macOf(lab, 'r2', 'lan0') };
      const d = await LabDaemon.start(lab, 'client', null);
      const flow: FlowClient = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 90_000 });
      await waitFor(() => flow.echoes.length >= 10, 10_000, 'the flow to run through r1');

      /** After a change of master: the flow goes on through the new one, the VIP's route never left. */
      const through = async (master: Router, what: string) => {
        await waitFor(() => master.holdsVip(), 15_000, `${master.host} to hold the VIP (${what})`, 50);
        const since = Date.now();
        await waitFor(
          () => flow.echoes.some((e) => e.t > since + 1000),
          20_000,
          `the flow to go on through ${master.host} (${what})`,
        );
        const routes = await lab!.ip('client', ['-4', 'route', 'show', 'default']);
        assert.match(routes, new RegExp(`default via ${VIP.replace(/\./g, '\\.')}`), `${what}: ${routes}`);
        assert.deepEqual(
          d
            .named('routes_withdrawn')
            .filter((e) => e.gateway === VIP)
            .map((e) => e.reason),
          [],
          `${what}: the VIP's route was never withdrawn`,
        );
      };

      /**
       * The next check of the gateway: the flow stalls behind it (the server falls silent for a
       * moment), so detection verifies the VIP with whoever holds it now.
       */
      const check = async (what: string) => {
        const n = d.events.length;
        await lab!.killSilently('server', 'wan0');
        await d.waitFor(
          (e) => e.event === 'verdict' && e.gateway === VIP && d.events.indexOf(e) >= n,
          20_000,
          `a verification of the VIP (${what})`,
        );
        await lab!.revive('server', 'wan0');
      };

      await check('r1 master');
      await r1.die();
      await through(r2, 'takeover');
      await check('after the takeover');
      await r1.revive();
      if (nopreempt) {
        // r1 is back as a backup and stays one; r2 going down is the failback.
        await waitFor(
          async () => (await r1.holdsVip()) === false && (await r2.holdsVip()),
          5000,
          'r2 to stay master',
        );
        await r2.die();
      }
      await through(r1, 'failback');
      await check('after the failback');
      // Any verification on the way saw the gateway where the kernel did.
      for (const v of d.named('verdict')) assert.equal(v.alive, true, JSON.stringify(v));
      const st = await d.status();
      const g = st.gateways.find((x) => x.address === VIP) as
        { state: string; mac: string | null } | undefined;
      assert.equal(g?.state, 'active');
      if (g?.mac) assert.ok([mac.r1, mac.r2].includes(g.mac), `known MAC ${g.mac}`);
      assert.equal(await d.stop(), 0);
    });
  }
});
