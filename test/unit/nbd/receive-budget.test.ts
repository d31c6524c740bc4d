/**
 * The memory clients hold, shared by the connections of a server: within 3/4 of the pool's
 * bound, fair while others wait, replies capped per connection below the bound, and no waiter
 * holding back a request that fits.
 */
import { CLIENT_SHARE, MIN_MAX_MEMORY, ReceiveBudget } from '../../../src/nbd/receive-budget';
import { MAX_BLOCK_SIZE } from '../../../src/nbd/export';
import { DEFAULTS } from '../../../src/core/defaults';
import { releaseBuffer } from '../../../src/core/payload-pool';
import { testPool } from '../../helpers/pool';

const MiB = 1024 * 1024;

function setup() {
  const pool = testPool({ maxLiveBytes: 48 * MiB });
  return { pool, budget: new ReceiveBudget(pool) };
}

describe('ReceiveBudget', () => {
  test('the smallest --max-memory lets clients hold one WRITE of the advertised maximum block size; the default is at least that', () => {
    expect(MIN_MAX_MEMORY * CLIENT_SHARE).toBeGreaterThanOrEqual(MAX_BLOCK_SIZE);
    expect(DEFAULTS.maxMemory).toBeGreaterThanOrEqual(MIN_MAX_MEMORY);
  });

  test('limits: 3/4 of the bound for clients, half of that for one connection’s replies', () => {
    const { budget } = setup();
    expect(budget.limit).toBe(36 * MiB);
    expect(budget.replyCap).toBe(18 * MiB);
    expect(budget.replyCap).toBeLessThan(budget.pool.maxLiveBytes);
  });

  test('a waiter that does not fit does not hold back a request that does', async () => {
    const { budget } = setup();
    const a = budget.account();
    const b = budget.account();
    const c = budget.account();
    const payload = a.tryTake(32 * MiB)!; // a stalled WRITE: 32 of 36 MiB
    expect(b.tryReply(20 * MiB, false)).toBe(0); // a whole 20 MiB reply does not fit
    let bGot = 0;
    const bWait = b.waitReply(20 * MiB, false).then((n) => (bGot = n));
    expect(c.tryReply(2 * MiB, false)).toBe(2 * MiB); // but 2 MiB does, waiter or not
    c.replySent(2 * MiB);
    expect(bGot).toBe(0);
    releaseBuffer(payload);
    a.done(32 * MiB);
    await bWait;
    expect(bGot).toBe(20 * MiB);
    b.replySent(20 * MiB);
    expect(budget.heldBytes).toBe(0);
  });

  test('a READ that does not fit whole is granted in pieces when it may be split', () => {
    const { budget } = setup();
    const a = budget.account();
    const b = budget.account();
    const payload = a.tryTake(32 * MiB)!;
    expect(b.tryReply(20 * MiB, true)).toBe(4 * MiB); // what is left of the 36 MiB
    b.replySent(4 * MiB);
    releaseBuffer(payload);
    a.done(32 * MiB);
  });

  test('one connection’s replies stop at the reply cap; others still get their share', () => {
    const { budget } = setup();
    const hog = budget.account();
    const other = budget.account();
    const held: number[] = [];
    for (let n; (n = hog.tryReply(32 * MiB, true)) > 0; ) held.push(n);
    expect(held.reduce((x, y) => x + y, 0)).toBeLessThanOrEqual(budget.replyCap);
    expect(other.tryReply(16 * MiB, false)).toBe(16 * MiB);
    other.replySent(16 * MiB);
    for (const n of held) hog.replySent(n);
    expect(budget.heldBytes).toBe(0);
  });

  test('while others wait, a connection holding memory gets no more than its fair share', async () => {
    const { budget } = setup();
    const a = budget.account();
    const b = budget.account();
    expect(a.tryReply(8 * MiB, false)).toBe(8 * MiB);
    // b waits for a 32 MiB WRITE payload: 8 + 32 > 36.
    const got = new Promise<Buffer>((resolve) => b.wait(32 * MiB, { payloadReady: resolve }));
    // a's share while b waits is 36/2 = 18 MiB: 4 MiB more is granted, 8 more is not,
    // although 8 + 4 + 8 = 20 MiB would fit the clients' 36.
    expect(a.tryReply(4 * MiB, false)).toBe(4 * MiB);
    expect(a.tryReply(8 * MiB, false)).toBe(0);
    a.replySent(8 * MiB);
    a.replySent(4 * MiB);
    const payload = await got;
    expect(payload.length).toBe(32 * MiB);
    expect(a.tryReply(8 * MiB, false)).toBe(0); // 32 + 8 > 36
    releaseBuffer(payload);
    b.done(32 * MiB);
    expect(budget.heldBytes).toBe(0);
  });

  test('a closed connection’s waiters resolve with nothing', async () => {
    const { budget } = setup();
    const a = budget.account();
    const b = budget.account();
    const payload = a.tryTake(32 * MiB)!;
    const w = b.waitReply(20 * MiB, false);
    b.close();
    await expect(w).resolves.toBe(0);
    expect(b.tryReply(MiB, true)).toBe(0);
    releaseBuffer(payload);
    a.done(32 * MiB);
    expect(budget.waiting).toBe(0);
  });
  test('READs within the reply cap are not split while the connection’s own replies fill the memory (virt-v2v’s nbdcopy: 16 x 4 MiB)', async () => {
    const { budget } = setup();
    const a = budget.account();
    // Four whole 4 MiB replies, then the cap (18 MiB) leaves 2 MiB: the fifth READ waits whole
    // rather than being answered in pieces that pin read-ahead windows.
    for (let i = 0; i < 4; i++) expect(a.tryReply(4 * MiB, true)).toBe(4 * MiB);
    expect(a.tryReply(4 * MiB, true)).toBe(0);
    const got: number[] = [];
    const waits = [a.waitReply(4 * MiB, true).then((n) => got.push(n)), a.waitReply(4 * MiB, true).then((n) => got.push(n))];
    a.replySent(4 * MiB);
    await Promise.resolve();
    expect(got).toEqual([4 * MiB]); // whole, in order
    for (let i = 0; i < 4; i++) a.replySent(4 * MiB);
    await Promise.all(waits);
    expect(got).toEqual([4 * MiB, 4 * MiB]);
    a.replySent(4 * MiB);
    expect(budget.heldBytes).toBe(0);
  });

  test('a small READ waiting with split allowed counts exactly what its reply gives back', async () => {
    const { budget } = setup();
    const a = budget.account();
    const b = budget.account();
    const payload = a.tryTake(32 * MiB)!; // 32 of 36 MiB held by another connection
    for (let i = 0; i < 16; i++) expect(b.tryReply(256 * 1024, true)).toBe(256 * 1024);
    const n = b.waitReply(256 * 1024, true);
    for (let i = 0; i < 16; i++) b.replySent(256 * 1024);
    expect(await n).toBe(256 * 1024);
    b.replySent(256 * 1024);
    releaseBuffer(payload);
    a.done(32 * MiB);
    expect(budget.heldBytes).toBe(0);
  });

  test('the rest of a READ being answered goes ahead of the connection’s other waiting READs', async () => {
    const { budget } = setup();
    const a = budget.account();
    const b = budget.account();
    const c = budget.account();
    const payload = a.tryTake(32 * MiB)!;
    const payload2 = c.tryTake(4 * MiB)!; // all 36 MiB held by other connections
    const order: string[] = [];
    const first = b.waitReply(2 * MiB, true).then(() => order.push('new READ'));
    const rest = b.waitReply(2 * MiB, true, true).then(() => order.push('rest of a READ'));
    expect(order).toEqual([]);
    releaseBuffer(payload);
    a.done(32 * MiB);
    releaseBuffer(payload2);
    c.done(4 * MiB);
    await Promise.all([first, rest]);
    expect(order).toEqual(['rest of a READ', 'new READ']);
    b.replySent(2 * MiB);
    b.replySent(2 * MiB);
    expect(budget.heldBytes).toBe(0);
  });
});
