// The verification that decides whether a first-hop gateway is dead: the product's core decision,
// after IBM i's V4R4+ dead gateway redesign (docs/operators-guide.md, "How detection decides"):
//
//   1. purge the gateway's neighbour entry, so nothing answers from a cache;
//   2. send `probes` ARP requests (NDP neighbour solicitations for IPv6) ourselves, spaced by
//      `intervalMs`, and at the same time one ICMP echo, only to make the kernel resolve the
//      gateway on its own as traffic would;
//   3. a valid ARP/NDP answer from the gateway means alive, even if the echo is never answered
//      (firewalls drop ping: the V3R1-V4R2 mistake the seed describes). Only answers to our own
//      question count (src/sys/packet/neighlink.ts: a reply to us whose Ethernet source is its
//      sender; a solicited NA), and the known MAC decides: listening goes on until the deadline
//      (probing stops once it answered), and an answer from another MAC is a conflict, never a
//      death by itself. So an alive verdict, too, comes at the deadline.
//      When only other MACs answered, the kernel's own neighbour entry (which the echo made it
//      resolve) says whether the gateway moved (a VRRP takeover announces the address from the new
//      master's MAC): confirmed at a MAC that answered, it has moved and is alive. A pinned MAC
//      (config) never moves.
//
// The verdict is ready no later than probes * intervalMs after the start (and, unless
// allowMacChange, at that deadline; when only another MAC answered, after one read of the
// kernel's entry, at most 100 ms more): the engine counts on it to have a verdict by the time a
// socket reaches the retransmission threshold. The echo's answer
// is informational (echoRttMs) and never delays a dead verdict.
//
// Pure logic over ports and an injected clock, so it is unit-tested with fakes and a FakeClock;
// the ports are the sys/ facades (rtnl, NeighbourLink, EchoSocket) in the daemon and the CLI.
import { normalizeMac } from '../sys/ipaddr';
import { isIP } from 'node:net';
import { AbortError, errorMessage } from '../errors';
import { systemClock, type Clock } from '../util/clock';

export interface VerifierPorts {
  /** Delete the kernel's neighbour entry for ip on ifindex; resolves if there is none. */
  purgeNeighbour(ifindex: number, ip: string): Promise<void>;
  /**
   * Send `probes` ARP requests / NSes spaced by intervalMs and listen until probes x intervalMs
   * (or expectMac's answer): every MAC that validly answered for ip, or null for none.
   */
  resolve(
    ifname: string,
    ip: string,
    opts: {
      probes: number;
      intervalMs: number;
      signal?: AbortSignal;
      onProbe?: (n: number) => void;
      untilDeadline?: boolean;
      expectMac?: string | null;
      /** Listen at most this long in all (what is left of the verification's budget). */
      listenMs?: number;
      /** With untilDeadline: end at once when expectMac answered. */
      finishOnExpected?: boolean;
      /** Let the gateway's echoes through the capture while resolving (the flight recorder's picture). */
      watchEcho?: boolean;
      /** Each MAC's first valid answer as it arrives (the verdict at the deadline uses them). */
      onAnswer?: (a: { mac: string; rttMs: number }) => void;
    },
  ): Promise<ResolveAnswer>;
  /** The kernel's neighbour entry for ip on ifindex (state and MAC), null for none. */
  neighbour?(ifindex: number, ip: string): Promise<{ state: string; lladdr: string | null } | null>;
  /** One ICMP/ICMPv6 echo; null when no reply came within timeoutMs. */
  echo(
    family: 4 | 6,
    ip: string,
    opts: { timeoutMs: number; ifname: string },
  ): Promise<{ rttMs: number } | null>;
}

