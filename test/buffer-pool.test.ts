import { BufferPool, MIN_POOLED } from '../src/server/buffer-pool';

describe('BufferPool', () => {
  test('reuses released buffers of the same size class, exactly sized views', () => {
    const pool = new BufferPool();
    const a = pool.allocate(3 * 1024 * 1024);
    expect(a.length).toBe(3 * 1024 * 1024);
    pool.release(a);
    expect(pool.pooledBytes).toBe(4 * 1024 * 1024);
    const b = pool.allocate(4 * 1024 * 1024 - 1);
    expect(b.buffer).toBe(a.buffer);
    expect(pool.pooledBytes).toBe(0);
  });

  test('small buffers and foreign buffers are never adopted', () => {
    const pool = new BufferPool();
    pool.release(pool.allocate(MIN_POOLED - 1));
    pool.release(Buffer.allocUnsafeSlow(1024 * 1024));
    pool.release(Buffer.alloc(8 * 1024 * 1024).subarray(1));
    expect(pool.pooledBytes).toBe(0);
  });

  test('holds at most maxFreeBytes', () => {
    const pool = new BufferPool(8 * 1024 * 1024);
    const bufs = [1, 2, 3].map(() => pool.allocate(4 * 1024 * 1024));
    for (const b of bufs) pool.release(b);
    expect(pool.pooledBytes).toBe(8 * 1024 * 1024);
  });
});
