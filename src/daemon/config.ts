// The config file: YAML, keys in snake_case, durations as strings. Parsed with the `yaml` package
// (which keeps source positions) and validated with zod; every error names the file, the line and
// the key, so an operator at 3 a.m. can fix it without reading code (docs/configuration.md).
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { LineCounter, isMap, isScalar, parseDocument, type Document } from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../errors';
import { duration, intIn } from '../util/schema';
import { dgdSchema } from '../dgd/config';
import { resolveTlsPaths, tunnelConfigSchema, type TunnelConfig } from '../tunnel/config';

const listenAddress = z
  .string()
  .refine(
    (s) => /^(\[[0-9a-fA-F:]+\]|[\d.]+|localhost):\d{1,5}$/.test(s) && Number(s.split(':').pop()) <= 65535,
    {
      message: 'must be HOST:PORT, e.g. 127.0.0.1:9741 or [::1]:9741',
    },
  );

export const metricsSchema = z.object({ listen: listenAddress.optional() }).strict();

export const logSchema = z
  .object({
    level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
    format: z.enum(['json', 'text']).default('json'),
  })
  .strict();

/** The failover flight recorder (src/daemon/flightrec.ts): pcap files of the moments around each death. */
export const flightRecorderSchema = z
  .object({
    enabled: z.boolean().default(true),
    before: duration(1000, 300_000).default('10s'),
    after: duration(0, 60_000).default('3s'),
    ring_bytes: intIn(65_536, 268_435_456).default(4_194_304),
    max_files: intIn(1, 1000).default(20),
    max_bytes: intIn(1_048_576, 4_294_967_296).default(33_554_432),
  })
  .strict();

/**
 * The tunnel section is validated by the tunnel's own schema (src/tunnel/config.ts) when a tunnel
 * role runs; here it only has to be a mapping.
 */
const tunnelSection = z.record(z.unknown());

export const configSchema = z
  .object({
    dgd: dgdSchema.default({}),
    tunnel: tunnelSection.default({}),
    metrics: metricsSchema.default({}),
    log: logSchema.default({}),
    flight_recorder: flightRecorderSchema.default({}),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type { DgdConfig } from '../dgd/config';
export { dgdSchema };

/** The defaults: what the daemon runs with when it has no config file. */
export function defaultConfig(): Config {
  return configSchema.parse({});
}

/** Load and validate a config file. Throws ConfigError naming file, line and key. */
export async function loadConfig(file: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new ConfigError(`${file}: cannot read the config file (${code})`, file);
  }
  return parseConfig(text, file);
}

/** Parse and validate config text; `file` names it in errors. */
export function parseConfig(text: string, file = '<config>'): Config {
  const { value, doc, lines } = parseYaml(text, file);
  const result = configSchema.safeParse(value ?? {});
  if (!result.success) throw zodToConfigError(result.error, doc, lines, file);
  return result.data;
}

/** Parse YAML keeping positions; YAML syntax errors become ConfigErrors with a line. */
export function parseYaml(text: string, file: string): { value: unknown; doc: Document; lines: LineCounter } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const line = lines.linePos(e.pos[0]).line;
    const what = e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw new ConfigError(`${file}:${line}: YAML syntax error: ${what}`, file, line);
  }
  if (
    doc.contents !== null &&
    !isMap(doc.contents) &&
    !(isScalar(doc.contents) && doc.contents.value === null)
  )
    throw new ConfigError(
      `${file}:1: the config must be a mapping of sections (dgd:, tunnel:, metrics:)`,
      file,
      1,
    );
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 }) as unknown;
  } catch (err) {
    // An alias bomb (billion laughs) or an alias to nothing: still a config error, naming the file.
    const what = (err as Error).message.split('\n')[0]!;
    throw new ConfigError(`${file}: YAML error: ${what}`, file);
  }
  return { value, doc, lines };
}

