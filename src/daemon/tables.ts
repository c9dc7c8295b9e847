// Routing table names: main/local/default, numbers, and names from iproute2's rt_tables files.
import { readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../errors';

const BUILTIN: Record<string, number> = { default: 253, main: 254, local: 255 };
const DIRS = ['/etc/iproute2', '/usr/share/iproute2', '/usr/lib/iproute2'];

function namedTables(): Map<string, number> {
  const names = new Map<string, number>();
  const files: string[] = [];
  for (const dir of DIRS) {
    files.push(path.join(dir, 'rt_tables'));
    try {
      for (const f of readdirSync(path.join(dir, 'rt_tables.d')))
        if (f.endsWith('.conf')) files.push(path.join(dir, 'rt_tables.d', f));
    } catch {
      /* no such directory */
    }
  }
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const m = /^\s*(\d+)\s+(\S+)/.exec(line);
      if (m && !names.has(m[2]!)) names.set(m[2]!, Number(m[1]));
    }
  }
  return names;
}

/** Resolve config table entries to numbers; an unknown name is a config error naming it. */
export function resolveTables(tables: (string | number)[]): number[] {
  let named: Map<string, number> | null = null;
  return tables.map((t) => {
    if (typeof t === 'number') return t;
    if (t in BUILTIN) return BUILTIN[t]!;
    named ??= namedTables();
    const n = named.get(t);
    if (n === undefined) throw new UsageError(`dgd.tables: unknown routing table "${t}" (not in rt_tables)`);
    return n;
  });
}
