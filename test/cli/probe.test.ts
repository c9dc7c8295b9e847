import { strict as assert } from 'node:assert';
import { type ExecResult, type Lab, requireRoot } from '../lab/lab';
import { DGD, dgdLab } from '../lab/topologies';
import { macOf, waitDgdLabReady } from '../fixtures/neigh-lab';
import { nodeAsNobody } from '../fixtures/unprivileged';
import type { ProbeJson } from '../../src/cli/probe';

function json(r: ExecResult): ProbeJson {
  try {
    return JSON.parse(r.stdout) as ProbeJson;
  } catch {
    assert.fail(`not JSON (exit ${r.code}): ${r.stdout} ${r.stderr}`);
  }
}

/** Exit 2 with one clear line on stderr, nothing on stdout, no stack trace. */
function assertUsage(r: ExecResult, pattern: RegExp): void {
  assert.equal(r.code, 2, `exit ${r.code}: ${r.stdout}${r.stderr}`);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line expected: ${r.stderr}`);
  assert.match(lines[0]!, /^ipdeadgate: /);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |Error:/);
}

describe('ipdeadgate probe (lab)', function () {
  let lab: Lab;
  let r1mac: string;
  let r2mac: string;

  before(async function () {
    requireRoot(this);
    lab = await dgdLab();
    await waitDgdLabReady(lab);
    r1mac = await macOf(lab, 'r1', 'lan0');
    r2mac = await macOf(lab, 'r2', 'lan0');
  });
  after(async () => {
    await lab?.close();
  });

  it('a live IPv4 gateway: exit 0, its MAC, both RTTs (--json)', async () => {
    const r = await lab.cli('client', ['probe', '--json', DGD.r1_4]);
    assert.equal(r.code, 0, r.stderr);
    const p = json(r);
    assert.equal(p.gateway, DGD.r1_4);
    assert.equal(p.interface, 'lan0');
    assert.equal(p.alive, true);
    assert.equal(p.mac, r1mac);
    assert.ok(
      typeof p.arp_rtt_ms === 'number' && p.arp_rtt_ms >= 0 && p.arp_rtt_ms < 100,
      String(p.arp_rtt_ms),
    );
    assert.ok(typeof p.echo_rtt_ms === 'number' && p.echo_rtt_ms > 0, String(p.echo_rtt_ms));
    assert.equal(p.probes_sent, 1);
    assert.deepEqual(p.conflicts, [], 'nobody else answered');
    assert.deepEqual(p.steps[0]!.step, 'purge');
    assert.equal(p.steps.at(-1)!.detail, 'alive');
  });

  it('a live IPv6 gateway answers NDP (text output)', async () => {
    const r = await lab.cli('client', ['probe', DGD.r2_6]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      new RegExp(
        `^${DGD.r2_6} on lan0: alive, NDP reply from ${r2mac} in [\\d.]+ ms after 1 probe; echo [\\d.]+ ms\\n$`,
      ),
    );
  });

  it('a link-local gateway with its zone', async () => {
    const out = await lab.ip('r1', ['-6', '-o', 'addr', 'show', 'dev', 'lan0', 'scope', 'link']);
    const ll = /inet6 (fe80::[0-9a-f:]+)\//.exec(out)![1]!;
    const r = await lab.cli('client', ['probe', '--json', `${ll}%lan0`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(json(r).mac, r1mac);
    const r2 = await lab.cli('client', ['probe', '--json', '--interface', 'lan0', ll]);
    assert.equal(r2.code, 0, r2.stderr);
  });

  it("purges the kernel's entry and makes it re-resolve: a wrong cached MAC is replaced and reported", async () => {
    // Permanent, not stale: the kernel overwrites a stale entry on any ARP from r2 (its own
    // unicast probe of the client, say), which once fixed the MAC before the probe could see it.
    await lab.ip('client', [
      'neigh',
      'replace',
      DGD.r2_4,
      'lladdr',
      '02:00:00:00:00:99',
      'dev',
      'lan0',
      'nud',
      'permanent',
    ]);
    const r = await lab.cli('client', ['probe', '--json', DGD.r2_4]);
    assert.equal(r.code, 0, r.stderr);
    const p = json(r);
    assert.equal(p.alive, true);
    assert.equal(p.mac, r2mac);
    assert.equal(p.previous_mac, '02:00:00:00:00:99');
    assert.equal(p.mac_changed, true);
    const neigh = await lab.ip('client', ['neigh', 'show', DGD.r2_4, 'dev', 'lan0']);
    assert.match(neigh, new RegExp(`lladdr ${r2mac}`), `the kernel re-resolved: ${neigh}`);
  });

  describe('a gateway that drops ping (a firewall) but is alive', () => {
    before(async () => {
      await lab.blockPing('r2');
    });
    after(async () => {
      await lab.exec('r2', ['nft', 'delete', 'table', 'inet', 'idgnoping']);
    });
    for (const [family, gw] of [
      ['IPv4', DGD.r2_4],
      ['IPv6', DGD.r2_6],
    ] as const)
      it(`${family}: alive, echo_rtt_ms null`, async () => {
        const r = await lab.cli('client', ['probe', '--json', gw]);
        assert.equal(r.code, 0, r.stderr);
        const p = json(r);
        assert.equal(p.alive, true);
        assert.equal(p.mac, r2mac);
        assert.equal(p.echo_rtt_ms, null);
        assert.ok(p.steps.some((s) => s.step === 'echo_unanswered' || s.step === 'echo_timeout'));
        assert.ok(p.duration_ms <= 750 + 50, `${p.duration_ms}`);
      });
  });

  describe('a silently dead gateway', () => {
    before(async () => {
      await lab.killSilently('r1', 'lan0');
    });
    after(async () => {
      await lab.revive('r1', 'lan0');
    });

    it('IPv4: exit 1, not alive, every probe sent, verdict after probes x timeout', async () => {
      const r = await lab.cli('client', ['probe', '--json', '--probes', '3', '--timeout', '100ms', DGD.r1_4]);
      assert.equal(r.code, 1, r.stderr);
      const p = json(r);
      assert.equal(p.alive, false);
      assert.equal(p.mac, null);
      assert.equal(p.arp_rtt_ms, null);
      assert.equal(p.echo_rtt_ms, null);
      assert.equal(p.probes_sent, 3);
      assert.ok(p.duration_ms >= 295 && p.duration_ms <= 400, `${p.duration_ms}`); // 300 ms + event-loop slack
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    });

    it('IPv6: exit 1 with a one-line summary', async () => {
      const r = await lab.cli('client', ['probe', '--timeout', '100ms', DGD.r1_6]);
      assert.equal(r.code, 1);
      assert.match(
        r.stdout,
        new RegExp(`^${DGD.r1_6} on lan0: DEAD, no NDP reply to 3 probes in \\d+ ms; echo unanswered`),
      );
    });

    it('the other gateway is still alive', async () => {
      const r = await lab.cli('client', ['probe', '--json', DGD.r2_4]);
      assert.equal(r.code, 0, r.stderr);
    });
  });

  it('without root: exit 1 and one line saying what privilege is needed, no stack trace', async () => {
    const r = await lab.exec('client', nodeAsNobody('bin/ipdeadgate', 'probe', DGD.r1_4));
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.equal(r.stdout, '');
    assert.match(
      r.stderr,
      /^ipdeadgate: EPERM: opening lan0 for ARP\/NDP needs .*CAP_NET_RAW \(run as root\)/,
    );
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  describe('bad usage: exit 2 and one clear line', () => {
    it('not an IP address', async () => {
      assertUsage(await lab.cli('client', ['probe', 'router1']), /"router1" is not an IP address/);
      assertUsage(await lab.cli('client', ['probe', '198.18.1.256']), /is not an IP address/);
    });
    it('an unknown interface', async () => {
      assertUsage(
        await lab.cli('client', ['probe', '--interface', 'nosuch0', DGD.r1_4]),
        /no network interface named "nosuch0"/,
      );
    });
    it('an off-link address (the server, routed via r1)', async () => {
      assertUsage(
        await lab.cli('client', ['probe', DGD.server4]),
        /198\.18\.2\.10 is not on-link: the kernel routes it via 198\.18\.1\.1 on lan0/,
      );
      assertUsage(await lab.cli('client', ['probe', DGD.server6]), /2001:db8:2::10 is not on-link/);
    });
    it('no route at all', async () => {
      assertUsage(await lab.cli('server', ['probe', '198.19.0.1']), /no route to 198\.19\.0\.1/);
    });
    it("this host's own address, multicast, a link-local address without interface", async () => {
      assertUsage(await lab.cli('client', ['probe', DGD.client4]), /is an address of this host/);
      assertUsage(await lab.cli('client', ['probe', '224.0.0.1']), /not a unicast address/);
      assertUsage(await lab.cli('client', ['probe', 'fe80::1']), /link-local: say on which interface/);
    });
    it('bad --probes and --timeout', async () => {
      assertUsage(
        await lab.cli('client', ['probe', '--probes', '0', DGD.r1_4]),
        /--probes must be a whole number from 1 to 100/,
      );
      assertUsage(
        await lab.cli('client', ['probe', '--timeout', 'soon', DGD.r1_4]),
        /--timeout: "soon" is not a duration/,
      );
    });
  });
});
