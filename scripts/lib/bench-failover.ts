// Failover benchmark: in the lab, from the moment r1 dies silently,
//   - defaults: when the routes switch and when the TCP flow resumes (10 trials, median and worst),
//     IPv4 and IPv6 (--families 4,6);
//   - a connection started after the death (its SYN retransmits): when the routes switch and when
//     it connects;
//   - active probing 100 ms x 3 misses, no traffic at all: when the routes switch;
//   - connect-only traffic (a new connection every 200 ms, 1 s connect timeout), defaults, no
//     active probing: when the routes switch and when a new connection first succeeds through r2;
//   - no daemon at all, for comparison: whether the flow recovers within 60 s;
//   - the daemon's CPU while idle and while scanning 10k established sockets.
// The moment of death is taken just before the nftables rule is loaded, so the nft command's own
// latency counts against us. Every loop is bounded; the lab is torn down on exit and SIGINT.
import * as path from 'node:path';
import { readFileSync } from 'node:fs';
import { Lab, REPO_ROOT, waitFor } from '../../test/lab/lab';
import { LabDaemon, type DaemonEvent } from '../../test/lab/daemon';
import { DGD, dgdLabSpec } from '../../test/lab/topologies';
// --cases defaults,syn,active,connect,nodaemon,cpu selects what runs.
import { startConnector, startFlowClient, startFlowServer } from '../../test/lab/flows';

const HOLD = path.join(REPO_ROOT, 'dist', 'scripts', 'lib', 'hold-sockets.js');
const PORT = 7000;

const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const TRIALS = opt('trials', 10);
const NODAEMON_TRIALS = opt('nodaemon-trials', 1);
const SOCKETS = opt('sockets', 10_000);
const listOpt = (name: string, dflt: string): string[] => {
  const i = args.indexOf(`--${name}`);
  return (i >= 0 ? args[i + 1]! : dflt).split(',').filter(Boolean);
};
const FAMILIES = listOpt('families', '4,6').map(Number) as (4 | 6)[];
const CASES = new Set(listOpt('cases', 'defaults,syn,active,connect,nodaemon,cpu'));
/** --trace: each trial's daemon events. --no-resend: the daemon with dgd.resend_on_switch off (flows wait for their own timers), for comparison. */
const DGD_CONFIG = `dgd:\n  slow_poll_interval: 2m\n${args.includes('--no-resend') ? '  resend_on_switch: false\n' : ''}`;

const say = (s = '') => process.stdout.write(s + '\n');
const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const median = s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  return { median, worst: s[s.length - 1]!, best: s[0]! };
};
const fmt = (ms: number) => `${(ms / 1000).toFixed(3)} s`;

async function newLab(): Promise<Lab> {
  const lab = await Lab.create(dgdLabSpec());
  await lab.blockPing('r1');
  await startFlowServer(lab, 'server', PORT).listening;
  return lab;
}

interface Resumed {
  switched: number;
  /** Null: the connection failed (aborted) instead. */
  resumed: number | null;
  /** When the daemon had resent the flows' segments (its flows_resent event), or null. */
  resent: number | null;
  detail: string;
}

const serverOf = (family: 4 | 6): string => (family === 4 ? DGD.server4 : DGD.server6);

/** --trace: print each trial's daemon events, timed from the death. */
function trace(d: LabDaemon, t0: number): void {
  if (!args.includes('--trace')) return;
  for (const e of d.events) {
    const { time, level, event, seenAt, ...rest } = e;
    void level;
    void seenAt;
    const t = ((Date.parse(time) - t0) / 1000).toFixed(3);
    say(`      ${t.padStart(7)} s ${event} ${JSON.stringify(rest).slice(0, 220)}`);
  }
}

function resentDetail(e: Record<string, unknown> | undefined): string {
  if (!e) return 'no flows_resent event';
  const d = (e.detail as Record<string, unknown>[] | undefined)?.[0];
  return d
    ? d.resent
      ? `resent seq ${String(d.seq)}${d.syn ? ' (SYN)' : ''}, ${String(d.bytes)} bytes, recorded ${String(d.age_ms)} ms before`
      : `not resent: ${String(d.reason)}`
    : 'flows_resent without flows';
}

