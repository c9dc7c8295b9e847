// The kernel's connection tracking table over nfnetlink (NETLINK_NETFILTER, subsystem CTNETLINK):
// dump entries, delete one by its tuple, create one (benchmarks), and follow events. Typed and
// Promise-based; failures are SystemErrors with the kernel's errno `code` and the operation as
// `syscall`; dumps are bounded in entries kept and in time. Works in the namespace the process runs
// in: conntrack is per network namespace, and a namespace where no rule has needed it yet has an
// empty table.
import { readFileSync } from 'node:fs';
import { SystemError, systemError } from '../errors';
import { normalizeIp } from './ipaddr';
import { NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, type NetlinkChannel } from './rtnl';
import { openNfnlChannel, type NetlinkMessage } from './nfnetlink';
import {
  IPCTNL_MSG,
  NFNLGRP_CONNTRACK,
  ctType,
  decodeConntrack,
  encodeCreate,
  encodeDelete,
  encodeDump,
  familyOfAddress,
  type ConntrackEntry,
  type ConntrackTuple,
  type DumpFilter,
  type Family,
} from './conntrack-codec';

export {
  CT_STATUS,
  natOf,
  formatTuple,
  type ConntrackEntry,
  type ConntrackTuple,
  type ConntrackCounters,
  type TcpCtState,
  type CtStatusName,
  type DumpFilter,
} from './conntrack-codec';

/** What to dump: filtered by the kernel (family, mark, status, the reply's destination), and bounds. */
export interface DumpOptions extends DumpFilter {
  /** Entries kept at most (default 1,000,000); the rest are counted in `dropped`. */
  limit?: number;
  /** Without progress for this long the dump fails with ETIMEDOUT (default 5000 ms). */
  timeoutMs?: number;
}

export interface ConntrackDump {
  entries: ConntrackEntry[];
  /** Entries past `limit`, read and dropped. */
  dropped: number;
  /** Entries the kernel sent (within `limit`), before the filters this facade applies itself. */
  examined: number;
}

export type ConntrackEvent =
  | { type: 'new'; entry: ConntrackEntry }
  | { type: 'update'; entry: ConntrackEntry }
  | { type: 'destroy'; entry: ConntrackEntry };

export interface ConntrackSubscription {
  close(): void;
  [Symbol.dispose](): void;
}

export interface Conntrack {
  dump(opts?: DumpOptions): Promise<ConntrackDump>;
  /**
   * Delete the entry whose original tuple (and zone) this is; with `id`, only if it is still that
   * very entry. Rejects with code ENOENT when there is none.
   */
  delete(key: { orig: ConntrackTuple; zone?: number; id?: number }): Promise<void>;
  /** Create an entry from its two tuples (as `conntrack -I`); EEXIST if it exists. */
  create(e: { orig: ConntrackTuple; reply: ConntrackTuple; timeout: number; mark?: number }): Promise<void>;
  /**
   * Follow conntrack events (needs net.netfilter.nf_conntrack_events, on by default). onError hears
   * ENOBUFS when the kernel dropped events faster than we read them: dump again then.
   */
  subscribe(
    onEvent: (ev: ConntrackEvent) => void,
    opts?: { types?: ConntrackEvent['type'][]; onError?: (err: Error) => void },
  ): ConntrackSubscription;
  close(): void;
  [Symbol.dispose](): void;
}

const NLM_F_CREATE_EXCL = NLM_F_CREATE | NLM_F_EXCL;
const DEFAULT_LIMIT = 1_000_000;

function ctError(err: unknown, syscall: string, what: string): SystemError {
  return err instanceof SystemError ? err : systemError(err, syscall, what);
}

