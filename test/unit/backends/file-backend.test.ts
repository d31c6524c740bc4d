import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { openFileBackend } from '../../../src/backends/file-backend';
import { bufferRefs, releaseBuffer } from '../../../src/core/payload-pool';
import { BackendError } from '../../../src/core/errors';
import { NbdError } from '../../../src/nbd/codec/constants';
import { tmpDir, type TmpDir } from '../../helpers/tmp-dir';
import { readCopy, testPool } from '../../helpers/pool';

describe('FileBackend', () => {
  let dir: TmpDir;
  beforeEach(() => (dir = tmpDir()));
  afterEach(() => dir.cleanup());

  test('size, capabilities, read/write/flush', async () => {
    const p = dir.file('disk.raw');
    writeFileSync(p, Buffer.alloc(1 << 20));
    const b = await openFileBackend(p, { pool: testPool() });
    try {
      expect(b.size()).toBe(1 << 20);
      expect(b.capabilities()).toMatchObject({ canWrite: true, canMultiConn: true, canExtents: false, canFastZero: false });
      await b.pwrite(Buffer.from('hello'), 1000, { fua: true });
      await b.flush();
      expect((await readCopy(b, 998, 9)).toString('latin1')).toBe('\0\0hello\0\0');
      expect(readFileSync(p).subarray(1000, 1005).toString()).toBe('hello');
    } finally {
      await b.close();
    }
  });

  test('zero in the middle writes zeroes; zero of the tail punches and keeps the size', async () => {
    const p = dir.file('disk.raw');
    const size = 10 * 1024 * 1024 + 3;
    writeFileSync(p, Buffer.alloc(size, 0xff));
    const b = await openFileBackend(p, { pool: testPool() });
    try {
      await b.zero(5, 5 * 1024 * 1024 + 7);
      let d = await readCopy(b, 0, size);
      expect(d.subarray(0, 5).every((x) => x === 0xff)).toBe(true);
      expect(d.subarray(5, 5 + 5 * 1024 * 1024 + 7).every((x) => x === 0)).toBe(true);
      expect(d[5 + 5 * 1024 * 1024 + 7]).toBe(0xff);
      await b.zero(size - 4096 - 1, 4097, { mayTrim: true });
      expect(statSync(p).size).toBe(size);
      d = await readCopy(b, size - 4098, 4098);
      expect(d[0]).toBe(0xff);
      expect(d.subarray(1).every((x) => x === 0)).toBe(true);
      await expect(b.zero(0, 1, { fastZero: true })).rejects.toMatchObject({ errno: NbdError.ENOTSUP });
      expect((await readCopy(b, 0, 1))[0]).toBe(0xff);
    } finally {
      await b.close();
    }
  });

  test('read-only: opened read-only and says so', async () => {
    const p = dir.file('ro.raw');
    writeFileSync(p, Buffer.alloc(4096, 1));
    const b = await openFileBackend(p, { pool: testPool(), readonly: true });
    try {
      expect(b.capabilities().canWrite).toBe(false);
      await expect(b.pwrite(Buffer.from('x'), 0)).rejects.toBeInstanceOf(BackendError);
    } finally {
      await b.close();
    }
  });

  test('a directory is refused', async () => {
    await expect(openFileBackend(dir.path, { pool: testPool() })).rejects.toThrow();
  });
});

describe('FileBackend zero keeps holes', () => {
  test('zeroing a hole writes nothing; zeroing data writes zeroes', async () => {
    const dir = tmpDir('file-zero-');
    try {
      const file = dir.file('disk.raw');
      writeFileSync(file, '');
      truncateSync(file, 64 * 1024 * 1024);
      const b = await openFileBackend(file, { pool: testPool() });
      await b.pwrite(Buffer.alloc(4096, 9), 40 * 1024 * 1024);
      // Below the fallocate(1) threshold: zero reads first and writes only what is not zero.
      await b.zero(0, 4 * 1024 * 1024, { mayTrim: false });
      await b.zero(40 * 1024 * 1024, 4096, { mayTrim: false });
      await b.flush();
      // st_blocks counts 512-byte units actually allocated: the 4 MiB hole is still a hole.
      expect(statSync(file).blocks * 512).toBeLessThan(1024 * 1024);
      expect((await readCopy(b, 40 * 1024 * 1024, 4096)).every((x: number) => x === 0)).toBe(true);
      await b.close();
    } finally {
      dir.cleanup();
    }
  });
});

