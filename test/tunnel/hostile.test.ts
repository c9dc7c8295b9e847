// A hostile tunnel peer against a real node process (docs/security.md, "An authenticated tunnel
// peer" and "An unauthenticated client"): a certificate holder that asks for inherited service
// names, sends malformed control lines, floods pings without reading, opens hundreds of streams
// to a service that does not accept; and a client that leaves thousands of TLS handshakes half
// done. Through each, the node (`ipdeadgate tunnel`, a gateway proxy with the packaged unit's
// descriptor limit) keeps its PID, grows its RSS by less than 100 MiB, keeps its descriptors under
// 1 500, and a legitimate session through it works.
import { strict as assert } from 'node:assert';
import { Lab, requireRoot, waitFor } from '../lab/lab';
import { makePki, type TestPki } from '../fixtures/tunnel-pki';
import {
  client,
  fdCount,
  rssBytes,
  startEcho,
  startNode,
  status,
  unitNofile,
  waitStatus,
  type RunningNode,
} from './labkit';

type Transfer = { sent: number; got: number; sha_sent: string; sha_got: string };

const NET = {
  gw: '198.18.5.10',
  ep: '198.18.5.2',
  atk: '198.18.5.66',
  svc: '198.18.5.20',
  client: '198.18.5.30',
  linkPort: 9401,
  echoPort: 9494,
  stallPort: 9496,
} as const;
const MiB = 1024 * 1024;
const RSS_GROWTH_LIMIT = 100 * MiB;
const FD_LIMIT = 1500;

