// The shipped Prometheus alert rules and Grafana dashboard (packaging/): the rules pass
// `promtool check rules` and their own `promtool test rules` cases; every expression of the
// dashboard is valid PromQL (promtool checks it as a recording rule); and every metric either
// names is one the daemon exports, so a renamed metric cannot silently blind an alert.
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { DaemonMetrics } from '../../src/daemon/metrics';
import { REPO_ROOT, requireRoot } from '../lab/lab';

const RULES = path.join(REPO_ROOT, 'packaging', 'prometheus', 'ipdeadgate.rules.yml');
const RULE_TESTS = path.join(REPO_ROOT, 'packaging', 'prometheus', 'ipdeadgate.rules.test.yml');
const DASHBOARD = path.join(REPO_ROOT, 'packaging', 'grafana', 'ipdeadgate-dashboard.json');

interface Panel {
  title: string;
  targets?: { expr: string }[];
}

function dashboardExprs(): { title: string; expr: string }[] {
  const d = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] };
  return d.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ title: p.title, expr: t.expr })));
}

function ruleExprs(): { alert: string; expr: string }[] {
  const doc = parseYaml(fs.readFileSync(RULES, 'utf8')) as {
    groups: { rules: { alert: string; expr: string }[] }[];
  };
  return doc.groups.flatMap((g) => g.rules);
}

/** Metric names in a PromQL expression: identifiers followed by "{" or "[" or standing alone. */
function metricNames(expr: string): string[] {
  const noStrings = expr.replace(/"[^"]*"/g, '""').replace(/\{[^}]*\}/g, '{}');
  const keywords = new Set([
    'sum',
    'by',
    'without',
    'increase',
    'rate',
    'histogram_quantile',
    'le',
    'and',
    'or',
    'unless',
    'max',
    'min',
    'avg',
    'count',
    'on',
    'ignoring',
    'group_left',
    'group_right',
    'offset',
  ]);
  const names = new Set<string>();
  for (const m of noStrings.matchAll(/\b([a-z_][a-z0-9_]*)\b(?!\s*\()/g)) {
    const n = m[1]!;
    if (!keywords.has(n) && /_/.test(n)) names.add(n);
  }
  // Labels inside by (...) are not metrics.
  for (const m of noStrings.matchAll(/\bby\s*\(([^)]*)\)/g))
    for (const l of m[1]!.split(',')) names.delete(l.trim());
  return [...names];
}

describe('Prometheus alert rules and Grafana dashboard (packaging/)', function () {
  this.timeout(120_000);
  let promtool = '';

  before(function () {
    // scripts/lib/promtool fetches Debian's promtool into /var/cache (root) when none is installed.
    const installed = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' });
    if (installed.status !== 0) requireRoot(this);
    promtool = execFileSync(path.join(REPO_ROOT, 'scripts', 'lib', 'promtool'), { encoding: 'utf8' }).trim();
  });

  it('promtool check rules: the rules are valid', () => {
    const out = execFileSync(promtool, ['check', 'rules', RULES], { encoding: 'utf8' });
    assert.match(out, /SUCCESS: \d+ rules found/);
  });

  it('promtool test rules: a first death fires IpdeadgateGatewayDied because the counter starts at 0', () => {
    const r = spawnSync(promtool, ['test', 'rules', RULE_TESTS], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS/);
  });

  it('every dashboard expression is valid PromQL (checked by promtool as a recording rule)', () => {
    const exprs = dashboardExprs();
    assert.ok(exprs.length >= 10);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idg-dash-'));
    try {
      const file = path.join(dir, 'dashboard-exprs.yml');
      const rules = exprs.map((e, i) => ({
        record: `ipdeadgate:dashboard_panel_${i}`,
        // Grafana's $instance variable as a regex that matches anything.
        expr: e.expr.replace(/\$instance/g, '.*'),
      }));
      fs.writeFileSync(file, JSON.stringify({ groups: [{ name: 'dashboard', rules }] }));
      const r = spawnSync(promtool, ['check', 'rules', file], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stdout + r.stderr);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the rules and the dashboard name only metrics the daemon exports', () => {
    const exported = new Set(new DaemonMetrics({}).registry.getMetricsAsArray().map((m) => m.name));
    exported.add('up'); // Prometheus's own, per scrape target
    const known = (n: string) => exported.has(n) || exported.has(n.replace(/_(bucket|count|sum)$/, ''));
    const used = [
      ...ruleExprs().map((r) => ({ where: `alert ${r.alert}`, expr: r.expr })),
      ...dashboardExprs().map((d) => ({ where: `panel "${d.title}"`, expr: d.expr })),
    ];
    const unknown = used.flatMap((u) =>
      metricNames(u.expr)
        .filter((n) => !known(n))
        .map((n) => `${u.where}: ${n}`),
    );
    assert.deepEqual(unknown, []);
    assert.ok(exported.has('ipdeadgate_build_info'));
  });
});
