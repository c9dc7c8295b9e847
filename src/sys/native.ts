// The one loader of the project's own addon. The native surface is declared once here (node-pty
// style); nothing outside src/sys/ imports this file. When the addon is missing, the error lists
// every path that was tried and what to run.
import * as path from 'node:path';
import { IpdeadgateError } from '../errors';

/** Raw surface of build/Release/ipdeadgate_native.node. Each concern adds its members here. */
export interface NativeAddon {
  readonly abiVersion: number;
  [member: string]: unknown;
}

let cached: NativeAddon | undefined;

export function loadNative(): NativeAddon {
  if (cached) return cached;
  const root = path.resolve(__dirname, '..', '..', '..');
  const candidates = [
    path.join(root, 'build', 'Release', 'ipdeadgate_native.node'),
    path.join(root, 'build', 'Debug', 'ipdeadgate_native.node'),
  ];
  const failures: string[] = [];
  for (const file of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      cached = require(file) as NativeAddon;
      return cached;
    } catch (err) {
      failures.push(`  ${file}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  throw new IpdeadgateError(
    'ERR_NATIVE_MISSING',
    `the ipdeadgate native addon is not built; tried:\n${failures.join('\n')}\nrun scripts/setup (or: npx node-gyp rebuild)`,
  );
}
