// `ipdeadgate incidents` on its own: bin/ipdeadgate runs this instead of the whole CLI (main.ts,
// which loads every command's modules, the tunnel and the metrics among them), so reading the
// records costs a node start and little more. The command is the same registerIncidents() that
// main.ts registers: one definition, two entries.
import { Command, CommanderError } from 'commander';
import { EXIT_USAGE, reportError } from './common';
import { registerIncidents } from './incidents';

export function main(argv: string[]): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit(process.exitCode ?? 0);
  });
  const program = new Command('ipdeadgate').exitOverride().showHelpAfterError();
  registerIncidents(program);
  for (const cmd of program.commands) cmd.exitOverride().showHelpAfterError().allowExcessArguments(false);
  program.parseAsync(argv).catch((err: unknown) => {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? 0 : EXIT_USAGE;
      return;
    }
    process.exitCode = reportError(err);
  });
}
