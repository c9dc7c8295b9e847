// Mocha root hooks: sweep namespaces left by a killed earlier run, tear down every lab at the end.
import { closeAllLabs, sweepStaleNamespaces, isRoot } from './lab';

export const mochaHooks = {
  beforeAll(): void {
    if (isRoot()) sweepStaleNamespaces();
  },
  async afterAll(): Promise<void> {
    await closeAllLabs();
  },
};
