import { MemoryBackend } from '../src/backends/memory-backend';
import { EXTENT_HOLE, EXTENT_ZERO } from '../src/backend';

describe('MemoryBackend', () => {
  test('reads back writes and reports holes around them', async () => {
    const b = new MemoryBackend(1 << 20);
    await b.pwrite(Buffer.from('hello'), 70000);
    expect((await b.pread(69998, 9)).toString('latin1')).toBe('\0\0hello\0\0');
    const ex = await b.extents(0, 1 << 20);
    expect(ex[0]).toEqual({ offset: 0, length: 65536, flags: EXTENT_HOLE | EXTENT_ZERO });
    expect(ex[1]).toEqual({ offset: 65536, length: 65536, flags: 0 });
    expect(ex[2].offset).toBe(131072);
  });

  test('zeroing whole pages frees them', async () => {
    const b = new MemoryBackend(1 << 20);
    await b.pwrite(Buffer.alloc(200000, 1), 0);
    expect(b.allocatedBytes()).toBe(4 * 65536);
    await b.zero(1, 200000 - 1);
    expect(b.allocatedBytes()).toBe(2 * 65536); // partial first and last pages stay
    const data = await b.pread(0, 200000);
    expect(data[0]).toBe(1);
    expect(data.subarray(1).every((x) => x === 0)).toBe(true);
  });
});
