// The conntrack-follow benchmark (scripts/bench-conntrack runs this): in the multi-WAN lab with
// `snat to` per uplink (test/lab/gateway-topologies.ts), the table of gw gets FILL entries without
// NAT (ctnetlink creates) and N real UDP flows from the LAN host, translated to e0's address; then
// e0's default route goes, as a withdrawal would take it, and one follow of the daemon's own code
// (src/dgd/conntrackfollow.ts over src/dgd/systemports.ts) runs in gw: its time, what it deleted,
// and the kernel-filtered dump alone. `follow` mode is that measuring process.
// The Lab tears the namespaces and every process down on success, failure and SIGINT.
import * as path from 'node:path';
import { REPO_ROOT } from '../test/lab/lab';
import { GW, multiWanLab } from '../test/lab/gateway-topologies';
import { ConntrackFollower } from '../src/dgd/conntrackfollow';
import { SystemPorts } from '../src/dgd/systemports';
import { openRtnl } from '../src/sys/rtnl';

const SELF = path.join(REPO_ROOT, 'dist', 'scripts', 'bench-conntrack-run.js');

/** Runs in gw: one follow after e0's routes went, with the daemon's own classes. */
async function follow(max: number): Promise<void> {
  const rtnl = await openRtnl();
  const ports = new SystemPorts(rtnl);
  try {
    await ports.refreshLinks();
    const e0 = ports.ifindexOf('e0')!;
    let t = performance.now();
    const dump = await ports.conntrack.natEntries(GW.gwE0_4, max);
    const dumpMs = performance.now() - t;
    const events: Record<string, unknown>[] = [];
    const f = new ConntrackFollower({
      ports: ports.conntrack,
      lookupRoute: (d, s, k) => ports.lookupRoute(d, s, k),
      ifname: (i) => ports.ifname(i),
      log: { event: (event, fields = {}) => void events.push({ event, ...fields }) },
      clock: {
        now: () => performance.now(),
        wallNow: () => Date.now(),
        setTimeout: () => ({ cancel: () => undefined }),
        sleep: async () => undefined,
      },
      settings: () => ({ follow: true, max_entries: max }),
      gatewayInterfaces: () => [e0],
      multipathPeers: () => [],
    });
    const heap = process.memoryUsage().heapUsed;
    t = performance.now();
    await f.follow({ after: 'withdrawal', gateway: { address: GW.isp1_4, ifindex: e0, ifname: 'e0' } });
    const followMs = performance.now() - t;
    const ev = events.find((e) => e.event === 'conntrack_followed') ?? {};
    process.stdout.write(
      JSON.stringify({
        dumpMs: Math.round(dumpMs),
        dumped: dump.entries.length,
        followMs: Math.round(followMs),
        examined: ev.examined,
        deleted: ev.deleted,
        truncated: ev.truncated,
        heapMB: Math.round((process.memoryUsage().heapUsed - heap) / 2 ** 20),
      }) + '\n',
    );
  } finally {
    await ports.close();
    rtnl.close();
  }
}

async function one(flows: number, fill: number, max: number): Promise<Record<string, unknown>> {
  const lab = await multiWanLab({ nat: 'snat' });
  try {
    await lab.execOk('gw', [
      'sysctl',
      '-qw',
      'net.netfilter.nf_conntrack_udp_timeout=300',
      `net.netfilter.nf_conntrack_max=${Math.max(262_144, 2 * (flows + fill))}`,
    ]);
    if (fill > 0) {
      const r = await lab.node(
        'gw',
        'dist/test/fixtures/conntrack-op.js',
        [JSON.stringify([{ op: 'fill', args: [fill] }])],
        300_000,
      );
      if (!r.stdout.includes('"ok":true')) throw new Error(`fill failed: ${r.stdout} ${r.stderr}`);
    }
    // One datagram from each of `flows` source ports: as many entries translated to e0's address
    // (unanswered: nothing listens on port 9 of the server).
    const send =
      `const d=require('dgram');(async()=>{for(let i=0;i<${flows};i++){const s=d.createSocket('udp4');` +
      `await new Promise(r=>s.bind(20000+(i%40000),r));await new Promise(r=>s.send('x',9,'${GW.server4}',r));s.close();}})()`;
    await lab.execOk('lanhost', [process.execPath, '-e', send], 300_000);
    await lab.ip('gw', ['route', 'del', 'default', 'via', GW.isp1_4, 'dev', 'e0']);
    const r = await lab.exec('gw', [process.execPath, SELF, 'follow', String(max)], 300_000);
    if (r.code !== 0) throw new Error(`follow failed: ${r.stderr}`);
    const count = (await lab.execOk('gw', ['cat', '/proc/sys/net/netfilter/nf_conntrack_count'])).trim();
    return { flows, fill, max, ...(JSON.parse(r.stdout.trim()) as object), left: Number(count) };
  } finally {
    await lab.close();
  }
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === 'follow') return follow(Number(argv[1]));
  let sizes = [2_000, 20_000];
  let fill = 80_000;
  let max = 20_000;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--flows') sizes = argv[++i]!.split(',').map(Number);
    else if (argv[i] === '--fill') fill = Number(argv[++i]);
    else if (argv[i] === '--max') max = Number(argv[++i]);
    else
      throw new Error(
        `unknown argument ${argv[i]}; usage: bench-conntrack [--flows 2000,20000] [--fill 80000] [--max 20000]`,
      );
  }
  if (sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 40_000) || !(fill >= 0 && fill <= 200_000))
    throw new Error('flows must be whole numbers from 1 to 40000, fill from 0 to 200000');
  console.log(
    "| NAT'd flows | other entries | max_entries | kernel-filtered dump | one follow | examined | deleted | left in table |",
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const n of sizes) {
    const r = await one(n, fill, max);
    console.log(
      `| ${n} | ${fill} | ${max} | ${String(r.dumpMs)} ms | ${String(r.followMs)} ms | ${String(r.examined)} | ${String(r.deleted)} | ${String(r.left)} |`,
    );
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : String(err));
  process.exitCode = 1;
});
