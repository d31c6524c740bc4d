import fc from 'fast-check';
import {
  decodeChunkHeader,
  decodeRequestHeader,
  decodeSimpleReply,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetDataHeader,
  encodeRequest,
  encodeSimpleReply,
} from '../../../../src/nbd/codec/transmission';
import { Command, CommandFlag, ReplyFlag, ReplyType } from '../../../../src/nbd/codec/constants';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('request header', () => {
  test('decodes bytes built by hand', () => {
    const b = hex('25609513 0001 0001 0102030405060708 0000000000100000 00001000');
    expect(decodeRequestHeader(b)).toEqual({
      flags: CommandFlag.FUA,
      type: Command.WRITE,
      cookie: 0x0102030405060708n,
      offset: 0x100000,
      length: 4096,
    });
  });

  test('bad magic gives undefined', () => {
    expect(decodeRequestHeader(hex('25609514 0000 0000 0000000000000000 0000000000000000 00000000'))).toBeUndefined();
  });

  test('offsets beyond 2^53 stay beyond MAX_SAFE_INTEGER, without throwing', () => {
    for (const off of [2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n]) {
      const h = decodeRequestHeader(encodeRequest({ type: Command.READ, cookie: 1n, offset: off, length: 1 }))!;
      expect(h.offset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
    }
    const h = decodeRequestHeader(encodeRequest({ type: 0, cookie: 0n, offset: Number.MAX_SAFE_INTEGER, length: 0 }))!;
    expect(h.offset).toBe(Number.MAX_SAFE_INTEGER);
  });

  test('round trip (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffff }),
        fc.integer({ min: 0, max: 0xffff }),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        fc.integer({ min: 0, max: 0xffffffff }),
        (flags, type, cookie, offset, length) => {
          const h = decodeRequestHeader(encodeRequest({ flags, type, cookie, offset, length }));
          expect(h).toEqual({ flags, type, cookie, offset, length });
        },
      ),
    );
  });
});

describe('replies', () => {
  test('simple reply', () => {
    expect(encodeSimpleReply(0xabn, 22)).toEqual(hex('67446698 00000016 00000000000000ab'));
    expect(decodeSimpleReply(encodeSimpleReply(2n ** 64n - 1n, 0))).toEqual({ error: 0, cookie: 2n ** 64n - 1n });
  });

  test('OFFSET_DATA header announces offset + data length', () => {
    expect(encodeOffsetDataHeader(5n, 0x200, 4096, true)).toEqual(
      hex('668e33ef 0001 0001 0000000000000005 00001008 0000000000000200'),
    );
  });

  test('BLOCK_STATUS chunk', () => {
    const b = encodeBlockStatusChunk(
      9n,
      1,
      [
        { length: 65536, flags: 3 },
        { length: 512, flags: 0 },
      ],
      true,
    );
    expect(b).toEqual(
      hex('668e33ef 0001 0005 0000000000000009 00000014 00000001 00010000 00000003 00000200 00000000'),
    );
  });

  test('ERROR and NONE chunks', () => {
    expect(encodeErrorChunk(1n, 22, 'bad')).toEqual(
      hex('668e33ef 0001 8001 0000000000000001 00000009 00000016 0003 626164'),
    );
    expect(encodeNoneChunk(2n)).toEqual(hex('668e33ef 0001 0000 0000000000000002 00000000'));
    expect(encodeErrorChunk(1n, 5, 'x'.repeat(5000)).length).toBe(20 + 6 + 4096);
  });

  test('chunk header decodes (property)', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.string({ maxLength: 30 }), (cookie, msg) => {
        const b = encodeErrorChunk(cookie, 5, msg);
        const h = decodeChunkHeader(b)!;
        expect(h).toEqual({ flags: ReplyFlag.DONE, type: ReplyType.ERROR, cookie, length: b.length - 20 });
        expect(b.readUInt32BE(20)).toBe(5);
        expect(b.toString('utf8', 26)).toBe(msg);
      }),
    );
  });
});
