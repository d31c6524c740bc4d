import { MemoryBackend } from '../../../src/backends/memory-backend';
import { bufferRefs, releaseBuffer } from '../../../src/core/payload-pool';
import { EXTENT_HOLE, EXTENT_ZERO } from '../../../src/core/backend';
import { readCopy, testPool } from '../../helpers/pool';

describe('MemoryBackend', () => {
  test('reads back writes and reports holes around them', async () => {
    const b = new MemoryBackend(1 << 20, false, testPool());
    await b.pwrite(Buffer.from('hello'), 70000);
    expect((await readCopy(b, 69998, 9)).toString('latin1')).toBe('\0\0hello\0\0');
    const ex = await b.extents(0, 1 << 20);
    expect(ex[0]).toEqual({ offset: 0, length: 65536, flags: EXTENT_HOLE | EXTENT_ZERO });
    expect(ex[1]).toEqual({ offset: 65536, length: 65536, flags: 0 });
    expect(ex[2].offset).toBe(131072);
  });

  test('zeroing whole pages frees them', async () => {
    const b = new MemoryBackend(1 << 20, false, testPool());
    await b.pwrite(Buffer.alloc(200000, 1), 0);
    expect(b.allocatedBytes()).toBe(4 * 65536);
    await b.zero(1, 200000 - 1);
    expect(b.allocatedBytes()).toBe(2 * 65536); // partial first and last pages stay
    const data = await readCopy(b, 0, 200000);
    expect(data[0]).toBe(1);
    expect(data.subarray(1).every((x) => x === 0)).toBe(true);
  });
});

describe('MemoryBackend payload ownership', () => {
  test('pwrite/pwritev release their buffers; pread gives a pool buffer with holes zeroed', async () => {
    const pool = testPool();
    const b = new MemoryBackend(1 << 20, false, pool);
    const a = pool.tryAllocate(100000)!.fill(1);
    await b.pwrite(a, 10);
    expect(bufferRefs(a)).toBe(0);
    const list = [pool.tryAllocate(70000)!.fill(2), pool.tryAllocate(5)!.fill(3)];
    await b.pwritev(list, 200000);
    expect(list.map((x) => bufferRefs(x))).toEqual([0, 0]);
    expect(pool.liveBytes).toBe(0);
    // Dirty the pool's free buffers, so a pread that forgot to zero holes would show it.
    releaseBuffer(pool.tryAllocate(1 << 20)!.fill(0xee));
    const r = await b.pread(0, 1 << 20);
    expect(bufferRefs(r)).toBe(1);
    expect(r.subarray(0, 10).every((x) => x === 0)).toBe(true);
    expect(r.subarray(10, 100010).every((x) => x === 1)).toBe(true);
    expect(r.subarray(100010, 200000).every((x) => x === 0)).toBe(true);
    expect(r.subarray(200000, 270000).every((x) => x === 2)).toBe(true);
    expect(r.subarray(270000, 270005).every((x) => x === 3)).toBe(true);
    expect(r.subarray(270005).every((x) => x === 0)).toBe(true);
    releaseBuffer(r);
    expect(pool.liveBytes).toBe(0);
  });
});
