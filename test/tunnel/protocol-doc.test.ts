// docs/protocol.md against the code: every byte example (```hex KIND key=value ...) is what the
// codec encodes for those fields and decodes back to them; every control message example parses
// as one the link accepts.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { Flag, FrameDecoder, FrameType, encodeHeader } from '../../src/tunnel/frame';
import { LINK_ALPN } from '../../src/tunnel/link';
import { MuxSession } from '../../src/tunnel/muxsession';
import { encodeAnswer, encodeOpen, readAnswer, readOpen } from '../../src/tunnel/protocol';
import { sleep, tcpPair } from './helpers';

const DOC = path.resolve(__dirname, '..', '..', '..', 'docs', 'protocol.md');

interface Example {
  kind: string;
  fields: Record<string, string>;
  bytes: Buffer;
  line: number;
}

/** ```hex KIND k=v k="quoted \"v\"" blocks: the fields from the info string, the bytes from the body. */
function hexExamples(text: string): Example[] {
  const out: Example[] = [];
  const re = /^```hex (\w+)(.*)\n([\s\S]*?)^```$/gm;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const fields: Record<string, string> = {};
    const kv = /(\w+)=("(?:[^"\\]|\\.)*"|\S+)/g;
    for (let f = kv.exec(m[2]!); f; f = kv.exec(m[2]!))
      fields[f[1]!] = f[2]!.startsWith('"') ? (JSON.parse(f[2]!) as string) : f[2]!;
    const hex = m[3]!.replace(/\s+/g, '');
    assert.match(hex, /^([0-9a-f]{2})+$/, `hex block at line ${lineOf(text, m.index)} is whole bytes`);
    out.push({ kind: m[1]!, fields, bytes: Buffer.from(hex, 'hex'), line: lineOf(text, m.index) });
  }
  return out;
}

function lineOf(text: string, index: number): number {
  return text.slice(0, index).split('\n').length;
}

function flagsOf(text: string): number {
  if (text === '0') return 0;
  return text.split('|').reduce((n, f) => {
    const v = Flag[f as keyof typeof Flag];
    assert.ok(v !== undefined, `unknown flag ${f}`);
    return n | v;
  }, 0);
}

function hasAll(e: Example, want: string): boolean {
  return want.split(' ').every((kv) => {
    const [k, v] = kv.split('=');
    return e.fields[k!] === v;
  });
}

function fed(bytes: Buffer): PassThrough {
  const s = new PassThrough();
  s.end(bytes);
  return s;
}

describe('docs/protocol.md: the byte examples are what the codec says', () => {
  const text = fs.readFileSync(DOC, 'utf8');
  const examples = hexExamples(text);

  it('has examples of frames, open headers and answers', () => {
    const kinds = examples.map((e) => e.kind);
    assert.ok(kinds.filter((k) => k === 'frame').length >= 8, kinds.join(','));
    assert.ok(kinds.filter((k) => k === 'open').length >= 3);
    assert.ok(kinds.filter((k) => k === 'answer').length >= 2);
    assert.deepEqual([...new Set(kinds)].sort(), ['answer', 'frame', 'open']);
  });

  it('names the protocol version the code negotiates (ALPN)', () => {
    assert.ok(text.includes(`\`${LINK_ALPN}\``), `${LINK_ALPN} in the document`);
  });

  for (const e of hexExamples(fs.readFileSync(DOC, 'utf8'))) {
    const label = `${e.kind} ${Object.entries(e.fields)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')} (line ${e.line})`;
    it(label, async () => {
      switch (e.kind) {
        case 'frame': {
          const type = FrameType[e.fields.type as keyof typeof FrameType];
          assert.ok(type !== undefined, `type ${e.fields.type}`);
          const flags = flagsOf(e.fields.flags!);
          const stream = Number(e.fields.stream);
          const length = Number(e.fields.length);
          assert.deepEqual(encodeHeader(type, flags, stream, length), e.bytes, 'encoded');
          // Decoded back (a Data header alone: the decoder waits for the payload, so feed it).
          const payload = type === FrameType.Data ? Buffer.alloc(length) : Buffer.alloc(0);
          const { frames, error } = new FrameDecoder().push(Buffer.concat([e.bytes, payload]));
          assert.equal(error, undefined);
          assert.equal(frames.length, 1);
          assert.equal(frames[0]!.type, type);
          assert.equal(frames[0]!.flags, flags);
          assert.equal(frames[0]!.streamId, stream);
          assert.equal(frames[0]!.length, length);
          break;
        }
        case 'open': {
          const hops = Number(e.fields.hops);
          assert.deepEqual(encodeOpen(e.fields.service!, hops), e.bytes, 'encoded');
          assert.deepEqual(await readOpen(fed(e.bytes)), { service: e.fields.service, hops });
          break;
        }
        case 'answer': {
          const status = Number(e.fields.status);
          assert.deepEqual(encodeAnswer(status, e.fields.reason), e.bytes, 'encoded');
          assert.deepEqual(await readAnswer(fed(e.bytes)), { status, reason: e.fields.reason });
          break;
        }
        default:
          assert.fail(`unknown example kind ${e.kind}`);
      }
    });
  }

  it('the control message examples are JSON of the types the link reads', () => {
    const blocks = [...text.matchAll(/```json control\n([\s\S]*?)\n\s*```/g)].map((m) => m[1]!.trim());
    assert.ok(blocks.length >= 3);
    const types = blocks.map((b) => (JSON.parse(b) as { type: string }).type);
    assert.deepEqual(types.sort(), ['bye', 'hello', 'tell']);
    for (const b of blocks) {
      const m = JSON.parse(b) as Record<string, unknown>;
      if (m.type !== 'bye') {
        for (const [svc, hops] of Object.entries(m.services as Record<string, number>)) {
          assert.match(svc, /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/);
          assert.ok(Number.isInteger(hops) && hops >= 0 && hops < 64);
        }
      }
    }
  });

  it('a real session opening stream 1 for "gateway" writes exactly the documented frames', async () => {
    const [a, b] = await tcpPair();
    const m = new MuxSession(a, { role: 'client' });
    try {
      const got: Buffer[] = [];
      b.on('data', (c: Buffer) => got.push(c));
      m.open(encodeOpen('gateway', 0));
      const want = Buffer.concat(
        [
          ['frame', 'flags=SYN stream=1 length=786432'],
          ['frame', 'type=Data flags=0 stream=1 length=11'],
          ['open', 'service=gateway hops=0'],
        ].map(([kind, has]) => examples.find((e) => e.kind === kind && e.line > 0 && hasAll(e, has!))!.bytes),
      );
      for (let i = 0; i < 50 && Buffer.concat(got).length < want.length; i++) await sleep(10);
      assert.deepEqual(Buffer.concat(got), want);
    } finally {
      m.close();
      b.destroy();
    }
  });

  it('the refusal codes table matches the code', async () => {
    const { REFUSAL_NAMES } = await import('../../src/tunnel/protocol');
    for (const [code, name] of Object.entries(REFUSAL_NAMES))
      assert.match(text, new RegExp(`\\| ${code} \\| \`${name}\` \\|`), `refusal ${code} ${name}`);
  });
});
