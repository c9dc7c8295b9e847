// The gateway state machine as a table (src/dgd/gateway.ts): every transition is listed, and a
// pair that is not one moves nothing.
import { strict as assert } from 'node:assert';
import { GATEWAY_TRANSITIONS, nextState, type GatewayEvent } from '../../src/dgd/gateway';
import type { GatewayState } from '../../src/dgd/events';

const STATES: GatewayState[] = ['active', 'suspect', 'dead'];
const EVENTS: GatewayEvent[] = [
  'trigger',
  'answered',
  'verification_failed',
  'no_answer',
  'journal',
  'revived',
  'off',
  'interface_down',
];

describe('gateway state machine', () => {
  it('moves only along the listed transitions (IBM i: active -> suspect -> active | dead -> active)', () => {
    const table = Object.fromEntries(
      STATES.map((s) => [s, Object.fromEntries(EVENTS.map((e) => [e, nextState(s, e)]))]),
    );
    assert.deepEqual(table, {
      active: {
        trigger: 'suspect',
        answered: null,
        verification_failed: null,
        no_answer: 'dead',
        journal: 'dead',
        revived: null,
        off: null,
        interface_down: null,
      },
      suspect: {
        trigger: null,
        answered: 'active',
        verification_failed: 'active',
        no_answer: 'dead',
        journal: 'dead',
        revived: null,
        off: 'active',
        interface_down: 'active',
      },
      dead: {
        trigger: null,
        answered: null,
        verification_failed: null,
        no_answer: null,
        journal: null,
        revived: 'active',
        off: 'active',
        interface_down: null,
      },
    });
    // Every state can be left, and dead only by revival or off.
    for (const s of STATES) assert.ok(Object.keys(GATEWAY_TRANSITIONS[s]).length > 0);
  });
});
