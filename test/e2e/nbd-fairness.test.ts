/**
 * One client must not freeze the others: memory held by a client that stops reading its
 * replies, or stalls in the middle of a WRITE payload, is bounded to its share of --max-memory,
 * and real clients (nbdcopy) keep copying meanwhile. The bound is the command's default and
 * minimum, 48 MiB; the pool's peak never exceeds it.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { MemoryBackend } from '../../src/backends/memory-backend';
import { Command, ReplyFlag, ReplyType } from '../../src/nbd/codec/constants';
import { MIN_MAX_MEMORY } from '../../src/nbd/receive-budget';
import { startNbdServer } from '../helpers/nbd-server';
import { RawNbdClient, replyErrno } from '../helpers/raw-nbd-client';
import { run } from '../helpers/run';
import { testPool } from '../helpers/pool';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const BOUND = 48 * MiB;

async function waitFor(pred: () => boolean, what: string, ms = 20000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A memory disk of SIZE random bytes, served with a pool bounded at BOUND. */
async function setup() {
  const pool = testPool({ maxLiveBytes: BOUND });
  const mem = new MemoryBackend(SIZE, false, pool);
  const data = randomBytes(SIZE);
  await mem.pwrite(data, 0); // a plain Buffer: copied into the disk's pages
  const s = await startNbdServer(mem, { payloadPool: pool });
  return { pool, mem, data, s };
}

/** nbdcopy the whole export to a file and compare; a frozen server shows as a timeout. */
async function copyAndCompare(uri: string, file: string, data: Buffer): Promise<void> {
  writeFileSync(file, '');
  truncateSync(file, SIZE);
  const r = await run('nbdcopy', [uri, file], { timeoutMs: 30000 });
  expect({ code: r.code, timedOut: r.timedOut, stderr: r.stderr }).toEqual({ code: 0, timedOut: false, stderr: '' });
  expect(readFileSync(file).equals(data)).toBe(true);
}

describe('one client cannot freeze the others (--max-memory 48M)', () => {
  test('the bound tested is the command minimum', () => {
    expect(MIN_MAX_MEMORY).toBe(BOUND);
  });

  test('a client that sends 16 x 32 MiB READs and never reads the replies does not stop nbdcopy', async () => {
    const { pool, data, s } = await setup();
    const hog = await RawNbdClient.connect(s.socketPath);
    try {
      await hog.negotiate();
      hog.socket.pause(); // from now on nothing is read: the replies stay in the server
      for (let i = 0; i < 16; i++) {
        hog.request({ type: Command.READ, cookie: BigInt(i), offset: (i % 2) * 32 * MiB, length: 32 * MiB });
      }
      await waitFor(() => pool.liveBytes >= 16 * MiB, 'the server to hold replies the client does not read');
      await copyAndCompare(s.uri, s.dir.file('copy.raw'), data);
      expect(pool.stats().peakLiveBytes).toBeLessThanOrEqual(BOUND);
    } finally {
      hog.destroy();
      await s.stop();
    }
  }, 60000);

  test("a WRITE stalled halfway through its 32 MiB payload does not stop another client's 20 MiB READ, nor nbdcopy", async () => {
    const { pool, data, s } = await setup();
    const writer = await RawNbdClient.connect(s.socketPath);
    const reader = await RawNbdClient.connect(s.socketPath);
    try {
      await writer.negotiate();
      writer.request({ type: Command.WRITE, cookie: 1n, offset: 0, length: 32 * MiB });
      const payload = randomBytes(32 * MiB);
      writer.write(payload.subarray(0, 16 * MiB)); // and then nothing, for now
      await waitFor(() => s.server.memoryStats().receivingBytes >= 32 * MiB, 'the stalled WRITE to hold its payload buffer');

      await reader.negotiate(); // structured replies: a READ may come back in several chunks
      reader.request({ type: Command.READ, cookie: 2n, offset: 32 * MiB, length: 20 * MiB });
      const got = Buffer.alloc(20 * MiB);
      let received = 0;
      for (;;) {
        const rep = await reader.reply(20000);
        expect(rep).toMatchObject({ kind: 'chunk', type: ReplyType.OFFSET_DATA, cookie: 2n });
        if (rep.kind !== 'chunk') break;
        const at = Number(rep.payload.readBigUInt64BE(0)) - 32 * MiB;
        rep.payload.copy(got, at, 8);
        received += rep.payload.length - 8;
        if (rep.flags & ReplyFlag.DONE) break;
      }
      expect(received).toBe(20 * MiB);
      expect(got.equals(data.subarray(32 * MiB, 52 * MiB))).toBe(true);

      await copyAndCompare(s.uri, s.dir.file('copy.raw'), data);

      // The stalled client finishes its WRITE: it lands as sent.
      writer.write(payload.subarray(16 * MiB));
      expect(replyErrno(await writer.reply(20000))).toBe(0);
      const check = await RawNbdClient.connect(s.socketPath);
      await check.negotiate({ structured: false });
      check.request({ type: Command.READ, cookie: 3n, offset: 0, length: 4 * MiB });
      expect(replyErrno(await check.reply(20000))).toBe(0);
      expect((await check.read(4 * MiB, 20000)).equals(payload.subarray(0, 4 * MiB))).toBe(true);
      check.destroy();
      expect(pool.stats().peakLiveBytes).toBeLessThanOrEqual(BOUND);
    } finally {
      writer.destroy();
      reader.destroy();
      await s.stop();
    }
  }, 60000);
});
