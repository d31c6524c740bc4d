/**
 * Payload memory in the server: WRITE payloads are pool buffers handed to the backend, READ
 * replies are released once written (also to clients that vanish), nothing leaks, and one bound
 * covers partly received payloads: a connection without memory stops reading, others go on.
 * Both ways of reading the socket (onread into our buffers, and 'data' events) are covered.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { PassthroughLayer, type WriteFlags } from '../../src/core/backend';
import { MemoryBackend } from '../../src/backends/memory-backend';
import { PayloadPool, bufferRefs } from '../../src/core/payload-pool';
import { Command, NbdError, ReplyType } from '../../src/nbd/codec/constants';
import { startNbdServer, type TestServer } from '../helpers/nbd-server';
import { RawNbdClient, replyErrno } from '../helpers/raw-nbd-client';
import { readCopy, testPool } from '../helpers/pool';

const MiB = 1024 * 1024;

/** Records what pwrite was given, as the backend contract sees it. */
class PwriteSpy extends PassthroughLayer {
  seen: { length: number; refs: number; pooled: boolean }[] = [];
  constructor(
    inner: MemoryBackend,
    private readonly pool: PayloadPool,
  ) {
    super(inner, 'spy');
  }
  override pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    this.seen.push({ length: data.length, refs: bufferRefs(data), pooled: this.pool.liveBytes > 0 });
    return super.pwrite(data, offset, flags);
  }
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, stderr }));
  });
}

async function waitFor(pred: () => boolean, what: string, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.each(['onread', 'data'] as const)('payload ownership (readMode %s)', (readMode) => {
  let s: TestServer;
  let pool: PayloadPool;
  let mem: MemoryBackend;
  let spy: PwriteSpy;
  beforeEach(async () => {
    pool = testPool({ maxLiveBytes: 64 * MiB });
    mem = new MemoryBackend(32 * MiB, false, pool);
    spy = new PwriteSpy(mem, pool);
    s = await startNbdServer(spy, { payloadPool: pool, readMode });
  });
  afterEach(async () => {
    await s.stop();
  });

  test('nbdcopy both ways: payloads are pool buffers with one reference, nothing is left live', async () => {
    const src = s.dir.file('src.raw');
    const back = s.dir.file('back.raw');
    const data = Buffer.alloc(32 * MiB);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    writeFileSync(src, data);
    expect((await run('nbdcopy', [src, s.uri])).code).toBe(0);
    expect((await run('nbdcopy', [s.uri, back])).code).toBe(0);
    expect(readFileSync(back).equals(data)).toBe(true);
    expect(spy.seen.length).toBeGreaterThan(0);
    for (const w of spy.seen) expect(w).toEqual({ length: w.length, refs: 1, pooled: true });
    await waitFor(() => s.server.connectionCount === 0, 'connections to close');
    expect(pool.liveBytes).toBe(0);
    expect(pool.stats().leaked).toBe(0);
  });

  test('READ replies to a client that stops reading are released when it goes away', async () => {
    await mem.pwrite(Buffer.alloc(MiB, 7), 0);
    const c = await RawNbdClient.connect(s.socketPath);
    await c.negotiate();
    c.socket.pause(); // never read the replies
    for (let i = 0; i < 24; i++) c.request({ type: Command.READ, cookie: BigInt(i), offset: 0, length: MiB });
    // Replies wait in the server's socket buffer, still counted as payload memory.
    await waitFor(() => pool.liveBytes >= 8 * MiB, 'replies to be queued');
    c.destroy();
    await waitFor(() => s.server.connectionCount === 0, 'the connection to close');
    await waitFor(() => pool.liveBytes === 0, 'reply buffers to be released');
  });
});

describe('one bound for payloads being received', () => {
  test('stalled WRITEs hold at most 3/4 of the bound; others wait without reading; a READ still works', async () => {
    const pool = testPool({ maxLiveBytes: 8 * MiB });
    const mem = new MemoryBackend(32 * MiB, false, pool);
    const s = await startNbdServer(mem, { payloadPool: pool });
    const clients: RawNbdClient[] = [];
    try {
      // Three clients each announce a 4 MiB WRITE and send 1 MiB of it.
      for (let i = 0; i < 3; i++) {
        const c = await RawNbdClient.connect(s.socketPath);
        await c.negotiate();
        c.request({ type: Command.WRITE, cookie: BigInt(i), offset: i * 4 * MiB, length: 4 * MiB });
        c.write(Buffer.alloc(MiB, 0x41 + i));
        clients.push(c);
      }
      // 4 MiB fits the receive share (6 MiB), a second 4 MiB does not: two connections wait.
      await waitFor(() => s.server.memoryStats().waiting === 2, 'two connections to wait for memory');
      const m = s.server.memoryStats();
      expect(m.receivingBytes).toBe(4 * MiB);
      expect(m.liveBytes).toBeLessThanOrEqual(8 * MiB);

      // Another client still negotiates and reads: the rest of the bound is not taken.
      const r = await RawNbdClient.connect(s.socketPath);
      await r.negotiate();
      r.request({ type: Command.READ, cookie: 99n, offset: 0, length: 512 });
      const reply = await r.reply();
      expect(reply).toMatchObject({ kind: 'chunk', type: ReplyType.OFFSET_DATA, cookie: 99n });
      r.destroy();

      // The stalled clients finish: every write completes, first come first served.
      for (let i = 0; i < 3; i++) clients[i].write(Buffer.alloc(3 * MiB, 0x41 + i));
      for (let i = 0; i < 3; i++) {
        const rep = await clients[i].reply(20000);
        expect({ cookie: rep.cookie, errno: replyErrno(rep) }).toEqual({ cookie: BigInt(i), errno: 0 });
      }
      for (let i = 0; i < 3; i++) {
        const got = await readCopy(mem, i * 4 * MiB, 4 * MiB);
        expect(got.every((b) => b === 0x41 + i)).toBe(true);
      }
      expect(s.server.memoryStats()).toMatchObject({ receivingBytes: 0, waiting: 0 });
    } finally {
      for (const c of clients) c.destroy();
      await s.stop();
    }
    expect(pool.liveBytes).toBe(0);
  });

  test('a client that vanishes while waiting for memory or mid-payload gives everything back', async () => {
    const pool = testPool({ maxLiveBytes: 8 * MiB });
    const s = await startNbdServer(new MemoryBackend(32 * MiB, false, pool), { payloadPool: pool });
    try {
      const cs: RawNbdClient[] = [];
      for (let i = 0; i < 3; i++) {
        const c = await RawNbdClient.connect(s.socketPath);
        await c.negotiate();
        c.request({ type: Command.WRITE, cookie: 1n, offset: 0, length: 4 * MiB });
        c.write(Buffer.alloc(100000));
        cs.push(c);
      }
      await waitFor(() => s.server.memoryStats().waiting === 2, 'two waiters');
      for (const c of cs) c.destroy();
      await waitFor(() => s.server.connectionCount === 0, 'connections to close');
      await waitFor(() => pool.liveBytes === 0, 'memory to be released');
      expect(s.server.memoryStats()).toMatchObject({ receivingBytes: 0, waiting: 0 });
      // And the server still serves writes.
      const c = await RawNbdClient.connect(s.socketPath);
      await c.negotiate();
      c.request({ type: Command.WRITE, cookie: 2n, offset: 0, length: 5 * MiB }, Buffer.alloc(5 * MiB, 1));
      expect(replyErrno(await c.reply(20000))).toBe(NbdError.OK);
      c.destroy();
    } finally {
      await s.stop();
    }
  });
});
