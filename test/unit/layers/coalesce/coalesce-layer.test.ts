import pino from 'pino';
import { CoalesceLayer, type CoalesceOptions } from '../../../../src/layers/coalesce/coalesce-layer';
import { MemoryBackend } from '../../../../src/backends/memory-backend';
import { DataLossError, toNbdErrno } from '../../../../src/core/errors';
import { NbdError } from '../../../../src/nbd/codec/constants';
import { EXTENT_HOLE } from '../../../../src/core/backend';
import { RecordingLayer, type RecordingOptions } from '../../../helpers/recording-layer';
import { readCopy, testPool } from '../../../helpers/pool';

const KiB = 1024;
const MiB = 1024 * KiB;

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

function stack(size: number, opts: Partial<CoalesceOptions> = {}, rec: RecordingOptions = {}) {
  const mem = new MemoryBackend(size, false, testPool());
  const inner = new RecordingLayer(mem, rec);
  const layer = new CoalesceLayer(inner, { idleMs: 0, ...opts, pool: opts.pool ?? testPool() });
  return { mem, inner, layer };
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** True if `p` has settled after the event loop has had a few turns. */
async function isSettled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await tick();
  return done;
}

/** A pino logger that keeps error-level records in memory. */
function captureLogger() {
  const records: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'error' }, { write: (line: string) => records.push(JSON.parse(line)) });
  return { logger, records };
}

describe('CoalesceLayer construction', () => {
  test('rejects requestSize <= 0 and inconsistent limits', () => {
    const mem = new MemoryBackend(MiB, false, testPool());
    expect(() => new CoalesceLayer(mem, { pool: testPool(), requestSize: 0 })).toThrow(RangeError);
    expect(() => new CoalesceLayer(mem, { pool: testPool(), requestSize: -1 })).toThrow(RangeError);
    expect(() => new CoalesceLayer(mem, { pool: testPool(), requestSize: 1.5 })).toThrow(RangeError);
    expect(() => new CoalesceLayer(mem, { pool: testPool(), requestSize: MiB, maxBufferedBytes: MiB - 1 })).toThrow(RangeError);
    expect(() => new CoalesceLayer(mem, { pool: testPool(), maxInFlight: 0 })).toThrow(RangeError);
  });

  test('keeps the inner capabilities, so CAN_MULTI_CONN stays', () => {
    const { mem, layer } = stack(MiB);
    expect(layer.name).toBe('coalesce');
    expect(layer.capabilities()).toEqual(mem.capabilities());
    expect(layer.size()).toBe(MiB);
  });
});

