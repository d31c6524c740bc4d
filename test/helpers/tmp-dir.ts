/** Private temporary directories for tests (unix sockets, images), removed by cleanup(). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TmpDir {
  path: string;
  /** Path of `name` inside the directory. */
  file(name: string): string;
  cleanup(): void;
}

export function tmpDir(prefix = 'imageio-nbd-test-'): TmpDir {
  // Short base path: unix socket paths are limited to ~107 bytes.
  const path = mkdtempSync(join(tmpdir(), prefix));
  return {
    path,
    file: (name: string) => join(path, name),
    cleanup: () => rmSync(path, { recursive: true, force: true }),
  };
}
