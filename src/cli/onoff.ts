// `ipdeadgate on` / `ipdeadgate off`: CHGTCPA IPDEADGATE(*YES/*NO), persisted by the daemon.
import type { Command } from 'commander';
import { controlRequest } from '../daemon/control';
import { action, DEFAULT_CONTROL } from './common';

export function registerOnOff(program: Command): void {
  for (const on of [true, false]) {
    program
      .command(on ? 'on' : 'off')
      .description(
        on
          ? 'enable dead gateway detection in the running daemon (persisted)'
          : 'disable dead gateway detection: every withdrawn route is restored, no trigger acts (persisted)',
      )
      .option('--control <path>', 'control socket', DEFAULT_CONTROL)
      .action(
        action(async (opts: { control: string }) => {
          await controlRequest(opts.control, on ? 'on' : 'off');
          process.stdout.write(`dead gateway detection is ${on ? 'on' : 'off'}\n`);
        }),
      );
  }
}
