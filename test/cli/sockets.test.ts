// `ipdeadgate sockets` output streaming (src/cli/sockets.ts): the order of the two passes, no
// socket twice, the JSON text identical to printing every row at once, and a table whose widths
// come from the first batch. The real CLI against real sockets is in test/sys/sockdiag.test.ts.
import { strict as assert } from 'node:assert';
import { SocketRowWriter, streamSocketRows, type SocketRow } from '../../src/cli/sockets';
import type { TcpSocketEntry } from '../../src/sys/sockdiag';

function entry(srcPort: number, retransmits: number, dst = '198.18.2.10'): TcpSocketEntry {
  return {
    family: 4,
    src: '198.18.0.2',
    srcPort,
    dst,
    dstPort: 80,
    state: 'ESTABLISHED',
    inode: 1000 + srcPort,
    uid: 0,
    ifindex: 0,
    timer: retransmits > 0 ? 1 : 0,
    timerRetransmits: retransmits,
    timerExpiresMs: retransmits > 0 ? 300 : 0,
    mark: null,
    info: {
      retransmits,
      backoff: retransmits,
      totalRetrans: retransmits,
      rtoMs: 204,
      rttMs: 0.1,
      rttVarMs: 0.05,
      unacked: retransmits > 0 ? 1 : 0,
      lost: 0,
      lastDataSentMs: 0,
      lastAckRecvMs: 0,
      lastDataRecvMs: 0,
      state: 'ESTABLISHED',
      caState: 0,
      probes: 0,
    },
  };
}

async function run(
  minRetrans: number,
  all: TcpSocketEntry[],
  pageSize: number,
  json: boolean,
): Promise<{ text: string; lookups: number }> {
  let text = '';
  let lookups = 0;
  const writer = new SocketRowWriter(json, (t) => (text += t));
  await streamSocketRows(
    minRetrans,
    async (dst) => {
      lookups++;
      return { gateway: dst.startsWith('198.18.2.') ? '198.18.0.1' : null, ifname: 'lan0' };
    },
    writer,
    {
      first: async (min) => all.filter((e) => e.timer === 1 && e.timerRetransmits >= min),
      pages: async function* () {
        for (let i = 0; i < all.length; i += pageSize) yield all.slice(i, i + pageSize);
      },
    },
  );
  writer.end();
  return { text, lookups };
}

describe('ipdeadgate sockets: streamed output', () => {
  const all = [entry(1, 0), entry(2, 3), entry(3, 0), entry(4, 1), entry(5, 0, '198.18.9.9'), entry(6, 0)];

  it('retransmitting sockets first, most first, then the rest in the kernel order, none twice', async () => {
    const { text, lookups } = await run(0, all, 2, true);
    const rows = JSON.parse(text) as SocketRow[];
    assert.deepEqual(
      rows.map((r) => r.src),
      ['198.18.0.2:2', '198.18.0.2:4', '198.18.0.2:1', '198.18.0.2:3', '198.18.0.2:5', '198.18.0.2:6'],
    );
    assert.equal(lookups, all.length, 'one route lookup per distinct key (the ports are part of it)');
    assert.equal(rows.find((r) => r.src === '198.18.0.2:5')?.gateway, null);
  });

  it('streamed JSON is the same text as printing the whole array at once', async () => {
    const { text } = await run(0, all, 1, true);
    assert.equal(text, JSON.stringify(JSON.parse(text), null, 2) + '\n');
    assert.equal((await run(0, [], 4, true)).text, '[]\n');
    assert.equal((await run(0, [], 4, false)).text, 'no TCP sockets\n');
  });

  it('--min-retrans: only the filtered pass', async () => {
    const rows = JSON.parse((await run(2, all, 2, true)).text) as SocketRow[];
    assert.deepEqual(
      rows.map((r) => [r.src, r.retransmits]),
      [['198.18.0.2:2', 3]],
    );
  });

  it('the table is aligned across pages', async () => {
    const { text } = await run(0, all, 1, false);
    const lines = text.trimEnd().split('\n');
    assert.equal(lines.length, 7);
    assert.match(
      lines[0]!,
      /^STATE\s+SRC\s+DST\s+GATEWAY\s+IFACE\s+RETRANS\s+TOTAL\s+RTO_MS\s+RTT_MS\s+TIMER$/,
    );
    const col = lines[0]!.indexOf('GATEWAY');
    for (const l of lines.slice(1)) assert.equal(l[col - 1], ' ', `aligned: ${l}`);
  });
});