describe('CoalesceLayer merging', () => {
  test('nbdcopy-like 256 KiB writes become 8 MiB requests', async () => {
    const { inner, layer, mem } = stack(32 * MiB);
    const data = pattern(16 * MiB, 1);
    // 64 in flight, as nbdcopy does
    await Promise.all(
      Array.from({ length: 64 }, (_, i) => layer.pwrite(data.subarray(i * 256 * KiB, (i + 1) * 256 * KiB), i * 256 * KiB)),
    );
    await layer.flush();
    expect(inner.writes().map((c) => [c.offset, c.length])).toEqual([
      [0, 8 * MiB],
      [8 * MiB, 8 * MiB],
    ]);
    expect((await readCopy(mem, 0, 16 * MiB)).equals(data)).toBe(true);
    const st = layer.stats();
    expect(st.writesIn).toBe(64);
    expect(st.requestsOut).toBe(2);
    expect(st.bytesOut).toBe(16 * MiB);
    expect(st.mergedWrites).toBe(62);
    expect(st.sentFull).toBe(2);
  });

  test('qemu-img-like 2 MiB writes, one at a time, become 8 MiB requests', async () => {
    const { inner, layer, mem } = stack(64 * MiB);
    const data = pattern(20 * MiB, 2);
    for (let off = 0; off < data.length; off += 2 * MiB) await layer.pwrite(data.subarray(off, off + 2 * MiB), off);
    await layer.flush();
    expect(inner.writes().map((c) => c.length)).toEqual([8 * MiB, 8 * MiB, 4 * MiB]);
    expect(inner.calls[inner.calls.length - 1].op).toBe('flush');
    expect((await readCopy(mem, 0, data.length)).equals(data)).toBe(true);
  });

  test('unaligned writes are split at request boundaries', async () => {
    const { inner, layer, mem } = stack(MiB, { requestSize: 64 * KiB });
    const data = pattern(300 * KiB, 3);
    const step = 10 * KiB + 7;
    for (let off = 0; off < data.length; off += step) {
      await layer.pwrite(data.subarray(off, Math.min(off + step, data.length)), 1000 + off);
    }
    await layer.flush();
    const lengths = inner.writes().map((c) => c.length);
    expect(lengths.slice(0, -1).every((n) => n === 64 * KiB)).toBe(true);
    expect((await readCopy(mem, 1000, data.length)).equals(data)).toBe(true);
  });

  test('interleaved sequential streams (several connections) each merge', async () => {
    const { inner, layer, mem } = stack(64 * MiB, { requestSize: MiB });
    const streams = [0, 16 * MiB, 32 * MiB, 48 * MiB];
    const data = streams.map((_, i) => pattern(4 * MiB, 10 + i));
    const chunk = 256 * KiB;
    const writes: Promise<void>[] = [];
    for (let off = 0; off < 4 * MiB; off += chunk) {
      streams.forEach((base, i) => writes.push(layer.pwrite(data[i].subarray(off, off + chunk), base + off)));
    }
    await Promise.all(writes);
    await layer.flush();
    expect(inner.writes().every((c) => c.length === MiB)).toBe(true);
    expect(inner.writes()).toHaveLength(16);
    for (let i = 0; i < streams.length; i++) {
      expect((await readCopy(mem, streams[i], 4 * MiB)).equals(data[i])).toBe(true);
    }
  });

  test('a rewrite inside an open run sends the run first, then the rewrite on top of it', async () => {
    const { inner, layer, mem } = stack(MiB, { requestSize: 64 * KiB }, { delay: () => 2 });
    await layer.pwrite(Buffer.alloc(8 * KiB, 1), 0);
    await layer.pwrite(Buffer.alloc(KiB, 2), 2 * KiB);
    await layer.pwrite(Buffer.alloc(8 * KiB, 3), 8 * KiB);
    await layer.flush();
    const w = inner.writes();
    expect(w.map((c) => [c.offset, c.length]).sort((a, b) => a[0] - b[0])).toEqual([
      [0, 8 * KiB],
      [2 * KiB, KiB],
      [8 * KiB, 8 * KiB],
    ]);
    const first = w.find((c) => c.offset === 0)!;
    const rewrite = w.find((c) => c.offset === 2 * KiB)!;
    expect(rewrite.start).toBeGreaterThanOrEqual(first.end!);
    expect(layer.stats().sentOverlap).toBe(1);
    expect(inner.overlapViolations).toEqual([]);
    const got = await readCopy(mem, 0, 16 * KiB);
    const want = Buffer.concat([Buffer.alloc(2 * KiB, 1), Buffer.alloc(KiB, 2), Buffer.alloc(5 * KiB, 1), Buffer.alloc(8 * KiB, 3)]);
    expect(got.equals(want)).toBe(true);
  });

  test('the caller may reuse its buffer once pwrite resolves', async () => {
    const { layer, mem } = stack(MiB, { requestSize: 64 * KiB });
    const buf = Buffer.alloc(4 * KiB, 7);
    await layer.pwrite(buf, 0);
    buf.fill(9);
    await layer.flush();
    expect((await readCopy(mem, 0, 4 * KiB)).equals(Buffer.alloc(4 * KiB, 7))).toBe(true);
  });

  test('a write larger than requestSize passes through unsplit, after overlapping buffered data', async () => {
    const { inner, layer, mem } = stack(MiB, { requestSize: 64 * KiB });
    await layer.pwrite(Buffer.alloc(4 * KiB, 1), 100 * KiB);
    expect(inner.writes()).toHaveLength(0);
    const big = pattern(200 * KiB, 4);
    await layer.pwrite(big, 0);
    expect(inner.writes().map((c) => [c.offset, c.length])).toEqual([
      [100 * KiB, 4 * KiB],
      [0, 200 * KiB],
    ]);
    expect(layer.stats().passthroughWrites).toBe(1);
    expect((await readCopy(mem, 0, 200 * KiB)).equals(big)).toBe(true);
  });

  test('an idle buffer is sent without waiting for a flush', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB, idleMs: 5 });
    await layer.pwrite(Buffer.alloc(4 * KiB, 1), 0);
    expect(inner.writes()).toHaveLength(0);
    await sleep(40);
    expect(inner.writes()).toHaveLength(1);
    expect(layer.stats().sentIdle).toBe(1);
    await layer.close();
  });

  test('a run is sent idleMs after its last write: not earlier, not a period later', async () => {
    jest.useFakeTimers();
    try {
      const { inner, layer } = stack(MiB, { requestSize: 64 * KiB, idleMs: 10 });
      await layer.pwrite(Buffer.alloc(KiB, 1), 0);
      await jest.advanceTimersByTimeAsync(6);
      await layer.pwrite(Buffer.alloc(KiB, 2), KiB); // extends it: due at 16 ms now
      await layer.pwrite(Buffer.alloc(KiB, 3), 512 * KiB); // another run, due at 16 ms too
      await jest.advanceTimersByTimeAsync(9);
      expect(inner.writes()).toHaveLength(0);
      await jest.advanceTimersByTimeAsync(2);
      expect(inner.writes().map((c) => [c.offset, c.length])).toEqual([
        [0, 2 * KiB],
        [512 * KiB, KiB],
      ]);
      expect(layer.stats().sentIdle).toBe(2);
      await layer.close();
    } finally {
      jest.useRealTimers();
    }
  });

  test('too many open buffers: the least recently written is sent', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB, maxOpenBuffers: 2 });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    await layer.pwrite(Buffer.alloc(KiB, 2), 100 * KiB);
    await layer.pwrite(Buffer.alloc(KiB, 3), KiB); // appends to the first: now most recent
    await layer.pwrite(Buffer.alloc(KiB, 4), 200 * KiB);
    await tick();
    expect(inner.writes().map((c) => c.offset)).toEqual([100 * KiB]);
    expect(layer.stats().sentEvicted).toBe(1);
    await layer.flush();
  });

  test('directWriteSize: big writes go straight through, uncopied and awaited; smaller ones merge', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB, directWriteSize: 32 * KiB });
    const big = pattern(32 * KiB, 1);
    await layer.pwrite(big, 0);
    // Already done on the inner backend when pwrite resolves: no buffering.
    expect(inner.writes().map((w) => [w.offset, w.length])).toEqual([[0, 32 * KiB]]);
    expect(layer.stats().passthroughWrites).toBe(1);
    await layer.pwrite(pattern(16 * KiB, 2), 32 * KiB);
    await layer.pwrite(pattern(16 * KiB, 3), 48 * KiB);
    await layer.flush();
    expect(inner.writes().map((w) => [w.offset, w.length])).toEqual([[0, 32 * KiB], [32 * KiB, 32 * KiB]]);
    expect(Buffer.concat([big, pattern(16 * KiB, 2), pattern(16 * KiB, 3)]).equals(await readCopy(layer, 0, 64 * KiB))).toBe(true);
  });

  test('never more than maxInFlight requests reach the inner backend at once', async () => {
    const { inner, layer } = stack(16 * MiB, { requestSize: 64 * KiB, maxInFlight: 3 }, { delay: () => 2 });
    await Promise.all(Array.from({ length: 64 }, (_, i) => layer.pwrite(pattern(32 * KiB, i), i * 32 * KiB)));
    await layer.flush();
    expect(inner.writes()).toHaveLength(32);
    expect(inner.maxInFlight).toBe(3);
  });
});

