// The gateway machine as a handler table (src/dgd/gateway.ts): every phase's reaction to every
// event, entry actions once per phase, and pairs the rooms must never send counted, not dropped.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GatewayMachine, gatewayTable, newGateway, type GatewayHost } from '../../src/dgd/gateway';
import { FakeClock, MemoryEventLog } from '../doubles';

function machine(slowPollMs = 120_000) {
  const clock = new FakeClock();
  const log = new MemoryEventLog();
  const polls: [string, number][] = [];
  const host: GatewayHost = {
    clock,
    log,
    slowPollMs,
    flap: { limit: 2, windowMs: 60_000, holdDownMs: 1000 },
    schedulePoll: (g, ms) => polls.push([g.address, ms]),
    cancelPoll: (g) => polls.push([g.address, -1]),
  };
  return { m: new GatewayMachine(host), clock, log, polls };
}

describe('gateway state machine', () => {
  it('is a table: IBM i active -> suspect -> active | dead, dead phases, and what each ignores', () => {
    const t = gatewayTable();
    assert.equal(t.active.trigger, 'suspect');
    assert.equal(t.active.no_answer, 'dead', 'active probes decide without a suspect phase');
    assert.equal(t.active.revived, 'invalid');
    assert.equal(t.suspect.answered, 'active');
    assert.equal(t.suspect.no_answer, 'dead');
    assert.equal(t.suspect.interface_down, 'active');
    assert.equal(t.dead.revived, 'active');
    assert.equal(t.dead.held, 'held_down');
    assert.equal(t.dead.routes_waiting, 'waiting_for_interface');
    assert.equal(t.dead.trigger, 'ignored');
    assert.equal(t.held_down.still_dead, 'dead');
    assert.equal(t.waiting_for_interface.still_dead, 'dead');
    assert.equal(t.dead.still_dead, 'poll_later');
    assert.equal(t.dead.sighted, 'poll_now');
    assert.equal(t.dead.interface_up, 'poll_now');
    // Dead phases are left only by revival or off.
    for (const p of ['dead', 'held_down', 'waiting_for_interface'] as const)
      for (const [e, to] of Object.entries(t[p]))
        if (to === 'active') assert.ok(e === 'revived' || e === 'off', `${p} --${e}--> active`);
  });

  it('entry actions: a death is timed, counted for flap damping and slow-polled; revival clears it', async () => {
    const { m, clock, polls } = machine();
    const g = newGateway('198.18.1.1', 2, 'lan0', 'up');
    m.fire(g, { type: 'trigger', kind: 'retransmit' }, 'test');
    assert.equal(g.state, 'suspect');
    await clock.advance(5000);
    m.fire(g, { type: 'no_answer' }, 'no answer');
    assert.equal(g.state, 'dead');
    assert.equal(g.deadSince, 5000);
    assert.deepEqual(g.deaths, [5000]);
    assert.deepEqual(polls.at(-1), ['198.18.1.1', 120_000]);
    m.fire(g, { type: 'still_dead' }, 'poll unanswered');
    assert.equal(g.phase, 'dead');
    assert.equal(g.deadSince, 5000, 'a failed poll does not restart the death');
    m.fire(g, { type: 'revived' }, 'answers');
    assert.equal(g.state, 'active');
    assert.equal(g.deadSince, null);
    assert.deepEqual(polls.at(-1), ['198.18.1.1', -1], 'no poll left behind');
  });

  it('held down and waiting for an interface are phases of dead, visible in transitions', () => {
    const { m, clock, polls, log } = machine();
    const g = newGateway('198.18.1.1', 2, 'lan0', 'up');
    m.fire(g, { type: 'no_answer' }, 'probes');
    m.fire(g, { type: 'held', until: clock.now() + 4000 }, 'flap damping');
    assert.equal(g.state, 'dead');
    assert.equal(g.phase, 'held_down');
    assert.deepEqual(polls.at(-1), ['198.18.1.1', 4000], 'polled when the hold-down ends');
    m.fire(g, { type: 'routes_waiting' }, 'interface down');
    assert.equal(g.phase, 'waiting_for_interface');
    m.fire(g, { type: 'still_dead' }, 'silent');
    assert.equal(g.phase, 'dead');
    assert.deepEqual(
      g.transitions.map((t) => `${t.from}>${t.to}:${t.phase}`),
      ['active>dead:dead', 'dead>dead:held_down', 'dead>dead:waiting_for_interface', 'dead>dead:dead'],
    );
    assert.equal(log.named('state').length, 1, 'one state event: the death');
    assert.equal(log.named('phase').length, 3);
  });

  it('a journal entry after a restart polls at once; off from any dead phase is active', () => {
    const { m, polls } = machine();
    const g = newGateway('198.18.1.1', 2, 'lan0', 'up');
    m.fire(g, { type: 'journal' }, 'restart');
    assert.deepEqual(polls.at(-1), ['198.18.1.1', 0]);
    assert.deepEqual(g.deaths, [], 'a restart is no new death for flap damping');
    m.fire(g, { type: 'off' }, 'ipdeadgate off');
    assert.equal(g.state, 'active');
  });

  it('a pair the rooms must never send is logged and counted, and changes nothing', () => {
    const { m, log } = machine();
    const g = newGateway('198.18.1.1', 2, 'lan0', 'up');
    m.fire(g, { type: 'revived' }, 'bogus');
    assert.equal(g.state, 'active');
    assert.equal(g.transitions.length, 0);
    assert.equal(m.invalidPairs.get('active:revived'), 1);
    assert.equal(log.named('invalid_gateway_event').length, 1);
  });
});

describe('docs/architecture.md', () => {
  it('draws the gateway machine exactly as src/dgd/gateway.ts has it', () => {
    const text = fs.readFileSync(path.resolve(__dirname, '../../../docs/architecture.md'), 'utf8');
    const rows = text.split('\n').filter((l) => l.startsWith('| ') && l.includes(' | '));
    const header = rows.find((l) => l.startsWith('| phase \\ event'));
    assert.ok(header, 'the table is there');
    const events = header
      .split('|')
      .slice(2, -1)
      .map((c) => c.trim());
    const word = (c: string) => c.replace('poll later', 'poll_later').replace('poll now', 'poll_now');
    const table = gatewayTable();
    for (const [phase, cells] of Object.entries(table)) {
      const row = rows.find((l) => l.startsWith(`| ${phase} |`));
      assert.ok(row, `a row for ${phase}`);
      const drawn = row
        .split('|')
        .slice(2, -1)
        .map((c) => word(c.trim()));
      assert.deepEqual(Object.fromEntries(events.map((e, i) => [e, drawn[i]])), cells, `the ${phase} row`);
    }
  });
});
