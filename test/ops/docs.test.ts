// The docs tell the truth: docs/configuration.md lists exactly the keys of the zod schemas, with
// their defaults, ranges and choices; every command's --help has examples.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { configSchema } from '../../src/daemon/config';
import { tunnelConfigSchema } from '../../src/tunnel/config';
import { parseDuration } from '../../src/util/duration';
import { REPO_ROOT } from '../lab/lab';

interface DocRow {
  key: string;
  type: string;
  dflt: string;
  range: string;
}

function docRows(): DocRow[] {
  const text = fs.readFileSync(path.join(REPO_ROOT, 'docs', 'configuration.md'), 'utf8');
  const rows: DocRow[] = [];
  for (const line of text.split('\n')) {
    const m = /^\| `([a-z_]+(?:\.[a-z_[\]]+)*)` \| ([^|]+) \| ([^|]+) \| ((?:[^|\\]|\\\|)+) \|/.exec(line);
    if (!m) continue;
    rows.push({
      key: m[1]!,
      type: m[2]!.trim(),
      dflt: m[3]!.trim(),
      range: m[4]!.trim().replace(/\\\|/g, '|'),
    });
  }
  return rows;
}

function unwrap(s: z.ZodTypeAny): z.ZodTypeAny {
  for (;;) {
    if (s instanceof z.ZodDefault || s instanceof z.ZodOptional) s = s._def.innerType as z.ZodTypeAny;
    else if (s instanceof z.ZodEffects) s = s._def.schema as z.ZodTypeAny;
    else return s;
  }
}

/** Every key of the schemas: leaves, lists (and their elements' keys as key[].sub), maps. */
function schemaKeys(): Map<string, z.ZodTypeAny> {
  const out = new Map<string, z.ZodTypeAny>();
  const walk = (prefix: string, s: z.ZodTypeAny) => {
    const u = unwrap(s);
    // `false` or a section (dgd.owners.frr): the key itself, and the section's keys.
    if (u instanceof z.ZodUnion) {
      const section = (u.options as z.ZodTypeAny[]).map(unwrap).find((o) => o instanceof z.ZodObject);
      if (section) {
        out.set(prefix, s);
        walk(prefix, section);
        return;
      }
    }
    if (u instanceof z.ZodObject) {
      for (const [k, v] of Object.entries(u.shape as Record<string, z.ZodTypeAny>))
        walk(prefix ? `${prefix}.${k}` : k, v);
      return;
    }
    out.set(prefix, s);
    if (u instanceof z.ZodArray) {
      const el = unwrap(u.element as z.ZodTypeAny);
      if (el instanceof z.ZodObject)
        for (const [k, v] of Object.entries(el.shape as Record<string, z.ZodTypeAny>))
          walk(`${prefix}[].${k}`, v);
    }
  };
  const root = configSchema.shape as Record<string, z.ZodTypeAny>;
  for (const [section, s] of Object.entries(root))
    walk(section, section === 'tunnel' ? tunnelConfigSchema : s);
  return out;
}

const TUNNEL_BASE = {
  role: 'gateway-proxy',
  name: 'n1',
  tls: { ca: 'a', cert: 'b', key: 'c' },
  listen: '127.0.0.1:9401',
};
const ELEMENT_BASE: Record<string, Record<string, unknown>> = {
  'dgd.active': { gateway: '192.0.2.1' },
  'dgd.gateway_macs': { gateway: '192.0.2.1', mac: '02:00:5e:00:01:01' },
  'tunnel.links': { connect: '192.0.2.1:9401' },
  'tunnel.forwards': { listen: '127.0.0.1:9494', service: 'gateway' },
};

/** Parse a config with `value` at `key` (undefined: leave it out); returns the parsed value there or an error. */
function tryKey(key: string, value: unknown): { ok: true; value: unknown } | { ok: false } {
  const [head, ...rest] = key.split('[].');
  const parts = head!.split('.');
  const section = parts[0]!;
  const setIn = (obj: Record<string, unknown>, p: string[], v: unknown) => {
    let o = obj;
    for (const k of p.slice(0, -1)) o = (o[k] ??= {}) as Record<string, unknown>;
    if (v === undefined) delete o[p[p.length - 1]!];
    else o[p[p.length - 1]!] = v;
  };
  const getIn = (obj: unknown, p: string[]) =>
    p.reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj);
  const body: Record<string, unknown> = section === 'tunnel' ? structuredClone(TUNNEL_BASE) : {};
  const inner = parts.slice(1);
  if (rest.length > 0) {
    const el = structuredClone(ELEMENT_BASE[head!]!);
    setIn(el, rest[0]!.split('.'), value);
    setIn(body, inner, [el]);
  } else setIn(body, inner, value);
  // A tunnel node needs listen or links: without listen, give it a link.
  if (key === 'tunnel.listen' && value === undefined) body.links = [ELEMENT_BASE['tunnel.links']];
  const r =
    section === 'tunnel' ? tunnelConfigSchema.safeParse(body) : configSchema.safeParse({ [section]: body });
  if (!r.success) return { ok: false };
  const parsed = section === 'tunnel' ? r.data : (r.data as Record<string, unknown>)[section];
  const at =
    rest.length > 0
      ? getIn((getIn(parsed, inner) as unknown[])[0], rest[0]!.split('.'))
      : getIn(parsed, inner);
  return { ok: true, value: at };
}