describe('CoalesceLayer ordering and visibility', () => {
  test('a read sees data still in an open buffer', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB });
    await layer.pwrite(Buffer.from('hello'), 1000);
    expect(inner.writes()).toHaveLength(0);
    const got = await readCopy(layer, 998, 9);
    expect(got.toString('latin1')).toBe('\0\0hello\0\0');
    await layer.flush(); // gives back the buffered copy
  });

  test('a read sees data whose request is still in flight', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB });
    const data = pattern(64 * KiB, 5);
    inner.hold();
    await layer.pwrite(data.subarray(0, 32 * KiB), 0);
    await layer.pwrite(data.subarray(32 * KiB), 32 * KiB); // full: sent, but held below
    expect(inner.heldCount()).toBe(1);
    const read = readCopy(layer, 60 * KiB, 8 * KiB);
    // the inner read is held too; let it and the write go together
    inner.release();
    const got = await read;
    expect(got.subarray(0, 4 * KiB).equals(data.subarray(60 * KiB))).toBe(true);
    expect(got.subarray(4 * KiB).equals(Buffer.alloc(4 * KiB))).toBe(true);
    await layer.flush();
  });

  test('a read overlays in-flight and buffered data in the order written', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB });
    inner.hold();
    await layer.pwrite(Buffer.alloc(32 * KiB, 1), 0);
    await layer.pwrite(Buffer.alloc(32 * KiB, 1), 32 * KiB); // full: in flight (held)
    await layer.pwrite(Buffer.alloc(KiB, 2), 10 * KiB); // buffered, newer
    const zero = layer.zero(12 * KiB, KiB); // sends nothing buffered there, waits for the held write
    await tick();
    const read = readCopy(layer, 9 * KiB, 5 * KiB);
    await tick();
    inner.release();
    const got = await read;
    await zero;
    const want = Buffer.concat([Buffer.alloc(KiB, 1), Buffer.alloc(KiB, 2), Buffer.alloc(KiB, 1), Buffer.alloc(KiB, 0), Buffer.alloc(KiB, 1)]);
    expect(got.equals(want)).toBe(true);
    await layer.flush();
    expect(inner.overlapViolations).toEqual([]);
  });

  test('zero over buffered data sends the data first, then zeroes', async () => {
    const { inner, layer, mem } = stack(MiB, { requestSize: 64 * KiB }, { delay: (c) => (c.op === 'pwrite' ? 5 : 0) });
    await layer.pwrite(Buffer.alloc(16 * KiB, 1), 0);
    await layer.zero(4 * KiB, 4 * KiB);
    await layer.flush(); // the zero is write-back: acknowledged once queued
    const [w, z] = inner.calls;
    expect(w.op).toBe('pwrite');
    expect(z.op).toBe('zero');
    expect(z.start).toBeGreaterThanOrEqual(w.end!);
    const want = Buffer.concat([Buffer.alloc(4 * KiB, 1), Buffer.alloc(4 * KiB), Buffer.alloc(8 * KiB, 1)]);
    expect((await readCopy(mem, 0, 16 * KiB)).equals(want)).toBe(true);
    expect((await readCopy(layer, 0, 16 * KiB)).equals(want)).toBe(true);
  });

  test('a write after a zero on the same range lands on top of it', async () => {
    const { inner, layer, mem } = stack(MiB, { requestSize: 64 * KiB }, { delay: (c) => (c.op === 'zero' ? 5 : 0) });
    await layer.pwrite(Buffer.alloc(16 * KiB, 1), 0);
    await layer.zero(0, 16 * KiB);
    await layer.pwrite(Buffer.alloc(KiB, 2), KiB);
    await layer.flush();
    expect(inner.overlapViolations).toEqual([]);
    const want = Buffer.concat([Buffer.alloc(KiB), Buffer.alloc(KiB, 2), Buffer.alloc(14 * KiB)]);
    expect((await readCopy(mem, 0, 16 * KiB)).equals(want)).toBe(true);
  });

  test('trim over buffered data keeps the order too', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB }, { delay: (c) => (c.op === 'pwrite' ? 5 : 0) });
    await layer.pwrite(Buffer.alloc(16 * KiB, 1), 0);
    await layer.trim(0, 64 * KiB);
    expect(inner.calls.map((c) => c.op)).toEqual(['pwrite', 'trim']);
    expect(inner.calls[1].start).toBeGreaterThanOrEqual(inner.calls[0].end!);
    expect(inner.overlapViolations).toEqual([]);
  });

  test('an overlapping write waits for the in-flight one instead of racing it', async () => {
    const { inner, layer, mem } = stack(MiB, { requestSize: 64 * KiB });
    inner.hold();
    await layer.pwrite(Buffer.alloc(32 * KiB, 1), 0);
    await layer.pwrite(Buffer.alloc(32 * KiB, 1), 32 * KiB); // full: in flight
    await layer.pwrite(Buffer.alloc(32 * KiB, 2), 32 * KiB);
    await layer.pwrite(Buffer.alloc(32 * KiB, 2), 64 * KiB); // full too: committed, must wait
    await tick();
    expect(inner.heldCount()).toBe(1); // the second has not been sent
    inner.release();
    await layer.flush();
    expect(inner.overlapViolations).toEqual([]);
    const [a, b] = inner.writes();
    expect(b.start).toBeGreaterThanOrEqual(a.end!);
    const want = Buffer.concat([Buffer.alloc(32 * KiB, 1), Buffer.alloc(64 * KiB, 2)]);
    expect((await readCopy(mem, 0, 96 * KiB)).equals(want)).toBe(true);
  });

  test('FUA write: overlapping buffered data first, then the write with fua, durable before it resolves', async () => {
    const { inner, layer, mem } = stack(MiB, { requestSize: 64 * KiB });
    await layer.pwrite(Buffer.alloc(16 * KiB, 1), 0);
    inner.hold();
    const fua = layer.pwrite(Buffer.alloc(KiB, 2), 4 * KiB, { fua: true });
    expect(await isSettled(fua)).toBe(false);
    inner.release();
    await fua;
    expect(inner.writes().map((c) => [c.offset, c.length, c.fua])).toEqual([
      [0, 16 * KiB, false],
      [4 * KiB, KiB, true],
    ]);
    expect((await readCopy(mem, 4 * KiB, KiB)).equals(Buffer.alloc(KiB, 2))).toBe(true);
    expect(inner.overlapViolations).toEqual([]);
  });

  test('FUA zero is passed through with fua after buffered data', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB });
    await layer.pwrite(Buffer.alloc(16 * KiB, 1), 0);
    await layer.zero(0, 8 * KiB, { fua: true });
    expect(inner.calls.map((c) => [c.op, c.fua])).toEqual([
      ['pwrite', false],
      ['zero', true],
    ]);
  });

  test('extents report data for ranges with pending writes', async () => {
    const { layer } = stack(MiB, { requestSize: 64 * KiB });
    await layer.pwrite(Buffer.alloc(KiB, 1), 200 * KiB);
    const ex = await layer.extents(0, MiB);
    const at = ex.find((e) => e.offset <= 200 * KiB && e.offset + e.length > 200 * KiB)!;
    expect(at.flags & EXTENT_HOLE).toBe(0);
    expect(ex[ex.length - 1].offset + ex[ex.length - 1].length).toBe(MiB);
  });
});

