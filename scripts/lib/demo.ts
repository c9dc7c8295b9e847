// The main job, shown in a throw-away lab: a client with two routers (the first drops ping like a
// firewall) and a server; the daemon runs in the client while TCP streams; the first router dies
// silently; the timeline shows the trigger, the ARP verdict, the route switch and the flow resuming;
// the router comes back and the routes are restored; then the server dies while the gateway lives,
// and nothing moves; then the same on a gateway host, for the traffic it forwards for its LAN
// (./demo-gateway.ts). Everything is torn down at the end (also on failure and Ctrl-C).
import { Lab, waitFor } from '../../test/lab/lab';
import { startFlowClient, startFlowServer } from '../../test/lab/flows';
import { LabDaemon, type DaemonEvent } from '../../test/lab/daemon';
import { DGD, dgdLabSpec } from '../../test/lab/topologies';
import { gatewayDemo } from './demo-gateway';

const PORT = 7000;
const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const say = (s = '') => process.stdout.write(s + '\n');

function ms(fromEpoch: number, eventTime: string | number): string {
  const t = typeof eventTime === 'number' ? eventTime : Date.parse(eventTime);
  return `${((t - fromEpoch) / 1000).toFixed(3)} s`;
}

async function defaultRoutes(lab: Lab): Promise<string> {
  const v4 = await lab.ip('client', ['route', 'show', 'default']);
  return v4
    .trim()
    .split('\n')
    .map((l) => '    ' + l)
    .join('\n');
}

