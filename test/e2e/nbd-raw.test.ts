/**
 * Raw-socket edge cases: every bad input gets its spec'd answer, and the server keeps serving
 * other connections afterwards.
 */
import { MemoryBackend } from '../../src/backends/memory-backend';
import { PassthroughLayer, type Capabilities } from '../../src/core/backend';
import {
  BASE_ALLOCATION,
  ClientFlag,
  Command,
  CommandFlag,
  InfoType,
  NbdError,
  Option,
  OptionReply,
  ReplyFlag,
  ReplyType,
  TransmissionFlag,
} from '../../src/nbd/codec/constants';
import {
  encodeClientFlags,
  encodeInfoRequestData,
  encodeMetaContextRequestData,
  encodeOptionRequest,
} from '../../src/nbd/codec/handshake';
import { encodeRequest } from '../../src/nbd/codec/transmission';
import { startNbdServer, type TestServer } from '../helpers/nbd-server';
import { RawNbdClient, replyErrno } from '../helpers/raw-nbd-client';
import { DelayedBackend } from '../helpers/delayed-backend';
import { readCopy, testPool } from '../helpers/pool';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;

/** A full GO + WRITE + READ on a fresh connection: proves the server still serves. */
async function assertServes(s: TestServer): Promise<void> {
  const c = await RawNbdClient.connect(s.socketPath);
  try {
    await c.negotiate();
    c.request({ type: Command.WRITE, cookie: 100n, offset: 512, length: 3 }, Buffer.from('abc'));
    expect(replyErrno(await c.reply())).toBe(0);
    c.request({ type: Command.READ, cookie: 101n, offset: 512, length: 3 });
    const r = await c.reply();
    expect(r).toMatchObject({ kind: 'chunk', type: ReplyType.OFFSET_DATA, flags: ReplyFlag.DONE, cookie: 101n });
    if (r.kind === 'chunk') expect(r.payload.subarray(8).toString()).toBe('abc');
  } finally {
    c.destroy();
  }
}

