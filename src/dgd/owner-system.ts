// The routing daemons' adapters over the real clients (src/sys/frr.ts, src/sys/bird.ts), built
// from dgd.owners.
import { BirdControl } from '../sys/bird';
import { Vtysh } from '../sys/frr';
import { BirdOwnerAdapter } from './owner-bird';
import { FrrOwnerAdapter } from './owner-frr';
import type { OwnerAdapter, OwnersConfig, RoutingDaemon } from './owners';

export function ownerAdapters(cfg: OwnersConfig): Map<RoutingDaemon, OwnerAdapter> {
  const out = new Map<RoutingDaemon, OwnerAdapter>();
  if (cfg.frr)
    out.set(
      'frr',
      new FrrOwnerAdapter(
        new Vtysh({
          vtysh: cfg.frr.vtysh,
          vtySocket: cfg.frr.vty_socket ?? null,
          pathspace: cfg.frr.pathspace ?? null,
        }),
      ),
    );
  if (cfg.bird) out.set('bird', new BirdOwnerAdapter(new BirdControl(cfg.bird.socket)));
  return out;
}
