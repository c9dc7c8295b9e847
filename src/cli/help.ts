// Examples for `ipdeadgate --help` and for the commands whose own file has none, kept in one
// place (main.ts applies them after registering the commands). A command that already has an
// "Example" section in its help keeps its own.
import type { EventEmitter } from 'node:events';
import type { Command } from 'commander';

const ROOT_EXAMPLES = `
Examples:
  ipdeadgate daemon --config /etc/ipdeadgate/ipdeadgate.yaml   # run detection (systemd: packaging/)
  ipdeadgate status                        # gateways: state, last verification, last_capture
  ipdeadgate probe 192.0.2.1               # one ARP verification now: alive or dead
  ipdeadgate sockets --min-retrans 2       # TCP sockets retransmitting, and their gateway
  ipdeadgate capture --gateways -w /tmp/gw.pcap   # watch the gateways on the wire
  ipdeadgate off                           # restore every withdrawn route; triggers stop

Run "ipdeadgate COMMAND --help" for a command's options. Configuration: docs/configuration.md;
operating and debugging: docs/operators-guide.md; examples for each role: examples/.
`;

const COMMAND_EXAMPLES: Record<string, string> = {
  on: `
Example:
  ipdeadgate on      # triggers act again; the setting survives a restart
`,
  off: `
Example:
  ipdeadgate off     # every withdrawn route is put back at once; nothing acts until "ipdeadgate on"
`,
  status: `
Examples:
  ipdeadgate status
  ipdeadgate status --json | jq '.gateways[] | {address, state, last_capture}'
  ipdeadgate status --control /run/ipdeadgate-tunnel.sock      # a tunnel-only node

Gateway states: active (routes in use), suspect (being verified), dead (routes withdrawn, polled
every slow_poll_interval). last_capture names the flight recorder's pcap of the last death.
`,
  probe: `
Examples:
  ipdeadgate probe 192.0.2.1
  ipdeadgate probe 2001:db8:1::1 --json
  ipdeadgate probe fe80::1%eth0 --probes 5 --timeout 500ms

A gateway that drops ping is alive as long as it answers ARP/NDP.
`,
  sockets: `
Examples:
  ipdeadgate sockets
  ipdeadgate sockets --min-retrans 1 --json    # what would trigger detection now
`,
  routes: `
Examples:
  ipdeadgate routes
  ipdeadgate routes --json                     # with a daemon: withdrawn routes too
`,
};

function hasExamples(cmd: Command): boolean {
  // commander's Command is an EventEmitter: addHelpText('after', ...) adds an 'afterHelp' listener.
  const emitter = cmd as unknown as EventEmitter;
  return emitter.listenerCount('afterHelp') > 0;
}

/** Add the examples above to the program and to every command that has none of its own. */
export function addExamples(program: Command): void {
  program.addHelpText('after', ROOT_EXAMPLES);
  for (const cmd of program.commands) {
    const text = COMMAND_EXAMPLES[cmd.name()];
    if (text && !hasExamples(cmd)) cmd.addHelpText('after', text);
  }
}
