import { StatsLayer, humanRate, humanSize } from '../../../src/layers/stats-layer';
import { MemoryBackend } from '../../../src/backends/memory-backend';
import { PassthroughLayer, type Backend } from '../../../src/core/backend';
import { RecordingLayer } from '../../helpers/recording-layer';
import { readCopy, testPool } from '../../helpers/pool';

/** A fake clock, and an inner layer whose calls take `cost` microseconds of it. */
function timed(inner: Backend) {
  const clock = { now: 1_000_000_000n, cost: 0n };
  class Slow extends PassthroughLayer {
    override pread(o: number, l: number) {
      clock.now += clock.cost * 1000n;
      return super.pread(o, l);
    }
    override pwrite(d: Buffer, o: number) {
      clock.now += clock.cost * 1000n;
      return super.pwrite(d, o);
    }
    override zero(o: number, l: number) {
      clock.now += clock.cost * 1000n;
      return super.zero(o, l);
    }
    override trim(o: number, l: number) {
      clock.now += clock.cost * 1000n;
      return super.trim(o, l);
    }
    override flush() {
      clock.now += clock.cost * 1000n;
      return super.flush();
    }
    override extents(o: number, l: number) {
      clock.now += clock.cost * 1000n;
      return super.extents(o, l);
    }
    override cache(o: number, l: number) {
      clock.now += clock.cost * 1000n;
      return super.cache(o, l);
    }
  }
  const stats = new StatsLayer(new Slow(inner), { clock: () => clock.now });
  return { clock, stats };
}

/** Discards writes: lets the golden test "write" 65 MiB without storing it. */
class NullBackend extends PassthroughLayer {
  override async pwrite(): Promise<void> {}
}

describe('nbdkit number formats', () => {
  test('sizes use 1024-based units with two decimals', () => {
    expect(humanSize(0)).toBe('0 bytes');
    expect(humanSize(1023)).toBe('1023 bytes');
    expect(humanSize(1024)).toBe('1.00 KiB');
    expect(humanSize(1536)).toBe('1.50 KiB');
    expect(humanSize(1024 * 1024)).toBe('1.00 MiB');
    expect(humanSize(25.13 * 2 ** 30)).toBe('25.13 GiB');
    expect(humanSize(5 * 2 ** 40)).toBe('5120.00 GiB');
  });

  test('exact halves round to even, as printf does (not like toFixed)', () => {
    expect((1.125).toFixed(2)).toBe('1.13');
    expect(humanSize(1152)).toBe('1.12 KiB'); // 1.125 KiB
    expect(humanSize(1408)).toBe('1.38 KiB'); // 1.375 KiB
  });

  test('rates drop fractions of a byte and say (n/a) without time', () => {
    expect(humanRate(1000, 1_000_000n)).toBe('1000 bytes');
    expect(humanRate(1000, 3_000_000n)).toBe('333 bytes');
    expect(humanRate(0, 5n)).toBe('0 bytes');
    expect(humanRate(100, 0n)).toBe('(n/a)');
  });
});

