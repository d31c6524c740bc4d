import { randomFillSync } from 'node:crypto';
import { ReadaheadLayer, type ReadaheadOptions } from '../../../src/layers/readahead-layer';
import { MemoryBackend } from '../../../src/backends/memory-backend';
import { PassthroughLayer, EXTENT_HOLE, type Backend, type Capabilities } from '../../../src/core/backend';
import { bufferRefs, releaseBuffer } from '../../../src/core/payload-pool';
import { NbdError } from '../../../src/nbd/codec/constants';
import { RecordingLayer, type RecordingOptions } from '../../helpers/recording-layer';
import { NullBackend } from '../../helpers/null-backend';
import { testPool } from '../../helpers/pool';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A memory disk holding random data in `ranges` (64 KiB aligned: its page size), holes elsewhere. */
async function disk(size: number, ranges: Array<[number, number]> = [[0, size]]) {
  const mem = new MemoryBackend(size, false, testPool());
  const model = Buffer.alloc(size);
  for (const [start, end] of ranges) {
    randomFillSync(model, start, end - start);
    await mem.pwrite(model.subarray(start, end), start);
  }
  return { mem, model };
}

function setup(mem: Backend, opts: Partial<ReadaheadOptions> = {}, rec: RecordingOptions = {}) {
  const pool = testPool();
  const inner = new RecordingLayer(mem, { readPool: pool, ...rec });
  const layer = new ReadaheadLayer(inner, { pool, ...opts });
  const reads = () => inner.calls.filter((c) => c.op === 'pread');
  const fetched = () => reads().reduce((n, c) => n + c.length, 0);
  return { pool, inner, layer, reads, fetched };
}

/** Read [start, end) in `size` pieces, `depth` in flight, checking each against the model. */
async function readStream(layer: Backend, model: Buffer, start: number, end: number, size: number, depth: number) {
  const inflight: Promise<void>[] = [];
  let head = 0;
  for (let off = start; off < end; off += size) {
    const n = Math.min(size, end - off);
    inflight.push(
      layer.pread(off, n).then((got) => {
        if (!got.equals(model.subarray(off, off + n))) throw new Error(`wrong data at ${off}`);
        releaseBuffer(got);
      }),
    );
    if (inflight.length - head >= depth) await inflight[head++];
  }
  await Promise.all(inflight.slice(head));
}

/** Holds writes until released, as a slow server would (the data lands when released). */
class GatedWrites extends PassthroughLayer {
  private gate: Array<() => void> | undefined;
  hold(): void {
    this.gate = [];
  }
  release(): void {
    const g = this.gate ?? [];
    this.gate = undefined;
    for (const f of g) f();
  }
  override async pwrite(data: Buffer, offset: number): Promise<void> {
    if (this.gate) await new Promise<void>((resolve) => this.gate!.push(resolve));
    return super.pwrite(data, offset);
  }
}

class NoExtents extends PassthroughLayer {
  override capabilities(): Capabilities {
    return { ...super.capabilities(), canExtents: false };
  }
}

