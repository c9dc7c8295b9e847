// Run-to-completion for the handler-table state machines (src/tunnel/sessionlife.ts and the ones
// after it): an event raised while a handler runs (a socket closed inside a handler fires 'close'
// at once) waits until that handler has returned, so every handler sees the state it was written
// for, and events are handled in the order they happened.

export class RunToCompletion<E> {
  private readonly queue: E[] = [];
  private running = false;

  constructor(private readonly handle: (ev: E) => void) {}

  /** Handle ev now, or after the handler that is running returns. */
  dispatch(ev: E): void {
    this.queue.push(ev);
    if (this.running) return;
    this.running = true;
    try {
      for (let e = this.queue.shift(); e !== undefined; e = this.queue.shift()) this.handle(e);
    } finally {
      this.running = false;
    }
  }
}