describe('CoalesceLayer flush', () => {
  test('flush sends everything buffered, waits, then flushes the inner backend', async () => {
    const { inner, layer, mem } = stack(MiB, { requestSize: 64 * KiB }, { delay: (c) => (c.op === 'pwrite' ? 3 : 0) });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    await layer.pwrite(Buffer.alloc(KiB, 2), 500 * KiB);
    await layer.flush();
    const flush = inner.calls.find((c) => c.op === 'flush')!;
    for (const w of inner.writes()) expect(w.end!).toBeLessThanOrEqual(flush.start);
    expect((await readCopy(mem, 500 * KiB, KiB)).equals(Buffer.alloc(KiB, 2))).toBe(true);
  });

  test('flush during writes covers every write that resolved before it', async () => {
    const { mem, layer } = stack(8 * MiB, { requestSize: 256 * KiB }, { delay: () => 1 });
    const done: Array<{ off: number; data: Buffer }> = [];
    let stop = false;
    const writer = async (base: number, seed: number) => {
      for (let i = 0; !stop && i < 100; i++) {
        const data = pattern(16 * KiB, seed * 1000 + i);
        await layer.pwrite(data, base + i * 16 * KiB);
        done.push({ off: base + i * 16 * KiB, data });
      }
    };
    const writers = [writer(0, 1), writer(2 * MiB, 2), writer(4 * MiB, 3)];
    for (let k = 0; k < 5; k++) {
      await sleep(2);
      const covered = [...done];
      await layer.flush();
      for (const w of covered) expect((await readCopy(mem, w.off, w.data.length)).equals(w.data)).toBe(true);
    }
    stop = true;
    await Promise.all(writers);
    await layer.flush();
  });

  test('concurrent connections with many writes in flight and random delays', async () => {
    const size = 16 * MiB;
    const { mem, inner, layer } = stack(size, { requestSize: MiB, maxBufferedBytes: 8 * MiB }, { delay: (c) => (c.seq * 7) % 4 });
    const model = Buffer.alloc(size);
    const conn = async (c: number) => {
      const base = c * 4 * MiB;
      const inflight: Promise<void>[] = [];
      for (let off = 0; off < 4 * MiB; off += 64 * KiB) {
        const data = pattern(64 * KiB, c * 100 + off);
        data.copy(model, base + off);
        inflight.push(layer.pwrite(data, base + off));
        if (inflight.length >= 16) await inflight.shift();
      }
      await Promise.all(inflight);
      await layer.flush(); // one flush per connection, like nbdcopy --flush
    };
    await Promise.all([0, 1, 2, 3].map(conn));
    expect((await readCopy(mem, 0, size)).equals(model)).toBe(true);
    expect(inner.overlapViolations).toEqual([]);
    expect(inner.writes().length).toBeLessThanOrEqual(24);
    expect(layer.stats().maxBufferedBytes).toBeLessThanOrEqual(8 * MiB);
  });

  test('random offsets and sizes match a plain buffer', async () => {
    const size = 2 * MiB;
    const { mem, layer, inner } = stack(size, { requestSize: 64 * KiB, maxOpenBuffers: 4, maxBufferedBytes: 512 * KiB }, { delay: (c) => c.seq % 3 });
    const model = Buffer.alloc(size);
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 400; i++) {
      const len = 1 + rnd(100 * KiB);
      const off = rnd(size - len);
      if (rnd(10) === 0) {
        model.fill(0, off, off + len);
        ops.push(layer.zero(off, len));
      } else {
        const data = pattern(len, i);
        data.copy(model, off);
        ops.push(layer.pwrite(data, off));
      }
      // keep each op ordered after the previous one, as one client connection waiting for replies
      await ops[ops.length - 1];
      if (rnd(20) === 0) expect((await readCopy(layer, 0, size)).equals(model)).toBe(true);
    }
    await layer.flush();
    expect((await readCopy(mem, 0, size)).equals(model)).toBe(true);
    expect(inner.overlapViolations).toEqual([]);
  });
});

