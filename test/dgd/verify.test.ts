import { FakeClock } from '../doubles';
import { strict as assert } from 'node:assert';
import { AbortError, SystemError } from '../../src/errors';
import {
  verifyGateway,
  type VerifierPorts,
  type VerifyRequest,
  type VerifyResult,
} from '../../src/dgd/verify';

const GW_MAC = '02:00:00:00:00:01';

interface Script {
  /** ms after resolve() starts when the reply arrives, and on which probe (1-based). null: never. */
  arpReplyAt?: { ms: number; mac?: string; probe?: number } | null;
  /** ms after echo() starts when it answers; null: never (times out). */
  echoReplyAt?: number | null;
  echoError?: Error;
  resolveError?: Error;
  purge?: 'ok' | 'fail' | 'hang';
  /** The resolver ignores its own schedule and never settles unless aborted. */
  resolverHangs?: boolean;
}

/** Fake ports on the fake clock that record what the verifier asked for, in order. */
function fakePorts(clock: FakeClock, script: Script) {
  const calls: string[] = [];
  let resolveSignal: AbortSignal | undefined;
  let echoTimeout = -1;
  const ports: VerifierPorts = {
    purgeNeighbour(ifindex, ip) {
      calls.push(`purge ${ifindex} ${ip}`);
      if (script.purge === 'fail')
        return Promise.reject(new SystemError('EPERM', 1, 'sendmsg', 'EPERM: deleting a neighbour'));
      if (script.purge === 'hang') return new Promise(() => {});
      return Promise.resolve();
    },
    resolve(ifname, ip, opts) {
      calls.push(`resolve ${ifname} ${ip} ${opts.probes}x${opts.intervalMs}`);
      resolveSignal = opts.signal;
      if (script.resolveError) return Promise.reject(script.resolveError);
      return new Promise((resolve, reject) => {
        opts.signal?.addEventListener('abort', () => reject(new AbortError()), { once: true });
        if (script.resolverHangs) return;
        const r = script.arpReplyAt;
        if (r) {
          const probe = r.probe ?? 1;
          clock.setTimeout(
            () =>
              resolve({
                mac: r.mac ?? GW_MAC,
                rttMs: r.ms - (probe - 1) * opts.intervalMs,
                probesSent: probe,
              }),
            r.ms,
          );
        } else clock.setTimeout(() => resolve(null), opts.probes * opts.intervalMs);
      });
    },
    echo(family, ip, opts) {
      calls.push(`echo ${family} ${ip} ${opts.ifname}`);
      echoTimeout = opts.timeoutMs;
      if (script.echoError) return Promise.reject(script.echoError);
      return new Promise((resolve) => {
        const at = script.echoReplyAt;
        if (at !== null && at !== undefined && at <= opts.timeoutMs)
          clock.setTimeout(() => resolve({ rttMs: at }), at);
        else clock.setTimeout(() => resolve(null), opts.timeoutMs);
      });
    },
  };
  return { ports, calls, resolveSignal: () => resolveSignal, echoTimeout: () => echoTimeout };
}

const REQ: VerifyRequest = { gateway: '198.18.1.1', ifname: 'lan0', ifindex: 2, probes: 3, intervalMs: 250 };

/** Start a verification and report when (on the fake clock) it settled. */
function start(clock: FakeClock, ports: VerifierPorts, req: Partial<VerifyRequest> = {}) {
  let settledAt: number | null = null;
  let result: VerifyResult | undefined;
  let error: unknown;
  const promise = verifyGateway(ports, { ...REQ, ...req }, clock).then(
    (r) => {
      settledAt = clock.now();
      result = r;
      return r;
    },
    (e: unknown) => {
      settledAt = clock.now();
      error = e;
      throw e;
    },
  );
  promise.catch(() => {});
  return {
    promise,
    settledAt: () => settledAt,
    result: () => result,
    error: () => error,
  };
}

