import fc from 'fast-check';
import {
  decodeClientFlags,
  decodeOptionReplyHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequestData,
  encodeMetaContextRequestData,
  encodeOptionError,
  encodeOptionReply,
  encodeOptionRequest,
  encodeRepMetaContext,
  encodeRepServer,
  encodeServerGreeting,
  parseExportName,
  parseInfoRequest,
  parseMetaContextRequest,
} from '../../../../src/nbd/codec/handshake';
import { Option, OptionReply, OPT_REPLY_MAGIC } from '../../../../src/nbd/codec/constants';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('handshake encoders produce the bytes the spec describes', () => {
  test('greeting: NBDMAGIC IHAVEOPT flags', () => {
    expect(encodeServerGreeting(3)).toEqual(hex('4e42444d41474943 49484156454f5054 0003'));
  });

  test('client flags', () => {
    expect(decodeClientFlags(hex('00000003'))).toBe(3);
  });

  test('option reply with and without data', () => {
    expect(encodeOptionReply(Option.STRUCTURED_REPLY, OptionReply.ACK)).toEqual(
      hex('0003e889045565a9 00000008 00000001 00000000'),
    );
    expect(encodeOptionError(Option.EXTENDED_HEADERS, OptionReply.ERR_UNSUP, 'no')).toEqual(
      hex('0003e889045565a9 0000000b 80000001 00000002 6e6f'),
    );
  });

  test('NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE', () => {
    expect(encodeInfoExport(2 ** 40 + 5, 0x14d)).toEqual(hex('0000 0000010000000005 014d'));
    expect(encodeInfoBlockSize(1, 4 << 20, 32 << 20)).toEqual(hex('0003 00000001 00400000 02000000'));
  });

  test('NBD_REP_SERVER and NBD_REP_META_CONTEXT', () => {
    expect(encodeRepServer('ab', 'x')).toEqual(hex('00000002 6162 78'));
    expect(encodeRepServer('')).toEqual(hex('00000000'));
    expect(encodeRepMetaContext(1, 'base:allocation')).toEqual(
      Buffer.concat([hex('00000001'), Buffer.from('base:allocation')]),
    );
  });

  test('EXPORT_NAME reply with and without the 124 zero bytes', () => {
    expect(encodeExportNameReply(512, 0x0003, true)).toEqual(hex('0000000000000200 0003'));
    const padded = encodeExportNameReply(512, 0x0003, false);
    expect(padded.length).toBe(134);
    expect(padded.subarray(10).every((b) => b === 0)).toBe(true);
  });

  test('option reply header decodes', () => {
    const h = decodeOptionReplyHeader(encodeOptionReply(7, OptionReply.ERR_UNKNOWN, Buffer.from('xyz')));
    expect(h).toEqual({ magic: OPT_REPLY_MAGIC, option: 7, replyType: OptionReply.ERR_UNKNOWN, length: 3 });
  });
});

describe('option data parsers', () => {
  test('INFO/GO data built by hand', () => {
    const data = hex('00000003 646973 0002 0003 0001');
    expect(parseInfoRequest(data)).toEqual({ ok: true, value: { exportName: 'dis', infos: [3, 1] } });
    expect(parseInfoRequest(hex('00000000 0000'))).toEqual({ ok: true, value: { exportName: '', infos: [] } });
  });

  test('malformed INFO/GO data is rejected, not thrown', () => {
    for (const bad of [
      '',
      '00000000 00',
      '00000005 6162 0000', // name runs past the data
      '00000000 0002 0001', // 2 infos announced, 1 present
      '00000000 0000 00', // trailing byte
      'ffffffff 0000',
    ]) {
      const r = parseInfoRequest(hex(bad));
      expect(r.ok).toBe(false);
    }
  });

  test('META_CONTEXT data built by hand', () => {
    const q = Buffer.from('base:allocation');
    const data = Buffer.concat([hex('00000000 00000001 0000000f'), q]);
    expect(parseMetaContextRequest(data)).toEqual({ ok: true, value: { exportName: '', queries: ['base:allocation'] } });
  });

  test('malformed META_CONTEXT data is rejected, not thrown', () => {
    for (const bad of [
      '00000000',
      '00000000 ffffffff', // absurd query count
      '00000000 00000001 00000005 6162', // query runs past the data
      '00000000 00000000 00', // trailing byte
      '00002000 00000000', // name longer than the data
    ]) {
      expect(parseMetaContextRequest(hex(bad)).ok).toBe(false);
    }
    const longQuery = Buffer.concat([hex('00000000 00000001 00001001'), Buffer.alloc(4097, 0x61)]);
    expect(parseMetaContextRequest(longQuery).ok).toBe(false);
  });

  test('EXPORT_NAME longer than 4096 bytes is rejected', () => {
    expect(parseExportName(Buffer.alloc(4097, 0x61)).ok).toBe(false);
    expect(parseExportName(Buffer.from('disk'))).toEqual({ ok: true, value: 'disk' });
  });

  test('option request encoder (client side)', () => {
    expect(encodeOptionRequest(Option.GO, hex('0102'))).toEqual(hex('49484156454f5054 00000007 00000002 0102'));
  });
});

describe('property round trips', () => {
  const name = fc.string({ unit: 'grapheme', maxLength: 40 });

  test('INFO/GO data', () => {
    fc.assert(
      fc.property(name, fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 20 }), (exportName, infos) => {
        const r = parseInfoRequest(encodeInfoRequestData({ exportName, infos }));
        expect(r).toEqual({ ok: true, value: { exportName, infos } });
      }),
    );
  });

  test('META_CONTEXT data', () => {
    fc.assert(
      fc.property(name, fc.array(name, { maxLength: 10 }), (exportName, queries) => {
        const r = parseMetaContextRequest(encodeMetaContextRequestData({ exportName, queries }));
        expect(r).toEqual({ ok: true, value: { exportName, queries } });
      }),
    );
  });

  test('parsers never throw on arbitrary bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const b = Buffer.from(bytes);
        parseInfoRequest(b);
        parseMetaContextRequest(b);
        parseExportName(b);
      }),
    );
  });
});
