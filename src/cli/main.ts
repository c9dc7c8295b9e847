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
  for (const cmd of program.commands) cmd.exitOverride().showHelpAfterError();
  addExamples(program);
  return program;
}

export function main(argv: string[]): void {
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
