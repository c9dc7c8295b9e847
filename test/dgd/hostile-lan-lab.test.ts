// A hostile station on the LAN (an attacker namespace on the lab's LAN bridge) forging neighbour
// frames, and a keepalived VRRP pair without a virtual MAC as the gateway: detection believes only
// answers to its own questions, holds them against the gateway's known MAC, and follows the
// kernel's neighbour entry when the gateway really moved.
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { Lab, REPO_ROOT, requireRoot, waitFor, type LabSpec } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { DGD, dgdLabSpec } from '../lab/topologies';
import { startFlowClient, startFlowServer } from '../lab/flows';
import { macOf, waitDgdLabReady } from '../fixtures/neigh-lab';

const PORT = 7000;
const FAST = 'dgd:\n  slow_poll_interval: 2s\n';
const FORGER = path.join(REPO_ROOT, 'dist', 'test', 'fixtures', 'lan-forger.js');
const MALLORY = { ip4: '198.18.1.66', ip6: '2001:db8:1::66' };

/** The dead gateway lab with mallory, a station on the client's LAN bridge. */
function hostileSpec(): LabSpec {
  const spec = dgdLabSpec();
  spec.hosts.mallory = {};
  spec.lans[0]!.members.push({
    host: 'mallory',
    iface: 'lan0',
    addrs: [`${MALLORY.ip4}/24`, `${MALLORY.ip6}/64`],
  });
  return spec;
}

interface ForgeArgs {
  mode: 'arp-to-stranger' | 'na-unsolicited' | 'arp-wrong-mac' | 'responder';
  gateway: string;
  claimedMac: string;
  victim: { mac: string; ip: string };
  rate: number;
  maxMs: number;
  delayMs?: number;
}

/** Run the forger fixture in `host` (killed at lab.close at the latest). */
function forge(lab: Lab, host: string, a: ForgeArgs): ChildProcess {
  return lab.spawn(host, [process.execPath, FORGER, JSON.stringify({ iface: 'lan0', ...a })]);
}

/** Stop a fixture (SIGTERM, bounded); what it printed from now on. */
async function stop(child: ChildProcess): Promise<string> {
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => (out += c));
  if (child.exitCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  }
  return out;
}