describe('raw socket edge cases', () => {
  let s: TestServer;
  let backend: MemoryBackend;
  beforeEach(async () => {
    backend = new MemoryBackend(SIZE, false, testPool());
    s = await startNbdServer(backend, { handshakeTimeoutMs: 300 });
  });
  afterEach(async () => {
    await s.stop();
  });

  test('greeting: fixed newstyle with NO_ZEROES', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    const g = await c.greet();
    expect(g.toString('hex')).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
    c.destroy();
  });

  test('garbage client flags: dropped, others keep working', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.read(18);
    c.write(encodeClientFlags(0xffffffff));
    expect(await c.waitClosed()).toBe(true);
    await assertServes(s);
  });

  test('garbage instead of the option magic: dropped, others keep working', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    c.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    expect(await c.waitClosed()).toBe(true);
    await assertServes(s);
  });

  test('truncated option and truncated request header, then EOF: no crash', async () => {
    const c1 = await RawNbdClient.connect(s.socketPath);
    await c1.greet();
    c1.write(encodeOptionRequest(Option.GO, encodeInfoRequestData({ exportName: '', infos: [] })).subarray(0, 10));
    c1.socket.end();
    expect(await c1.waitClosed()).toBe(true);

    const c2 = await RawNbdClient.connect(s.socketPath);
    await c2.negotiate();
    c2.write(encodeRequest({ type: Command.READ, cookie: 1n, offset: 0, length: 512 }).subarray(0, 13));
    c2.socket.end();
    expect(await c2.waitClosed()).toBe(true);
    await assertServes(s);
  });

  test('unknown options (EXTENDED_HEADERS, 1234) get ERR_UNSUP and the next option works', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    expect((await c.option(Option.EXTENDED_HEADERS))[0].type).toBe(OptionReply.ERR_UNSUP);
    const r = await c.option(1234, Buffer.from('some data to discard'));
    expect(r).toHaveLength(1);
    expect(r[0]).toMatchObject({ option: 1234, type: OptionReply.ERR_UNSUP });
    expect((await c.option(Option.STARTTLS))[0].type).toBe(OptionReply.ERR_POLICY);
    expect((await c.option(Option.STRUCTURED_REPLY))[0].type).toBe(OptionReply.ACK);
    expect((await c.option(Option.STRUCTURED_REPLY))[0].type).toBe(OptionReply.ERR_INVALID);
    const go = await c.option(Option.GO, encodeInfoRequestData({ exportName: '', infos: [] }));
    expect(go[go.length - 1].type).toBe(OptionReply.ACK);
    c.destroy();
  });

  test('oversized option data: ERR_TOO_BIG, data skipped, negotiation continues', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    const r = await c.option(Option.INFO, Buffer.alloc(5 * MiB, 0x41));
    expect(r[0].type).toBe(OptionReply.ERR_TOO_BIG);
    const list = await c.option(Option.LIST);
    expect(list.map((x) => x.type)).toEqual([OptionReply.SERVER, OptionReply.ACK]);
    c.destroy();
  });

  test('option data beyond the drain limit: disconnect', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    const h = encodeOptionRequest(Option.INFO);
    h.writeUInt32BE(0xffffffff, 12);
    c.write(h);
    expect(await c.waitClosed()).toBe(true);
    await assertServes(s);
  });

  test('hundreds of options: answered up to the bound, then disconnect', async () => {
    // 256 round trips: this suite's 300 ms handshake limit is too tight on a loaded machine.
    await s.stop();
    s = await startNbdServer(backend, { handshakeTimeoutMs: 30000 });
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    let answered = 0;
    try {
      for (let i = 0; i < 300; i++) {
        const r = await c.option(99);
        expect(r[0].type).toBe(OptionReply.ERR_UNSUP);
        answered++;
      }
    } catch {
      // connection closed
    }
    expect(answered).toBe(256);
    expect(await c.waitClosed()).toBe(true);
    await assertServes(s);
  });

  test('silent client: handshake timeout closes it', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.read(18);
    expect(await c.waitClosed(3000)).toBe(true);
    await assertServes(s);
  });

  test('INFO/GO/EXPORT_NAME for an unknown export; LIST; LIST with data', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    const info = await c.option(Option.INFO, encodeInfoRequestData({ exportName: 'nope', infos: [] }));
    expect(info[0].type).toBe(OptionReply.ERR_UNKNOWN);
    expect((await c.option(Option.LIST, Buffer.from('x')))[0].type).toBe(OptionReply.ERR_INVALID);
    expect((await c.option(Option.GO, Buffer.from([0, 0])))[0].type).toBe(OptionReply.ERR_INVALID);
    c.write(encodeOptionRequest(Option.EXPORT_NAME, Buffer.from('nope')));
    expect(await c.waitClosed()).toBe(true);
  });

  test('INFO replies: EXPORT, NAME, BLOCK_SIZE; unknown info types ignored', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    const r = await c.option(
      Option.INFO,
      encodeInfoRequestData({ exportName: '', infos: [InfoType.NAME, InfoType.BLOCK_SIZE, 77] }),
    );
    const types = r.map((x) => (x.type === OptionReply.INFO ? x.data.readUInt16BE(0) : -x.type));
    expect(types).toEqual([InfoType.EXPORT, InfoType.NAME, InfoType.BLOCK_SIZE, -OptionReply.ACK]);
    const bs = r[2].data;
    expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([1, 4 * MiB, 32 * MiB]);
    const exp = r[0].data;
    expect(Number(exp.readBigUInt64BE(2))).toBe(SIZE);
    const flags = exp.readUInt16BE(10);
    expect(flags & TransmissionFlag.CAN_MULTI_CONN).toBeTruthy();
    expect(flags & TransmissionFlag.SEND_DF).toBe(0); // no structured replies yet
    c.destroy();
  });

  test('meta contexts: SET before STRUCTURED_REPLY is invalid; LIST with no query or base:', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    const set = () =>
      c.option(Option.SET_META_CONTEXT, encodeMetaContextRequestData({ exportName: '', queries: [BASE_ALLOCATION] }));
    expect((await set())[0].type).toBe(OptionReply.ERR_INVALID);
    await c.option(Option.STRUCTURED_REPLY);
    for (const queries of [[], ['base:'], ['qemu:dirty-bitmap:x', BASE_ALLOCATION]]) {
      const r = await c.option(Option.LIST_META_CONTEXT, encodeMetaContextRequestData({ exportName: '', queries }));
      expect(r.map((x) => x.type)).toEqual([OptionReply.META_CONTEXT, OptionReply.ACK]);
      expect(r[0].data.toString('utf8', 4)).toBe(BASE_ALLOCATION);
    }
    const none = await c.option(
      Option.SET_META_CONTEXT,
      encodeMetaContextRequestData({ exportName: '', queries: ['qemu:nothing'] }),
    );
    expect(none.map((x) => x.type)).toEqual([OptionReply.ACK]);
    c.destroy();
  });

  test('ABORT gets ACK then close', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    expect((await c.option(Option.ABORT))[0].type).toBe(OptionReply.ACK);
    expect(await c.waitClosed()).toBe(true);
  });

  test('EXPORT_NAME without NO_ZEROES: 124 zero bytes; simple replies, even for READ errors', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet(ClientFlag.FIXED_NEWSTYLE);
    c.write(encodeOptionRequest(Option.EXPORT_NAME, Buffer.alloc(0)));
    const r = await c.read(134);
    expect(Number(r.readBigUInt64BE(0))).toBe(SIZE);
    expect(r.subarray(10).every((b) => b === 0)).toBe(true);
    c.request({ type: Command.WRITE, cookie: 1n, offset: 0, length: 4 }, Buffer.from('wxyz'));
    expect(await c.reply()).toEqual({ kind: 'simple', error: 0, cookie: 1n });
    c.request({ type: Command.READ, cookie: 2n, offset: 0, length: 4 });
    expect(await c.reply()).toEqual({ kind: 'simple', error: 0, cookie: 2n });
    expect((await c.read(4)).toString()).toBe('wxyz');
    c.request({ type: Command.READ, cookie: 3n, offset: SIZE, length: 4 });
    expect(await c.reply()).toEqual({ kind: 'simple', error: NbdError.EINVAL, cookie: 3n });
    c.request({ type: Command.READ, cookie: 4n, offset: 0, length: 1, flags: CommandFlag.DF });
    expect(await c.reply()).toEqual({ kind: 'simple', error: NbdError.EINVAL, cookie: 4n }); // DF not advertised
    c.destroy();
  });

  test('validation errnos: bad command, bad flag, ranges, FLUSH args, BLOCK_STATUS without context', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.negotiate();
    const cases: [Parameters<RawNbdClient['request']>[0], number, Buffer?][] = [
      [{ type: 42, cookie: 1n, offset: 0, length: 0 }, NbdError.EINVAL],
      [{ type: Command.READ, cookie: 2n, offset: 0, length: 1, flags: 0x8000 }, NbdError.EINVAL],
      [{ type: Command.READ, cookie: 3n, offset: 0, length: 1, flags: CommandFlag.NO_HOLE }, NbdError.EINVAL],
      [{ type: Command.WRITE, cookie: 4n, offset: 0, length: 1, flags: CommandFlag.REQ_ONE }, NbdError.EINVAL, Buffer.from('x')],
      [{ type: Command.READ, cookie: 5n, offset: SIZE - 1, length: 2 }, NbdError.EINVAL],
      [{ type: Command.READ, cookie: 6n, offset: 2n ** 63n, length: 1 }, NbdError.EINVAL],
      [{ type: Command.READ, cookie: 7n, offset: 2n ** 64n - 1n, length: 1 }, NbdError.EINVAL],
      [{ type: Command.WRITE, cookie: 8n, offset: SIZE, length: 1 }, NbdError.ENOSPC, Buffer.from('x')],
      [{ type: Command.WRITE_ZEROES, cookie: 9n, offset: SIZE - 10, length: 11 }, NbdError.ENOSPC],
      [{ type: Command.WRITE_ZEROES, cookie: 10n, offset: 2n ** 60n, length: 1 }, NbdError.ENOSPC],
      [{ type: Command.FLUSH, cookie: 11n, offset: 1, length: 0 }, NbdError.EINVAL],
      [{ type: Command.FLUSH, cookie: 12n, offset: 0, length: 1 }, NbdError.EINVAL],
      [{ type: Command.BLOCK_STATUS, cookie: 13n, offset: 0, length: 512 }, NbdError.EINVAL],
      [{ type: Command.READ, cookie: 14n, offset: 0, length: 65 * MiB }, NbdError.EOVERFLOW],
      [{ type: Command.FLUSH, cookie: 15n, offset: 0, length: 0 }, 0],
      [{ type: Command.READ, cookie: 16n, offset: 0, length: 1, flags: CommandFlag.DF }, 0],
    ];
    for (const [req, errno, payload] of cases) {
      c.request(req, payload);
      const r = await c.reply();
      expect({ cookie: r.cookie, errno: replyErrno(r) }).toEqual({ cookie: req.cookie, errno });
    }
    await assertServes(s);
    c.destroy();
  });

  test('FUA is accepted on every command when SEND_FUA is advertised (ignored where meaningless)', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    const { flags } = await c.negotiate({ metaContext: true });
    expect(flags & TransmissionFlag.SEND_FUA).toBeTruthy();
    const FUA = CommandFlag.FUA;
    const cases: [Parameters<RawNbdClient['request']>[0], Buffer?][] = [
      [{ type: Command.WRITE, cookie: 1n, offset: 0, length: 3, flags: FUA }, Buffer.from('fua')],
      [{ type: Command.READ, cookie: 2n, offset: 0, length: 3, flags: FUA }],
      [{ type: Command.READ, cookie: 3n, offset: 0, length: 3, flags: FUA | CommandFlag.DF }],
      [{ type: Command.FLUSH, cookie: 4n, offset: 0, length: 0, flags: FUA }],
      [{ type: Command.CACHE, cookie: 5n, offset: 0, length: 4096, flags: FUA }],
      [{ type: Command.BLOCK_STATUS, cookie: 6n, offset: 0, length: 4096, flags: FUA }],
      [{ type: Command.BLOCK_STATUS, cookie: 7n, offset: 0, length: 4096, flags: FUA | CommandFlag.REQ_ONE }],
      [{ type: Command.TRIM, cookie: 8n, offset: 65536, length: 4096, flags: FUA }],
      [{ type: Command.WRITE_ZEROES, cookie: 9n, offset: 65536, length: 4096, flags: FUA }],
    ];
    for (const [req, payload] of cases) {
      c.request(req, payload);
      const r = await c.reply();
      expect({ cookie: r.cookie, errno: replyErrno(r) }).toEqual({ cookie: req.cookie, errno: 0 });
      if (req.type === Command.READ && r.kind === 'chunk') expect(r.payload.subarray(8).toString()).toBe('fua');
    }
    c.destroy();
  });

  test('FUA without SEND_FUA is still refused, on every command', async () => {
    const mem = new MemoryBackend(MiB, false, testPool());
    class NoFua extends PassthroughLayer {
      override capabilities(): Capabilities {
        return { ...super.capabilities(), canFua: false };
      }
    }
    const s2 = await startNbdServer(new NoFua(mem));
    try {
      const c = await RawNbdClient.connect(s2.socketPath);
      const { flags } = await c.negotiate();
      expect(flags & TransmissionFlag.SEND_FUA).toBe(0);
      c.request({ type: Command.READ, cookie: 1n, offset: 0, length: 1, flags: CommandFlag.FUA });
      expect(replyErrno(await c.reply())).toBe(NbdError.EINVAL);
      c.request({ type: Command.FLUSH, cookie: 2n, offset: 0, length: 0, flags: CommandFlag.FUA });
      expect(replyErrno(await c.reply())).toBe(NbdError.EINVAL);
      c.request({ type: Command.WRITE, cookie: 3n, offset: 0, length: 1, flags: CommandFlag.FUA }, Buffer.from('x'));
      expect(replyErrno(await c.reply())).toBe(NbdError.EINVAL);
      c.destroy();
    } finally {
      await s2.stop();
    }
  });

  test('65 MiB write: drained and failed, connection alive', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.negotiate();
    const len = 65 * MiB;
    c.request({ type: Command.WRITE, cookie: 1n, offset: 0, length: len });
    const piece = Buffer.alloc(MiB, 0x5a);
    for (let i = 0; i < 65; i++) c.write(piece);
    const r = await c.reply(20000);
    expect(r.cookie).toBe(1n);
    // EINVAL, not EOVERFLOW: the spec keeps EOVERFLOW for reads and payload-less requests.
    expect(replyErrno(r)).toBe(NbdError.EINVAL);
    expect(backend.allocatedBytes()).toBe(0);
    c.request({ type: Command.WRITE, cookie: 2n, offset: 0, length: 2 }, Buffer.from('ok'));
    expect(replyErrno(await c.reply())).toBe(0);
    c.destroy();
  });

  test('write header announcing more than 128 MiB: disconnect, server keeps serving', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.negotiate();
    c.request({ type: Command.WRITE, cookie: 1n, offset: 0, length: 129 * MiB });
    expect(await c.waitClosed()).toBe(true);
    await assertServes(s);
  });

  test('garbage request magic: disconnect', async () => {
    const c = await RawNbdClient.connect(s.socketPath);
    await c.negotiate();
    c.write(Buffer.alloc(28, 0x42));
    expect(await c.waitClosed()).toBe(true);
    await assertServes(s);
  });

  test('BLOCK_STATUS with a context: merged descriptors, REQ_ONE gives exactly one', async () => {
    await backend.pwrite(Buffer.alloc(200 * 1024, 1), MiB);
    const c = await RawNbdClient.connect(s.socketPath);
    await c.negotiate({ metaContext: true });
    c.request({ type: Command.BLOCK_STATUS, cookie: 1n, offset: 0, length: SIZE });
    let r = await c.reply();
    expect(r).toMatchObject({ kind: 'chunk', type: ReplyType.BLOCK_STATUS, flags: ReplyFlag.DONE });
    const desc = (p: Buffer) => {
      const out: [number, number][] = [];
      for (let i = 4; i < p.length; i += 8) out.push([p.readUInt32BE(i), p.readUInt32BE(i + 4)]);
      return out;
    };
    if (r.kind !== 'chunk') throw new Error('expected a chunk');
    expect(r.payload.readUInt32BE(0)).toBe(1);
    expect(desc(r.payload)).toEqual([
      [MiB, 3],
      [256 * 1024, 0],
      [SIZE - MiB - 256 * 1024, 3],
    ]);
    c.request({ type: Command.BLOCK_STATUS, cookie: 2n, offset: 100, length: SIZE - 100, flags: CommandFlag.REQ_ONE });
    r = await c.reply();
    if (r.kind !== 'chunk') throw new Error('expected a chunk');
    expect(desc(r.payload)).toEqual([[MiB - 100, 3]]);
    c.request({ type: Command.BLOCK_STATUS, cookie: 3n, offset: MiB + 10, length: 20, flags: CommandFlag.REQ_ONE });
    r = await c.reply();
    if (r.kind !== 'chunk') throw new Error('expected a chunk');
    expect(desc(r.payload)).toEqual([[20, 0]]);
    c.destroy();
  });

  test('SET_META_CONTEXT for another export name does not enable BLOCK_STATUS', async () => {
    await s.stop();
    const b2 = new MemoryBackend(MiB, false, testPool());
    s = await startNbdServer(undefined, {
      exports: [
        { name: 'a', backend },
        { name: 'b', backend: b2 },
      ],
    });
    const c = await RawNbdClient.connect(s.socketPath);
    await c.greet();
    await c.option(Option.STRUCTURED_REPLY);
    await c.option(Option.SET_META_CONTEXT, encodeMetaContextRequestData({ exportName: 'b', queries: [BASE_ALLOCATION] }));
    const go = await c.option(Option.GO, encodeInfoRequestData({ exportName: 'a', infos: [] }));
    expect(go[go.length - 1].type).toBe(OptionReply.ACK);
    c.request({ type: Command.BLOCK_STATUS, cookie: 1n, offset: 0, length: 512 });
    expect(replyErrno(await c.reply())).toBe(NbdError.EINVAL);
    c.destroy();
  });
});