/** An established flow through r1; r1 dies; when do the routes switch and the echoes resume? */
async function trialDefaults(family: 4 | 6): Promise<Resumed> {
  const lab = await newLab();
  try {
    const d = await LabDaemon.start(lab, 'client', DGD_CONFIG);
    const f = startFlowClient(lab, 'client', serverOf(family), PORT, { durationMs: 30_000 });
    await waitFor(() => f.echoes.length >= 20, 5000, 'the flow');
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const w = await d.waitFor((e) => e.event === 'routes_withdrawn', 20_000, 'routes withdrawn');
    const tw = Date.parse(w.time);
    const resumed = (await waitFor(() => f.echoes.find((e) => e.t > tw), 20_000, 'the flow to resume'))!.t;
    const r = await resentEvent(d);
    await d.stop();
    trace(d, t0);
    return {
      switched: tw - t0,
      resumed: resumed - t0,
      resent: r ? Date.parse(r.time) - t0 : null,
      detail: resentDetail(r),
    };
  } finally {
    await lab.close();
  }
}

/** The daemon's flows_resent event, if it comes within a second (none without resend_on_switch). */
async function resentEvent(d: LabDaemon): Promise<DaemonEvent | undefined> {
  if (args.includes('--no-resend')) return undefined;
  return d.waitFor((e) => e.event === 'flows_resent', 1000, 'flows_resent').catch(() => undefined);
}

/**
 * A connection started just after r1 died (r1's neighbour entry still valid from earlier traffic,
 * as on a host that was using r1): its SYN retransmits; when does it connect?
 */
async function trialSyn(family: 4 | 6): Promise<Resumed> {
  const lab = await newLab();
  try {
    const d = await LabDaemon.start(lab, 'client', DGD_CONFIG);
    const warm = startFlowClient(lab, 'client', serverOf(family), PORT, { durationMs: 500 });
    await waitFor(() => warm.echoes.length >= 5, 5000, 'a first flow through r1');
    await new Promise((r) => warm.child.once('exit', r));
    await lab.killSilently('r1', 'lan0');
    const t0 = Date.now();
    const f = startFlowClient(lab, 'client', serverOf(family), PORT, { durationMs: 30_000 });
    const w = await d.waitFor((e) => e.event === 'routes_withdrawn', 20_000, 'routes withdrawn');
    const tw = Date.parse(w.time);
    await waitFor(() => f.connectedAt !== null || f.errors.length > 0, 20_000, 'the connection');
    const r = await resentEvent(d);
    await d.stop();
    trace(d, t0);
    return {
      switched: tw - t0,
      resumed: f.connectedAt === null ? null : f.connectedAt - t0,
      resent: r ? Date.parse(r.time) - t0 : null,
      detail: f.connectedAt === null ? `the connection failed: ${f.errors.join('; ')}` : resentDetail(r),
    };
  } finally {
    await lab.close();
  }
}

async function trialActive(): Promise<number> {
  const lab = await newLab();
  try {
    const d = await LabDaemon.start(
      lab,
      'client',
      `dgd:\n  slow_poll_interval: 2m\n  active:\n    - { gateway: ${DGD.r1_4}, interval: 100ms, misses: 3 }\n`,
    );
    await d.waitFor((e) => e.event === 'active_probing', 5000, 'active probing');
    await new Promise((r) => setTimeout(r, 300 + Math.random() * 100)); // a random phase of the probe cycle
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const w = await d.waitFor((e) => e.event === 'routes_withdrawn', 10_000, 'routes withdrawn');
    await d.stop();
    return Date.parse(w.time) - t0;
  } finally {
    await lab.close();
  }
}

