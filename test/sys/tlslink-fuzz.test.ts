// A fuzz run of the link's read path (native/tlslink.cc, OpenSSL's record layer behind it): random
// well-formed, malformed and tampered records after real handshakes (the harness: tlshostile.ts),
// bounded in time so that every test run (CI included) does it: IPDEADGATE_TLS_FUZZ_MS (default
// 3000), IPDEADGATE_TLS_FUZZ_SEED for the mutations (the keys are each handshake's own).
import { strict as assert } from 'node:assert';
import { loadNative } from '../../src/sys/native';
import { descriptors, flip, HostileLab, until } from './tlshostile';
import { Alert, ContentType, handshakeMessage, keyUpdate, SUITES, type SuiteName } from './tlsrecords';

describe("tunnel: the link's TLS read path, fuzzed", function () {
  const native = loadNative();
  const lab = new HostileLab();
  before(() => lab.setup());
  after(() => lab.teardown());
  afterEach(() => lab.releaseAll());

  describe('a fuzz run of the read path (bounded: IPDEADGATE_TLS_FUZZ_MS, default 3000)', () => {
    it('random well-formed, malformed and tampered records after real handshakes: no crash, no byte past the first bad record, no link or descriptor left', async function () {
      const budget = Number(process.env.IPDEADGATE_TLS_FUZZ_MS ?? 3000);
      const seed = Number(process.env.IPDEADGATE_TLS_FUZZ_SEED ?? 0x1d9a7e);
      this.timeout(budget + 30_000);
      // mulberry32: the mutations repeat for a seed (the keys are each handshake's own).
      let state = seed >>> 0;
      const rnd = (): number => {
        state = (state + 0x6d2b79f5) >>> 0;
        let t = state;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
      };
      const int = (n: number): number => Math.floor(rnd() * n);
      const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));
      const linksBefore = native.tlsCount();
      const fdsBefore = descriptors();
      const suites = Object.keys(SUITES) as SuiteName[];
      const deadline = Date.now() + budget;
      let runs = 0;
      const outcomes: Record<string, number> = {};
      while (Date.now() < deadline) {
        runs++;
        const h = await lab.hostile(suites[int(suites.length)]);
        const wire: Buffer[] = [];
        let valid = Buffer.alloc(0); // the application data before the first bad record
        let bad = false;
        const count = 1 + int(6);
        for (let i = 0; i < count; i++) {
          const kind = int(10);
          const good = (content: Buffer): void => {
            if (!bad) valid = Buffer.concat([valid, content]);
          };
          switch (kind) {
            case 0:
            case 1: {
              const c = bytes(int(3000));
              wire.push(h.tx.seal(ContentType.appData, c, int(3) === 0 ? int(300) : 0));
              good(c);
              break;
            }
            case 2:
              wire.push(h.tx.seal(ContentType.handshake, keyUpdate(int(2) === 0)));
              h.tx.update();
              break;
            case 3:
              wire.push(h.tx.seal(int(256), bytes(int(40))));
              bad = true; // unless it happened to be application data: then it is data
              break;
            case 4:
              wire.push(h.tx.seal(ContentType.handshake, handshakeMessage(int(256), bytes(int(64)))));
              bad = true;
              break;
            case 5:
              wire.push(h.tx.seal(ContentType.alert, bytes(int(5))));
              bad = true;
              break;
            case 6: {
              const r = h.tx.seal(ContentType.appData, bytes(1 + int(500)));
              wire.push(flip(r, int(r.length), 1 << int(8)));
              bad = true;
              break;
            }
            case 7:
              wire.push(bytes(1 + int(64)));
              bad = true;
              break;
            case 8:
              wire.push(h.tx.seal(ContentType.appData, bytes(16_385 + int(100))));
              bad = true;
              break;
            default:
              wire.push(h.tx.sealInner(Buffer.alloc(int(100))));
              bad = true;
          }
        }
        const ending = int(3);
        if (ending === 0) wire.push(h.tx.seal(ContentType.alert, Buffer.from([1, Alert.closeNotify])));
        const all = Buffer.concat(wire);
        // Sometimes split at a random point into two writes: records across reads.
        const cut = int(all.length + 1);
        h.up.write(all.subarray(0, cut));
        if (cut < all.length) h.up.write(all.subarray(cut));
        if (ending !== 2) h.up.end();
        await until(
          'an outcome',
          5000,
          () => h.ours.ended || !!h.ours.error || (ending === 2 && h.ours.length >= valid.length),
        );
        const got = h.ours.data();
        const outcome = h.ours.error ? String(h.ours.error.code) : h.ours.ended ? 'end' : 'open';
        outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
        if (h.ours.error) assert.match(outcome, /^(ERR_SSL_\w+|ECONNRESET|EPIPE)$/, h.ours.error.message);
        if (!bad)
          assert.ok(
            got.equals(valid.subarray(0, got.length)),
            `run ${runs}: what was delivered is what was sent`,
          );
        else
          assert.ok(
            got.length <= valid.length + 16_384 &&
              got.subarray(0, valid.length).equals(valid.subarray(0, got.length)),
            `run ${runs}: a prefix of the good data`,
          );
        if (!bad && ending === 0)
          assert.equal(outcome, 'end', `run ${runs}: close_notify after good records is a clean end`);
        if (!bad && ending === 1)
          assert.equal(
            outcome,
            'ERR_SSL_UNEXPECTED_EOF_WHILE_READING',
            `run ${runs}: FIN without close_notify`,
          );
        await lab.releaseAll();
      }
      console.log(`      ${runs} runs (seed ${seed}): ${JSON.stringify(outcomes)}`);
      assert.ok(runs >= 3, `${runs} runs`);
      await until('every link released', 3000, () => native.tlsCount() === linksBefore);
      const leaked = [...descriptors()].filter(([fd, what]) => fdsBefore.get(fd) !== what);
      await until('every descriptor released', 3000, () =>
        [...descriptors()].every(([fd, what]) => fdsBefore.get(fd) === what),
      ).catch(() => assert.deepEqual(leaked, [], 'descriptors left'));
    });
  });
});
