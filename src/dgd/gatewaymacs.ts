// Each gateway's known MAC: what a verification holds answers against (./verify.ts). It follows the
// kernel's neighbour entry, which takes only frames sent to this host and follows a gateway that
// moved (a VRRP takeover without a virtual MAC announces the address from the new master's MAC,
// keepalived's default), unless the operator pinned a MAC in config (dgd.gateway_macs). Kept in the
// state directory across restarts, so a restart does not start from trust on first use.
import { errorMessage } from '../errors';
import { normalizeIp, normalizeMac } from '../sys/ipaddr';
import type { EventLog } from '../util/eventlog';
import type { DgdConfig } from './config';
import { emit } from './events';
import type { Gateway } from './gateway';
import type { DgdStore } from './ports';

/** Kernel states whose entry holds a MAC the kernel sends to (NUD_VALID less NOARP). */
const FOLLOWED_STATES: ReadonlySet<string> = new Set(['REACHABLE', 'STALE', 'DELAY', 'PROBE', 'PERMANENT']);
/** Gateways remembered at most (the oldest is forgotten first). */
const MAX_REMEMBERED = 4096;

export interface KnownMac {
  mac: string | null;
  pinned: boolean;
}

export class GatewayMacs {
  /** "address%ifname" -> MAC, in insertion order (oldest first). */
  private readonly learned = new Map<string, string>();
  private saving: Promise<void> = Promise.resolve();
  private pendingSave = false;

  constructor(private readonly o: { store: DgdStore | null; log: EventLog; config: () => DgdConfig }) {}

  private static key(g: Gateway): string {
    return `${g.address}%${g.ifname}`;
  }

  /** Read what the last run knew; a broken file is reported and ignored (it is advisory). */
  async load(): Promise<void> {
    if (!this.o.store?.loadMacs) return;
    try {
      const macs = await this.o.store.loadMacs();
      for (const [k, v] of Object.entries(macs).slice(-MAX_REMEMBERED)) this.learned.set(k, v);
    } catch (err) {
      emit(
        this.o.log,
        { event: 'error', during: 'loading known gateway MACs', error: errorMessage(err) },
        'warn',
      );
    }
  }

  /** The operator's pin for g, if any. */
  pin(g: Gateway): string | null {
    for (const p of this.o.config().gateway_macs) {
      if (p.interface !== undefined && p.interface !== g.ifname) continue;
      if (normalizeIp(p.gateway) === g.address) return p.mac;
    }
    return null;
  }

  /** g's known MAC (the pin, or what was learned, also in an earlier run); sets g.mac. */
  known(g: Gateway): KnownMac {
    const pinned = this.pin(g);
    if (pinned) {
      g.mac = pinned;
      return { mac: pinned, pinned: true };
    }
    if (!g.mac) g.mac = this.learned.get(GatewayMacs.key(g)) ?? null;
    return { mac: g.mac, pinned: false };
  }

  /** g's MAC is now `mac` (learned or moved); remembered across restarts. */
  set(g: Gateway, mac: string): void {
    const m = normalizeMac(mac);
    g.mac = m;
    const key = GatewayMacs.key(g);
    if (this.learned.get(key) === m) return;
    this.learned.delete(key);
    this.learned.set(key, m);
    while (this.learned.size > MAX_REMEMBERED) this.learned.delete(this.learned.keys().next().value!);
    this.save();
  }

  /**
   * The kernel's neighbour entry for g changed (an rtnetlink event): a MAC it sends to, other than
   * the known one, is where g is now — unless g's MAC is pinned.
   */
  followKernel(g: Gateway, state: string, lladdr: string | null): void {
    if (!lladdr || !FOLLOWED_STATES.has(state)) return;
    if (this.pin(g)) return;
    const known = this.known(g).mac;
    let mac: string;
    try {
      mac = normalizeMac(lladdr);
    } catch {
      return;
    }
    if (known === mac) return;
    this.set(g, mac);
    if (known)
      emit(
        this.o.log,
        {
          event: 'neighbour_moved',
          gateway: g.address,
          interface: g.ifname,
          from: known,
          to: mac,
          by: 'kernel',
          kernel_state: state,
        },
        'warn',
      );
  }

  /** Writes are serialised and coalesced: at most one in flight and one more after it. */
  private save(): void {
    const store = this.o.store;
    if (!store?.saveMacs || this.pendingSave) return;
    this.pendingSave = true;
    this.saving = this.saving.then(async () => {
      this.pendingSave = false;
      try {
        await store.saveMacs!(Object.fromEntries(this.learned));
      } catch (err) {
        emit(
          this.o.log,
          { event: 'error', during: 'saving known gateway MACs', error: errorMessage(err) },
          'warn',
        );
      }
    });
  }

  /** The last write, finished (tests, shutdown). */
  settled(): Promise<void> {
    return this.saving;
  }
}
