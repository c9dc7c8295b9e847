// The structure docs/architecture.md promises, checked on the sources: the layers import only
// downwards, only src/sys loads native code, no import cycle, no file past its size bound, and
// comments point only to files inside the repository.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../../..');
const SRC = path.join(ROOT, 'src');

/** The layers, top to bottom: a file may import its own layer and those below it. */
const LAYERS = ['cli', 'daemon', 'dgd|tunnel', 'sys', 'util'];
const MAX_LINES = 700;
const MAX_ENGINE_LINES = 500;

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

function layerOf(file: string): number {
  const rel = path.relative(SRC, file).split(path.sep);
  if (rel.length === 1) return LAYERS.length - 1; // src/errors.ts: with util, below everything
  const i = LAYERS.findIndex((l) => l.split('|').includes(rel[0]!));
  return i === -1 ? LAYERS.length - 1 : i;
}

/** Relative imports of a file, resolved to files. */
function importsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:import|export)\s+(?:type\s+)?[^'"]*?from\s+'(\.[^']+)'/g)) {
    const base = path.resolve(path.dirname(file), m[1]!);
    const hit = [`${base}.ts`, path.join(base, 'index.ts')].find((c) => fs.existsSync(c));
    if (hit) out.push(hit);
  }
  return out;
}

describe('structure', () => {
  const files = sources(SRC);

  it('layers import only downwards (cli > daemon > dgd | tunnel > sys > util); dgd and tunnel never each other', () => {
    const bad: string[] = [];
    for (const f of files)
      for (const dep of importsOf(f)) {
        const [from, to] = [layerOf(f), layerOf(dep)];
        const sideways =
          from === to &&
          path.relative(SRC, f).split(path.sep)[0] !== path.relative(SRC, dep).split(path.sep)[0];
        if (to < from || (sideways && from === 2))
          bad.push(`${path.relative(ROOT, f)} -> ${path.relative(ROOT, dep)}`);
      }
    assert.deepEqual(bad, []);
  });

  it('only src/sys loads native code and the native-backed packages', () => {
    const bad = files.filter((f) => {
      if (path.relative(SRC, f).startsWith(`sys${path.sep}`)) return false;
      const text = fs.readFileSync(f, 'utf8');
      return /from '(raw-socket|netlink|node-addon-api)'|require\([^)]*\.node['"]\)|bindings\(/.test(text);
    });
    assert.deepEqual(
      bad.map((f) => path.relative(ROOT, f)),
      [],
    );
  });

  it('has no import cycle', () => {
    const graph = new Map(files.map((f) => [f, importsOf(f)]));
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const stack: string[] = [];
    const visit = (f: string) => {
      state.set(f, 'open');
      stack.push(f);
      for (const d of graph.get(f) ?? []) {
        if (state.get(d) === 'open')
          cycles.push(
            stack
              .slice(stack.indexOf(d))
              .map((x) => path.relative(SRC, x))
              .join(' -> '),
          );
        else if (!state.has(d)) visit(d);
      }
      stack.pop();
      state.set(f, 'done');
    };
    for (const f of files) if (!state.has(f)) visit(f);
    assert.deepEqual(cycles, []);
  });

  it(`no file in src/ over ${MAX_LINES} lines; the engine, the composition root, ${MAX_ENGINE_LINES}`, () => {
    const over = files
      .map((f) => ({ f: path.relative(ROOT, f), lines: fs.readFileSync(f, 'utf8').split('\n').length }))
      .filter(
        ({ f, lines }) => lines > (f === path.join('src', 'dgd', 'engine.ts') ? MAX_ENGINE_LINES : MAX_LINES),
      );
    assert.deepEqual(over, []);
  });

  it('code comments point only to files in the repository, not to the design notes outside it', () => {
    const outside = /\b(DESIGN\.md|STYLE\.md|seeds\/)/;
    const native = fs.readdirSync(path.join(ROOT, 'native')).map((n) => path.join(ROOT, 'native', n));
    const others = ['test', 'scripts'].flatMap((d) => sources(path.join(ROOT, d)));
    const bad = [...files, ...native, ...others].filter(
      (f) =>
        f !== path.join(ROOT, 'test', 'ops', 'structure.test.ts') && outside.test(fs.readFileSync(f, 'utf8')),
    );
    assert.deepEqual(
      bad.map((f) => path.relative(ROOT, f)),
      [],
    );
  });
});