export interface VerifyRequest {
  gateway: string;
  ifname: string;
  ifindex: number;
  probes: number;
  intervalMs: number;
  /** The gateway's known MAC: the kernel's confirmed entry, or the config's pin. */
  knownMac?: string | null;
  /** knownMac is pinned in config: no other MAC ever counts, the kernel's entry included. */
  macPinned?: boolean;
  /** Any MAC that answers counts (dgd.allow_mac_change). */
  allowMacChange?: boolean;
  /**
   * Listen until the deadline even after the known MAC answered, so that another MAC answering is
   * heard (default). Off for the slow poll of a dead gateway, where the known MAC's answer is all
   * that is asked and a revival should not wait.
   */
  untilDeadline?: boolean;
  signal?: AbortSignal;
}

export interface VerifyStep {
  /** Milliseconds since the verification started. */
  at_ms: number;
  step: string;
  detail?: string;
}

export interface VerifyResult {
  gateway: string;
  interface: string;
  alive: boolean;
  /** The MAC that answered (lower case), null when nothing did. */
  mac: string | null;
  /** A MAC answered that differs from knownMac. */
  macChanged: boolean;
  /** The MAC that answered when only untrusted ones did (then alive is false). */
  untrustedMac: string | null;
  /** MACs other than the known one that answered too: a neighbour conflict (with the known MAC). */
  conflicts: string[];
  /** The gateway moved from this MAC to `mac` (confirmed by the kernel's entry); null if it did not. */
  movedFrom: string | null;
  /** What was seen, in words: the verdict's reason ("no ARP answer to 3 probes", ...). */
  reason: string;
  arpRttMs: number | null;
  /** Informational only; null when the echo was not answered (blocked ping) or failed. */
  echoRttMs: number | null;
  probesSent: number;
  durationMs: number;
  /** Wall clock, ms since the epoch. */
  startedAt: number;
  steps: VerifyStep[];
}

type ResolveAnswer = {
  mac: string;
  rttMs: number;
  probesSent: number;
  answers?: { mac: string; rttMs: number; count: number }[];
} | null;

/** How long a read of the kernel's neighbour entry may take at the deadline (a loaded host). */
const KERNEL_READ_MS = 100;

/** Kernel states in which its entry holds a MAC it sends to (NUD_VALID less NOARP). */
const KERNEL_HAS_MAC = new Set(['REACHABLE', 'STALE', 'DELAY', 'PROBE', 'PERMANENT']);

const round3 = (ms: number) => Math.round(ms * 1000) / 1000;

/** A clock timer as a promise, cancellable. */
function delay(clock: Clock, ms: number): { promise: Promise<'timeout'>; cancel: () => void } {
  let cancel = () => {};
  const promise = new Promise<'timeout'>((resolve) => {
    const t = clock.setTimeout(() => resolve('timeout'), Math.max(0, ms));
    cancel = () => t.cancel();
  });
  return { promise, cancel };
}

