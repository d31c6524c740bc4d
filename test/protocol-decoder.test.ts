import fc from 'fast-check';
import { NbdDecoder, type DecodedMessage, type DecoderLimits } from '../protocol/decoder';
import { encodeClientFlags, encodeInfoRequestData, encodeOptionRequest } from '../protocol/handshake';
import { encodeRequest } from '../protocol/transmission';
import { Command, Option } from '../protocol/constants';

/** Pull every message; switch to transmission after GO / EXPORT_NAME, as the server does. */
function drain(d: NbdDecoder, out: DecodedMessage[]): void {
  for (let m = d.next(); m; m = d.next()) {
    out.push(m);
    if (m.kind === 'option' && (m.option === Option.GO || m.option === Option.EXPORT_NAME)) d.startTransmission();
  }
}

/** Decode `stream` delivered as the given pieces. */
function decodeInPieces(stream: Buffer, cuts: number[], limits?: Partial<DecoderLimits>): DecodedMessage[] {
  const d = new NbdDecoder(limits);
  const out: DecodedMessage[] = [];
  let prev = 0;
  for (const c of [...cuts, stream.length]) {
    d.push(stream.subarray(prev, c));
    drain(d, out);
    prev = c;
  }
  return out;
}

/** Copy Buffers so comparisons do not depend on which chunk they alias. */
const norm = (msgs: DecodedMessage[]) =>
  msgs.map((m) => ('data' in m && m.data ? { ...m, data: Buffer.from(m.data).toString('hex') } : m));

const payload = Buffer.from(Array.from({ length: 37 }, (_, i) => i));
const session = Buffer.concat([
  encodeClientFlags(3),
  encodeOptionRequest(Option.STRUCTURED_REPLY),
  encodeOptionRequest(Option.EXTENDED_HEADERS, Buffer.from('xy')),
  encodeOptionRequest(Option.GO, encodeInfoRequestData({ exportName: 'e', infos: [3] })),
  encodeRequest({ type: Command.WRITE, cookie: 1n, offset: 4096, length: payload.length, flags: 1 }),
  payload,
  encodeRequest({ type: Command.READ, cookie: 2n, offset: 0, length: 512 }),
  encodeRequest({ type: Command.WRITE, cookie: 3n, offset: 0, length: 0 }),
  encodeRequest({ type: Command.DISC, cookie: 4n, offset: 0, length: 0 }),
]);

