/**
 * Property test: random writes, zeroes, reads and flushes from several concurrent "connections"
 * against CoalesceLayer over a slow, reordering (and optionally failing) backend, checked
 * against a plain Buffer.
 *
 * To know the one right answer for every read, the run is split into phases. In each phase every
 * connection owns one region of the disk (a fresh permutation each phase) and runs its ops there
 * in order, awaiting each. Regions are disjoint, so concurrent ops never overlap and the model
 * is exact; since ownership moves between phases, reads and flushes also check what other
 * connections wrote earlier (the CAN_MULTI_CONN promise).
 *
 * With failures injected, a deferred write can be lost after its pwrite resolved. Then:
 * no flush called after the loss may succeed, a successful flush still means every byte the
 * model knows is durable, and close() must fail.
 */
import fc from 'fast-check';
import { CoalesceLayer } from '../src/layers/coalesce-layer';
import { MemoryBackend } from '../src/backends/memory-backend';
import { DataLossError } from '../src/errors';
import { RecordingLayer } from './helpers/recording-layer';

const KiB = 1024;
const REGION = 64 * KiB;
const REGIONS = 4;
const DISK = REGION * REGIONS;

type Op =
  | { t: 'write'; off: number; len: number; fua: boolean }
  | { t: 'zero'; off: number; len: number; fua: boolean }
  | { t: 'read'; off: number; len: number }
  | { t: 'flush' };

const rangeArb = fc
  .record({ off: fc.integer({ min: 0, max: REGION - 1 }), len: fc.integer({ min: 1, max: 40 * KiB }) })
  .map(({ off, len }) => ({ off, len: Math.min(len, REGION - off) }));

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(rangeArb, fc.boolean()).map(([r, f]) => ({ t: 'write' as const, ...r, fua: f && r.len % 5 === 0 })) },
  { weight: 1, arbitrary: fc.tuple(rangeArb, fc.boolean()).map(([r, f]) => ({ t: 'zero' as const, ...r, fua: f })) },
  { weight: 3, arbitrary: rangeArb.map((r) => ({ t: 'read' as const, ...r })) },
  { weight: 1, arbitrary: fc.constant({ t: 'flush' as const }) },
);

const caseArb = fc.record({
  requestSize: fc.constantFrom(4 * KiB, 16 * KiB, 32 * KiB),
  bufferedBuffers: fc.integer({ min: 1, max: 6 }),
  maxInFlight: fc.integer({ min: 1, max: 4 }),
  maxOpenBuffers: fc.integer({ min: 1, max: 4 }),
  idleMs: fc.constantFrom(0, 1),
  connections: fc.integer({ min: 1, max: 4 }),
  phases: fc.array(
    fc.record({
      regions: fc.shuffledSubarray([0, 1, 2, 3], { minLength: REGIONS, maxLength: REGIONS }),
      ops: fc.array(fc.array(opArb, { maxLength: 8 }), { minLength: 4, maxLength: 4 }),
    }),
    { minLength: 1, maxLength: 4 },
  ),
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
});

type Case = typeof caseArb extends fc.Arbitrary<infer T> ? T : never;

function pattern(length: number, id: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (id * 31 + i * 7 + (i >> 8)) & 0xff || 1;
  return b;
}

/** Compare `got` with the model over [off, off + got.length), on known bytes only. */
function checkKnown(what: string, got: Buffer, model: Buffer, known: Uint8Array, off: number): void {
  for (let i = 0; i < got.length; i++) {
    if (known[off + i] && got[i] !== model[off + i]) {
      throw new Error(`${what}: byte ${off + i} is ${got[i]}, expected ${model[off + i]}`);
    }
  }
}

