// The BIRD adapter's policy: a dead gateway's routes leave BIRD by disabling the protocols that
// carry them (BIRD's runtime `disable`, undone by `enable`, never written to bird.conf), so BIRD's
// kernel protocol exports the next best routes. A protocol is disabled only when every route it
// has goes through dead gateways (one static protocol per gateway, a BGP session per neighbour):
// disabling a protocol that also carries routes through live gateways would take those away too,
// so such a protocol is left alone and reported. The kernel, device, direct and pipe protocols are
// never touched. src/sys/bird.ts does the talking.
import type { BirdProtocol, BirdRoute } from '../sys/bird';
import type { ConvergeOptions, OwnerAdapter, OwnerOutcome } from './owners';

export interface BirdPort {
  protocols(): Promise<BirdProtocol[]>;
  routes(): Promise<BirdRoute[]>;
  disable(protocol: string): Promise<void>;
  enable(protocol: string): Promise<void>;
  version(): Promise<string>;
}

/** What the adapter has done: protocol -> the dead gateways it was disabled for. */
export interface BirdState {
  disabled: Record<string, string[]>;
}

const NEVER = new Set(['Kernel', 'Device', 'Direct', 'Pipe', 'BFD', 'RPKI']);

export class BirdOwnerAdapter implements OwnerAdapter {
  readonly owner = 'bird' as const;

  /** Found at the default paths, not configured (used once check() answers: ./owners.ts). */
  readonly auto: boolean;

  constructor(
    private readonly bird: BirdPort,
    opts: { auto?: boolean } = {},
  ) {
    this.auto = opts.auto ?? false;
  }

  check(): Promise<string> {
    return this.bird.version();
  }

  async converge(dead: string[], opts: ConvergeOptions): Promise<OwnerOutcome> {
    const prev = asState(opts.previous);
    const d = new Set(dead);
    const problems: string[] = [];
    const kept: string[] = [];
    // Protocols still needed for gateways that stay dead keep only those gateways.
    const next: BirdState = { disabled: {} };
    for (const [p, gws] of Object.entries(prev.disabled)) {
      const still = gws.filter((g) => d.has(g));
      if (still.length > 0) next.disabled[p] = still;
    }
    const toEnable = Object.keys(prev.disabled).filter((p) => !next.disabled[p]);
    const toDisable: string[] = [];
    if (dead.length > 0) {
      const [protocols, routes] = await Promise.all([this.bird.protocols(), this.bird.routes()]);
      const kinds = new Map(protocols.map((p) => [p.name, p]));
      // Disabled by us but up again: BIRD restarted (it forgets runtime disables) or someone
      // enabled it. Still needed for a dead gateway: disable it again.
      for (const p of Object.keys(next.disabled)) if (kinds.get(p)?.state === 'up') toDisable.push(p);
      const candidates = new Set(
        routes
          .filter((r) => r.gateways.some((g) => d.has(g)))
          .map((r) => r.protocol)
          .filter((p) => !next.disabled[p]),
      );
      for (const name of [...candidates].sort()) {
        const kind = kinds.get(name);
        if (!kind || NEVER.has(kind.proto) || kind.state !== 'up') continue;
        const own = routes.filter((r) => r.protocol === name);
        const live = [...new Set(own.flatMap((r) => r.gateways).filter((g) => !d.has(g)))];
        if (live.length > 0) {
          problems.push(
            `BIRD protocol ${name} also carries routes through ${live.join(', ')}; ipdeadgate does not disable it ` +
              `(give the routes through each gateway a protocol of their own)`,
          );
          continue;
        }
        if (opts.keepLastRoute) {
          const gone = new Set([...Object.keys(next.disabled), ...toDisable, name]);
          const last = [...new Set(own.map((r) => `${r.table} ${r.prefix}`))].filter(
            (tp) =>
              !routes.some(
                (r) =>
                  `${r.table} ${r.prefix}` === tp &&
                  !gone.has(r.protocol) &&
                  r.gateways.some((g) => !d.has(g)),
              ),
          );
          if (last.length > 0) {
            kept.push(...last.map((tp) => tp.split(' ')[1]!));
            continue;
          }
        }
        toDisable.push(name);
        next.disabled[name] = dead.filter((g) => own.some((r) => r.gateways.includes(g)));
      }
    }
    const changed = toDisable.length > 0 || toEnable.length > 0;
    if (toDisable.length > 0) await opts.persist(next); // journal first, then the daemon
    for (const p of toDisable) await this.bird.disable(p);
    for (const p of toEnable) {
      try {
        await this.bird.enable(p);
      } catch (err) {
        // Gone from BIRD's config since (reconfigured): nothing left to undo.
        if (!/not found|no such/i.test(String((err as Error).message))) throw err;
      }
    }
    return {
      state: next,
      changed,
      applied: Object.entries(next.disabled).map(([p, g]) => `disable ${p} (routes via ${g.join(', ')})`),
      kept,
      problems,
    };
  }
}

function asState(s: unknown): BirdState {
  const d = (s as BirdState | null)?.disabled;
  return { disabled: d && typeof d === 'object' ? { ...d } : {} };
}