describe('verify: ARP/NDP decides (fake ports, fake clock)', () => {
  let clock: FakeClock;
  beforeEach(() => {
    clock = new FakeClock();
  });

  it('purges first, then probes and echoes concurrently; an answered gateway is alive with both RTTs', async () => {
    const f = fakePorts(clock, { arpReplyAt: { ms: 1 }, echoReplyAt: 2 });
    const v = start(clock, f.ports);
    await clock.advance(5);
    const r = v.result();
    assert.ok(r, 'verdict within 5 ms');
    assert.deepEqual(f.calls, [
      'purge 2 198.18.1.1',
      'resolve lan0 198.18.1.1 3x250',
      'echo 4 198.18.1.1 lan0',
    ]);
    assert.equal(r.alive, true);
    assert.equal(r.mac, GW_MAC);
    assert.equal(r.arpRttMs, 1);
    assert.equal(r.echoRttMs, 2);
    assert.equal(r.probesSent, 1);
    assert.equal(r.macChanged, false);
    assert.equal(r.untrustedMac, null);
    assert.equal(r.gateway, '198.18.1.1');
    assert.equal(r.interface, 'lan0');
    assert.equal(r.durationMs, 2);
    assert.equal(r.startedAt, Date.UTC(2026, 0, 1));
    assert.deepEqual(
      r.steps.map((s) => s.step),
      ['purge', 'arp_probes', 'echo', 'arp_reply', 'echo_reply', 'verdict'],
    );
    assert.equal(f.echoTimeout(), 750, 'the echo gets the whole budget');
  });

  it('a gateway that drops ping but answers ARP is alive, echo_rtt null, without waiting the full budget', async () => {
    const f = fakePorts(clock, { arpReplyAt: { ms: 1 }, echoReplyAt: null });
    const v = start(clock, f.ports);
    await clock.advance(300);
    assert.equal(v.settledAt(), 251, 'the echo is waited for one interval after the ARP reply, no more');
    const r = v.result()!;
    assert.equal(r.alive, true);
    assert.equal(r.echoRttMs, null);
    assert.equal(r.arpRttMs, 1);
    assert.deepEqual(
      r.steps.map((s) => s.step),
      ['purge', 'arp_probes', 'echo', 'arp_reply', 'echo_unanswered', 'verdict'],
    );
  });

  it('no ARP reply: dead, verdict exactly at probes x interval, all probes counted', async () => {
    const f = fakePorts(clock, { arpReplyAt: null, echoReplyAt: null });
    const v = start(clock, f.ports);
    await clock.advance(749);
    assert.equal(v.settledAt(), null);
    await clock.advance(1);
    assert.equal(v.settledAt(), 750);
    const r = v.result()!;
    assert.equal(r.alive, false);
    assert.equal(r.mac, null);
    assert.equal(r.arpRttMs, null);
    assert.equal(r.echoRttMs, null);
    assert.equal(r.probesSent, 3);
    assert.equal(r.durationMs, 750);
    assert.equal(r.steps.at(-1)!.detail, 'dead: no ARP answer to 3 probes');
    assert.equal(r.reason, 'no ARP answer to 3 probes');
  });

  it('a resolver that overruns is cut off at the deadline and told to stop', async () => {
    const f = fakePorts(clock, { resolverHangs: true, echoReplyAt: null });
    const v = start(clock, f.ports, { probes: 2, intervalMs: 100 });
    await clock.advance(200);
    assert.equal(v.settledAt(), 200);
    assert.equal(v.result()!.alive, false);
    assert.ok(v.result()!.steps.some((s) => s.step === 'deadline'));
    assert.equal(f.resolveSignal()!.aborted, true);
    assert.equal(clock.pending(), 0, 'no timer of the verifier is left behind');
  });

  it('an answer to the third probe still counts', async () => {
    const f = fakePorts(clock, { arpReplyAt: { ms: 503, probe: 3 }, echoReplyAt: 504 });
    const v = start(clock, f.ports);
    await clock.advance(750);
    const r = v.result()!;
    assert.equal(r.alive, true);
    assert.equal(r.probesSent, 3);
    assert.equal(r.arpRttMs, 3);
    assert.equal(v.settledAt(), 504);
  });

  it('a reply from another MAC is reported and not trusted; allowMacChange trusts it', async () => {
    const other = '02:00:00:00:00:99';
    const f = fakePorts(clock, { arpReplyAt: { ms: 1, mac: other }, echoReplyAt: 2 });
    const v = start(clock, f.ports, { knownMac: GW_MAC });
    await clock.advance(10);
    const r = v.result()!;
    assert.equal(r.alive, false);
    assert.equal(r.macChanged, true);
    assert.equal(r.untrustedMac, other);
    assert.equal(r.mac, other);
    assert.ok(
      r.steps.some(
        (s) => s.step === 'mac_untrusted' && s.detail!.includes(`only from ${other}, not ${GW_MAC}`),
      ),
    );
    assert.deepEqual(r.conflicts, [other]);
    assert.match(r.reason, /only from untrusted MAC 02:00:00:00:00:99 \(known 02:00:00:00:00:01/);

    const g = fakePorts(clock, { arpReplyAt: { ms: 1, mac: other }, echoReplyAt: 2 });
    const w = start(clock, g.ports, { knownMac: GW_MAC, allowMacChange: true });
    await clock.advance(10);
    assert.equal(w.result()!.alive, true);
    assert.equal(w.result()!.macChanged, true);
    assert.equal(w.result()!.untrustedMac, null);

    const h = fakePorts(clock, { arpReplyAt: { ms: 1, mac: GW_MAC.toUpperCase() }, echoReplyAt: 2 });
    const x = start(clock, h.ports, { knownMac: GW_MAC });
    await clock.advance(10);
    assert.equal(x.result()!.alive, true);
    assert.equal(x.result()!.macChanged, false, 'MACs compare case-insensitively');
    assert.equal(x.result()!.mac, GW_MAC);
  });

  it('a failed purge is noted and verification goes on; a hung purge costs at most one interval', async () => {
    const f = fakePorts(clock, { purge: 'fail', arpReplyAt: { ms: 1 }, echoReplyAt: 1 });
    const v = start(clock, f.ports);
    await clock.advance(5);
    assert.equal(v.result()!.alive, true);
    assert.match(v.result()!.steps.find((s) => s.step === 'purge_failed')!.detail!, /EPERM/);

    const g = fakePorts(clock, { purge: 'hang', arpReplyAt: null, echoReplyAt: null });
    const w = start(clock, g.ports);
    await clock.advance(750);
    assert.equal(w.settledAt(), clock.now(), 'still a verdict within probes x interval');
    assert.ok(w.result()!.steps.some((s) => s.step === 'purge_timeout'));
    assert.equal(w.result()!.durationMs, 750);
    assert.equal(g.echoTimeout(), 500, 'the echo only gets what is left');
  });

  it('an echo that fails to send is informational: ARP still decides', async () => {
    const err = new SystemError('ENETUNREACH', 101, 'sendto', 'ENETUNREACH: sending an ICMP echo');
    const f = fakePorts(clock, { arpReplyAt: { ms: 1 }, echoError: err });
    const v = start(clock, f.ports);
    await clock.advance(5);
    assert.equal(v.result()!.alive, true);
    assert.equal(v.result()!.echoRttMs, null);
    assert.ok(v.result()!.steps.some((s) => s.step === 'echo_failed' && s.detail!.includes('ENETUNREACH')));
  });

  it('an echo answered without any ARP reply does not make the gateway alive', async () => {
    const f = fakePorts(clock, { arpReplyAt: null, echoReplyAt: 3 });
    const v = start(clock, f.ports);
    await clock.advance(750);
    assert.equal(v.result()!.alive, false);
    assert.equal(v.result()!.echoRttMs, 3);
    assert.ok(v.result()!.steps.some((s) => s.step === 'echo_without_arp'));
  });

  it('an echo answered after the verdict does not change the returned story', async () => {
    const f = fakePorts(clock, { arpReplyAt: { ms: 1 }, echoReplyAt: 400 });
    const v = start(clock, f.ports);
    await clock.advance(750);
    const r = v.result()!;
    assert.equal(v.settledAt(), 251);
    assert.equal(r.echoRttMs, null);
    assert.equal(r.steps.at(-1)!.step, 'verdict');
  });

  it('a resolver that cannot run (EPERM) fails the verification instead of declaring the gateway dead', async () => {
    const err = new SystemError(
      'EPERM',
      1,
      'pcap',
      'EPERM: opening lan0 for ARP/NDP needs CAP_NET_ADMIN/CAP_NET_RAW',
    );
    const f = fakePorts(clock, { resolveError: err, echoReplyAt: null });
    const v = start(clock, f.ports);
    await clock.advance(5);
    assert.equal(v.error(), err);
  });

  it("the caller's abort stops everything with an AbortError", async () => {
    const f = fakePorts(clock, { arpReplyAt: null, echoReplyAt: null });
    const ac = new AbortController();
    const v = start(clock, f.ports, { signal: ac.signal });
    await clock.advance(100);
    ac.abort();
    await clock.advance(0);
    assert.ok(v.error() instanceof AbortError);
    assert.equal(f.resolveSignal()!.aborted, true);
    ac.abort();
    const pre = new AbortController();
    pre.abort();
    await assert.rejects(verifyGateway(f.ports, { ...REQ, signal: pre.signal }, clock), AbortError);
  });

  it('IPv6 gateways are solicited by NDP and echoed with ICMPv6', async () => {
    const f = fakePorts(clock, { arpReplyAt: { ms: 2 }, echoReplyAt: 2 });
    const v = start(clock, f.ports, { gateway: '2001:db8:1::1' });
    await clock.advance(5);
    assert.equal(v.result()!.alive, true);
    assert.ok(f.calls.includes('echo 6 2001:db8:1::1 lan0'));
    assert.deepEqual(
      v.result()!.steps.map((s) => s.step),
      ['purge', 'ndp_probes', 'echo', 'ndp_reply', 'echo_reply', 'verdict'],
    );
  });

  it('refuses bad requests before touching anything', async () => {
    const f = fakePorts(clock, {});
    await assert.rejects(verifyGateway(f.ports, { ...REQ, gateway: 'router' }, clock), TypeError);
    await assert.rejects(verifyGateway(f.ports, { ...REQ, probes: 0 }, clock), RangeError);
    await assert.rejects(verifyGateway(f.ports, { ...REQ, intervalMs: 0 }, clock), RangeError);
    assert.deepEqual(f.calls, []);
  });

  it('records one step per probe sent, as the resolver reports them', async () => {
    const clock = new FakeClock();
    const { ports } = fakePorts(clock, { arpReplyAt: null, echoReplyAt: null });
    const plain = ports.resolve.bind(ports);
    ports.resolve = (ifname, ip, opts) => {
      for (let n = 1; n <= opts.probes; n++)
        clock.setTimeout(() => opts.onProbe?.(n), (n - 1) * opts.intervalMs);
      return plain(ifname, ip, opts);
    };
    const v = start(clock, ports);
    await clock.advance(1000);
    const probes = v.result()!.steps.filter((s) => s.step === 'arp_probe');
    assert.deepEqual(
      probes.map((s) => [s.at_ms, s.detail]),
      [
        [0, '#1 who-has 198.18.1.1'],
        [250, '#2 who-has 198.18.1.1'],
        [500, '#3 who-has 198.18.1.1'],
      ],
    );
  });

  describe('answers held against the known MAC', () => {
    const OTHER = '02:00:00:00:00:99';
    /**
     * A resolver that reports answers as they arrive (mac at ms) and settles only at its deadline,
     * or at once when expectMac answers, as src/sys/packet/neighlink.ts does.
     */
    function listening(
      clock: FakeClock,
      heard: { mac: string; ms: number }[],
      kernel: { state: string; lladdr: string | null } | null = null,
    ) {
      const f = fakePorts(clock, { echoReplyAt: 2 });
      const asked: { expectMac?: string | null; untilDeadline?: boolean }[] = [];
      f.ports.resolve = (_ifname, _ip, opts) =>
        new Promise((resolve, reject) => {
          asked.push({ expectMac: opts.expectMac, untilDeadline: opts.untilDeadline });
          opts.signal?.addEventListener('abort', () => reject(new AbortError()), { once: true });
          for (const h of heard)
            clock.setTimeout(() => {
              opts.onAnswer?.({ mac: h.mac, rttMs: h.ms });
              if (h.mac === opts.expectMac) resolve({ mac: h.mac, rttMs: h.ms, probesSent: 1 });
            }, h.ms);
        });
      f.ports.neighbour = () => Promise.resolve(kernel);
      return { ...f, asked };
    }

    it('a forged answer first does not end the question: the known MAC answering later makes it alive, with a conflict', async () => {
      const f = listening(clock, [
        { mac: OTHER, ms: 1 },
        { mac: GW_MAC, ms: 3 },
      ]);
      const v = start(clock, f.ports, { knownMac: GW_MAC });
      await clock.advance(750);
      const r = v.result()!;
      assert.equal(r.alive, true);
      assert.equal(r.mac, GW_MAC);
      assert.deepEqual(r.conflicts, [OTHER]);
      assert.equal(r.movedFrom, null);
      assert.deepEqual(f.asked, [{ expectMac: GW_MAC, untilDeadline: true }]);
      assert.ok(r.steps.some((s) => s.step === 'neighbour_conflict'));
    });

    it('only another MAC answered and the kernel confirmed it: the gateway moved, alive', async () => {
      const f = listening(clock, [{ mac: OTHER, ms: 1 }], { state: 'REACHABLE', lladdr: OTHER });
      const v = start(clock, f.ports, { knownMac: GW_MAC });
      await clock.advance(750);
      const r = v.result()!;
      assert.equal(v.settledAt(), 750, 'it listened until the deadline for the known MAC');
      assert.equal(r.alive, true);
      assert.equal(r.mac, OTHER);
      assert.equal(r.movedFrom, GW_MAC);
      assert.match(r.reason, /^moved/);
    });

    it('only another MAC answered and the kernel has it not: not alive, and the reason says what answered', async () => {
      const f = listening(clock, [{ mac: OTHER, ms: 1 }], { state: 'INCOMPLETE', lladdr: null });
      const v = start(clock, f.ports, { knownMac: GW_MAC });
      await clock.advance(750);
      const r = v.result()!;
      assert.equal(r.alive, false);
      assert.equal(r.untrustedMac, OTHER);
      assert.match(r.reason, /answered ARP only from untrusted MAC 02:00:00:00:00:99/);
      assert.doesNotMatch(r.reason, /no ARP/);
    });

    it('a pinned MAC never moves, whatever the kernel says', async () => {
      const f = listening(clock, [{ mac: OTHER, ms: 1 }], { state: 'REACHABLE', lladdr: OTHER });
      const v = start(clock, f.ports, { knownMac: GW_MAC, macPinned: true });
      await clock.advance(750);
      const r = v.result()!;
      assert.equal(r.alive, false);
      assert.match(r.reason, /not from the pinned MAC 02:00:00:00:00:01/);
    });
  });
});