describe('NbdDecoder', () => {
  const whole = decodeInPieces(session, []);

  test('decodes a whole session', () => {
    expect(whole.map((m) => m.kind)).toEqual([
      'clientFlags',
      'option',
      'option',
      'option',
      'request',
      'request',
      'request',
      'request',
    ]);
    const w = whole[4] as Extract<DecodedMessage, { kind: 'request' }>;
    expect(w.header).toEqual({ flags: 1, type: Command.WRITE, cookie: 1n, offset: 4096, length: 37 });
    expect(w.data).toEqual(payload);
    expect((whole[5] as { data?: Buffer }).data).toBeUndefined();
    expect((whole[6] as { data?: Buffer }).data).toEqual(Buffer.alloc(0));
  });

  test('split at every byte boundary gives the same messages', () => {
    for (let cut = 1; cut < session.length; cut++) {
      expect(norm(decodeInPieces(session, [cut]))).toEqual(norm(whole));
    }
  });

  test('split at every pair of boundaries around the write payload', () => {
    const start = session.indexOf(payload) - 30;
    for (let a = start; a < start + 80; a++) {
      for (let b = a + 1; b < start + 80; b++) {
        expect(norm(decodeInPieces(session, [a, b]))).toEqual(norm(whole));
      }
    }
  });

  test('one byte at a time', () => {
    const cuts = Array.from({ length: session.length - 1 }, (_, i) => i + 1);
    expect(norm(decodeInPieces(session, cuts))).toEqual(norm(whole));
  });

  test('random chunking (property)', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: session.length - 1 }), { maxLength: 30 }), (cuts) => {
        expect(norm(decodeInPieces(session, cuts.sort((x, y) => x - y)))).toEqual(norm(whole));
      }),
    );
  });

  test('an oversized option is skipped and reported, the next one decodes', () => {
    const s = Buffer.concat([
      encodeClientFlags(3),
      encodeOptionRequest(Option.INFO, Buffer.alloc(40, 0xee)),
      encodeOptionRequest(Option.LIST),
    ]);
    const limits = { maxOptionLength: 16, maxOptionDrain: 64 };
    const expected = [
      { kind: 'clientFlags', flags: 3 },
      { kind: 'optionTooBig', option: Option.INFO, length: 40 },
      { kind: 'option', option: Option.LIST, data: '' },
    ];
    for (let cut = 1; cut < s.length; cut++) expect(norm(decodeInPieces(s, [cut], limits))).toEqual(expected);
  });

  test('option data beyond the drain limit is fatal', () => {
    const s = Buffer.concat([encodeClientFlags(3), encodeOptionRequest(Option.INFO, Buffer.alloc(65))]);
    const msgs = decodeInPieces(s, [], { maxOptionLength: 16, maxOptionDrain: 64 });
    expect(msgs[1].kind).toBe('error');
  });

  test('an oversized write is drained without buffering; the next request decodes', () => {
    const big = encodeRequest({ type: Command.WRITE, cookie: 7n, offset: 0, length: 100 });
    const next = encodeRequest({ type: Command.FLUSH, cookie: 8n, offset: 0, length: 0 });
    const d = new NbdDecoder({ maxPayload: 50, maxPayloadDrain: 200 });
    d.startTransmission();
    d.push(big);
    expect(d.next()).toBeUndefined();
    for (let i = 0; i < 10; i++) {
      d.push(Buffer.alloc(10, 0xaa));
      expect(d.bufferedBytes).toBe(0); // dropped as it arrives
      if (i < 9) expect(d.next()).toBeUndefined();
    }
    const m = d.next();
    expect(m?.kind).toBe('requestTooBig');
    d.push(next);
    expect(d.next()).toMatchObject({ kind: 'request', header: { type: Command.FLUSH, cookie: 8n } });
  });

  test('oversized write split at every boundary', () => {
    const s = Buffer.concat([
      encodeRequest({ type: Command.WRITE, cookie: 7n, offset: 0, length: 60 }),
      Buffer.alloc(60, 1),
      encodeRequest({ type: Command.READ, cookie: 8n, offset: 0, length: 1 }),
    ]);
    const decode = (cuts: number[]) => {
      const d = new NbdDecoder({ maxPayload: 50, maxPayloadDrain: 200 });
      d.startTransmission();
      const out: DecodedMessage[] = [];
      let prev = 0;
      for (const c of [...cuts, s.length]) {
        d.push(s.subarray(prev, c));
        drain(d, out);
        prev = c;
      }
      return out.map((m) => m.kind);
    };
    for (let cut = 1; cut < s.length; cut++) expect(decode([cut])).toEqual(['requestTooBig', 'request']);
  });

  test('a write beyond the drain limit and bad magics are fatal; the decoder then stays silent', () => {
    const d = new NbdDecoder({ maxPayload: 50, maxPayloadDrain: 200 });
    d.startTransmission();
    d.push(encodeRequest({ type: Command.WRITE, cookie: 1n, offset: 0, length: 201 }));
    expect(d.next()?.kind).toBe('error');
    d.push(encodeRequest({ type: Command.READ, cookie: 1n, offset: 0, length: 1 }));
    expect(d.next()).toBeUndefined();

    const d2 = new NbdDecoder();
    d2.push(Buffer.concat([encodeClientFlags(3), Buffer.from('GARBAGE!GARBAGE!')]));
    expect(d2.next()?.kind).toBe('clientFlags');
    expect(d2.next()).toEqual({ kind: 'error', reason: 'bad option magic' });

    const d3 = new NbdDecoder();
    d3.startTransmission();
    d3.push(Buffer.alloc(28, 0x41));
    expect(d3.next()).toEqual({ kind: 'error', reason: 'bad request magic' });
  });

  test('a large payload arriving in many chunks is assembled once', () => {
    const d = new NbdDecoder();
    d.startTransmission();
    const data = Buffer.alloc(1 << 20);
    for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
    d.push(encodeRequest({ type: Command.WRITE, cookie: 1n, offset: 0, length: data.length }));
    for (let off = 0; off < data.length; off += 65536) {
      expect(d.next()).toBeUndefined();
      d.push(data.subarray(off, off + 65536));
    }
    const m = d.next() as Extract<DecodedMessage, { kind: 'request' }>;
    expect(m.data!.equals(data)).toBe(true);
    expect(d.bufferedBytes).toBe(0);
  });
});