describe('tunnel lab: a hostile peer and hostile clients against a gateway proxy', function () {
  this.timeout(90_000);
  let lab: Lab;
  let pki: TestPki;
  let gw: RunningNode;
  let pid: number;

  const hostile = <T>(mode: string, args: string[], timeoutMs = 60_000): Promise<T> =>
    lab
      .node(
        'atk',
        'dist/test/fixtures/tunnel-hostile.js',
        [mode, NET.gw, String(NET.linkPort), ...args],
        timeoutMs,
      )
      .then((r) => {
        const line = r.stdout.trim().split('\n').pop() ?? '';
        try {
          return JSON.parse(line) as T;
        } catch {
          throw new Error(`tunnel-hostile ${mode} exited ${r.code}: ${r.stdout} ${r.stderr}`);
        }
      });
  const peerArgs = (): string[] => [pki.ca, pki.nodes.probe!.cert, pki.nodes.probe!.key];

  /** A legitimate session: client -> ep's forward -> link -> gw -> echo service, sha256 intact. */
  const legit = async (bytes = 256 * 1024): Promise<void> => {
    const t = await client<Transfer>(
      lab,
      'client',
      ['transfer', NET.ep, String(NET.echoPort), String(bytes)],
      30_000,
    );
    assert.equal(t.got, t.sent, `legitimate session: ${JSON.stringify(t)}`);
    assert.equal(t.sha_got, t.sha_sent);
  };

  /**
   * Run an attack with a legitimate session beside it, sampling the node's RSS and descriptors
   * every 50 ms; then the node must still be the same process and within its bounds.
   */
  const survive = async <T>(attack: Promise<T>): Promise<{ result: T; growth: number; fds: number }> => {
    const rss0 = rssBytes(pid);
    let peakRss = rss0;
    let peakFds = fdCount(pid);
    const sample = setInterval(() => {
      try {
        peakRss = Math.max(peakRss, rssBytes(pid));
        peakFds = Math.max(peakFds, fdCount(pid));
      } catch {
        // the process is gone: the assertions below say so
      }
    }, 50);
    try {
      const during = new Promise((r) => setTimeout(r, 500)).then(() => legit());
      const [result] = await Promise.all([attack, during]);
      await legit();
      assert.equal(gw.child.exitCode, null, `the node exited: ${gw.log.slice(-5).join(' | ')}`);
      assert.equal(gw.child.signalCode, null);
      process.kill(pid, 0); // same PID, still there
      const growth = peakRss - rss0;
      assert.ok(growth < RSS_GROWTH_LIMIT, `RSS grew by ${Math.round(growth / MiB)} MiB (limit 100)`);
      assert.ok(peakFds < FD_LIMIT, `${peakFds} descriptors open at the peak (limit ${FD_LIMIT})`);
      if (process.env.HOSTILE_REPORT)
        process.stderr.write(`${JSON.stringify({ growth_mib: growth / MiB, peak_fds: peakFds, result })}\n`);
      return { result, growth, fds: peakFds };
    } finally {
      clearInterval(sample);
    }
  };

  before(async function () {
    requireRoot(this);
    pki = makePki(['gw', 'ep', 'probe']);
    const m = (h: string, ip: string) => ({ host: h, iface: 'eth0', addrs: [`${ip}/24`] });
    lab = await Lab.create({
      hosts: { gw: {}, ep: {}, atk: {}, svc: {}, client: {} },
      lans: [
        {
          name: 'hostile',
          members: [
            m('gw', NET.gw),
            m('ep', NET.ep),
            m('atk', NET.atk),
            m('svc', NET.svc),
            m('client', NET.client),
          ],
        },
      ],
    });
    startEcho(lab, 'svc', NET.svc, NET.echoPort);
    // A service that does not accept: a full backlog, every further SYN dropped.
    lab.spawn('svc', [
      'python3',
      `${__dirname}/../../../test/fixtures/tunnel-slow-listener.py`,
      NET.svc,
      String(NET.stallPort),
      '300',
    ]);
    startNode(lab, pki, {
      host: 'ep',
      name: 'ep',
      role: 'endpoint-proxy',
      links: [`${NET.gw}:${NET.linkPort}`],
      forwards: [{ listen: `${NET.ep}:${NET.echoPort}`, service: 'echo' }],
    });
  });

  /** The node under test, started again if an attack killed it: each test stands alone. */
  beforeEach(async () => {
    if (gw && gw.child.exitCode === null && gw.child.signalCode === null) return;
    gw = startNode(lab, pki, {
      host: 'gw',
      name: 'gw',
      role: 'gateway-proxy',
      listen: `${NET.gw}:${NET.linkPort}`,
      services: { echo: `${NET.svc}:${NET.echoPort}`, stall: `${NET.svc}:${NET.stallPort}` },
      dialTimeout: '5s',
      // Long enough that a flood of 200 MiB fits in one heartbeat x misses (3 x 4 s).
      heartbeat: '4s',
      nofile: unitNofile('ipdeadgate-tunnel@.service'),
    });
    await waitStatus(
      gw,
      (s) => s.links.some((l) => l.peer === 'ep' && l.state === 'up'),
      15_000,
      'ep linked',
    );
    pid = gw.child.pid!;
    await legit(); // warm: the first session's allocations are not the attack's
  });

  after(async () => {
    await lab?.close();
    pki?.cleanup();
  });

  it('streams for inherited names (constructor, __proto__, toString, ...) are refused, not crashes', async () => {
    const { result } = await survive(
      hostile<{ answers: Record<string, number | string> }>('names', peerArgs()),
    );
    assert.deepEqual(
      result.answers,
      Object.fromEntries([
        ['constructor', 1], // unknown_service
        ['__proto__', 6], // bad_request: not a service name
        ['toString', 1],
        ['hasOwnProperty', 1],
        ['valueOf', 1],
      ]),
    );
  });

  it('malformed control lines (null, [], 1, a hello without a name, ...) close that link only', async () => {
    const { result } = await survive(hostile<{ outcomes: Record<string, string> }>('lines', peerArgs()));
    for (const [line, outcome] of Object.entries(result.outcomes))
      assert.equal(outcome, 'closed', `the link that sent ${line}`);
  });

  it('200 MiB of pings from a peer that never reads: answers coalesced, the node memory flat', async () => {
    const { result } = await survive(
      hostile<{ sent: number; ended: boolean }>('pings', [...peerArgs(), '200']),
    );
    assert.ok(result.ended || result.sent >= 200 * MiB, JSON.stringify(result));
    // The flood is not life: the link that never answered the node's pings is gone.
    await waitStatus(gw, (s) => !s.links.some((l) => l.peer === 'probe'), 10_000, 'the flooding link closed');
  });

  it('400 streams to a service that does not accept: a small window each, the peer held to its budget', async () => {
    const { result } = await survive(
      hostile<{ opened: number; refused: number }>('streams', [...peerArgs(), 'stall', '400', '4']),
    );
    assert.ok(result.refused > 0, `some streams refused for the peer's budget: ${JSON.stringify(result)}`);
    const s = await status(gw);
    assert.ok((s.sessions.refusals.max_sessions ?? 0) > 0, JSON.stringify(s.sessions.refusals));
    await waitStatus(gw, (x) => x.sessions.count === 0, 20_000, 'the stalled sessions to end (dial_timeout)');
  });

  it('5 000 half-open TLS handshakes from one address: all but a few turned away at accept', async () => {
    const { result } = await survive(
      hostile<{ connected: number; closed_early: number }>('halfopen', ['5000', '3'], 60_000),
    );
    assert.ok(result.connected + result.closed_early >= 5000, JSON.stringify(result));
    const s = await status(gw);
    assert.ok((s.turned_away?.address_limit ?? 0) > 4000, JSON.stringify(s.turned_away));
    // The held handshakes end at handshake_timeout: descriptors come back.
    await waitFor(() => fdCount(pid) < 100, 20_000, `descriptors back (now ${fdCount(pid)})`);
  });
});
