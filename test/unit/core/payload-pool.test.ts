import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { MIN_POOLED, PayloadPool, bufferRefs, releaseBuffer, retainBuffer } from '../../../src/core/payload-pool';

const MiB = 1024 * 1024;

describe('PayloadPool', () => {
  it('hands out exact lengths and reuses released backing stores of the same class', () => {
    const pool = new PayloadPool();
    const a = pool.tryAllocate(3 * MiB)!;
    expect(a.length).toBe(3 * MiB);
    expect(pool.liveBytes).toBe(4 * MiB);
    const ab = a.buffer;
    releaseBuffer(a);
    expect(pool.liveBytes).toBe(0);
    expect(pool.stats().freeBytes).toBe(4 * MiB);
    const b = pool.tryAllocate(4 * MiB)!;
    expect(b.buffer).toBe(ab);
    expect(pool.stats().freeBytes).toBe(0);
  });

  it('counts small buffers but does not keep them', () => {
    const pool = new PayloadPool();
    const a = pool.tryAllocate(MIN_POOLED - 1)!;
    expect(pool.liveBytes).toBe(MIN_POOLED - 1);
    releaseBuffer(a);
    expect(pool.liveBytes).toBe(0);
    expect(pool.stats().freeBytes).toBe(0);
  });

  it('counts references per backing store, so subarrays can be retained and released', () => {
    const pool = new PayloadPool();
    const a = pool.tryAllocate(MiB)!;
    const part = a.subarray(100, 200);
    retainBuffer(part);
    expect(bufferRefs(a)).toBe(2);
    releaseBuffer(a);
    expect(pool.liveBytes).toBe(MiB);
    releaseBuffer(part);
    expect(pool.liveBytes).toBe(0);
    expect(() => releaseBuffer(part)).toThrow(/released more often/);
  });

  it('ignores buffers it did not make', () => {
    const other = Buffer.alloc(MiB);
    releaseBuffer(other);
    retainBuffer(other);
    expect(bufferRefs(other)).toBe(0);
  });

  it('bounds live bytes: allocate waits first come first served, tryAllocate refuses', async () => {
    const pool = new PayloadPool({ maxLiveBytes: 4 * MiB });
    const a = await pool.allocate(2 * MiB);
    const b = await pool.allocate(2 * MiB);
    expect(pool.tryAllocate(MIN_POOLED)).toBeUndefined();
    const order: string[] = [];
    const c = pool.allocate(2 * MiB).then((buf) => (order.push('c'), buf));
    const d = pool.allocate(MIN_POOLED).then((buf) => (order.push('d'), buf));
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual([]);
    releaseBuffer(a);
    const cb = await c;
    expect(order).toEqual(['c']);
    releaseBuffer(b);
    await d;
    expect(order).toEqual(['c', 'd']);
    expect(pool.stats().waits).toBe(2);
    releaseBuffer(cb);
  });

  it('grants one request larger than the bound when nothing else is live', async () => {
    const pool = new PayloadPool({ maxLiveBytes: MiB });
    const big = await pool.allocate(8 * MiB);
    expect(big.length).toBe(8 * MiB);
    expect(pool.tryAllocate(MIN_POOLED)).toBeUndefined();
    releaseBuffer(big);
    expect(pool.tryAllocate(MIN_POOLED)).toBeDefined();
  });

  it('stops counting a buffer the garbage collector reclaimed without a release', () => {
    // In a child with --expose-gc: a forced collection, then the registry's cleanup task.
    const script = `
      const { PayloadPool } = require(${JSON.stringify(path.join(__dirname, '..', '..', '..', 'dist', 'src', 'core', 'payload-pool.js'))});
      const pool = new PayloadPool();
      (() => { pool.tryAllocate(1 << 20); })();
      const before = pool.liveBytes;
      (async () => {
        for (let i = 0; i < 50 && pool.liveBytes > 0; i++) { gc(); await new Promise((r) => setTimeout(r, 10)); }
        console.log(JSON.stringify({ before, after: pool.liveBytes, leaked: pool.stats().leaked }));
      })();`;
    const out = execFileSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual({ before: MiB, after: 0, leaked: 1 });
  });
});