/** Short connections every 200 ms with a 1 s connect timeout; r1 dies; no active probing. */
async function trialConnect(): Promise<{ switched: number; connected: number; aggregate: boolean }> {
  const lab = await newLab();
  try {
    const d = await LabDaemon.start(lab, 'client', DGD_CONFIG);
    const c = startConnector(lab, 'client', DGD.server4, PORT, { durationMs: 12_000 });
    await waitFor(() => c.attempts.filter((a) => a.ok).length >= 5, 5000, 'connections through r1');
    await new Promise((r) => setTimeout(r, Math.random() * 200)); // a random phase of the client's cycle
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const dead = Date.now(); // attempts started before nft returned may have gone through r1
    const w = await d.waitFor((e) => e.event === 'routes_withdrawn', 20_000, 'routes withdrawn');
    const ok = await waitFor(
      () => c.attempts.find((a) => a.ok && a.started > dead),
      20_000,
      'a connection through r2',
    );
    const aggregate = /after aggregate$/.test(String(d.named('state').find((e) => e.to === 'dead')?.reason));
    await d.stop();
    return { switched: Date.parse(w.time) - t0, connected: ok!.t - t0, aggregate };
  } finally {
    await lab.close();
  }
}

async function trialNoDaemon(): Promise<number | null> {
  const lab = await newLab();
  try {
    const f = startFlowClient(lab, 'client', DGD.server4, PORT, { durationMs: 70_000 });
    await waitFor(() => f.echoes.length >= 20, 5000, 'the flow');
    const t0 = Date.now();
    await lab.killSilently('r1', 'lan0');
    const deadline = t0 + 60_000;
    while (Date.now() < deadline) {
      const resumed = f.echoes.find((e) => e.t > t0 + 100);
      if (resumed) return resumed.t - t0;
      await new Promise((r) => setTimeout(r, 200));
    }
    return null;
  } finally {
    await lab.close();
  }
}

function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime (fields 14, 15)
}

async function cpuShare(pid: number, seconds: number): Promise<number> {
  const hz = 100; // USER_HZ on Linux
  const a = cpuTicks(pid);
  const t = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const b = cpuTicks(pid);
  return (b - a) / hz / ((performance.now() - t) / 1000);
}

async function cpuBench(): Promise<{ idle: number; scanning: number; sockets: number }> {
  const lab = await newLab();
  try {
    const d = await LabDaemon.start(lab, 'client', null);
    const pid = d.child.pid!;
    await new Promise((r) => setTimeout(r, 1000));
    const idle = await cpuShare(pid, 10);
    const conns = Math.floor(SOCKETS / 2); // each loopback connection is two established sockets
    const hold = lab.spawn('client', [
      'prlimit',
      `--nofile=${conns * 2 + 1000}`,
      process.execPath,
      HOLD,
      String(conns),
    ]);
    let ready = '';
    hold.stdout!.setEncoding('utf8');
    hold.stdout!.on('data', (c: string) => (ready += c));
    await waitFor(() => ready.includes('ready'), 120_000, 'the sockets to be established');
    const counted = (await lab.exec('client', ['ss', '-Htn', 'state', 'established'])).stdout
      .trim()
      .split('\n').length;
    await new Promise((r) => setTimeout(r, 1000));
    const scanning = await cpuShare(pid, 10);
    const st = await d.status();
    await d.stop();
    return {
      idle,
      scanning,
      sockets: Math.max(counted, Number((st.last_scan as { sockets: number }).sockets)),
    };
  } finally {
    await lab.close();
  }
}

