// Failover under local pressure on the metrics endpoint (scripts/bench-pressure): the dead-gateway
// lab, a TCP flow through r1, the daemon serving metrics on 127.0.0.1:9741, and a local client
// (test/fixtures/metrics-pressure.ts) leaning on it; r1 dies silently and the time to the daemon's
// routes_withdrawn is taken. Every trial is bounded (60 s) and its lab torn down.
import * as path from 'node:path';
import { Lab, REPO_ROOT, waitFor } from '../../test/lab/lab';
import { LabDaemon } from '../../test/lab/daemon';
import { DGD, dgdLabSpec } from '../../test/lab/topologies';

const FLOW = path.join(REPO_ROOT, 'dist', 'test', 'lab', 'flow.js');
const PRESSURE = path.join(REPO_ROOT, 'dist', 'test', 'fixtures', 'metrics-pressure.js');
const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const TRIALS = Number(opt('trials', '3'));
const CASES = opt('cases', 'idle,hammer,pipeline').split(',').filter(Boolean);
const CONFIG = 'dgd:\n  slow_poll_interval: 1s\nmetrics:\n  listen: 127.0.0.1:9741\n';

async function trial(mode: string): Promise<number | null> {
  const lab = await Lab.create(dgdLabSpec());
  try {
    lab.spawn('server', [process.execPath, FLOW, 'server', '7000']);
    const d = await LabDaemon.start(lab, 'client', CONFIG);
    await d.waitFor((e) => e.event === 'metrics_listening', 10_000, 'the metrics endpoint');
    if (mode !== 'idle') {
      lab.spawn('client', [process.execPath, PRESSURE, mode, '9741', '16', '90000']);
      await new Promise((r) => setTimeout(r, 3000));
    }
    const flow = lab.spawn('client', [process.execPath, FLOW, 'client', DGD.server4, '7000', '50', '90000']);
    let echoes = 0;
    flow.stdout!.on('data', (b: Buffer) => (echoes += (b.toString().match(/"seq"/g) ?? []).length));
    await waitFor(() => echoes >= 10, 20_000, 'the flow to run');
    const t0 = performance.now();
    await lab.killSilently('r1', 'lan0');
    const w = await d
      .waitFor((e) => e.event === 'routes_withdrawn', 60_000, 'the withdrawal')
      .catch(() => null);
    await d.stop().catch(() => undefined);
    return w ? w.seenAt - t0 : null;
  } finally {
    await lab.close();
  }
}

async function main(): Promise<void> {
  process.stdout.write('| metrics endpoint | routes switched, each trial |\n| --- | --- |\n');
  for (const mode of CASES) {
    const times: string[] = [];
    for (let i = 0; i < TRIALS; i++) {
      const t = await trial(mode);
      times.push(t === null ? 'not within 60 s' : `${(t / 1000).toFixed(3)} s`);
    }
    process.stdout.write(`| ${mode} | ${times.join(', ')} |\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench-pressure: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
