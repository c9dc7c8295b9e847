// `ipdeadgate check-config FILE [--tunnel]` (as keepalived -t, nginx -t): load and validate a
// config exactly as a start would (the same loaders, so the same messages), change nothing, exit 0
// or 2. The systemd units run it in ExecStartPre and ExecReload, so a bad config is refused before
// the daemon is started or signalled.
import type { Command } from 'commander';
import { action } from './common';

export function registerCheckConfig(program: Command): void {
  program
    .command('check-config')
    .description(
      'validate a config as a start would; exit 0 (valid) or 2 (the error names file, line and key)',
    )
    .argument('<file>', 'YAML config file')
    .option('--tunnel', 'check it as `ipdeadgate tunnel --config FILE` would (the tunnel section alone)')
    .option('-q, --quiet', 'print nothing when the config is valid')
    .addHelpText(
      'after',
      '\nExamples:\n  ipdeadgate check-config /etc/ipdeadgate/ipdeadgate.yaml\n' +
        '  ipdeadgate check-config --tunnel /etc/ipdeadgate/tunnel-gw1.yaml\n',
    )
    .action(
      action(async (file: string, opts: { tunnel?: boolean; quiet?: boolean }) => {
        // Loaded when the command runs (the config schema, the daemon's module, the TLS loader):
        // every other command starts without them.
        const { loadTunnelConfig } = await import('../daemon/config');
        const { loadTls } = await import('../tunnel/link');
        let summary: string;
        if (opts.tunnel) {
          const t = await loadTunnelConfig(file);
          loadTls(t.tls); // readable, PEM, the key matches the certificate: as a start checks them
          summary = `tunnel ${t.role} ${t.name}`;
        } else {
          const { loadDaemonConfig } = await import('../daemon/daemon');
          const { config, tunnel } = await loadDaemonConfig(file);
          if (tunnel) loadTls(tunnel.tls);
          summary =
            `detection ${config.dgd.enabled ? 'on' : 'off'}, tables ${config.dgd.tables.join(',')}` +
            (tunnel ? `, tunnel ${tunnel.role} ${tunnel.name}` : '');
        }
        if (!opts.quiet) process.stdout.write(`${file}: ok (${summary})\n`);
      }),
    );
}
