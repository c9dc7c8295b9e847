// What each peer (by node name, over all its links) has through this node: its sessions, and how
// many of them still wait for their service (each holding its stream's 256 KiB window until
// bridged). node.ts refuses a peer's new stream past tunnel.peer_max_sessions or
// tunnel.peer_max_buffered.

/** A session's claim on its peer's budget: released in part once bridged, wholly once done. */
export interface SessionHold {
  bridged(): void;
  done(): void;
}

export class PeerBudget {
  private readonly peers = new Map<string, { sessions: number; waiting: number }>();

  /** A peer's sessions through this node, and those of them not bridged yet. */
  use(peer: string): { sessions: number; waiting: number } {
    return this.peers.get(peer) ?? { sessions: 0, waiting: 0 };
  }

  /** Count a new session against its peer: waiting until bridged(), holding a slot until done(). */
  hold(peer: string): SessionHold {
    let use = this.peers.get(peer);
    if (!use) this.peers.set(peer, (use = { sessions: 0, waiting: 0 }));
    const u = use;
    u.sessions++;
    u.waiting++;
    let waiting = true;
    let held = true;
    const bridged = (): void => {
      if (!waiting) return;
      waiting = false;
      u.waiting--;
    };
    return {
      bridged,
      done: () => {
        bridged();
        if (!held) return;
        held = false;
        u.sessions--;
        if (u.sessions === 0 && this.peers.get(peer) === u) this.peers.delete(peer);
      },
    };
  }
}