describe('a hostile station on the LAN', function () {
  this.timeout(120_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });

  afterEach(async () => {
    await lab?.close();
    lab = undefined;
  });

  for (const family of [4, 6] as const) {
    it(`IPv${family}: forged answers for a silenced gateway do not keep it alive: its routes are withdrawn`, async () => {
      lab = await Lab.create(hostileSpec());
      await waitDgdLabReady(lab);
      await startFlowServer(lab, 'server', PORT).listening;
      const r1Mac = await macOf(lab, 'r1', 'lan0');
      const clientMac = await macOf(lab, 'client', 'lan0');
      const d = await LabDaemon.start(lab, 'client', FAST);
      const flow = startFlowClient(lab, 'client', family === 4 ? DGD.server4 : DGD.server6, PORT, {
        durationMs: 30_000,
      });
      await waitFor(() => flow.echoes.length >= 10, 5000, 'the flow to run');
      const r1 = family === 4 ? DGD.r1_4 : DGD.r1_6;
      // "r1 is-at r1's MAC", all along: to an unknown unicast MAC (flooded by the bridge, dropped by
      // every kernel) for IPv4; an NA without the Solicited flag for IPv6.
      const forger = forge(lab, 'mallory', {
        mode: family === 4 ? 'arp-to-stranger' : 'na-unsolicited',
        gateway: r1,
        claimedMac: r1Mac,
        victim: { mac: clientMac, ip: family === 4 ? DGD.client4 : DGD.client6 },
        rate: 500,
        maxMs: 30_000,
      });
      await lab.killSilently('r1', 'lan0');
      const withdrawn = await d.waitFor(
        (e) => e.event === 'routes_withdrawn' && e.gateway === r1,
        20_000,
        'routes withdrawn despite the forged answers',
      );
      assert.ok(withdrawn);
      const sent = await stop(forger);
      assert.match(sent, /"sent":[1-9]/, `the forger sent frames: ${sent}`);
      const verdicts = d.named('verdict').filter((e) => e.gateway === r1);
      assert.ok(verdicts.some((v) => v.alive === false));
      assert.equal(
        d.named('neighbour_conflict').length,
        0,
        'nothing the kernel would drop counts as an answer',
      );
      assert.equal(await d.stop(), 0);
    });
  }

  it("2 000 forged wrong-MAC replies a second during a live gateway's verifications: no withdrawal, a conflict event, no MAC pinned", async () => {
    lab = await Lab.create(hostileSpec());
    await waitDgdLabReady(lab);
    await startFlowServer(lab, 'server', PORT).listening;
    const r1Mac = await macOf(lab, 'r1', 'lan0');
    const malloryMac = await macOf(lab, 'mallory', 'lan0');
    const clientMac = await macOf(lab, 'client', 'lan0');
    // r1 answers ARP from a slow control plane (50 ms): forged replies arrive first, and in between.
    await lab.ip('r1', ['link', 'set', 'lan0', 'arp', 'off']);
    await lab.ip('r1', [
      'neigh',
      'replace',
      DGD.client4,
      'lladdr',
      clientMac,
      'dev',
      'lan0',
      'nud',
      'permanent',
    ]);
    forge(lab, 'r1', {
      mode: 'responder',
      gateway: DGD.r1_4,
      claimedMac: r1Mac,
      victim: { mac: clientMac, ip: DGD.client4 },
      rate: 1000,
      maxMs: 90_000,
      delayMs: 50,
    });
    const d = await LabDaemon.start(lab, 'client', FAST);

    // A flow stalls behind a live r1 (the server went silent, and during the flood the client's
    // kernel sends to the attacker's MAC too): a verification.
    const stall = async (what: string, meanwhile?: () => Promise<void>) => {
      const n = d.events.length;
      const flow = startFlowClient(lab!, 'client', DGD.server4, PORT, { durationMs: 30_000 });
      // After the flood the kernel's entry may still name the attacker until it re-resolves.
      await waitFor(() => flow.echoes.length >= 5, 20_000, `the flow to run (${what})`);
      await meanwhile?.();
      await lab!.killSilently('server', 'wan0');
      await d.waitFor(
        (e) => e.event === 'verdict' && e.gateway === DGD.r1_4 && d.events.indexOf(e) >= n,
        15_000,
        `a verdict on r1 (${what})`,
      );
      await lab!.revive('server', 'wan0');
      return d.events.slice(n);
    };

    let flood: ChildProcess | undefined;
    let floodOut = '';
    await stall('during the flood', async () => {
      flood = forge(lab!, 'mallory', {
        mode: 'arp-wrong-mac',
        gateway: DGD.r1_4,
        claimedMac: malloryMac,
        victim: { mac: clientMac, ip: DGD.client4 },
        rate: 2000,
        maxMs: 30_000,
      });
      flood.stdout!.setEncoding('utf8').on('data', (c: string) => (floodOut += c));
      await waitFor(() => floodOut.includes('started'), 10_000, 'the flood to start');
    });
    // Verifications go on while the flow stays stuck: give them a few seconds of flood.
    await new Promise((r) => setTimeout(r, 3000));
    await stop(flood!);
    assert.match(floodOut, /"sent":[1-9]/, `the flood ran: ${floodOut}`);
    const conflict = d.events.find((e) => e.event === 'neighbour_conflict' && e.gateway === DGD.r1_4);
    assert.ok(
      conflict,
      `a neighbour_conflict event: ${d.events
        .filter((e) => /verdict|neighbour|trigger|downstream/.test(e.event))
        .map((e) => `${e.event} ${String(e.mac ?? e.to ?? '')}`)
        .join(', ')}`,
    );
    const macs = new Set([conflict.known_mac, ...(conflict.seen_macs as string[])]);
    assert.ok(macs.has(r1Mac) && macs.has(malloryMac), JSON.stringify(conflict));

    // The flood is over; the next stall finds r1 alive, at its own MAC.
    await stall('after the flood');
    assert.equal(d.named('routes_withdrawn').length, 0, 'no route was withdrawn');
    assert.ok(d.named('verdict').every((v) => v.alive === true));
    const st = await d.status();
    const g = st.gateways.find((x) => x.address === DGD.r1_4) as { state: string; mac: string } | undefined;
    assert.equal(g?.state, 'active');
    assert.equal(g?.mac, r1Mac, "the known MAC is r1's again, not the attacker's");
    assert.equal(await d.stop(), 0);
  });
});
