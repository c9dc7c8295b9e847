import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { Lab, requireRoot } from './lab';
import { DGD, dgdLab } from './topologies';

function rootNamespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter(Boolean);
}

describe('lab harness', function () {
  before(function () {
    requireRoot(this);
  });

  it('builds the dead-gateway lab, routes across it, and tears down completely', async () => {
    const rootRoutesBefore = execFileSync('ip', ['route', 'show', 'table', 'all'], { encoding: 'utf8' });
    const lab = await dgdLab();
    try {
      const names = rootNamespaces().filter((n) => n.startsWith(lab.prefix));
      assert.equal(names.length, 6, `namespaces: ${names.join(' ')}`); // 4 hosts + 2 switches
      const r4 = await lab.exec('client', ['ping', '-c1', '-W2', DGD.server4]);
      assert.equal(r4.code, 0, r4.stdout + r4.stderr);
      const r6 = await lab.exec('client', ['ping', '-c1', '-W2', DGD.server6]);
      assert.equal(r6.code, 0, r6.stdout + r6.stderr);
    } finally {
      await lab.close();
    }
    assert.deepEqual(
      rootNamespaces().filter((n) => n.startsWith(lab.prefix)),
      [],
    );
    assert.equal(
      execFileSync('ip', ['route', 'show', 'table', 'all'], { encoding: 'utf8' }),
      rootRoutesBefore,
    );
  });

  it('kills a router silently: the client link stays up, traffic through it stops, revive restores it', async () => {
    const lab = await dgdLab();
    try {
      await lab.killSilently('r1', 'lan0');
      const link = await lab.ip('client', ['-j', 'link', 'show', 'lan0']);
      assert.match(link, /"operstate":"UP"/);
      const dead = await lab.exec('client', ['ping', '-c1', '-W1', DGD.server4]);
      assert.notEqual(dead.code, 0, 'ping through a dead r1 must fail');
      await lab.revive('r1', 'lan0');
      const alive = await lab.exec('client', ['ping', '-c1', '-W2', DGD.server4]);
      assert.equal(alive.code, 0, alive.stdout + alive.stderr);
    } finally {
      await lab.close();
    }
  });

  it('refuses addresses outside the lab ranges', async () => {
    await assert.rejects(
      Lab.create({
        hosts: { a: {}, b: {} },
        lans: [
          {
            name: 'x',
            members: [
              { host: 'a', iface: 'e0', addrs: ['10.0.0.1/24'] },
              { host: 'b', iface: 'e0' },
            ],
          },
        ],
      }),
      /outside 198\.18\.0\.0\/15/,
    );
  });
});
