// The demo's second part: the daemon on a gateway host. A LAN host streams TCP through it and opens
// a short connection every 200 ms; the gateway host has no socket of these flows, so detection
// sees them only as segments leaving again towards the router's MAC (src/sys/packet/wirewatch.ts).
// r1 dies silently; the timeline shows the trigger, the verdict, the switch and the LAN host's
// flows going on; r1 comes back and the routes are restored exactly.
import { waitFor } from '../../test/lab/lab';
import { LabDaemon, type DaemonEvent } from '../../test/lab/daemon';
import { startConnector, startFlowClient, startFlowServer } from '../../test/lab/flows';
import { GW, forwardLab } from '../../test/lab/gateway-topologies';

const PORT = 7000;

export async function gatewayDemo(say: (s?: string) => void, bold: (s: string) => string): Promise<void> {
  const secs = (from: number, t: string | number) =>
    `${(((typeof t === 'number' ? t : Date.parse(t)) - from) / 1000).toFixed(3)} s`;
  say(bold('4. On a gateway host: the traffic it forwards for its LAN.'));
  const left = `  lanhost ${GW.lanhost4} -- gw (the daemon; no socket of these flows) --`;
  say(`${left}+-- r1 ${GW.r1_4} (metric 10) --+-- server ${GW.server4}`);
  say(`${' '.repeat(left.length)}+-- r2 ${GW.r2_4} (metric 20) --+`);
  const lab = await forwardLab({ routing: 'metric' });
  try {
    await startFlowServer(lab, 'server', PORT).listening;
    const daemon = await LabDaemon.start(lab, 'gw', 'dgd:\n  slow_poll_interval: 1s\n');
    const flow = startFlowClient(lab, 'lanhost', GW.server4, PORT, { intervalMs: 50, durationMs: 30_000 });
    const conns = startConnector(lab, 'lanhost', GW.server4, PORT, { intervalMs: 200, durationMs: 25_000 });
    await waitFor(() => flow.echoes.length >= 10, 5000, 'the forwarded flow');
    const watch = (await daemon.status()).forwarded as {
      method: string;
      interfaces: { interface: string }[];
    };
    say(
      `  status: forwarded traffic watched by ${watch.method} on ${watch.interfaces.map((i) => i.interface).join(', ')}`,
    );
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const withdrawn = await daemon.waitFor(
      (e) => e.event === 'routes_withdrawn' && e.gateway === GW.r1_4,
      15_000,
      'routes withdrawn',
    );
    const tw = Date.parse(withdrawn.time);
    const resumed = (await waitFor(() => flow.echoes.find((e) => e.t > tw), 15_000, 'the flow to resume'))!;
    const connected = await waitFor(
      () => conns.attempts.find((a) => a.ok && a.started > tw),
      15_000,
      "the LAN host's next connection",
    );
    const ev = (name: string, pred: (e: DaemonEvent) => boolean = () => true) =>
      daemon.events.find((e) => e.event === name && Date.parse(e.time) >= t0 && pred(e));
    const trig = ev('trigger', (e) => e.gateway === GW.r1_4);
    const verdict = ev('verdict', (e) => e.gateway === GW.r1_4 && e.alive === false);
    say('  Timeline, from the moment r1 died:');
    if (trig) {
      const s = trig.socket as { src: string; dst: string; retransmits: number; wire?: boolean } | undefined;
      say(
        `  ${secs(t0, trig.time)}  trigger (${String(trig.reason)}): ${s ? `${s.src} > ${s.dst} sent again ${s.retransmits} times towards r1's MAC` : ''}`,
      );
    }
    if (verdict)
      say(
        `  ${secs(t0, verdict.time)}  verdict: r1 did not answer ${String(verdict.probes_sent)} ARP requests`,
      );
    say(`  ${secs(t0, withdrawn.time)}  routes switched: withdrew ${JSON.stringify(withdrawn.routes)}`);
    const after: [number, string][] = [[resumed.t, "the LAN host's stream resumed through r2"]];
    if (connected) after.push([connected.started, "the LAN host's next connection went through r2"]);
    for (const [t, text] of after.sort((a, b) => a[0] - b[0])) say(`  ${secs(t0, t)}  ${text}`);
    const t1 = Date.now();
    await lab.revive('r1', 'lan0');
    const restored = await daemon.waitFor(
      (e) => e.event === 'routes_restored' && e.gateway === GW.r1_4 && Date.parse(e.time) >= t1,
      20_000,
      'routes restored',
    );
    say(`  r1 back: routes restored exactly, ${secs(t1, restored.time)} after it came back`);
    await daemon.stop();
  } finally {
    await lab.close();
  }
}
