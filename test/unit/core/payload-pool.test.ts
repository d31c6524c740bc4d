import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { MIN_POOLED, bufferRefs, releaseBuffer, retainBuffer } from '../../../src/core/payload-pool';
import { testPool } from '../../helpers/pool';

const MiB = 1024 * 1024;

describe('PayloadPool', () => {
  it('hands out exact lengths and reuses released backing stores of the same class', () => {
    const pool = testPool();
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
    releaseBuffer(b);
  });

  it('counts small buffers but does not keep them', () => {
    const pool = testPool();
    const a = pool.tryAllocate(MIN_POOLED - 1)!;
    expect(pool.liveBytes).toBe(MIN_POOLED - 1);
    releaseBuffer(a);
    expect(pool.liveBytes).toBe(0);
    expect(pool.stats().freeBytes).toBe(0);
  });

  it('counts references per backing store, so subarrays can be retained and released', () => {
    const pool = testPool();
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

  it('bounds live bytes: allocate waits in order, tryAllocate refuses', async () => {
    const pool = testPool({ maxLiveBytes: 4 * MiB });
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
    const db = await d;
    expect(order).toEqual(['c', 'd']);
    expect(pool.stats().waits).toBe(2);
    releaseBuffer(cb);
    releaseBuffer(db);
  });

  it('a large waiter that does not fit does not hold back a small request that does', async () => {
    const pool = testPool({ maxLiveBytes: 48 * MiB });
    const held = pool.tryAllocate(32 * MiB)!;
    let bigGot: Buffer | undefined;
    const big = pool.allocate(20 * MiB).then((buf) => (bigGot = buf));
    // A small request fits beside what is held: served now, whether asked with or without waiting.
    const small = pool.tryAllocate(2 * MiB);
    expect(small).toBeDefined();
    const waited = await pool.allocate(4 * MiB);
    expect(bigGot).toBeUndefined();
    releaseBuffer(held);
    await big;
    expect(bigGot!.length).toBe(20 * MiB);
    for (const buf of [small!, waited, bigGot!]) releaseBuffer(buf);
  });

  it('never holds more than the bound, also when a kept buffer of the next class is reused', () => {
    // 48 MiB bound, 18 MiB held, a 32 MiB buffer kept for reuse: a 16 MiB request fits (34 MiB)
    // but must not be served from the kept 32 MiB buffer, which would hold 50 MiB.
    const pool = testPool({ maxLiveBytes: 48 * MiB });
    const x = pool.tryAllocate(32 * MiB)!;
    const c = pool.tryAllocate(16 * MiB)!;
    releaseBuffer(x); // kept: 32 MiB
    const d = pool.tryAllocate(2 * MiB)!;
    expect(pool.liveBytes).toBe(18 * MiB);
    const e = pool.tryAllocate(16 * MiB)!;
    expect(e.length).toBe(16 * MiB);
    expect(pool.liveBytes).toBe(34 * MiB);
    expect(pool.stats().peakLiveBytes).toBeLessThanOrEqual(48 * MiB);
    for (const buf of [c, d, e]) releaseBuffer(buf);
  });

  it('random allocations and releases never exceed the bound', async () => {
    const pool = testPool({ maxLiveBytes: 48 * MiB });
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
    const held: Buffer[] = [];
    const waits: Promise<void>[] = [];
    for (let i = 0; i < 2000; i++) {
      if (held.length > 0 && rnd(2) === 0) releaseBuffer(held.splice(rnd(held.length), 1)[0]);
      const n = 1 + rnd(20 * MiB);
      if (rnd(3) === 0) waits.push(pool.allocate(n).then((b) => void held.push(b)));
      else {
        const b = pool.tryAllocate(n);
        if (b) held.push(b);
      }
      expect(pool.liveBytes).toBeLessThanOrEqual(48 * MiB);
      if (i % 50 === 0) await new Promise((r) => setImmediate(r));
    }
    while (pool.waiting > 0 || held.length > 0) {
      for (const b of held.splice(0)) releaseBuffer(b);
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(waits);
    for (const b of held.splice(0)) releaseBuffer(b);
    expect(pool.stats().peakLiveBytes).toBeLessThanOrEqual(48 * MiB);
  });

  it('grants one request larger than the bound when nothing else is live', async () => {
    const pool = testPool({ maxLiveBytes: MiB });
    const big = await pool.allocate(8 * MiB);
    expect(big.length).toBe(8 * MiB);
    expect(pool.tryAllocate(MIN_POOLED)).toBeUndefined();
    releaseBuffer(big);
    const small = pool.tryAllocate(MIN_POOLED);
    expect(small).toBeDefined();
    releaseBuffer(small!);
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