describe('CoalesceLayer overlapping concurrent connections', () => {
  test('never races overlapping requests, and what reads show is what becomes durable', async () => {
    const size = 512 * KiB;
    const { mem, inner, layer } = stack(
      size,
      { requestSize: 32 * KiB, maxBufferedBytes: 128 * KiB, maxOpenBuffers: 3, idleMs: 1 },
      { delay: (c) => (c.seq * 13) % 4 },
    );
    let seed = 99;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    // four connections hammering the same 128 KiB, each with up to 8 requests in flight
    const conn = async (c: number) => {
      const inflight: Promise<void>[] = [];
      for (let i = 0; i < 150; i++) {
        const len = 1 + rnd(48 * KiB);
        const off = rnd(128 * KiB);
        inflight.push(
          rnd(8) === 0 ? layer.zero(off, len, { fua: rnd(2) === 0 }) : layer.pwrite(pattern(len, c * 1000 + i), off, { fua: rnd(10) === 0 }),
        );
        if (inflight.length >= 8) await inflight.shift();
      }
      await Promise.all(inflight);
    };
    await Promise.all([0, 1, 2, 3].map(conn));
    const seen = await readCopy(layer, 0, size);
    await layer.flush();
    expect(inner.overlapViolations).toEqual([]);
    expect((await readCopy(mem, 0, size)).equals(seen)).toBe(true);
    expect(layer.stats().maxBufferedBytes).toBeLessThanOrEqual(128 * KiB);
    await layer.close();
  });
});