async function main(): Promise<void> {
  say(bold('ipdeadgate demo: a first-hop router dies silently'));
  say();
  say("Building the lab (network namespaces; nothing touches this host's own network):");
  say(
    `  client ${DGD.client4} --+-- r1 ${DGD.r1_4} (preferred, metric 100; drops ping like a firewall) --+-- server ${DGD.server4}`,
  );
  say(
    `                          +-- r2 ${DGD.r2_4} (backup, metric 200)                                 --+`,
  );
  const lab = await Lab.create(dgdLabSpec());
  try {
    await lab.blockPing('r1');
    await startFlowServer(lab, 'server', PORT).listening;
    const yaml = 'dgd:\n  slow_poll_interval: 5s\n';
    const daemon = await LabDaemon.start(lab, 'client', yaml);
    say();
    say(`The daemon runs in the client with the defaults (retransmit threshold 3, scan every 200 ms,`);
    say(`3 ARP probes x 250 ms) and slow polling every 5 s for the demo (2 min by default).`);
    say('Client routes before:');
    say(await defaultRoutes(lab));

    // A TCP flow: an 8-byte message every 50 ms, echoed by the server.
    const flow = startFlowClient(lab, 'client', DGD.server4, PORT, { intervalMs: 50, durationMs: 40_000 });
    await flow.connected;
    await waitFor(() => flow.echoes.length >= 20, 5000, 'the flow to run');
    say();
    say(`TCP flow client -> server:${PORT} running (${flow.echoes.length} echoes so far).`);

    // 1. Silent death.
    say();
    say(bold("1. r1 dies silently (it drops everything on its LAN side; the client's link stays up)."));
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const withdrawn = await daemon.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
    const resumed = (await waitFor(
      () => flow.echoes.find((e) => e.t > Date.parse(withdrawn.time)),
      15_000,
      'the flow to resume',
    ))!;
    const lastBefore = [...flow.echoes].reverse().find((e) => e.t <= t0);
    const ev = (name: string, pred: (e: DaemonEvent) => boolean = () => true) =>
      daemon.events.find((e) => e.event === name && Date.parse(e.time) >= t0 && pred(e));
    const spec = ev('speculative_verify');
    const trig = ev('trigger');
    const verdict = ev('verdict', (e) => e.alive === false);
    say('Timeline, from the moment r1 died:');
    const timeline: [number, string][] = [];
    const at = (t: string | number) => (typeof t === 'number' ? t : Date.parse(t));
    if (spec)
      timeline.push([
        at(spec.time),
        `speculative verification starts: a socket has ${(spec.socket as { retransmits: number }).retransmits} retransmissions`,
      ]);
    if (verdict)
      timeline.push([
        at(verdict.time),
        `verdict ready: r1 did not answer ${String(verdict.probes_sent)} ARP requests${verdict.speculative ? ' (speculative: nothing acts yet)' : ''}`,
      ]);
    if (trig)
      timeline.push([
        at(trig.time),
        `trigger: the socket reached ${(trig.socket as { retransmits: number }).retransmits} retransmissions -> r1 is dead`,
      ]);
    timeline.push([at(withdrawn.time), `routes switched: withdrew ${JSON.stringify(withdrawn.routes)}`]);
    const resent = ev('flows_resent');
    if (resent)
      timeline.push([
        at(resent.time),
        `the stuck flow's segment resent through r2 (${String(resent.resent)} of ${String(resent.flows)} flows; docs/failover.md)`,
      ]);
    timeline.push([
      resumed.t,
      resent
        ? 'flow resumed: the echo came back via r2'
        : `flow resumed: the next echo came back via r2 (TCP's own backoff decided when it retried)`,
    ]);
    timeline.sort((a, b) => a[0] - b[0]);
    if (lastBefore) say(`  ${ms(t0, lastBefore.t)}  last echo before the death`);
    for (const [t, text] of timeline) say(`  ${ms(t0, t)}  ${text}`);
    say('  (ping played no part: r1 drops ping even when alive)');
    say('Client routes now:');
    say(await defaultRoutes(lab));

    // 2. Revival.
    say();
    say(bold('2. r1 comes back.'));
    const t1 = Date.now();
    await lab.revive('r1', 'lan0');
    const restored = await daemon.waitFor(
      (e) => e.event === 'routes_restored' && Date.parse(e.time) >= t1,
      20_000,
      'routes restored',
    );
    const sighting = daemon.events.find((e) => e.event === 'sighting' && Date.parse(e.time) >= t1);
    if (sighting)
      say(
        `  ${ms(t1, sighting.time)}  r1 sent ARP/NDP on its own: polled at once instead of waiting for the slow poll`,
      );
    say(`  ${ms(t1, restored.time)}  r1 answered ARP twice in a row -> routes restored exactly`);
    say('Client routes now:');
    say(await defaultRoutes(lab));

    // 3. The false-positive case.
    say();
    say(bold('3. The server dies; the gateway lives. Nothing must move.'));
    const t2 = Date.now();
    await lab.killSilently('server', 'wan0');
    const downstream = await daemon.waitFor(
      (e) => e.event === 'downstream_problem' && Date.parse(e.time) >= t2,
      20_000,
      'the downstream verdict',
    );
    const aliveVerdict = daemon.events.find(
      (e) => e.event === 'verdict' && Date.parse(e.time) >= t2 && e.alive === true,
    );
    say(`  ${ms(t2, downstream.time)}  trigger: ${String(downstream.reason)}; r1 verified by ARP:`);
    if (aliveVerdict)
      say(
        `             ARP answered in ${Number(aliveVerdict.arp_rtt_ms).toFixed(2)} ms, echo ${aliveVerdict.echo_rtt_ms === null ? 'unanswered (r1 drops ping)' : 'answered'}`,
      );
    say('             -> r1 is alive: a downstream problem, logged; routes untouched:');
    say(await defaultRoutes(lab));
    const status = await daemon.status();
    const r1 = status.gateways.find((g) => g.address === DGD.r1_4);
    say(`  r1 state: ${r1?.state}`);
    await lab.revive('server', 'wan0');

    say();
    const code = await daemon.stop();
    say(`Daemon stopped with SIGTERM (exit ${code}); every withdrawn route would have been restored.`);
  } finally {
    await lab.close();
    say('Lab torn down.');
  }
  say();
  await gatewayDemo(say, bold);
  say('Lab torn down.');
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
