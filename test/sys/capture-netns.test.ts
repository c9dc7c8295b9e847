// interfaceExists() (src/sys/packet/pcap.ts) must answer for the caller's network namespace even when
// /sys is another namespace's, as in a container given its own network namespace but the host's
// sysfs (systemd-nspawn --network-namespace-path; here nsenter --net, which keeps /sys, unlike
// `ip netns exec`). The flow-resume recorder's captures were refused there.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { REPO_ROOT, requireRoot } from '../lab/lab';

describe('interfaceExists in a network namespace entered without its own /sys', function () {
  this.timeout(20_000);

  it("finds the namespace's interfaces, and only those", function () {
    requireRoot(this);
    const ns = `idg-ifx-${process.pid}`;
    const dev = `idgifx${process.pid % 100000}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      execFileSync('ip', ['-n', ns, 'link', 'add', dev, 'type', 'veth', 'peer', 'name', `${dev}p`]);
      const capture = path.join(REPO_ROOT, 'dist', 'src', 'sys', 'packet', 'index.js');
      const script =
        `const c = require(${JSON.stringify(capture)}); const fs = require('fs');` +
        `process.stdout.write(JSON.stringify({ sysfs: fs.existsSync('/sys/class/net/${dev}'),` +
        ` here: c.interfaceExists('${dev}'), peer: c.interfaceExists('${dev}p'), lo: c.interfaceExists('lo'),` +
        ` none: c.interfaceExists('${dev}x') }))`;
      const out = JSON.parse(
        execFileSync('nsenter', [`--net=/run/netns/${ns}`, process.execPath, '-e', script], {
          encoding: 'utf8',
        }),
      ) as Record<string, boolean>;
      assert.equal(out.sysfs, false, "/sys is the test host's namespace here: the situation under test");
      assert.deepEqual(
        { here: out.here, peer: out.peer, lo: out.lo, none: out.none },
        { here: true, peer: true, lo: true, none: false },
      );
    } finally {
      execFileSync('ip', ['netns', 'del', ns]);
    }
  });
});