describe('CoalesceLayer memory bound', () => {
  test('pwrite blocks when buffers are full and resumes when space frees', async () => {
    const limit = 4 * 64 * KiB;
    const { inner, layer } = stack(4 * MiB, { requestSize: 64 * KiB, maxBufferedBytes: limit, maxInFlight: 2 });
    inner.hold();
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 16; i++) writes.push(layer.pwrite(Buffer.alloc(32 * KiB, i + 1), i * 32 * KiB));
    await tick();
    const settled = await Promise.all(writes.map(isSettled));
    expect(settled).toEqual([...Array(8).fill(true), ...Array(8).fill(false)]);
    expect(layer.stats().bufferedBytes).toBe(limit);
    expect(layer.stats().backpressureWaits).toBeGreaterThan(0);
    inner.release();
    await Promise.all(writes);
    await layer.flush();
    expect(layer.stats().maxBufferedBytes).toBeLessThanOrEqual(limit);
    expect(layer.stats().bufferedBytes).toBe(0);
  });

  test('partly filled buffers are sent to make room rather than waiting forever', async () => {
    const { layer, inner } = stack(4 * MiB, { requestSize: 64 * KiB, maxBufferedBytes: 128 * KiB, maxOpenBuffers: 8 });
    // each write opens a new run; only three fit, so older ones must be evicted
    for (let i = 0; i < 10; i++) await layer.pwrite(Buffer.alloc(40 * KiB, i + 1), i * 256 * KiB);
    expect(inner.writes().length).toBeGreaterThanOrEqual(7);
    expect(layer.stats().sentEvicted).toBeGreaterThanOrEqual(7);
    expect(layer.stats().maxBufferedBytes).toBeLessThanOrEqual(128 * KiB);
    await layer.flush();
  });

  test('many small scattered writes with a slow backend stay within the limit', async () => {
    const limit = 256 * KiB;
    const { layer, inner, mem } = stack(8 * MiB, { requestSize: 32 * KiB, maxBufferedBytes: limit }, { delay: () => 1 });
    const model = Buffer.alloc(8 * MiB);
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const off = ((i * 7919) % 2000) * 4 * KiB;
      const data = Buffer.alloc(4 * KiB, (i % 250) + 1);
      ops.push(layer.pwrite(data, off));
      await ops[i]; // ordered: one client connection
      data.copy(model, off);
    }
    await layer.flush();
    expect(layer.stats().maxBufferedBytes).toBeLessThanOrEqual(limit);
    expect((await readCopy(mem, 0, 8 * MiB)).equals(model)).toBe(true);
    expect(inner.overlapViolations).toEqual([]);
  });
});