describe('read-only and capability-dependent answers', () => {
  test('write on a read-only export: EPERM; flags advertise READ_ONLY', async () => {
    const s = await startNbdServer(new MemoryBackend(MiB, false, testPool()), { export: { readonly: true } });
    try {
      const c = await RawNbdClient.connect(s.socketPath);
      const { flags } = await c.negotiate();
      expect(flags & TransmissionFlag.READ_ONLY).toBeTruthy();
      expect(flags & TransmissionFlag.SEND_WRITE_ZEROES).toBe(0);
      c.request({ type: Command.WRITE, cookie: 1n, offset: 0, length: 1 }, Buffer.from('x'));
      expect(replyErrno(await c.reply())).toBe(NbdError.EPERM);
      c.request({ type: Command.WRITE_ZEROES, cookie: 2n, offset: 0, length: 1 });
      expect(replyErrno(await c.reply())).toBe(NbdError.EPERM);
      c.request({ type: Command.READ, cookie: 3n, offset: 0, length: 1 });
      expect(replyErrno(await c.reply())).toBe(0);
      c.destroy();
    } finally {
      await s.stop();
    }
  });

  test('FAST_ZERO without backend support: ENOTSUP, data untouched; no CAN_MULTI_CONN unless offered', async () => {
    const mem = new MemoryBackend(MiB, false, testPool());
    await mem.pwrite(Buffer.from('keep'), 0);
    class Slow extends PassthroughLayer {
      override capabilities(): Capabilities {
        return { ...super.capabilities(), canFastZero: false, canMultiConn: false };
      }
    }
    const s = await startNbdServer(new Slow(mem));
    try {
      const c = await RawNbdClient.connect(s.socketPath);
      const { flags } = await c.negotiate();
      expect(flags & TransmissionFlag.SEND_FAST_ZERO).toBeTruthy();
      expect(flags & TransmissionFlag.CAN_MULTI_CONN).toBe(0);
      c.request({ type: Command.WRITE_ZEROES, cookie: 1n, offset: 0, length: 4, flags: CommandFlag.FAST_ZERO });
      expect(replyErrno(await c.reply())).toBe(NbdError.ENOTSUP);
      expect((await readCopy(mem, 0, 4)).toString()).toBe('keep');
      c.request({ type: Command.WRITE_ZEROES, cookie: 2n, offset: 0, length: 4, flags: CommandFlag.NO_HOLE });
      expect(replyErrno(await c.reply())).toBe(0);
      expect((await readCopy(mem, 0, 4)).equals(Buffer.alloc(4))).toBe(true);
      c.destroy();
    } finally {
      await s.stop();
    }
  });
});

