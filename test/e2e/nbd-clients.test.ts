/**
 * Interoperability with the real NBD clients (nbdinfo, qemu-img, nbdcopy), against the memory
 * and the file backend, compared byte for byte.
 */
import { readFileSync, writeFileSync, truncateSync } from 'node:fs';
import type { Backend } from '../../src/core/backend';
import { MemoryBackend } from '../../src/backends/memory-backend';
import { openFileBackend } from '../../src/backends/file-backend';
import { NbdServer } from '../../src/nbd/nbd-server';
import { makeSparseImage } from '../helpers/sparse-image';
import { startNbdServer, type TestServer } from '../helpers/nbd-server';
import { runOk } from '../helpers/run';
import { tmpDir, type TmpDir } from '../helpers/tmp-dir';
import { readCopy, testPool } from '../helpers/pool';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const T = { timeoutMs: 60000 };

type Kind = 'memory' | 'file';

async function makeBackend(kind: Kind, dir: TmpDir, name: string): Promise<Backend> {
  if (kind === 'memory') return new MemoryBackend(SIZE, false, testPool());
  const p = dir.file(name);
  writeFileSync(p, '');
  truncateSync(p, SIZE);
  return openFileBackend(p, { pool: testPool() });
}

/** The whole export as a plain Buffer; every pooled buffer read is released (the test's pool must end idle). */
async function readAll(b: Backend): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let off = 0; off < b.size(); off += 16 * MiB) parts.push(await readCopy(b, off, Math.min(16 * MiB, b.size() - off)));
  return Buffer.concat(parts);
}

function expectSameBytes(actual: Buffer, expected: Buffer): void {
  expect(actual.length).toBe(expected.length);
  if (!actual.equals(expected)) {
    let i = 0;
    while (actual[i] === expected[i]) i++;
    throw new Error(`contents differ first at byte ${i}`);
  }
}

describe.each<Kind>(['memory', 'file'])('real clients against the %s backend', (kind) => {
  let dir: TmpDir;
  let source: string;
  let sourceBytes: Buffer;
  beforeAll(async () => {
    dir = tmpDir();
    source = dir.file('source.raw');
    await makeSparseImage(source, SIZE, kind === 'memory' ? 1 : 2);
    sourceBytes = readFileSync(source);
  });
  afterAll(() => dir.cleanup());

  /** A fresh empty export for one test. */
  async function withServer(fn: (s: TestServer, b: Backend) => Promise<void>): Promise<void> {
    const b = await makeBackend(kind, dir, `target-${Math.random().toString(36).slice(2)}.raw`);
    const s = await startNbdServer(b, { export: { description: `test ${kind}` } });
    try {
      await fn(s, b);
    } finally {
      await s.stop();
      await b.close();
    }
  }

  test('nbdinfo: plain, --list, --map, --can multi-conn', async () => {
    await withServer(async (s, b) => {
      await b.pwrite(Buffer.alloc(MiB, 1), 8 * MiB);
      const plain = await runOk('nbdinfo', [s.uri], T);
      expect(plain.stdout).toContain(`export-size: ${SIZE}`);
      expect(plain.stdout).toContain('block_size_preferred: 4194304');
      expect(plain.stdout).toContain('base:allocation');
      expect(plain.stdout).toContain(`description: test ${kind}`);
      const list = await runOk('nbdinfo', ['--list', s.uri], T);
      expect(list.stdout).toContain('export=""');
      const map = await runOk('nbdinfo', ['--map', s.uri], T);
      if (kind === 'memory') {
        expect(map.stdout).toMatch(/^\s+0\s+8388608\s+3\s+hole,zero$/m);
        expect(map.stdout).toMatch(/^\s+8388608\s+1048576\s+0\s+data$/m);
      } else {
        // No SEEK_DATA in Node: the file backend reports everything as data.
        expect(map.stdout).toMatch(new RegExp(`^\\s+0\\s+${SIZE}\\s+0\\s+data$`, 'm'));
      }
      await runOk('nbdinfo', ['--can', 'multi-conn', s.uri], T);
    });
  });

  test('qemu-img info', async () => {
    await withServer(async (s) => {
      const r = await runOk('qemu-img', ['info', s.uri], T);
      expect(r.stdout).toContain(`virtual size: 64 MiB (${SIZE} bytes)`);
    });
  });

  test.each([[[]], [['-W']]])('qemu-img convert -n %p, read back by qemu-img and nbdcopy', async (extra) => {
    await withServer(async (s, b) => {
      await runOk('qemu-img', ['convert', '-n', ...extra, '-f', 'raw', '-O', 'raw', source, s.uri], T);
      expectSameBytes(await readAll(b), sourceBytes);
      const back1 = dir.file(`back-qemu-${extra.length}.raw`);
      await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.uri, back1], T);
      expectSameBytes(readFileSync(back1), sourceBytes);
      const back2 = dir.file(`back-nbdcopy-${extra.length}.raw`);
      writeFileSync(back2, '');
      await runOk('nbdcopy', [s.uri, back2], T);
      expectSameBytes(readFileSync(back2), sourceBytes);
    });
  });

  test.each([
    [[]],
    [['--request-size=4194304', '--requests=16', '--flush']],
    [['-C', '1']],
    [['-T', '4']],
    [['--synchronous']],
  ])('nbdcopy %p', async (extra) => {
    await withServer(async (s, b) => {
      // Dirty the target first so that zero requests are actually needed.
      await b.pwrite(Buffer.alloc(4 * MiB, 0xee), 20 * MiB);
      await runOk('nbdcopy', [...extra, source, s.uri], T);
      expectSameBytes(await readAll(b), sourceBytes);
    });
  });
});

describe('nbdcopy and qemu-img reading from a read-only file export', () => {
  test('copies equal the source', async () => {
    const dir = tmpDir();
    try {
      const src = dir.file('src.raw');
      await makeSparseImage(src, 16 * MiB, 7);
      const b = await openFileBackend(src, { pool: testPool(), readonly: true });
      const s = await startNbdServer(b, { export: { readonly: true } });
      try {
        const out = dir.file('out.raw');
        writeFileSync(out, '');
        await runOk('nbdcopy', [s.uri, out], T);
        await runOk('cmp', [src, out], T);
        await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.uri, dir.file('out2.raw')], T);
        await runOk('cmp', [src, dir.file('out2.raw')], T);
        await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, s.uri], T);
      } finally {
        await s.stop();
        await b.close();
      }
    } finally {
      dir.cleanup();
    }
  });
});

describe('TCP', () => {
  test('listen on port 0 resolves the real port; nbdinfo connects over TCP', async () => {
    const pool = testPool();
    const server = new NbdServer({ exports: [{ name: 'disk', backend: new MemoryBackend(MiB, false, pool) }], payloadPool: pool });
    const where = await server.listen({ port: 0 });
    try {
      expect(where.port).toBeGreaterThan(0);
      expect(where.host).toBe('127.0.0.1');
      const r = await runOk('nbdinfo', [`nbd://127.0.0.1:${where.port}/disk`], T);
      expect(r.stdout).toContain(`export-size: ${MiB}`);
      // nbdinfo sent DISC and left: the server notices the close shortly after.
      for (let i = 0; i < 100 && server.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(server.connectionCount).toBe(0);
    } finally {
      await server.close();
    }
  });
});