describe('FileBackend large zeroes', () => {
  test.each([true, false])('mayTrim=%p: data becomes zeroes, neighbours untouched', async (mayTrim) => {
    const dir = tmpDir('file-zero-big-');
    try {
      const file = dir.file('disk.raw');
      writeFileSync(file, Buffer.alloc(48 * 1024 * 1024, 0x5a));
      const b = await openFileBackend(file, { pool: testPool() });
      await b.zero(4096, 32 * 1024 * 1024, { mayTrim });
      const got = await readCopy(b, 0, 48 * 1024 * 1024);
      expect(got.subarray(0, 4096).every((x: number) => x === 0x5a)).toBe(true);
      expect(got.subarray(4096, 4096 + 32 * 1024 * 1024).every((x: number) => x === 0)).toBe(true);
      expect(got.subarray(4096 + 32 * 1024 * 1024).every((x: number) => x === 0x5a)).toBe(true);
      // Punching frees the blocks (all but the partial pages at the edges).
      if (mayTrim) expect(statSync(file).blocks * 512).toBeLessThan(20 * 1024 * 1024);
      await b.close();
    } finally {
      dir.cleanup();
    }
  });
});

describe('FileBackend payload ownership', () => {
  test('pread returns a pool buffer; pwrite and pwritev release what they get, also on failure', async () => {
    const dir = tmpDir('file-own-');
    const pool = testPool();
    try {
      const file = dir.file('disk.raw');
      writeFileSync(file, Buffer.alloc(4 * 1024 * 1024));
      const b = await openFileBackend(file, { pool });
      const w = pool.tryAllocate(300000)!.fill(3);
      await b.pwrite(w, 1000, { fua: true });
      expect(bufferRefs(w)).toBe(0);
      // pwritev: one list, written in order, every buffer released (a view releases its owner).
      const parts = [pool.tryAllocate(70000)!.fill(4), pool.tryAllocate(100)!.fill(5), pool.tryAllocate(200000)!.fill(6)];
      await b.pwritev([parts[0], parts[1].subarray(0, 50), parts[2]], 500000);
      for (const p of parts) expect(bufferRefs(p)).toBe(0);
      expect(pool.liveBytes).toBe(0);
      const r = await b.pread(1000, 300000);
      expect(bufferRefs(r)).toBe(1);
      expect(r.every((x) => x === 3)).toBe(true);
      releaseBuffer(r);
      const v = readFileSync(file);
      expect(v.subarray(500000, 570000).every((x) => x === 4)).toBe(true);
      expect(v.subarray(570000, 570050).every((x) => x === 5)).toBe(true);
      expect(v.subarray(570050, 770050).every((x) => x === 6)).toBe(true);
      expect(v[770050]).toBe(0);
      await b.close();

      const ro = await openFileBackend(file, { readonly: true, pool });
      const x = pool.tryAllocate(100000)!;
      await expect(ro.pwrite(x, 0)).rejects.toBeInstanceOf(BackendError);
      const y = [pool.tryAllocate(100000)!];
      await expect(ro.pwritev(y, 0)).rejects.toBeInstanceOf(BackendError);
      expect(pool.liveBytes).toBe(0);
      await ro.close();
    } finally {
      dir.cleanup();
    }
  });
});

describe('FileBackend writes one at a time', () => {
  test('concurrent writes all land, and a failing write does not hold up the queue', async () => {
    const dir = tmpDir('file-queue-');
    const pool = testPool();
    try {
      const file = dir.file('disk.raw');
      writeFileSync(file, Buffer.alloc(8 * 1024 * 1024));
      const b = await openFileBackend(file, { pool });
      const writes = Array.from({ length: 20 }, (_, i) => {
        const buf = pool.tryAllocate(300000)!.fill(i + 1);
        return i % 2 ? b.pwrite(buf, i * 300000) : b.pwritev([buf], i * 300000);
      });
      await Promise.all(writes);
      const v = readFileSync(file);
      for (let i = 0; i < 20; i++) expect(v.subarray(i * 300000, (i + 1) * 300000).every((x) => x === i + 1)).toBe(true);
      await b.close();

      const ro = await openFileBackend(file, { readonly: true, pool });
      const failing = Array.from({ length: 5 }, () => ro.pwrite(pool.tryAllocate(1000)!, 0).then(() => 'ok', () => 'failed'));
      expect(await Promise.all(failing)).toEqual(Array(5).fill('failed'));
      expect(pool.liveBytes).toBe(0);
      await ro.close();
    } finally {
      dir.cleanup();
    }
  });
});