describe('concurrency and endings', () => {
  test('replies come out of order: a fast request overtakes a slow one', async () => {
    const b = new DelayedBackend(new MemoryBackend(MiB, false, testPool()), (op, offset) => (offset === 0 ? 300 : 0));
    const s = await startNbdServer(b);
    try {
      const c = await RawNbdClient.connect(s.socketPath);
      await c.negotiate();
      c.request({ type: Command.READ, cookie: 1n, offset: 0, length: 512 });
      c.request({ type: Command.READ, cookie: 2n, offset: 4096, length: 512 });
      expect((await c.reply()).cookie).toBe(2n);
      expect((await c.reply()).cookie).toBe(1n);
      c.destroy();
    } finally {
      await s.stop();
    }
  });

  test('in-flight bound: with maxInFlight 2, at most 2 backend calls run', async () => {
    const b = new DelayedBackend(new MemoryBackend(MiB, false, testPool()), 30);
    let peak = 0;
    const s = await startNbdServer(b, { maxInFlightPerConnection: 2 });
    const timer = setInterval(() => (peak = Math.max(peak, b.running)), 2);
    try {
      const c = await RawNbdClient.connect(s.socketPath);
      await c.negotiate();
      for (let i = 0; i < 10; i++) c.request({ type: Command.READ, cookie: BigInt(i), offset: i * 512, length: 512 });
      const cookies = new Set<bigint>();
      for (let i = 0; i < 10; i++) cookies.add((await c.reply()).cookie);
      expect(cookies.size).toBe(10);
      expect(peak).toBeLessThanOrEqual(2);
      expect(peak).toBeGreaterThanOrEqual(1);
      c.destroy();
    } finally {
      clearInterval(timer);
      await s.stop();
    }
  });

  test('DISC with writes in flight: all replied, then the server closes', async () => {
    const mem = new MemoryBackend(MiB, false, testPool());
    const b = new DelayedBackend(mem, 100);
    const s = await startNbdServer(b);
    try {
      const c = await RawNbdClient.connect(s.socketPath);
      await c.negotiate();
      for (let i = 0; i < 5; i++) {
        c.request({ type: Command.WRITE, cookie: BigInt(i), offset: i * 4096, length: 4 }, Buffer.from(`w${i}..`));
      }
      c.request({ type: Command.DISC, cookie: 99n, offset: 0, length: 0 });
      const cookies: bigint[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await c.reply();
        expect(replyErrno(r)).toBe(0);
        cookies.push(r.cookie);
      }
      expect(cookies.sort()).toEqual([0n, 1n, 2n, 3n, 4n]);
      expect(await c.waitClosed()).toBe(true);
      for (let i = 0; i < 5; i++) expect((await readCopy(mem, i * 4096, 4)).toString()).toBe(`w${i}..`);
    } finally {
      await s.stop();
    }
  });

  test('client vanishing with requests in flight: requests finish, server survives', async () => {
    const mem = new MemoryBackend(MiB, false, testPool());
    const b = new DelayedBackend(mem, 150);
    const s = await startNbdServer(b);
    try {
      const c = await RawNbdClient.connect(s.socketPath);
      await c.negotiate();
      for (let i = 0; i < 4; i++) c.request({ type: Command.READ, cookie: BigInt(i), offset: 0, length: 65536 });
      c.request({ type: Command.WRITE, cookie: 9n, offset: 0, length: 4 }, Buffer.from('gone'));
      await new Promise((r) => setTimeout(r, 50));
      expect(b.running).toBe(5);
      c.destroy();
      await new Promise((r) => setTimeout(r, 300));
      expect(b.finished).toBe(5);
      expect((await readCopy(mem, 0, 4)).toString()).toBe('gone');
      expect(s.server.connectionCount).toBe(0);
      await assertServes(s);
    } finally {
      await s.stop();
    }
  });

  test('server.close() waits for requests in flight and delivers their replies', async () => {
    const b = new DelayedBackend(new MemoryBackend(MiB, false, testPool()), 200);
    const s = await startNbdServer(b);
    const c = await RawNbdClient.connect(s.socketPath);
    await c.negotiate();
    c.request({ type: Command.WRITE, cookie: 1n, offset: 0, length: 1 }, Buffer.from('x'));
    await new Promise((r) => setTimeout(r, 50));
    const closing = s.stop();
    expect(replyErrno(await c.reply())).toBe(0);
    expect(await c.waitClosed()).toBe(true);
    await closing;
    expect(b.finished).toBe(1);
  });
});
