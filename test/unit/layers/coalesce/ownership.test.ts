/**
 * CoalesceLayer and payload ownership (src/core/backend.ts): pooled buffers are kept and sent by
 * reference, never copied or written into, and every reference handed to the layer is
 * released exactly once, on success, failure and close alike.
 */
import { CoalesceLayer } from '../../../../src/layers/coalesce/coalesce-layer';
import { PayloadPool, bufferRefs, releaseBuffer, releaseBuffers, retainBuffer } from '../../../../src/core/payload-pool';
import type { Backend, Capabilities, WriteFlags } from '../../../../src/core/backend';
import { MemoryBackend } from '../../../../src/backends/memory-backend';
import { BackendError, DataLossError } from '../../../../src/core/errors';
import { NbdError } from '../../../../src/nbd/codec/constants';
import { readCopy, testPool } from '../../../helpers/pool';

const KiB = 1024;
const MiB = 1024 * KiB;

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

interface Sent {
  offset: number;
  segs: readonly Buffer[];
  /** The bytes as they were when the call arrived. */
  bytes: Buffer;
  finish: (err?: Error) => void;
}

/**
 * Keeps every pwrite/pwritev until the test finishes it; stores the data in a MemoryBackend
 * then. `releaseAtOnce` releases the references as soon as the call arrives (a backend that
 * is done with the bytes before it answers, as an HTTP client is once the body is sent).
 */
