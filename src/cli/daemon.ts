// `ipdeadgate daemon [--config FILE] [--control PATH] [--state-dir DIR] [--control-group GROUP]
//                   [--log-format json|text]`
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { UsageError } from '../errors';
import { DEFAULT_STATE_DIR } from '../daemon/statedir';
import { action, DEFAULT_CONTROL } from './common';

/** A group name (from /etc/group) or number as its gid. */
export function groupId(name: string, groupFile = '/etc/group'): number {
  if (/^\d+$/.test(name)) return Number(name);
  let text = '';
  try {
    text = readFileSync(groupFile, 'utf8');
  } catch {
    /* no group file: the name cannot be found */
  }
  for (const line of text.split('\n')) {
    const [n, , gid] = line.split(':');
    if (n === name && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new UsageError(`--control-group: no group "${name}" in ${groupFile}`);
}

export function registerDaemon(program: Command): void {
  program
    .command('daemon')
    .description(
      'run the daemon: dead gateway detection (and the tunnel roles of the config);\n' +
        'with no config it protects every gateway route of the main table with the defaults',
    )
    .option('--config <file>', 'YAML config file')
    .option('--control <path>', 'control socket', DEFAULT_CONTROL)
    .option('--state-dir <dir>', 'where withdrawn routes are journaled', DEFAULT_STATE_DIR)
    .option(
      '--control-group <group>',
      "members of this group may use the control socket (mode 0660); default: root and the daemon's user",
    )
    .option(
      '--log-format <format>',
      'json (one line per event) or text (default: log.format of the config, json)',
    )
    .addHelpText(
      'after',
      '\nExamples:\n  ipdeadgate daemon\n  ipdeadgate daemon --config /etc/ipdeadgate/ipdeadgate.yaml --log-format text\n\n' +
        'SIGTERM restores every withdrawn route and exits 0; SIGHUP reloads the config;\n' +
        'SIGUSR2 (package upgrades) exits 0 leaving withdrawn routes journaled for the next start.',
    )
    .action(
      action(
        async (opts: {
          config?: string;
          control: string;
          stateDir: string;
          logFormat?: string;
          controlGroup?: string;
        }) => {
          if (opts.logFormat !== undefined && opts.logFormat !== 'json' && opts.logFormat !== 'text')
            throw new UsageError(`--log-format must be json or text, not "${opts.logFormat}"`);
          // Loaded here, not at the top: the engine is most of the CLI's start-up time, and
          // `status`, `on`, `off` (an operator at 3 a.m.) do not need it.
          const { runDaemon } = await import('../daemon/daemon');
          return runDaemon({
            configPath: opts.config,
            controlPath: opts.control,
            stateDir: opts.stateDir,
            logFormat: opts.logFormat,
            controlGroup: opts.controlGroup === undefined ? undefined : groupId(opts.controlGroup),
          });
        },
      ),
    );
}