describe('ReadaheadLayer: request sizes and bytes fetched', () => {
  test('qemu-img-like 2 MiB reads, one at a time, become 8 MiB reads; nothing fetched twice', async () => {
    const { mem, model } = await disk(64 * MiB);
    const { pool, layer, reads, fetched } = setup(mem);
    await readStream(layer, model, 0, 64 * MiB, 2 * MiB, 1);
    // The first read tells nothing yet; from the second on, 8 MiB windows.
    expect(reads()[0].length).toBe(2 * MiB);
    expect(reads().slice(1).every((c) => c.length <= 8 * MiB)).toBe(true);
    expect(reads().length).toBeLessThanOrEqual(10);
    expect(fetched()).toBe(64 * MiB);
    const st = layer.stats();
    expect(st.hits).toBe(31);
    expect(st.peakHeldBytes).toBeLessThanOrEqual(32 * MiB);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('nbdcopy-like: 4 connections, 64 x 256 KiB in flight each, interleaved streams', async () => {
    const { mem, model } = await disk(128 * MiB);
    const { pool, layer, reads, fetched } = setup(mem, {}, { delay: () => 2 });
    await Promise.all([0, 1, 2, 3].map((i) => readStream(layer, model, i * 32 * MiB, (i + 1) * 32 * MiB, 256 * KiB, 64)));
    expect(fetched()).toBeLessThanOrEqual(1.02 * 128 * MiB);
    // 512 client reads; 8 MiB windows instead (the first read of each stream passes through).
    expect(reads().length).toBeLessThanOrEqual(40);
    expect(layer.stats().passthroughReads).toBeLessThanOrEqual(16);
    expect(layer.stats().windowBytes).toBeGreaterThanOrEqual(64 * MiB);
    expect(layer.stats().peakHeldBytes).toBeLessThanOrEqual(32 * MiB);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('deep queues of reads waiting for room still fetch nothing twice', async () => {
    // 4 streams x 32 reads of 512 KiB in flight is far more than 4 MiB of windows: reads wait
    // for room and windows are made out of order, so what was read is, for a while, many
    // separate ranges. They must merge, or the oldest is forgotten and a window at the end of
    // one stream reads the start of the next again.
    const size = 256 * MiB;
    const { pool, layer, fetched } = setup(new NullBackend(size, 0, testPool()), { windowSize: MiB, maxWindows: 4 });
    const stream = async (base: number) => {
      const inflight: Promise<void>[] = [];
      for (let off = 0; off < 64 * MiB; off += 512 * KiB) {
        inflight.push(layer.pread(base + off, 512 * KiB).then(releaseBuffer));
        if (inflight.length >= 32) await inflight.shift();
      }
      await Promise.all(inflight);
    };
    await Promise.all([0, 1, 2, 3].map((i) => stream(i * 64 * MiB)));
    expect(fetched()).toBe(size);
    expect(layer.stats().evicted).toBe(0);
    expect(layer.stats().peakHeldBytes).toBeLessThanOrEqual(4 * MiB);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('a second pass over data already read still gets windows', async () => {
    const { mem, model } = await disk(32 * MiB);
    const { pool, layer, reads, fetched } = setup(mem);
    await readStream(layer, model, 0, 32 * MiB, 256 * KiB, 16);
    const first = reads().length;
    await readStream(layer, model, 0, 32 * MiB, 256 * KiB, 16);
    expect(reads().length - first).toBeLessThanOrEqual(12);
    expect(fetched()).toBeLessThanOrEqual(2 * 1.02 * 32 * MiB);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('read-ahead stops at the end of each data extent: holes are never read', async () => {
    const data: Array<[number, number]> = [
      [0, 5 * MiB],
      [9 * MiB, 9 * MiB + 320 * KiB],
      [20 * MiB, 40 * MiB],
      [41 * MiB, 41 * MiB + 64 * KiB],
    ];
    for (const askFirst of [true, false]) {
      const { mem, model } = await disk(64 * MiB, data);
      const { pool, inner, layer, reads, fetched } = setup(mem);
      if (askFirst) {
        // What nbdcopy and qemu-img do: block status first, then read the data extents only.
        const ex = await layer.extents(0, 64 * MiB);
        expect(ex.filter((e) => e.flags === 0).map((e) => [e.offset, e.offset + e.length])).toEqual(data);
      }
      for (const [start, end] of data) await readStream(layer, model, start, end, 256 * KiB, 16);
      const dataBytes = data.reduce((n, [s, e]) => n + e - s, 0);
      expect(fetched()).toBeLessThanOrEqual(1.02 * dataBytes);
      for (const c of reads()) {
        expect(data.some(([s, e]) => c.offset >= s && c.offset + c.length <= e)).toBe(true);
      }
      const own = inner.calls.filter((c) => c.op === 'extents').length - (askFirst ? 1 : 0);
      expect(own).toBe(layer.stats().extentsQueries);
      if (askFirst) expect(own).toBe(0); // learned from the client's own block status
      expect(layer.stats().windows).toBeGreaterThan(0);
      await layer.close();
      expect(pool.liveBytes).toBe(0);
    }
  });

  test('a read in a hole or zero range goes straight through, and never starts a window', async () => {
    const { mem, model } = await disk(16 * MiB, [[0, MiB]]);
    const { layer, reads } = setup(mem);
    await readStream(layer, model, 2 * MiB, 4 * MiB, 256 * KiB, 4);
    expect(reads().every((c) => c.length === 256 * KiB)).toBe(true);
    expect(layer.stats().windows).toBe(0);
    const ex = await mem.extents(2 * MiB, MiB);
    expect(ex[0].flags & EXTENT_HOLE).toBe(EXTENT_HOLE);
    await layer.close();
  });

  test('random reads go straight through', async () => {
    const { mem, model } = await disk(16 * MiB);
    const { layer, reads, fetched } = setup(mem);
    let seed = 7;
    let total = 0;
    for (let i = 0; i < 100; i++) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      const off = (seed % 4000) * 4 * KiB;
      const got = await layer.pread(off, 4 * KiB);
      expect(got.equals(model.subarray(off, off + 4 * KiB))).toBe(true);
      releaseBuffer(got);
      total += 4 * KiB;
    }
    expect(reads()).toHaveLength(100);
    expect(fetched()).toBe(total);
    expect(layer.stats().windows).toBe(0);
    await layer.close();
  });

  test('windows stop at the end of the export; without extents they are bounded by it only', async () => {
    const size = 10 * MiB + 100 * KiB;
    const { mem, model } = await disk(size, [[0, 10 * MiB + 128 * KiB]].map(([s, e]) => [s, Math.min(e, size)]) as Array<[number, number]>);
    const plain = new NoExtents(mem);
    const { pool, inner, layer, reads, fetched } = setup(plain);
    await readStream(layer, model, 0, size, MiB, 2);
    expect(Math.max(...reads().map((c) => c.offset + c.length))).toBe(size);
    expect(fetched()).toBe(size);
    expect(inner.calls.filter((c) => c.op === 'extents')).toHaveLength(0);
    expect(layer.stats().windows).toBeGreaterThan(0);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });
});

describe('ReadaheadLayer: memory and buffer ownership', () => {
  test('16 interleaved streams stay within maxWindows x windowSize', async () => {
    const { mem, model } = await disk(64 * MiB);
    const { pool, layer, fetched } = setup(mem, { windowSize: 2 * MiB, maxWindows: 3 }, { delay: (c) => c.seq % 3 });
    await Promise.all(Array.from({ length: 16 }, (_, i) => readStream(layer, model, i * 4 * MiB, (i + 1) * 4 * MiB, 128 * KiB, 8)));
    expect(layer.stats().peakHeldBytes).toBeLessThanOrEqual(6 * MiB);
    expect(fetched()).toBeLessThanOrEqual(1.02 * 64 * MiB);
    // No stream stalled until a window went stale (2 s): room went round in order.
    expect(layer.stats().evicted).toBe(0);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('reads are slices of one window, each with its own reference; the window goes once all are released', async () => {
    const { mem } = await disk(32 * MiB);
    const { pool, layer } = setup(mem);
    releaseBuffer(await layer.pread(0, 256 * KiB));
    const a = await layer.pread(256 * KiB, 256 * KiB);
    const b = await layer.pread(512 * KiB, 256 * KiB);
    expect(a.buffer).toBe(b.buffer);
    expect(bufferRefs(a)).toBe(3); // the window, a and b
    releaseBuffer(a);
    expect(bufferRefs(b)).toBe(2);
    // Read the window to its end: it is dropped, and only b holds its memory.
    let off = 768 * KiB;
    const winEnd = 256 * KiB + 8 * MiB;
    while (off < winEnd) {
      releaseBuffer(await layer.pread(off, Math.min(256 * KiB, winEnd - off)));
      off += 256 * KiB;
    }
    expect(bufferRefs(b)).toBe(1);
    releaseBuffer(b);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('a read spanning two windows gets a buffer of its own, with the right bytes', async () => {
    const { mem, model } = await disk(32 * MiB);
    const { pool, layer } = setup(mem, { windowSize: MiB });
    releaseBuffer(await layer.pread(0, 300 * KiB));
    for (let off = 300 * KiB; off < 8 * MiB; off += 300 * KiB) {
      const got = await layer.pread(off, 300 * KiB);
      expect(got.equals(model.subarray(off, off + 300 * KiB))).toBe(true);
      releaseBuffer(got);
    }
    expect(layer.stats().hits).toBeGreaterThan(20);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });
});

describe('ReadaheadLayer: never stale', () => {
  test.each(['write', 'pwritev', 'zero', 'trim'] as const)('a %s through the layer drops the windows it overlaps', async (op) => {
    const { mem, model } = await disk(32 * MiB);
    const { pool, layer, reads } = setup(mem);
    releaseBuffer(await layer.pread(0, MiB));
    releaseBuffer(await layer.pread(MiB, MiB)); // window [1M, 9M) loaded
    const before = reads().length;
    const patch = Buffer.alloc(64 * KiB, 0xab);
    if (op === 'write') await layer.pwrite(patch, 5 * MiB);
    else if (op === 'pwritev') await layer.pwritev([patch.subarray(0, 1000), patch.subarray(1000)], 5 * MiB);
    else if (op === 'zero') await layer.zero(5 * MiB, 64 * KiB);
    else await layer.trim(5 * MiB, 64 * KiB);
    if (op === 'write' || op === 'pwritev') patch.copy(model, 5 * MiB);
    else model.fill(0, 5 * MiB, 5 * MiB + 64 * KiB);
    const got = await layer.pread(2 * MiB, 4 * MiB);
    expect(got.equals(model.subarray(2 * MiB, 6 * MiB))).toBe(true);
    releaseBuffer(got);
    expect(reads().length).toBeGreaterThan(before);
    expect(layer.stats().invalidated).toBeGreaterThan(0);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('a window loaded while a write runs is not used after the write', async () => {
    const { mem, model } = await disk(32 * MiB);
    const gated = new GatedWrites(mem);
    const { pool, layer } = setup(gated);
    releaseBuffer(await layer.pread(0, MiB));
    gated.hold();
    const write = layer.pwrite(Buffer.alloc(MiB, 0x5a), 4 * MiB); // not landed yet
    releaseBuffer(await layer.pread(MiB, MiB)); // window [1M, 9M) loads the old bytes
    expect(layer.stats().windows).toBe(1);
    gated.release();
    await write;
    Buffer.alloc(MiB, 0x5a).copy(model, 4 * MiB);
    const got = await layer.pread(2 * MiB, 4 * MiB);
    expect(got.equals(model.subarray(2 * MiB, 6 * MiB))).toBe(true);
    releaseBuffer(got);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });
});

describe('ReadaheadLayer: streams and writes at random', () => {
  test.each([1, 2, 3, 4, 5])('every read shows every write that finished before it started (seed %i)', async (seed) => {
    let rng = seed;
    const rnd = (n: number) => {
      rng = (rng * 1103515245 + 12345) % 2147483648;
      return rng % n;
    };
    const size = 16 * MiB;
    const { mem, model: base } = await disk(size);
    const { pool, layer } = setup(mem, { windowSize: MiB, maxWindows: 3 }, { delay: () => rnd(3) });
    let clock = 0;
    const writes: Array<{ off: number; data: Buffer; start: number; end: number }> = [];
    /** The bytes a read over [off, off + n) that ran from `start` to `end` may be checked against. */
    const expected = (off: number, n: number, start: number, end: number) => {
      const want = Buffer.from(base.subarray(off, off + n));
      const known = new Uint8Array(n).fill(1);
      for (const w of writes) {
        const a = Math.max(off, w.off);
        const b = Math.min(off + n, w.off + w.data.length);
        if (a >= b) continue;
        if (w.end < start) w.data.copy(want, a - off, a - w.off, b - w.off);
        else if (w.start < end) known.fill(0, a - off, b - off); // concurrent: either is fine
      }
      return { want, known };
    };
    let checked = 0;
    const reader = async (from: number) => {
      const inflight: Promise<void>[] = [];
      for (let off = from; off < from + 4 * MiB; ) {
        const n = 64 * KiB * (1 + rnd(5));
        const at = off;
        const start = ++clock;
        inflight.push(
          layer.pread(at, n).then((got) => {
            const { want, known } = expected(at, n, start, ++clock);
            for (let i = 0; i < n; i++) {
              if (known[i] && got[i] !== want[i]) throw new Error(`stale or wrong byte at ${at + i}`);
            }
            checked++;
            releaseBuffer(got);
          }),
        );
        if (inflight.length >= 4) await inflight.shift();
        off += n;
      }
      await Promise.all(inflight);
    };
    const writer = async () => {
      for (let i = 0; i < 30; i++) {
        const off = rnd(size - 200 * KiB);
        const data = Buffer.alloc(1 + rnd(200 * KiB), 1 + rnd(250));
        const w = { off, data, start: ++clock, end: Infinity };
        writes.push(w);
        await layer.pwrite(Buffer.from(data), off);
        w.end = ++clock;
        await new Promise((r) => setTimeout(r, rnd(3)));
      }
    };
    await Promise.all([reader(0), reader(5 * MiB), reader(10 * MiB), writer()]);
    expect(checked).toBeGreaterThan(50);
    expect(layer.stats().windows).toBeGreaterThan(0);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });
});

describe('ReadaheadLayer: failures', () => {
  test('a window that fails to load: its readers retry their own ranges straight through', async () => {
    const { mem, model } = await disk(32 * MiB);
    const { pool, layer } = setup(mem, {}, { fail: (c) => c.op === 'pread' && c.length === 8 * MiB });
    await readStream(layer, model, 0, 16 * MiB, 256 * KiB, 8);
    expect(layer.stats().failedWindows).toBeGreaterThan(0);
    expect(layer.stats().passthroughReads).toBeGreaterThan(1);
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('a read that really fails gets the error', async () => {
    const { mem } = await disk(32 * MiB);
    const { layer } = setup(mem, {}, { fail: (c) => c.op === 'pread' && c.offset <= 3 * MiB && c.offset + c.length > 3 * MiB });
    releaseBuffer(await layer.pread(0, MiB));
    releaseBuffer(await layer.pread(MiB, MiB));
    releaseBuffer(await layer.pread(2 * MiB, MiB));
    await expect(layer.pread(3 * MiB, MiB)).rejects.toMatchObject({ errno: NbdError.EIO });
    await layer.close();
  });
});

describe('ReadaheadLayer: construction', () => {
  test('rejects bad options and passes capabilities and size through', () => {
    const mem = new MemoryBackend(MiB, false, testPool());
    expect(() => new ReadaheadLayer(mem, { pool: testPool(), windowSize: 0 })).toThrow(RangeError);
    expect(() => new ReadaheadLayer(mem, { pool: testPool(), maxWindows: 0 })).toThrow(RangeError);
    const layer = new ReadaheadLayer(mem, { pool: testPool() });
    expect(layer.capabilities()).toEqual(mem.capabilities());
    expect(layer.size()).toBe(MiB);
    expect(layer.name).toBe('memory');
  });
});