class CapturingBackend implements Backend {
  readonly name = 'capturing';
  readonly sent: Sent[] = [];
  readonly mem: MemoryBackend;
  constructor(
    size: number,
    private readonly opts: { releaseAtOnce?: boolean; readResult?: () => Buffer } = {},
  ) {
    this.mem = new MemoryBackend(size, false, testPool());
  }
  size(): number {
    return this.mem.size();
  }
  capabilities(): Capabilities {
    return this.mem.capabilities();
  }
  pread(offset: number, length: number): Promise<Buffer> {
    return this.opts.readResult ? Promise.resolve(this.opts.readResult()) : this.mem.pread(offset, length);
  }
  pwrite(data: Buffer, offset: number, _flags?: WriteFlags): Promise<void> {
    return this.pwritev([data], offset);
  }
  pwritev(segs: readonly Buffer[], offset: number): Promise<void> {
    const bytes = Buffer.concat(segs as Buffer[]);
    if (this.opts.releaseAtOnce) releaseBuffers(segs);
    return new Promise<void>((resolve, reject) => {
      if (this.auto) queueMicrotask(() => this.finishAll());
      this.sent.push({
        offset,
        segs,
        bytes,
        finish: (err) => {
          if (!this.opts.releaseAtOnce) releaseBuffers(segs);
          if (err) return reject(err);
          this.mem.pwrite(bytes, offset).then(resolve, reject);
        },
      });
    });
  }
  zero(offset: number, length: number): Promise<void> {
    return this.mem.zero(offset, length);
  }
  flush(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  private auto = false;
  finishAll(err?: Error): void {
    for (const s of this.sent.splice(0)) s.finish(err);
  }
  /** Finish what is pending, and from now on every call as it arrives. */
  finishFromNowOn(): void {
    this.auto = true;
    this.finishAll();
  }
}

function filled(pool: PayloadPool, n: number, byte: number): Buffer {
  const b = pool.tryAllocate(n)!;
  return b.fill(byte);
}

describe('CoalesceLayer keeps payloads by reference', () => {
  test('a merged request is the list of the buffers written, not a copy', async () => {
    const pool = testPool();
    const inner = new CapturingBackend(4 * MiB);
    const layer = new CoalesceLayer(inner, { requestSize: MiB, idleMs: 0, pool });
    const bufs = [0, 1, 2, 3].map((i) => filled(pool, 256 * KiB, i + 1));
    for (let i = 0; i < 4; i++) await layer.pwrite(bufs[i], i * 256 * KiB);
    expect(inner.sent).toHaveLength(1);
    const [req] = inner.sent;
    expect(req.segs).toHaveLength(4);
    req.segs.forEach((s, i) => expect(s).toBe(bufs[i]));
    // Ours for read overlays, and the one handed to the inner backend.
    for (const b of bufs) expect(bufferRefs(b)).toBe(2);
    expect(layer.stats().copiedBytes).toBe(0);
    inner.finishAll();
    await layer.flush();
    for (const b of bufs) expect(bufferRefs(b)).toBe(0);
    expect(pool.liveBytes).toBe(0);
    await layer.close();
  });

  test('a write straddling the request boundary is split into subarrays of one buffer', async () => {
    const pool = testPool();
    const inner = new CapturingBackend(4 * MiB);
    const layer = new CoalesceLayer(inner, { requestSize: 256 * KiB, idleMs: 0, pool });
    await layer.pwrite(filled(pool, 200 * KiB, 1), 0);
    const straddler = filled(pool, 100 * KiB, 2);
    await layer.pwrite(straddler, 200 * KiB);
    expect(inner.sent.map((s) => [s.offset, s.bytes.length])).toEqual([[0, 256 * KiB]]);
    const tail = inner.sent[0].segs[1];
    expect(tail.buffer).toBe(straddler.buffer);
    expect(tail.length).toBe(56 * KiB);
    const flush = layer.flush(); // sends the rest
    await tick();
    const head = inner.sent[1].segs[0];
    expect(inner.sent[1].offset).toBe(256 * KiB);
    expect(head.buffer).toBe(straddler.buffer);
    expect(head.byteOffset).toBe(straddler.byteOffset + 56 * KiB);
    inner.finishAll();
    await flush;
    expect(pool.liveBytes).toBe(0);
    const got = await readCopy(inner.mem, 0, 300 * KiB);
    expect(got.equals(Buffer.concat([Buffer.alloc(200 * KiB, 1), Buffer.alloc(100 * KiB, 2)]))).toBe(true);
    await layer.close();
  });

  test('plain Buffers are copied into pooled ones, so the caller may reuse them', async () => {
    const pool = testPool();
    const inner = new CapturingBackend(MiB);
    const layer = new CoalesceLayer(inner, { requestSize: 64 * KiB, idleMs: 0, pool });
    const plain = Buffer.alloc(4 * KiB, 7);
    await layer.pwrite(plain, 0);
    plain.fill(9);
    expect(layer.stats().copiedBytes).toBe(4 * KiB);
    expect(pool.liveBytes).toBeGreaterThan(0);
    inner.finishFromNowOn();
    await layer.close();
    expect((await readCopy(inner.mem, 0, 4 * KiB)).equals(Buffer.alloc(4 * KiB, 7))).toBe(true);
    expect(pool.liveBytes).toBe(0);
  });

  test('data in flight stays readable even if the backend below releases it before answering', async () => {
    const pool = testPool();
    const inner = new CapturingBackend(MiB, { releaseAtOnce: true });
    const layer = new CoalesceLayer(inner, { requestSize: 128 * KiB, idleMs: 0, pool });
    await layer.pwrite(filled(pool, 64 * KiB, 1), 0);
    await layer.pwrite(filled(pool, 64 * KiB, 2), 64 * KiB); // full: in flight, not answered
    // Memory the backend below gave back is reused at once by other writes.
    for (let i = 0; i < 4; i++) releaseBuffer(filled(pool, 64 * KiB, 0xee));
    const got = await layer.pread(32 * KiB, 64 * KiB);
    expect(got.equals(Buffer.concat([Buffer.alloc(32 * KiB, 1), Buffer.alloc(32 * KiB, 2)]))).toBe(true);
    releaseBuffer(got);
    inner.finishAll();
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });
});

describe('CoalesceLayer releases every buffer exactly once', () => {
  test('when the deferred write fails, and when writes are refused afterwards', async () => {
    const pool = testPool();
    const inner = new CapturingBackend(MiB);
    const layer = new CoalesceLayer(inner, { requestSize: 128 * KiB, idleMs: 0, pool });
    await layer.pwrite(filled(pool, 64 * KiB, 1), 0);
    await layer.pwrite(filled(pool, 64 * KiB, 2), 64 * KiB);
    inner.finishAll(new BackendError(NbdError.EIO, 'injected'));
    await expect(layer.flush()).rejects.toBeInstanceOf(DataLossError);
    expect(pool.liveBytes).toBe(0);
    const refused = filled(pool, 64 * KiB, 3);
    await expect(layer.pwrite(refused, 0)).rejects.toMatchObject({ errno: NbdError.EIO });
    await expect(layer.pwrite(filled(pool, 64 * KiB, 3), 0, { fua: true })).rejects.toBeInstanceOf(DataLossError);
    expect(bufferRefs(refused)).toBe(0);
    expect(pool.liveBytes).toBe(0);
    await expect(layer.close()).rejects.toBeInstanceOf(DataLossError);
  });

  test('a direct write that fails: released by the backend below and by the layer, once each', async () => {
    const pool = testPool();
    const inner = new CapturingBackend(MiB);
    const layer = new CoalesceLayer(inner, { requestSize: 64 * KiB, idleMs: 0, pool });
    const big = filled(pool, 64 * KiB, 1);
    const w = layer.pwrite(big, 0);
    await tick();
    expect(bufferRefs(big)).toBe(2);
    inner.finishAll(new BackendError(NbdError.EIO, 'injected'));
    await expect(w).rejects.toMatchObject({ errno: NbdError.EIO });
    expect(bufferRefs(big)).toBe(0);
    expect(pool.liveBytes).toBe(0);
    await layer.close();
  });

  test('writes waiting for memory when the export closes are refused and released', async () => {
    const pool = testPool();
    const inner = new CapturingBackend(MiB);
    const layer = new CoalesceLayer(inner, { requestSize: 64 * KiB, maxBufferedBytes: 64 * KiB, idleMs: 0, pool });
    await layer.pwrite(filled(pool, 32 * KiB, 1), 0);
    await layer.pwrite(filled(pool, 32 * KiB, 2), 32 * KiB); // full: in flight
    const waiting = [layer.pwrite(filled(pool, 32 * KiB, 3), 64 * KiB), layer.pwrite(filled(pool, 32 * KiB, 4), 96 * KiB)];
    await tick();
    const close = layer.close();
    inner.finishAll();
    for (const w of waiting) await expect(w).rejects.toMatchObject({ errno: NbdError.ESHUTDOWN });
    await close;
    expect(pool.liveBytes).toBe(0);
  });

  test('open runs are sent and released on close', async () => {
    const pool = testPool();
    const inner = new CapturingBackend(MiB);
    const layer = new CoalesceLayer(inner, { requestSize: MiB, idleMs: 1000, pool });
    await layer.pwrite(filled(pool, 16 * KiB, 1), 0);
    await layer.pwrite(filled(pool, 16 * KiB, 2), 512 * KiB);
    const close = layer.close();
    await tick();
    expect(inner.sent).toHaveLength(2);
    inner.finishAll();
    await close;
    expect(pool.liveBytes).toBe(0);
  });
});

describe('CoalesceLayer read overlays and the ownership of read results', () => {
  test('a plain Buffer from below is not written into: the overlay goes into a pooled buffer', async () => {
    const pool = testPool();
    const plain = Buffer.alloc(64 * KiB);
    const inner = new CapturingBackend(MiB, { readResult: () => plain });
    const layer = new CoalesceLayer(inner, { requestSize: MiB, idleMs: 0, pool });
    await layer.pwrite(filled(pool, 4 * KiB, 5), 8 * KiB);
    const got = await layer.pread(0, 64 * KiB);
    expect(got).not.toBe(plain);
    expect(plain.every((b) => b === 0)).toBe(true);
    expect(got.subarray(8 * KiB, 12 * KiB).every((b) => b === 5)).toBe(true);
    releaseBuffer(got);
    inner.finishFromNowOn();
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('a result the caller owns alone is overlaid in place', async () => {
    const pool = testPool();
    let base: Buffer | undefined;
    const inner = new CapturingBackend(MiB, { readResult: () => (base = pool.tryAllocate(64 * KiB)!.fill(0)) });
    const layer = new CoalesceLayer(inner, { requestSize: MiB, idleMs: 0, pool });
    await layer.pwrite(filled(pool, 4 * KiB, 5), 8 * KiB);
    const got = await layer.pread(0, 64 * KiB);
    expect(got).toBe(base);
    expect(bufferRefs(got)).toBe(1);
    expect(got.subarray(8 * KiB, 12 * KiB).every((b) => b === 5)).toBe(true);
    expect(got[0]).toBe(0);
    releaseBuffer(got);
    inner.finishFromNowOn();
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('a shared result (a read-ahead slice) is never written into: overlaid into a fresh buffer, the original released', async () => {
    const pool = testPool();
    const window = pool.tryAllocate(128 * KiB)!.fill(1);
    const slice = window.subarray(0, 64 * KiB);
    const inner = new CapturingBackend(MiB, {
      readResult: () => {
        retainBuffer(slice); // the caller's reference; the window keeps its own
        return slice;
      },
    });
    const layer = new CoalesceLayer(inner, { requestSize: MiB, idleMs: 0, pool });
    await layer.pwrite(filled(pool, 4 * KiB, 5), 8 * KiB);
    const got = await layer.pread(0, 64 * KiB);
    expect(got.buffer).not.toBe(window.buffer);
    expect(got.subarray(8 * KiB, 12 * KiB).every((b) => b === 5)).toBe(true);
    expect(got[0]).toBe(1);
    expect(window.every((b) => b === 1)).toBe(true); // untouched
    expect(bufferRefs(window)).toBe(1); // the slice handed to the layer was released
    releaseBuffer(got);
    releaseBuffer(window);
    inner.finishFromNowOn();
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });

  test('a read that overlaps nothing pending returns the inner result as it is', async () => {
    const pool = testPool();
    const base = pool.tryAllocate(4 * KiB)!.fill(3);
    const inner = new CapturingBackend(MiB, { readResult: () => base });
    const layer = new CoalesceLayer(inner, { requestSize: MiB, idleMs: 0, pool });
    await layer.pwrite(filled(pool, 4 * KiB, 5), 512 * KiB);
    expect(await layer.pread(0, 4 * KiB)).toBe(base);
    releaseBuffer(base);
    inner.finishFromNowOn();
    await layer.close();
    expect(pool.liveBytes).toBe(0);
  });
});