describe('CoalesceLayer failures', () => {
  test('a failed deferred write is logged and fails this and every later flush', async () => {
    const { logger, records } = captureLogger();
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB, logger }, { fail: (c) => c.op === 'pwrite' && c.offset === 128 * KiB });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    await layer.pwrite(Buffer.alloc(32 * KiB, 2), 128 * KiB);
    await layer.pwrite(Buffer.alloc(32 * KiB, 2), 160 * KiB); // full: sent, fails
    await tick();
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ offset: 128 * KiB, length: 64 * KiB, errno: 'EIO' });
    expect(String(records[0].err)).toContain('injected failure');

    const first = layer.flush();
    await expect(first).rejects.toBeInstanceOf(DataLossError);
    await expect(first).rejects.toThrow(/65536 bytes at offset 131072/);
    expect(toNbdErrno(await first.catch((e: unknown) => e))).toBe(NbdError.EIO);
    await expect(layer.flush()).rejects.toBeInstanceOf(DataLossError);
    await expect(layer.flush()).rejects.toBeInstanceOf(DataLossError);
    // the copy is doomed: new data is refused rather than silently accepted
    await expect(layer.pwrite(Buffer.alloc(KiB), 0)).rejects.toMatchObject({ errno: NbdError.EIO });
    await expect(layer.zero(0, KiB)).rejects.toMatchObject({ errno: NbdError.EIO });
    expect(inner.calls.filter((c) => c.op === 'flush')).toHaveLength(0);
    // reads still work
    expect((await readCopy(layer, 0, KiB)).equals(Buffer.alloc(KiB, 1))).toBe(true);
    await expect(layer.close()).rejects.toBeInstanceOf(DataLossError);
    expect(inner.calls[inner.calls.length - 1].op).toBe('close');
  });

  test('a failure during a flush fails that flush even though the inner flush succeeds', async () => {
    const { layer } = stack(MiB, { requestSize: 64 * KiB }, { fail: (c) => c.op === 'pwrite', delay: () => 2 });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    await expect(layer.flush()).rejects.toBeInstanceOf(DataLossError);
  });

  test('a write accepted before the failure was noticed still cannot let a later flush succeed', async () => {
    const { layer } = stack(MiB, { requestSize: 64 * KiB }, { fail: (c) => c.op === 'pwrite' && c.offset === 0, delay: () => 5 });
    await layer.pwrite(Buffer.alloc(32 * KiB, 1), 0);
    await layer.pwrite(Buffer.alloc(32 * KiB, 1), 32 * KiB); // full: sent, will fail in 5 ms
    await layer.pwrite(Buffer.alloc(KiB, 2), 512 * KiB); // accepted meanwhile
    await sleep(20);
    await expect(layer.flush()).rejects.toBeInstanceOf(DataLossError);
    await expect(layer.flush()).rejects.toBeInstanceOf(DataLossError);
    await expect(layer.close()).rejects.toBeInstanceOf(DataLossError); // and gives back what it held
  });

  test('a failed FUA write or zero is reported to its caller and does not poison the layer', async () => {
    const { layer } = stack(MiB, { requestSize: 64 * KiB }, { fail: (c) => !!c.fua });
    await expect(layer.pwrite(Buffer.alloc(KiB), 0, { fua: true })).rejects.toMatchObject({ errno: NbdError.EIO });
    await expect(layer.zero(0, KiB, { fua: true })).rejects.toMatchObject({ errno: NbdError.EIO });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    await layer.flush();
  });

  test('a zero without FUA is write-back: acknowledged at once, read back as zeroes, and its failure fails every later flush', async () => {
    const { layer, inner, mem } = stack(
      MiB,
      { requestSize: 64 * KiB },
      { fail: (c) => c.op === 'zero', delay: (c) => (c.op === 'zero' ? 50 : 0) },
    );
    await mem.pwrite(Buffer.alloc(4 * KiB, 7), 0);
    // Acknowledged while its request is still on the way (it takes 50 ms, then fails)...
    await layer.zero(0, 4 * KiB);
    expect(layer.stats().deferredZeroes).toBe(1);
    expect(inner.calls.filter((c) => c.op === 'zero' && c.end !== undefined)).toEqual([]);
    // ...reads see zeroes meanwhile...
    expect((await readCopy(layer, 0, 4 * KiB)).every((b) => b === 0)).toBe(true);
    // ...and once it has failed, flush reports the loss, now and later; later writes fail too.
    await expect(layer.flush()).rejects.toBeInstanceOf(DataLossError);
    await expect(layer.flush()).rejects.toBeInstanceOf(DataLossError);
    await expect(layer.pwrite(Buffer.alloc(KiB), 0)).rejects.toMatchObject({ errno: NbdError.EIO });
  });

  test('an inner flush failure fails flush', async () => {
    const { layer } = stack(MiB, { requestSize: 64 * KiB }, { fail: (c) => c.op === 'flush' });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    await expect(layer.flush()).rejects.toMatchObject({ errno: NbdError.EIO });
  });
});

