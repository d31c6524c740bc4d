/**
 * Payload pools owned by tests, checked at the end of every test that made one: nothing may
 * still be held and nothing may have been reclaimed by the garbage collector. A leak fails the
 * test that leaked, at once, instead of filling a pool that a later test waits on.
 *
 * Importing this module registers the check as an afterEach hook of the test file's top level:
 * it runs after the afterEach hooks of nested describe blocks, so cleanups that close servers
 * must be there or inside the test (or call expectPoolsIdle() themselves after cleaning up).
 */
import type { Backend } from '../../src/core/backend';
import { PayloadPool, releaseBuffer, type PayloadPoolOptions } from '../../src/core/payload-pool';

let made: PayloadPool[] = [];

/** A pool for this test; checked at its end. */
export function testPool(opts?: PayloadPoolOptions): PayloadPool {
  const pool = new PayloadPool(opts);
  made.push(pool);
  return pool;
}

/** Throws unless every pool made since the last check holds nothing; then forgets them. */
export function expectPoolsIdle(): void {
  const pools = made;
  made = [];
  const bad = pools
    .map((p, i) => ({ i, live: p.liveBytes, leaked: p.stats().leaked, waiting: p.waiting }))
    .filter((p) => p.live !== 0 || p.leaked !== 0 || p.waiting !== 0);
  if (bad.length > 0) {
    throw new Error(
      'payload pool not idle at the end of the test (a buffer was not released): ' +
        bad.map((p) => `pool #${p.i}: ${p.live} bytes live, ${p.leaked} reclaimed by GC, ${p.waiting} waiting`).join('; '),
    );
  }
}

afterEach(() => expectPoolsIdle());

/** Read through `b` into a plain Buffer, releasing the pooled one: for tests that only compare bytes. */
export async function readCopy(b: Pick<Backend, 'pread'>, offset: number, length: number): Promise<Buffer> {
  const buf = await b.pread(offset, length);
  const copy = Buffer.from(buf);
  releaseBuffer(buf);
  return copy;
}
