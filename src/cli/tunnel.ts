// `ipdeadgate tunnel --config FILE [--control PATH] [--log-format json|text]`: run only the tunnel
// section of a config (gateway proxy, endpoint proxy or relay). Bad config: exit 2 naming the file,
// line and key. SIGTERM/SIGINT close every link and session and exit 0; SIGHUP reloads the file
// (services, forwards, links, peers, limits; a bad file is refused and the running config stays).
import type { Command } from 'commander';
import { action } from './common';

export function registerTunnel(program: Command): void {
  program
    .command('tunnel')
    .description('run only the tunnel role(s) of a config: gateway proxy, endpoint proxy or relay')
    .requiredOption('--config <file>', 'YAML config file with a tunnel: section')
    .option('--control <path>', 'serve status on this control socket (ipdeadgate status --control PATH)')
    .option('--log-format <format>', 'json (one line per event) or text', 'json')
    .addHelpText(
      'after',
      '\nExample:\n  ipdeadgate tunnel --config /etc/ipdeadgate/gw1.yaml --control /run/ipdeadgate-tunnel.sock\n',
    )
    .action(
      action(async (opts: { config: string; control?: string; logFormat: string }) => {
        const { runTunnel } = await import('./tunnel-run');
        return runTunnel(opts);
      }),
    );
}