describe('StatsLayer', () => {
  test('reproduces an nbdkit write line byte for byte', async () => {
    const { clock, stats } = timed(new NullBackend(new MemoryBackend(1 << 30, false, testPool())));
    const buf = Buffer.alloc(262010);
    clock.cost = 269n;
    for (let i = 0; i < 260; i++) await stats.pwrite(buf.subarray(0, 261184), 0);
    clock.cost = 355n;
    await stats.pwrite(buf, 0); // 261 writes, 68169850 bytes, 70295 us inside
    const start = 1_000_000_000n;
    clock.now = start + 190_906_000n;
    expect(stats.format()).toBe(
      [
        'total: 261 ops, 0.190906 s, 65.01 MiB, 340.54 MiB/s',
        'write: 261 ops, 0.070295 s, 65.01 MiB, 924.84 MiB/s op, 340.54 MiB/s total',
      ].join('\n'),
    );
  });

  test('counts every operation, in nbdkit order, omitting unused ones', async () => {
    const { clock, stats } = timed(new MemoryBackend(1 << 20, false, testPool()));
    clock.cost = 100n;
    await stats.pwrite(Buffer.alloc(4096), 0);
    await stats.pwrite(Buffer.alloc(4096), 4096);
    await readCopy(stats, 0, 512);
    await stats.zero(0, 65536);
    await stats.extents(0, 1 << 20);
    await stats.cache(0, 2048);
    clock.cost = 0n;
    await stats.flush();
    clock.now = 1_000_000_000n + 2_000_000_000n; // 2 s after creation
    const c = stats.counters();
    expect(c.write).toEqual({ ops: 2, bytes: 8192, ns: 200_000n });
    expect(c.trim.ops).toBe(0);
    expect(stats.format().split('\n')).toEqual([
      // cache is not in the total, extents bytes are not either (as in nbdkit)
      'total: 6 ops, 2.000000 s, 72.50 KiB, 36.25 KiB/s',
      'read: 1 ops, 0.000100 s, 512 bytes, 4.88 MiB/s op, 256 bytes/s total',
      'write: 2 ops, 0.000200 s, 8.00 KiB, 39.06 MiB/s op, 4.00 KiB/s total',
      'zero: 1 ops, 0.000100 s, 64.00 KiB, 625.00 MiB/s op, 32.00 KiB/s total',
      'extents: 1 ops, 0.000100 s, 1.00 MiB, 9.77 GiB/s op, 512.00 KiB/s total',
      'cache: 1 ops, 0.000100 s, 2.00 KiB, 19.53 MiB/s op, 1.00 KiB/s total',
      'flush: 1 ops, 0.000000 s, 0 bytes, (n/a)/s op, 0 bytes/s total',
    ]);
  });

  test('pwritev is forwarded as one request and counted as one write of its total length', async () => {
    const inner = new RecordingLayer(new MemoryBackend(1 << 20, false, testPool()));
    const { clock, stats } = timed(inner);
    clock.cost = 100n;
    await stats.pwritev([Buffer.alloc(1000, 1), Buffer.alloc(3096, 2)], 8192);
    await stats.pwrite(Buffer.alloc(4096, 3), 0);
    // One request below, with both buffers: not split, not joined on the way.
    expect(inner.writes().map((c) => [c.offset, c.length, c.segments])).toEqual([
      [8192, 4096, 2],
      [0, 4096, 1],
    ]);
    expect((await readCopy(inner, 8192, 4096)).equals(Buffer.concat([Buffer.alloc(1000, 1), Buffer.alloc(3096, 2)]))).toBe(true);
    expect(stats.counters().write).toEqual({ ops: 2, bytes: 8192, ns: 100_000n });
    clock.now = 1_000_000_000n + 1_000_000_000n;
    expect(stats.format().split('\n')).toContain('write: 2 ops, 0.000100 s, 8.00 KiB, 78.12 MiB/s op, 8.00 KiB/s total');
  });

  test('with nothing done, only the total line', () => {
    const { clock, stats } = timed(new MemoryBackend(1024, false, testPool()));
    clock.now += 1_500_000n;
    expect(stats.format()).toBe('total: 0 ops, 0.001500 s, 0 bytes, 0 bytes/s');
  });

  test('failed operations are not counted, and errors pass through', async () => {
    const inner = new RecordingLayer(new MemoryBackend(1 << 20, false, testPool()), { fail: (c) => c.op === 'pwrite' });
    const stats = new StatsLayer(inner);
    await expect(stats.pwrite(Buffer.alloc(10), 0)).rejects.toThrow(/injected/);
    await readCopy(stats, 0, 10);
    expect(stats.counters().write.ops).toBe(0);
    expect(stats.counters().read.ops).toBe(1);
    expect(stats.format()).not.toMatch(/^write/m);
  });

  test('real clock: time is measured and the layer is transparent', async () => {
    const mem = new MemoryBackend(1 << 20, false, testPool());
    const stats = new StatsLayer(mem);
    expect(stats.name).toBe('memory');
    expect(stats.capabilities()).toEqual(mem.capabilities());
    await stats.pwrite(Buffer.from('abc'), 10);
    expect((await readCopy(stats, 10, 3)).toString()).toBe('abc');
    expect(stats.counters().write.ns).toBeGreaterThan(0n);
    expect(stats.format()).toMatch(/^total: 2 ops, \d+\.\d{6} s, 6 bytes, .*\/s\nread: 1 ops, /);
  });
});
