// The routing daemons' adapters over the real clients (src/sys/frr.ts, src/sys/bird.ts), built
// from dgd.owners.
import { BirdControl } from '../sys/bird';
import { Vtysh } from '../sys/frr';
import { BirdOwnerAdapter } from './owner-bird';
import { FrrOwnerAdapter } from './owner-frr';
import { BIRD_DEFAULT_SOCKET, type OwnerAdapter, type OwnersConfig, type RoutingDaemon } from './owners';

export function ownerAdapters(cfg: OwnersConfig): Map<RoutingDaemon, OwnerAdapter> {
  const out = new Map<RoutingDaemon, OwnerAdapter>();
  // Not named in dgd.owners: found at FRR's and BIRD's default paths, used once they answer.
  if (cfg.frr !== false) {
    const frr = cfg.frr;
    out.set(
      'frr',
      new FrrOwnerAdapter(
        new Vtysh({
          vtysh: frr?.vtysh ?? 'vtysh',
          vtySocket: frr?.vty_socket ?? null,
          pathspace: frr?.pathspace ?? null,
        }),
        { auto: frr === undefined },
      ),
    );
  }
  if (cfg.bird !== false)
    out.set(
      'bird',
      new BirdOwnerAdapter(new BirdControl(cfg.bird?.socket ?? BIRD_DEFAULT_SOCKET), {
        auto: cfg.bird === undefined,
      }),
    );
  return out;
}
