// The ipdeadgate command line: one file per command under src/cli/, registered here.
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { Command, CommanderError } from 'commander';
import { EXIT_USAGE, reportError } from './common';
import { registerDaemon } from './daemon';
import { registerOnOff } from './onoff';
import { registerStatus } from './status';
import { registerProbe } from './probe';
import { registerSockets } from './sockets';
import { registerRoutes } from './routes';
import { registerCapture } from './capture';
import { registerTunnel } from './tunnel';
import { registerCheckConfig } from './checkconfig';
import { registerIncidents } from './incidents';
import { registerWhatIf } from './whatif';
import { addExamples } from './help';

function packageVersion(): string {
  const pkg = path.join(__dirname, '..', '..', '..', 'package.json');
  return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
}

export function buildProgram(): Command {
  const program = new Command('ipdeadgate')
    .description(
      'Dead gateway detection and a close-leak-proof firewall proxy tunnel for Linux gateway hosts.\n' +
        'Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad config.',
    )
    .version(packageVersion())
    .showHelpAfterError()
    .exitOverride();
  registerDaemon(program);
  registerOnOff(program);
  registerStatus(program);
  registerProbe(program);
  registerSockets(program);
  registerRoutes(program);
  registerCapture(program);
  registerTunnel(program);
  registerCheckConfig(program);
  registerIncidents(program);
  registerWhatIf(program);
  // An extra argument is an error (`status foo` is not `status`).
  for (const cmd of program.commands) cmd.exitOverride().showHelpAfterError().allowExcessArguments(false);
  addExamples(program);
  return program;
}

/**
 * A reader that stops early (`ipdeadgate --help | head -2`) closes the pipe: a short command then
 * ends quietly instead of dying with an EPIPE stack trace. The long-running ones (daemon, tunnel)
 * keep running without their output: exiting would leave withdrawn routes behind.
 */
function quietOnClosedPipe(longRunning: boolean): void {
  for (const stream of [process.stdout, process.stderr])
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
      if (!longRunning) process.exit(process.exitCode ?? 0);
    });
}

export function main(argv: string[]): void {
  quietOnClosedPipe(argv[2] === 'daemon' || argv[2] === 'tunnel');
  const program = buildProgram();
  program.parseAsync(argv).catch((err: unknown) => {
    if (err instanceof CommanderError) {
      // Help and version are successes; every other commander error is bad usage.
      process.exitCode = err.exitCode === 0 ? 0 : EXIT_USAGE;
      return;
    }
    process.exitCode = reportError(err);
  });
}
