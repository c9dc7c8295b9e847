// Placeholder registration: the command arrives with its issue (see issues list).
import type { Command } from 'commander';
import { IpdeadgateError } from '../errors';
import { action } from './common';

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('(not yet available in this build)')
    .allowUnknownOption()
    .action(
      action(async () => {
        throw new IpdeadgateError('ERR_NOT_AVAILABLE', 'status is not available in this build yet');
      }),
    );
}