async function main(): Promise<void> {
  say(
    `bench-failover: ${TRIALS} trials per case, families ${FAMILIES.join(',')}, cases ${[...CASES].join(',')}, ` +
      `${new Date().toISOString()}, node ${process.version}, load ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`,
  );
  const rows: string[] = [];
  const resumeRows = (name: string, xs: Resumed[], resumedTarget: string): void => {
    const s = stats(xs.map((x) => x.switched));
    const ok = xs.filter((x) => x.resumed !== null);
    const failed = xs.length - ok.length;
    rows.push(`| ${name}: routes switched | ${fmt(s.median)} | ${fmt(s.worst)} | |`);
    if (failed > 0) rows.push(`| ${name}: connection aborted | ${failed} of ${xs.length} trials | | never |`);
    if (ok.length === 0) return;
    const r = stats(ok.map((x) => x.resumed!));
    const gap = stats(ok.map((x) => x.resumed! - x.switched));
    rows.push(`| ${name}: flow resumed | ${fmt(r.median)} | ${fmt(r.worst)} | |`);
    rows.push(
      `| ${name}: resumed after the switch | ${fmt(gap.median)} | ${fmt(gap.worst)} | ${resumedTarget} |`,
    );
  };
  for (const [kind, run] of [
    ['defaults', trialDefaults],
    ['syn', trialSyn],
  ] as const) {
    if (!CASES.has(kind)) continue;
    for (const family of FAMILIES) {
      const xs: Resumed[] = [];
      for (let i = 0; i < TRIALS; i++) {
        const x = await run(family);
        xs.push(x);
        say(
          `  ${kind} IPv${family} trial ${i + 1}: routes switched ${fmt(x.switched)}, ` +
            (x.resumed === null
              ? 'connection aborted ('
              : `${kind === 'syn' ? 'connected' : 'flow resumed'} ${fmt(x.resumed)} (${fmt(x.resumed - x.switched)} after the switch; `) +
            `resent ${x.resent === null ? 'never' : fmt(x.resent)}: ${x.detail})`,
        );
      }
      resumeRows(
        kind === 'syn' ? `SYN retransmitting, IPv${family}` : `defaults, IPv${family}`,
        xs,
        '<= 0.1 s median, <= 0.3 s worst',
      );
    }
  }
  const act: number[] = [];
  for (let i = 0; CASES.has('active') && i < TRIALS; i++) {
    act.push(await trialActive());
    say(`  active probing trial ${i + 1}: routes switched ${fmt(act[i]!)}`);
  }
  if (act.length > 0) {
    const a = stats(act);
    rows.push(
      `| active probing 100ms x 3: routes switched | ${fmt(a.median)} | ${fmt(a.worst)} | <= 0.4 s |`,
    );
  }
  const conn: { switched: number; connected: number; aggregate: boolean }[] = [];
  for (let i = 0; CASES.has('connect') && i < TRIALS; i++) {
    const r = await trialConnect();
    conn.push(r);
    say(
      `  connect-only trial ${i + 1}: routes switched ${fmt(r.switched)}, first new connection through r2 ${fmt(r.connected)}${r.aggregate ? '' : ' (not by the aggregate trigger)'}`,
    );
  }
  if (conn.length > 0) {
    const s = stats(conn.map((x) => x.switched));
    const c = stats(conn.map((x) => x.connected));
    rows.push(
      `| connect-only (200 ms, 1 s timeout): routes switched | ${fmt(s.median)} | ${fmt(s.worst)} | |`,
    );
    rows.push(
      `| connect-only: first new connection through r2 | ${fmt(c.median)} | ${fmt(c.worst)} | < 3 s |`,
    );
  }
  const none: (number | null)[] = [];
  for (let i = 0; CASES.has('nodaemon') && i < NODAEMON_TRIALS; i++) {
    none.push(await trialNoDaemon());
    say(
      `  no daemon trial ${i + 1}: ${none[i] === null ? 'flow never recovered within 60 s' : `flow recovered after ${fmt(none[i]!)}`}`,
    );
  }
  if (none.length > 0) {
    const noDaemon = none.every((x) => x === null)
      ? `never within 60 s (${none.length} trial${none.length > 1 ? 's' : ''})`
      : none.map((x) => (x === null ? 'never' : fmt(x))).join(', ');
    rows.push(`| no daemon: flow recovered | ${noDaemon} | | never |`);
  }
  if (CASES.has('cpu')) {
    const cpu = await cpuBench();
    rows.push(`| daemon CPU idle | ${(cpu.idle * 100).toFixed(2)}% of a core | | < 2% |`);
    rows.push(
      `| daemon CPU scanning ${cpu.sockets} established sockets | ${(cpu.scanning * 100).toFixed(2)}% of a core | | < 2% |`,
    );
  }
  say('');
  say('| case | median | worst | target |');
  say('| --- | --- | --- | --- |');
  for (const r of rows) say(r);
  say(`load at the end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench-failover failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