describe('CoalesceLayer close', () => {
  test('close sends buffered data, flushes, then closes the inner backend', async () => {
    const mem = new MemoryBackend(MiB, false, testPool());
    const inner = new RecordingLayer(mem);
    const layer = new CoalesceLayer(inner, { pool: testPool(), requestSize: 64 * KiB, idleMs: 1000 });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    let seen: Buffer | undefined;
    const close = mem.close.bind(mem);
    mem.close = async () => {
      seen = await readCopy(mem, 0, KiB);
      return close();
    };
    await layer.close();
    expect(inner.calls.map((c) => c.op)).toEqual(['pwrite', 'flush', 'close']);
    expect(seen!.equals(Buffer.alloc(KiB, 1))).toBe(true);
    await expect(layer.pwrite(Buffer.alloc(1), 0)).rejects.toMatchObject({ errno: NbdError.ESHUTDOWN });
  });

  test('close rejects when buffered data cannot be written, and still closes the inner backend', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB }, { fail: (c) => c.op === 'pwrite' });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    await expect(layer.close()).rejects.toBeInstanceOf(DataLossError);
    expect(inner.calls.map((c) => c.op)).toEqual(['pwrite', 'close']);
  });

  test('close rejects when the final flush fails', async () => {
    const { inner, layer } = stack(MiB, { requestSize: 64 * KiB }, { fail: (c) => c.op === 'flush' });
    await layer.pwrite(Buffer.alloc(KiB, 1), 0);
    await expect(layer.close()).rejects.toMatchObject({ errno: NbdError.EIO });
    expect(inner.calls.map((c) => c.op)).toEqual(['pwrite', 'flush', 'close']);
  });
});
