// SIGUSR2, the package upgrade's stop: the daemon exits 0 leaving a dead gateway's routes
// withdrawn and journaled (SIGTERM would put them back, and traffic would go to the dead gateway
// until it is detected again); the next start takes the journal over, and a SIGTERM then restores.
// Under a real systemd this is exercised by the nspawn test's upgrade (test/slow/nspawn.slow.ts).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Lab, requireRoot } from '../lab/lab';
import { LabDaemon } from '../lab/daemon';
import { startFlowClient, startFlowServer } from '../lab/flows';
import { DGD, dgdLab } from '../lab/topologies';

const FAST = 'dgd:\n  slow_poll_interval: 2s\n';

describe('SIGUSR2: stop for an upgrade (lab)', function () {
  this.timeout(90_000);
  let lab: Lab;
  before(function () {
    requireRoot(this);
  });
  after(async () => {
    await lab?.close();
  });

  it('exits 0 keeping the withdrawn route out and journaled; the next start takes it over', async () => {
    lab = await dgdLab();
    await startFlowServer(lab, 'server', 7300).listening;
    const defaults = async () =>
      (await lab.ip('client', ['-4', 'route', 'show', 'default'])).trim().split('\n').filter(Boolean);
    let d = await LabDaemon.start(lab, 'client', FAST);
    await lab.killSilently('r1', 'lan0');
    startFlowClient(lab, 'client', DGD.server4, 7300, { intervalMs: 50, durationMs: 20_000 });
    await d.waitFor((e) => e.event === 'routes_withdrawn', 15_000, 'routes withdrawn');
    assert.equal((await defaults()).length, 1);

    assert.equal(await d.signal('SIGUSR2'), 0);
    const stopped = d.events.find((e) => e.event === 'daemon_stopped');
    assert.equal(stopped?.routes_kept, true);
    assert.equal((await defaults()).length, 1, 'the route via the dead r1 stays out');
    const journal = JSON.parse(fs.readFileSync(path.join(d.stateDir, 'withdrawn-routes.json'), 'utf8')) as {
      entries: unknown[];
    };
    assert.equal(journal.entries.length, 1);

    d = await LabDaemon.restart(d, FAST);
    await d.waitFor((e) => e.event === 'journal_loaded', 5000, 'the journal taken over');
    assert.equal((await d.status()).gateways.find((g) => g.address === DGD.r1_4)!.state, 'dead');
    assert.equal((await defaults()).length, 1);
    assert.equal(await d.stop(), 0);
    const back = await defaults();
    assert.equal(back.length, 2, back.join(' | '));
    assert.ok(back.some((r) => r.includes(`via ${DGD.r1_4}`) && r.includes('metric 100')));
  });
});