/** Turn the first zod issue into "FILE:LINE: KEY: problem". */
export function zodToConfigError(
  error: z.ZodError,
  doc: Document,
  lines: LineCounter,
  file: string,
): ConfigError {
  const issue = error.issues[0]!;
  let path = issue.path.map(String);
  let message = issue.message;
  if (issue.code === z.ZodIssueCode.unrecognized_keys) {
    path = [...path, issue.keys[0]!];
    message = `unknown key (expected one of: ${knownKeys(issue.path)})`;
  } else if (issue.code === z.ZodIssueCode.invalid_type && issue.received === 'undefined') {
    message = 'is required';
  } else if (issue.code === z.ZodIssueCode.invalid_enum_value) {
    message = `must be one of: ${issue.options.join(', ')}`;
  }
  const line = lineOf(doc, lines, path);
  const key = path.join('.') || '(top level)';
  return new ConfigError(`${file}${line ? `:${line}` : ''}: ${key}: ${message}`, file, line, key);
}

function knownKeys(path: (string | number)[]): string {
  let schema: z.ZodTypeAny = configSchema;
  for (const p of path) {
    schema = unwrap(schema);
    if (schema instanceof z.ZodObject) schema = (schema.shape as Record<string, z.ZodTypeAny>)[String(p)]!;
    else if (schema instanceof z.ZodArray) schema = schema.element as z.ZodTypeAny;
    if (!schema) return '?';
  }
  schema = unwrap(schema);
  return schema instanceof z.ZodObject ? Object.keys(schema.shape as object).join(', ') : '?';
}

function unwrap(s: z.ZodTypeAny): z.ZodTypeAny {
  for (;;) {
    if (s instanceof z.ZodDefault) s = s._def.innerType as z.ZodTypeAny;
    else if (s instanceof z.ZodOptional) s = s._def.innerType as z.ZodTypeAny;
    else if (s instanceof z.ZodEffects) s = s._def.schema as z.ZodTypeAny;
    // `false` or a section (dgd.owners.frr): the section's keys.
    else if (s instanceof z.ZodUnion) {
      const section = (s.options as z.ZodTypeAny[]).find((o) => unwrap(o) instanceof z.ZodObject);
      if (!section) return s;
      s = section;
    } else return s;
  }
}

/** The line of the deepest node on `path` that exists in the document (the key's line for a missing value). */
function lineOf(doc: Document, lines: LineCounter, path: string[]): number | undefined {
  for (let n = path.length; n >= 0; n--) {
    const sub = path.slice(0, n).map((p) => (/^\d+$/.test(p) ? Number(p) : p));
    // For a mapping key, point at the key itself.
    if (n > 0) {
      const parent = n === 1 ? doc.contents : doc.getIn(sub.slice(0, -1), true);
      if (isMap(parent)) {
        const pair = parent.items.find(
          (it) => isScalar(it.key) && String(it.key.value) === String(sub[n - 1]),
        );
        const range = (pair?.key as { range?: [number, number, number] } | undefined)?.range;
        if (range) return lines.linePos(range[0]).line;
      }
    }
    const node = doc.getIn(sub, true) as { range?: [number, number, number] } | undefined;
    if (node && typeof node === 'object' && node.range) return lines.linePos(node.range[0]).line;
  }
  return undefined;
}

/** Load and validate the `tunnel:` section of a config file; errors name the file, line and key. */
export async function loadTunnelConfig(file: string): Promise<TunnelConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read the config: ${(err as Error).message}`, file);
  }
  const whole = parseConfig(text, file); // the other sections must be valid too
  const section = whole.tunnel as Record<string, unknown> | undefined;
  if (!section || Object.keys(section).length === 0)
    throw new ConfigError(
      `${file}: tunnel: the config has no tunnel section (role, name, tls, ...)`,
      file,
      undefined,
      'tunnel',
    );
  const r = tunnelConfigSchema.safeParse(section);
  if (!r.success) {
    const { doc, lines } = parseYaml(text, file);
    const prefixed = new z.ZodError(r.error.issues.map((i) => ({ ...i, path: ['tunnel', ...i.path] })));
    throw zodToConfigError(prefixed, doc, lines, file);
  }
  return resolveTlsPaths(r.data, path.dirname(path.resolve(file)));
}