export async function verifyGateway(
  ports: VerifierPorts,
  req: VerifyRequest,
  clock: Clock = systemClock,
): Promise<VerifyResult> {
  const family = isIP(req.gateway.split('%')[0]!);
  if (family !== 4 && family !== 6)
    throw new TypeError(`verifyGateway: "${req.gateway}" is not an IP address`);
  if (!Number.isInteger(req.probes) || req.probes < 1)
    throw new RangeError(`verifyGateway: probes must be a whole number >= 1, not ${req.probes}`);
  if (!(req.intervalMs > 0) || !Number.isFinite(req.intervalMs))
    throw new RangeError(
      `verifyGateway: intervalMs must be a positive number of milliseconds, not ${req.intervalMs}`,
    );
  if (req.signal?.aborted) throw new AbortError(`verification of ${req.gateway} was aborted`);

  const t0 = clock.now();
  const startedAt = clock.wallNow();
  const budgetMs = req.probes * req.intervalMs;
  const deadline = t0 + budgetMs;
  const remaining = () => Math.max(0, deadline - clock.now());
  const steps: VerifyStep[] = [];
  let finished = false;
  const step = (name: string, detail?: string) => {
    if (finished) return; // a late echo after the verdict is not part of this story
    const s: VerifyStep = { at_ms: round3(clock.now() - t0), step: name };
    if (detail !== undefined) s.detail = detail;
    steps.push(s);
  };

  // Everything started here stops at the deadline, on the caller's abort, or when we are done.
  const stop = new AbortController();
  const onCallerAbort = () => stop.abort(new AbortError(`verification of ${req.gateway} was aborted`));
  req.signal?.addEventListener('abort', onCallerAbort, { once: true });
  const aborted = new Promise<'aborted'>((resolve) =>
    stop.signal.addEventListener('abort', () => resolve('aborted'), { once: true }),
  );
  const timers: (() => void)[] = [];
  const wait = (ms: number) => {
    const d = delay(clock, ms);
    timers.push(d.cancel);
    return d.promise;
  };
  const callerAborted = () => req.signal?.aborted === true;

  try {
    // 0. No known MAC yet (a gateway first met, already resolved before we started): the kernel's
    //    entry, before the purge, is what the kernel believed — the known MAC follows it.
    let known = req.knownMac ? normalizeMac(req.knownMac) : null;
    if (!known && ports.neighbour && !req.allowMacChange) {
      const entry = await Promise.race([
        ports.neighbour(req.ifindex, req.gateway).catch(() => null),
        wait(Math.min(req.intervalMs, remaining())).then(() => null),
        aborted.then(() => null),
      ]);
      if (stop.signal.aborted) throw stop.signal.reason;
      if (entry?.lladdr && KERNEL_HAS_MAC.has(entry.state)) {
        known = normalizeMac(entry.lladdr);
        step('known_mac', `${known}: the kernel's entry (${entry.state})`);
      }
    }
    // 1. Purge, bounded: a stuck netlink request must not eat the verdict's time. Our own probes
    //    do not depend on it; only the echo's forcing of the kernel does.
    step('purge', `${req.gateway} dev ${req.ifname}`);
    const purge = ports.purgeNeighbour(req.ifindex, req.gateway).then(
      () => 'done' as const,
      (err: unknown) => err,
    );
    const purged = await Promise.race([purge, wait(Math.min(req.intervalMs, remaining())), aborted]);
    if (purged === 'aborted') throw stop.signal.reason;
    if (purged === 'timeout')
      step(
        'purge_timeout',
        `no answer from the kernel within ${Math.min(req.intervalMs, budgetMs)} ms; probing anyway`,
      );
    else if (purged !== 'done') step('purge_failed', errorMessage(purged));

    // 2. Our probes and the kernel-forcing echo, concurrently.
    const proto = family === 4 ? 'arp' : 'ndp';
    step(`${proto}_probes`, `${req.probes} x ${req.intervalMs} ms`);
    /**
     * The kernel's entry now (null: none, or no answer in time). Asked at the deadline when only
     * another MAC answered, so that verdict may come up to KERNEL_READ_MS after the deadline.
     */
    const kernelEntry = async () =>
      ports.neighbour
        ? Promise.race([
            ports.neighbour(req.ifindex, req.gateway).catch(() => null),
            wait(Math.min(req.intervalMs, Math.max(remaining(), KERNEL_READ_MS))).then(() => null),
          ])
        : null;
    // What was heard so far: at the deadline the verdict is taken from these, whatever the
    // resolver's own timer says.
    const heard = new Map<string, { mac: string; rttMs: number; count: number }>();
    let probesSoFar = 0;
    const resolving: Promise<{ answer: ResolveAnswer } | { error: unknown }> = ports
      .resolve(req.ifname, req.gateway, {
        probes: req.probes,
        intervalMs: req.intervalMs,
        signal: stop.signal,
        // Until the deadline unless the known MAC answers: a first answer from another MAC must not
        // end the question (a forged reply would hide the real gateway's).
        // With no known MAC at all, every answer is heard too when the kernel can settle between them.
        untilDeadline: !req.allowMacChange && (known !== null || ports.neighbour !== undefined),
        finishOnExpected: req.untilDeadline === false,
        watchEcho: true,
        expectMac: known,
        listenMs: remaining(),
        onAnswer: (a) => {
          const m = normalizeMac(a.mac);
          const h = heard.get(m);
          if (h) h.count++;
          else heard.set(m, { mac: m, rttMs: a.rttMs, count: 1 });
        },
        onProbe: (n) => {
          probesSoFar = n;
          step(
            `${proto}_probe`,
            `#${n} ${family === 4 ? 'who-has' : 'neighbour solicitation for'} ${req.gateway}`,
          );
        },
      })
      .then(
        (answer) => ({ answer }),
        (error: unknown) => ({ error }),
      );
    const echoTimeoutMs = remaining();
    step('echo', `one echo to force the kernel's own resolution, timeout ${round3(echoTimeoutMs)} ms`);
    let echoRttMs: number | null = null;
    let echoSettled = false;
    const echoing = ports
      .echo(family, req.gateway, { timeoutMs: echoTimeoutMs, ifname: req.ifname })
      .then(
        (r) => {
          if (r) {
            echoRttMs = round3(r.rttMs);
            step('echo_reply', `${echoRttMs} ms`);
          } else step('echo_timeout', 'no echo reply (ping blocked or gateway dead): informational only');
        },
        (err: unknown) => step('echo_failed', errorMessage(err)),
      )
      .finally(() => {
        echoSettled = true;
      });

    const first = await Promise.race([resolving, wait(remaining()), aborted]);
    if (first === 'aborted') throw stop.signal.reason;
    let answer: ResolveAnswer = null;
    if (first === 'timeout') {
      if (heard.size > 0) {
        const all = [...heard.values()];
        const chosen = (known && heard.get(known)) || all[0]!;
        answer = {
          mac: chosen.mac,
          rttMs: chosen.rttMs,
          probesSent: probesSoFar || req.probes,
          answers: all,
        };
        step('deadline', `listened ${budgetMs} ms: answers from ${all.map((a) => a.mac).join(', ')}`);
      } else step('deadline', `no ${proto.toUpperCase()} reply within ${budgetMs} ms`);
    } else if ('error' in first) {
      if (callerAborted()) throw stop.signal.reason;
      throw first.error;
    } else answer = first.answer;

    let probesSent = req.probes;
    let mac: string | null = null;
    let arpRttMs: number | null = null;
    let macChanged = false;
    let untrustedMac: string | null = null;
    let movedFrom: string | null = null;
    let conflicts: string[] = [];
    let reason: string;
    let alive = false;
    const P = proto.toUpperCase();
    if (answer) {
      // Everything heard, by MAC in order of arrival: what the resolver returned and what it reported.
      const byMac = new Map(heard);
      for (const a of answer.answers ?? [{ mac: answer.mac, rttMs: answer.rttMs, count: 1 }]) {
        const m = normalizeMac(a.mac);
        if (!byMac.has(m)) byMac.set(m, { ...a, mac: m });
      }
      const all = [...byMac.values()];
      const macs = all.map((a) => a.mac);
      const fromKnown = known ? all.find((a) => a.mac === known) : undefined;
      const chosen = fromKnown ?? all[0]!;
      mac = chosen.mac;
      arpRttMs = round3(chosen.rttMs);
      probesSent = answer.probesSent;
      step(`${proto}_reply`, `${macs.join(', ')} after ${answer.probesSent} probe(s), ${arpRttMs} ms`);
      if (!known && macs.length > 1 && ports.neighbour) {
        // Met for the first time and answered from several MACs: the kernel's pick is the gateway.
        const entry = await kernelEntry();
        const kernelMac =
          entry?.lladdr && KERNEL_HAS_MAC.has(entry.state) ? normalizeMac(entry.lladdr) : null;
        if (kernelMac && macs.includes(kernelMac)) {
          mac = kernelMac;
          arpRttMs = round3(all.find((a) => a.mac === kernelMac)!.rttMs);
        }
      }
      if (!known || fromKnown || req.allowMacChange) {
        alive = true;
        conflicts = macs.filter((m) => m !== mac);
        if (known && !fromKnown) {
          macChanged = true;
          step('mac_changed', `${known} -> ${mac}: trusted (allow_mac_change)`);
        }
        if (conflicts.length > 0 && fromKnown)
          step('neighbour_conflict', `answered from ${known} and also from ${conflicts.join(', ')}`);
        reason = `answered ${P} from ${mac}`;
      } else if (req.macPinned) {
        untrustedMac = mac;
        macChanged = true;
        conflicts = macs;
        step('mac_untrusted', `answered only from ${macs.join(', ')}, not the pinned ${known}`);
        reason = `answered ${P} only from ${macs.join(', ')}, not from the pinned MAC ${known}`;
      } else {
        // Only other MACs answered: has the gateway moved? The kernel resolved it too (our echo
        // made it ask, and it takes only answers sent to this host): its entry decides.
        const entry = await kernelEntry();
        const kernelMac =
          entry?.lladdr && KERNEL_HAS_MAC.has(entry.state) ? normalizeMac(entry.lladdr) : null;
        if (kernelMac && macs.includes(kernelMac)) {
          alive = true;
          macChanged = true;
          movedFrom = known;
          mac = kernelMac;
          arpRttMs = round3(all.find((a) => a.mac === kernelMac)!.rttMs);
          conflicts = macs.filter((m) => m !== kernelMac);
          step('neighbour_moved', `${known} -> ${kernelMac}: the kernel's entry is ${entry!.state} at it`);
          reason = `moved: answered ${P} from ${kernelMac} (was ${known}), confirmed by the kernel`;
        } else {
          untrustedMac = mac;
          macChanged = true;
          conflicts = macs;
          const k = entry ? `${entry.state}${entry.lladdr ? ` at ${entry.lladdr}` : ''}` : 'none';
          step(
            'mac_untrusted',
            `answered only from ${macs.join(', ')}, not ${known}; the kernel's entry: ${k}`,
          );
          reason = `answered ${P} only from untrusted MAC ${macs.join(', ')} (known ${known}; the kernel's entry: ${k})`;
        }
      }
      // The echo is only worth waiting for briefly: its request left with our first probe and the
      // kernel resolved the gateway when we heard it, so an answer follows within moments. Never
      // past the deadline.
      if (!echoSettled) {
        const more = await Promise.race([
          echoing.then(() => 'done' as const),
          wait(Math.min(req.intervalMs, remaining())),
          aborted,
        ]);
        if (more === 'aborted') throw stop.signal.reason;
        if (more === 'timeout')
          step(
            'echo_unanswered',
            'no echo reply yet (ping blocked?): informational only, not waited for longer',
          );
      }
    } else reason = `no ${P} answer to ${probesSent} probes`;
    // A dead verdict never waits for the echo: it no longer matters.
    if (!answer && echoRttMs !== null)
      step('echo_without_arp', 'the echo was answered but no ARP/NDP reply was seen: ARP/NDP decides');

    step('verdict', alive ? 'alive' : `dead: ${reason}`);
    return {
      gateway: req.gateway,
      interface: req.ifname,
      alive,
      mac,
      macChanged,
      untrustedMac,
      conflicts,
      movedFrom,
      reason,
      arpRttMs,
      echoRttMs,
      probesSent,
      durationMs: round3(clock.now() - t0),
      startedAt,
      steps,
    };
  } finally {
    finished = true;
    req.signal?.removeEventListener('abort', onCallerAbort);
    for (const cancel of timers) cancel();
    // Stop the resolver's remaining probes; a late echo is ignored (its own timeout ends it).
    if (!stop.signal.aborted) stop.abort(new AbortError('verification finished'));
  }
}