/** Open a ctnetlink socket in this process's network namespace. */
export function openConntrack(): Conntrack {
  let ch: NetlinkChannel;
  try {
    ch = openNfnlChannel();
  } catch (err) {
    throw ctError(err, 'socket', 'opening a NETLINK_NETFILTER socket');
  }
  const subs = new Set<NetlinkChannel>();
  const ct: Conntrack = {
    async dump(opts = {}) {
      const limit = opts.limit ?? DEFAULT_LIMIT;
      if (!Number.isInteger(limit) || limit < 0)
        throw new RangeError(`conntrack: limit must be an integer >= 0`);
      const keep = entryFilter(opts);
      const request = (filter: DumpFilter) =>
        ch.requestReply(ctType(IPCTNL_MSG.CT_GET), NLM_F_DUMP, encodeDump(filter), {
          timeoutMs: opts.timeoutMs ?? 5000,
          syscall: 'ctnetlink_dump',
          maxReplies: limit,
        });
      try {
        let r;
        try {
          r = await request(kernelFilter(opts));
        } catch (err) {
          // A kernel that refuses a filter it does not support: the family's whole table, filtered here.
          if (!isFilterRefusal(err) || (!opts.status && opts.replyDst === undefined)) throw err;
          r = await request({ family: familyOf(opts), mark: opts.mark });
        }
        const entries: ConntrackEntry[] = [];
        for (const m of r.messages) {
          const e = decodeConntrack(m.data);
          if (e && keep(e)) entries.push(e);
        }
        return { entries, dropped: r.dropped, examined: r.messages.length };
      } catch (err) {
        throw ctError(err, 'ctnetlink_dump', 'dumping the conntrack table');
      }
    },
    async delete(key) {
      const payload = encodeDelete(key);
      try {
        await ch.requestReply(ctType(IPCTNL_MSG.CT_DELETE), 0, payload, {
          timeoutMs: 2000,
          syscall: 'ctnetlink_del',
        });
      } catch (err) {
        throw ctError(err, 'ctnetlink_del', 'deleting a conntrack entry');
      }
    },
    async create(e) {
      const payload = encodeCreate(e);
      try {
        await ch.requestReply(ctType(IPCTNL_MSG.CT_NEW), NLM_F_CREATE_EXCL, payload, {
          timeoutMs: 2000,
          syscall: 'ctnetlink_new',
        });
      } catch (err) {
        throw ctError(err, 'ctnetlink_new', 'creating a conntrack entry');
      }
    },
    subscribe(onEvent, opts = {}) {
      const types = new Set(opts.types ?? ['new', 'update', 'destroy']);
      const groups: number[] = [];
      if (types.has('new')) groups.push(NFNLGRP_CONNTRACK.NEW);
      if (types.has('update')) groups.push(NFNLGRP_CONNTRACK.UPDATE);
      if (types.has('destroy')) groups.push(NFNLGRP_CONNTRACK.DESTROY);
      let sub: NetlinkChannel;
      try {
        sub = openNfnlChannel({
          groups,
          ref: true,
          recvBufferSize: 4 << 20,
          onNotification: (m) => {
            const ev = toEvent(m);
            if (ev && types.has(ev.type)) onEvent(ev);
          },
          onError: (err) => opts.onError?.(ctError(err, 'recvmsg', 'reading conntrack events')),
        });
      } catch (err) {
        throw ctError(err, 'setsockopt', 'joining the conntrack event groups');
      }
      subs.add(sub);
      const close = () => {
        sub.close();
        subs.delete(sub);
      };
      return { close, [Symbol.dispose]: close };
    },
    close() {
      ch.close();
      for (const s of subs) s.close();
      subs.clear();
    },
    [Symbol.dispose]() {
      ct.close();
    },
  };
  return ct;
}

const familyOf = (f: DumpFilter): Family | undefined =>
  f.replyDst !== undefined ? familyOfAddress(f.replyDst) : f.family;

/**
 * What the kernel is asked to filter. An IPv6 reply address is not: ctnetlink_filter_match_tuple
 * compares IPv6 addresses with `!ipv6_addr_cmp()`, true when they are equal, so the kernel returns
 * every entry except those asked for (seen on Linux 6.18); IPv6 entries are matched here instead.
 */
function kernelFilter(f: DumpFilter): DumpFilter {
  if (f.replyDst === undefined || familyOfAddress(f.replyDst) === 4) return f;
  return { family: 6, mark: f.mark, status: f.status };
}

/**
 * The same filters, applied to what the kernel sent: kernels older than an attribute ignore it
 * (Linux 5.8 brought CTA_FILTER, later kernels CTA_STATUS_MASK), and IPv6 addresses are matched
 * only here (above).
 */
function entryFilter(f: DumpFilter): (e: ConntrackEntry) => boolean {
  const dst = f.replyDst === undefined ? undefined : normalizeIp(f.replyDst);
  const family = familyOf(f);
  return (e) =>
    (family === undefined || e.family === family) &&
    (dst === undefined || e.reply.dst === dst) &&
    (!f.status || (e.status & f.status.mask) === f.status.value) &&
    (!f.mark || (e.mark & f.mark.mask) === f.mark.value);
}

function isFilterRefusal(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'EOPNOTSUPP' || code === 'EINVAL';
}

/**
 * Entries in this namespace's conntrack table (net.netfilter.nf_conntrack_count), or null when
 * conntrack is not loaded (no nf_conntrack module: the sysctl does not exist). Reading it costs
 * microseconds and, unlike a ctnetlink request, never loads a module.
 */
export function conntrackCount(file = '/proc/sys/net/netfilter/nf_conntrack_count'): number | null {
  try {
    return Number(readFileSync(file, 'latin1').trim());
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return null;
    throw err;
  }
}

/** An event message: CT_NEW with NLM_F_CREATE is a new entry, other CT_NEWs updates, CT_DELETE destroys. */
function toEvent(m: NetlinkMessage): ConntrackEvent | null {
  const entry = decodeConntrack(m.data);
  if (!entry) return null;
  const msg = m.type & 0xff;
  if (m.type >> 8 !== 1) return null; // NFNL_SUBSYS_CTNETLINK
  if (msg === IPCTNL_MSG.CT_DELETE) return { type: 'destroy', entry };
  if (msg === IPCTNL_MSG.CT_NEW) return { type: m.flags & NLM_F_CREATE ? 'new' : 'update', entry };
  return null;
}
