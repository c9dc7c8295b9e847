// scripts/bench-tlslink: the TLS link's CPU per transfer, two builds compared in pairs. Two links
// run at the same time, each a sender and a receiver process in their own namespaces on a veth
// pair (as bench-tunnel's lab), one with checkout A's link code and one with B's, swapping pairs
// every run; so both see the same load, which on a shared machine moves plain timings by more than
// the differences measured. Prints B / A of the CPU seconds of both ends per run and over all runs.
import * as path from 'node:path';
import { Lab, REPO_ROOT } from '../test/lab/lab';
import { makePki } from '../test/fixtures/tunnel-pki';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const RUNS = opt('--runs', 8);
const MIB = opt('--mib', 512);
const [A, B] = args
  .filter((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--'))
  .map((d) => path.resolve(d));
if (!A || !B) {
  process.stderr.write('usage: scripts/bench-tlslink [--runs N] [--mib N] CHECKOUT_A CHECKOUT_B\n');
  process.exit(2);
}
const END = path.join(REPO_ROOT, 'dist', 'scripts', 'bench-tlslink-end.js');
const PAIRS = [
  { sender: 's0', receiver: 'r0', addr: '198.18.7.2' },
  { sender: 's1', receiver: 'r1', addr: '198.18.7.6' },
];

async function main(): Promise<void> {
  const pki = makePki(['a', 'b']);
  const lab = await Lab.create({
    hosts: { s0: {}, r0: {}, s1: {}, r1: {} },
    lans: [
      {
        name: 'p0',
        members: [
          { host: 's0', iface: 'eth0', addrs: ['198.18.7.1/30'] },
          { host: 'r0', iface: 'eth0', addrs: ['198.18.7.2/30'] },
        ],
      },
      {
        name: 'p1',
        members: [
          { host: 's1', iface: 'eth0', addrs: ['198.18.7.5/30'] },
          { host: 'r1', iface: 'eth0', addrs: ['198.18.7.6/30'] },
        ],
      },
    ],
  });
  const pkiOf = (n: 'a' | 'b'): string => JSON.stringify({ ca: pki.ca, ...pki.nodes[n] });
  /** One transfer on one pair: the CPU seconds of both ends. */
  const transfer = async (pair: (typeof PAIRS)[number], checkout: string): Promise<number> => {
    const end = (
      host: string,
      role: string,
      n: 'a' | 'b',
    ): { out: Promise<string>; ready: Promise<void> } => {
      const child = lab.spawn(host, [
        process.execPath,
        END,
        role,
        checkout,
        pair.addr,
        String(MIB),
        pkiOf(n),
      ]);
      let text = '';
      let onReady: () => void = () => undefined;
      const ready = new Promise<void>((resolve) => (onReady = resolve));
      child.stdout!.on('data', (d: Buffer) => {
        text += d.toString();
        if (text.includes('ready')) onReady();
      });
      child.stderr!.on('data', (d: Buffer) => process.stderr.write(d));
      const out = new Promise<string>((resolve, reject) =>
        child.on('exit', (code) =>
          code === 0 ? resolve(text) : reject(new Error(`${host} ${role}: exit ${code}`)),
        ),
      );
      return { out, ready };
    };
    const server = end(pair.receiver, 'server', 'a');
    await server.ready;
    const client = end(pair.sender, 'client', 'b');
    const [s, c] = await Promise.all([server.out, client.out]);
    const last = (t: string): number => Number(t.trim().split('\n').pop());
    return last(s) + last(c);
  };
  try {
    let sumA = 0;
    let sumB = 0;
    const ratios: string[] = [];
    for (let run = 0; run < RUNS; run++) {
      const [pa, pb] = run % 2 === 0 ? [PAIRS[0]!, PAIRS[1]!] : [PAIRS[1]!, PAIRS[0]!];
      const [a, b] = await Promise.all([transfer(pa, A!), transfer(pb, B!)]);
      sumA += a;
      sumB += b;
      ratios.push((b / a).toFixed(3));
      process.stderr.write(
        `bench-tlslink: run ${run + 1}: A ${a.toFixed(3)} s, B ${b.toFixed(3)} s, B / A ${ratios.at(-1)}\n`,
      );
    }
    process.stdout.write(
      `A ${A}: ${(sumA / RUNS).toFixed(3)} CPU s per ${MIB} MiB; B ${B}: ${(sumB / RUNS).toFixed(3)}; ` +
        `B / A ${(sumB / sumA).toFixed(3)} (per run ${ratios.join(', ')})\n`,
    );
  } finally {
    await lab.close();
    pki.cleanup();
  }
}

void main().catch((err: unknown) => {
  process.stderr.write(`bench-tlslink: ${String(err)}\n`);
  process.exitCode = 1;
});