function docValue(text: string, type: string): unknown {
  const v = text.replace(/`/g, '');
  if (type === 'duration') return parseDuration(v);
  if (type === 'int') return Number(v);
  if (type === 'bool') return v === 'true';
  if (type === 'list' || type === 'map') return JSON.parse(v.replace(/([A-Za-z_]\w*)/g, '"$1"'));
  return v;
}

/** A probe value just inside or outside a bound, in the key's own type. */
function probe(type: string, ms: number, delta: number): unknown {
  return type === 'duration' ? `${ms + delta}ms` : ms + delta;
}

describe('docs/configuration.md', () => {
  const rows = docRows();
  const keys = schemaKeys();

  it('documents every key of the schemas, and no other', () => {
    assert.ok(rows.length > 30, `${rows.length} rows parsed`);
    const documented = rows.map((r) => r.key).sort();
    assert.deepEqual(documented, [...new Set(documented)], 'a key is documented twice');
    assert.deepEqual(documented, [...keys.keys()].sort());
  });

  it('states the defaults the schemas apply', () => {
    for (const r of rows) {
      if (r.dflt === '*required*') {
        assert.equal(tryKey(r.key, undefined).ok, false, `${r.key} is documented as required`);
        continue;
      }
      const got = tryKey(r.key, undefined);
      assert.ok(got.ok, `${r.key}: the config without it must be valid`);
      if (r.dflt.startsWith('—')) {
        assert.equal(got.value, undefined, `${r.key} has no default`);
        continue;
      }
      const want = docValue(r.dflt, r.type);
      if (r.type === 'list' || r.type === 'map') assert.deepEqual(got.value, want, r.key);
      else assert.equal(got.value, want, r.key);
    }
  });

  it('states the ranges and choices the schemas enforce', () => {
    let checked = 0;
    for (const r of rows) {
      if (r.type === 'enum') {
        const u = unwrap(keys.get(r.key)!);
        assert.ok(u instanceof z.ZodEnum, r.key);
        assert.deepEqual(
          r.range.split('|').map((s) => s.trim()),
          u.options,
          r.key,
        );
        checked++;
        continue;
      }
      const m = /^(\S+) \.\. (\S+)$/.exec(r.range);
      if (!m) {
        assert.equal(r.range, '—', `${r.key}: a range must read "MIN .. MAX"`);
        continue;
      }
      const [lo, hi] = [m[1]!, m[2]!].map((t) => (r.type === 'duration' ? parseDuration(t) : Number(t))) as [
        number,
        number,
      ];
      assert.ok(tryKey(r.key, probe(r.type, lo, 0)).ok, `${r.key} accepts ${m[1]}`);
      assert.ok(tryKey(r.key, probe(r.type, hi, 0)).ok, `${r.key} accepts ${m[2]}`);
      if (lo > 0) assert.ok(!tryKey(r.key, probe(r.type, lo, -1)).ok, `${r.key} refuses below ${m[1]}`);
      assert.ok(!tryKey(r.key, probe(r.type, hi, 1)).ok, `${r.key} refuses above ${m[2]}`);
      checked++;
    }
    assert.ok(checked >= 20, `${checked} ranges checked`);
  });
});

describe('help', () => {
  const cli = (args: string[]) =>
    spawnSync(process.execPath, [path.join(REPO_ROOT, 'bin', 'ipdeadgate'), ...args], { encoding: 'utf8' });

  it('ipdeadgate --help and every COMMAND --help exit 0 with examples', () => {
    const root = cli(['--help']);
    assert.equal(root.status, 0);
    assert.match(root.stdout, /\nExamples:\n {2}ipdeadgate /);
    const commands = [...root.stdout.matchAll(/^ {2}([a-z]+) (?:\[options\]|<|\[)/gm)]
      .map((m) => m[1]!)
      .filter((c) => c !== 'help');
    assert.ok(commands.length >= 9, commands.join(' '));
    for (const c of commands) {
      const r = cli([c, '--help']);
      assert.equal(r.status, 0, `${c} --help: ${r.stderr}`);
      assert.match(r.stdout, /\nExamples?:\n {2}ipdeadgate /, `${c} --help has examples`);
      assert.equal(r.stderr, '');
    }
  });
});