async function runCase(c: Case, failPercent: number): Promise<void> {
  let rng = c.seed;
  const next = (n: number) => {
    rng = (rng * 1103515245 + 12345) % 2147483648;
    return rng % n;
  };
  const mem = new MemoryBackend(DISK);
  let deferredFailures = 0;
  const inner = new RecordingLayer(mem, {
    delay: () => next(3),
    fail: (call) => {
      if (failPercent === 0 || (call.op !== 'pwrite' && call.op !== 'zero')) return false;
      if (next(100) >= failPercent) return false;
      // Deferred requests: merged writes (the only plain pwrites of at most requestSize) and
      // zeroes without FUA, which are write-back too.
      if (call.op === 'pwrite' && !call.fua && call.length <= c.requestSize) deferredFailures++;
      if (call.op === 'zero' && !call.fua) deferredFailures++;
      return true;
    },
  });
  const maxBufferedBytes = c.requestSize * c.bufferedBuffers;
  const layer = new CoalesceLayer(inner, {
    requestSize: c.requestSize,
    maxBufferedBytes,
    maxInFlight: c.maxInFlight,
    maxOpenBuffers: c.maxOpenBuffers,
    idleMs: c.idleMs,
  });

  const model = Buffer.alloc(DISK);
  const known = new Uint8Array(DISK).fill(1);
  let writeId = 0;

  const connection = async (region: number, ops: Op[]) => {
    const base = region * REGION;
    for (const op of ops) {
      if (op.t === 'write') {
        const data = pattern(op.len, ++writeId);
        const buf = Buffer.from(data);
        try {
          await layer.pwrite(buf, base + op.off, { fua: op.fua });
          data.copy(model, base + op.off);
          known.fill(1, base + op.off, base + op.off + op.len);
        } catch {
          known.fill(0, base + op.off, base + op.off + op.len);
        }
        buf.fill(0xee); // the client reuses its buffer once answered
      } else if (op.t === 'zero') {
        try {
          await layer.zero(base + op.off, op.len, { fua: op.fua });
          model.fill(0, base + op.off, base + op.off + op.len);
          known.fill(1, base + op.off, base + op.off + op.len);
        } catch {
          known.fill(0, base + op.off, base + op.off + op.len);
        }
      } else if (op.t === 'read') {
        const clean = deferredFailures === 0; // a lost write may legitimately read back old data
        const got = await layer.pread(base + op.off, op.len);
        if (clean) checkKnown('read', got, model, known, base + op.off);
      } else {
        const lostBefore = deferredFailures > 0;
        let ok = true;
        try {
          await layer.flush();
        } catch (err) {
          ok = false;
          if (failPercent === 0) throw err;
          expect(err).toBeInstanceOf(DataLossError);
        }
        if (lostBefore && ok) throw new Error('flush succeeded after a deferred write was lost');
        // Durable means in the memory backend. Everything in my region that resolved before the
        // flush, including what other connections wrote in earlier phases.
        if (ok) checkKnown('durable after flush', await mem.pread(base, REGION), model, known, base);
      }
    }
  };

  for (const phase of c.phases) {
    await Promise.all(
      Array.from({ length: c.connections }, (_, i) => connection(phase.regions[i], phase.ops[i])),
    );
  }

  let flushed = true;
  try {
    await layer.flush();
  } catch (err) {
    flushed = false;
    // The flush sends what is still buffered, so it can be the one that finds the loss.
    if (deferredFailures === 0) throw err;
    expect(err).toBeInstanceOf(DataLossError);
  }
  const lost = deferredFailures > 0;
  if (lost && flushed) throw new Error('final flush succeeded after a deferred write was lost');
  if (flushed) {
    checkKnown('final image', await mem.pread(0, DISK), model, known, 0);
    checkKnown('final read', await layer.pread(0, DISK), model, known, 0);
  }
  const closed = await layer.close().then(
    () => true,
    () => false,
  );
  if (lost && closed) throw new Error('close succeeded after a deferred write was lost');
  if (!lost && !closed) throw new Error('close failed without data loss');
  expect(inner.overlapViolations).toEqual([]);
  expect(inner.maxInFlight).toBeLessThanOrEqual(c.maxInFlight + c.connections); // + client reads
  expect(layer.stats().maxBufferedBytes).toBeLessThanOrEqual(maxBufferedBytes);
}

describe('CoalesceLayer properties', () => {
  test('concurrent connections see a consistent, durable image', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, (c) => runCase(c, 0)),
      { numRuns: 80 },
    );
  });

  test('with injected failures, no flush succeeds after data was lost', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, (c) => runCase(c, 8)),
      { numRuns: 80 },
    );
  });
});
