// Reproductions, not part of the suite (it runs only dist/test/**/*.test.js and *.slow.js): what a
// gateway host must achieve for traffic it forwards, asserted as the feature's goals
// (docs/host-integration.md, "Gateway hosts").
//   - Multi-WAN with `snat to` each uplink's address: a one-port UDP flow must answer within 3 s of
//     the switch and within 5 s of the restore (the conntrack entry stays bound to the old uplink's
//     address until something deletes it).
// It fails until the conntrack follow-up lands; then it moves into the suite.
//
// Run:  npx tsc -p tsconfig.json && node_modules/.bin/mocha dist/test/dgd/gateway-forwarded.repro.js
import { strict as assert } from 'node:assert';
import { requireRoot, type Lab } from '../lab/lab';
import { multiWanAfterSwitch } from '../lab/gateway-steps';

describe('gateway hosts: forwarded traffic and NAT per uplink (reproductions, lab)', function () {
  this.timeout(60_000);
  let lab: Lab | undefined;

  before(function () {
    requireRoot(this);
  });

  afterEach(async () => {
    await lab?.close();
    lab = undefined;
  });

  describe('problem 2: NAT per uplink after a switch', () => {
    it('[repro] snat to each uplink: a one-port UDP flow answers within 3 s of the switch and 5 s of the restore', async () => {
      const problems = await multiWanAfterSwitch('snat', 40_010, (l) => (lab = l));
      assert.deepEqual(problems, []);
    });
  });
});
