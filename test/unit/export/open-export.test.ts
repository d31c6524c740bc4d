/**
 * openExport as a library: the caller owns the payload pool, and the stack's failure journal
 * (and a data-loss sink given by the caller) hear of acknowledged writes the backend reports
 * lost, without anything reading the log.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openExport } from '../../../src/export/open-export';
import { ImageioServer } from '../../../sim/imageio-server/imageio-server';
import { testPool } from '../../helpers/pool';

const MiB = 1 << 20;

describe('openExport', () => {
  test('a connection lost with unflushed writes reaches the journal and the loss sink', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'open-export-'));
    const image = path.join(dir, 'disk.raw');
    await fsp.writeFile(image, '');
    await fsp.truncate(image, 8 * MiB);
    const server = new ImageioServer({ image });
    await server.start();
    const losses: Array<[string, number]> = [];
    try {
      const pool = testPool();
      const stack = await openExport({
        url: server.url,
        pool,
        requestSize: 0, // each write its own PUT (flush=n): acknowledged, not yet durable
        retries: 0,
        connections: 1,
        onDataLoss: (connection, bytes) => losses.push([connection, bytes]),
      });
      expect(stack.pool).toBe(pool);
      const data = pool.tryAllocate(MiB)!.fill(1);
      await stack.top.pwrite(data, 0);
      // imageio drops the connection instead of flushing: the MiB written on it may be lost.
      server.faults.add({ method: 'PATCH', op: 'flush', action: { drop: 'before' } });
      await expect(stack.top.flush()).rejects.toThrow();
      expect(losses).toEqual([[expect.any(String), MiB]]);
      expect(stack.journal.writesFailed).toBe(true);
      expect(stack.journal.summarize()).toMatch(/1(\.0)? MiB not confirmed/);
      await stack.top.close().catch(() => undefined);
    } finally {
      await server.close();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
