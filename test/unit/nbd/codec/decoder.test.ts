import fc from 'fast-check';
import { NbdDecoder, type DecodedMessage, type DecoderLimits } from '../../../../src/nbd/codec/decoder';
import { encodeClientFlags, encodeInfoRequestData, encodeOptionRequest } from '../../../../src/nbd/codec/handshake';
import { encodeRequest } from '../../../../src/nbd/codec/transmission';
import { Command, Option } from '../../../../src/nbd/codec/constants';

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

/**
 * Feed `stream` the way the server does with Node's onread: ask readTarget() where the next
 * bytes go, copy at most `sizes[i]` bytes there (a short read), commit, pull messages.
 * `sizes` cycles; Infinity fills the whole target, like a socket with plenty of data queued.
 */
function decodeByTargets(
  stream: Buffer,
  sizes: number[],
  opts: ConstructorParameters<typeof NbdDecoder>[1] = {},
  limits?: Partial<DecoderLimits>,
): { msgs: DecodedMessage[]; targets: Buffer[] } {
  const d = new NbdDecoder(limits, opts);
  const out: DecodedMessage[] = [];
  const targets: Buffer[] = [];
  let pos = 0;
  for (let i = 0; pos < stream.length; i++) {
    const t = d.readTarget();
    expect(t.length).toBeGreaterThan(0);
    targets.push(t);
    const n = Math.min(t.length, sizes[i % sizes.length], stream.length - pos);
    stream.copy(t, 0, pos, pos + n);
    pos += n;
    d.commit(n);
    drain(d, out);
  }
  return { msgs: out, targets };
}

describe('NbdDecoder read targets (zero-copy path)', () => {
  const whole = decodeInPieces(session, []);

  test('whole reads give the same messages as push()', () => {
    expect(norm(decodeByTargets(session, [Infinity]).msgs)).toEqual(norm(whole));
  });

  test('a short read at every boundary gives the same messages', () => {
    for (let cut = 1; cut < session.length; cut++) {
      expect(norm(decodeByTargets(session, [cut, Infinity]).msgs)).toEqual(norm(whole));
    }
  });

  test('one byte per read', () => {
    expect(norm(decodeByTargets(session, [1]).msgs)).toEqual(norm(whole));
  });

  test('random read sizes and staging sizes (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 200 }), { minLength: 1, maxLength: 20 }),
        fc.integer({ min: 56, max: 300 }),
        fc.integer({ min: 0, max: 300 }),
        (sizes, stagingSize, stagingReadSize) => {
          const got = decodeByTargets(session, sizes, { stagingSize, stagingReadSize }).msgs;
          expect(norm(got)).toEqual(norm(whole));
        },
      ),
    );
  });

  test('option data larger than staging gets its own buffer, at any read boundary', () => {
    const big = Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff));
    const stream = Buffer.concat([
      encodeClientFlags(3),
      encodeOptionRequest(1234, big),
      encodeOptionRequest(Option.LIST),
      encodeOptionRequest(Option.GO, encodeInfoRequestData({ exportName: '', infos: [] })),
      encodeRequest({ type: Command.FLUSH, cookie: 1n, offset: 0, length: 0 }),
    ]);
    const expected = norm(decodeInPieces(stream, []));
    expect(expected.map((m) => m.kind)).toEqual(['clientFlags', 'option', 'option', 'option', 'request']);
    for (let cut = 1; cut < stream.length; cut++) {
      expect(norm(decodeByTargets(stream, [cut, 97], { stagingSize: 64 }).msgs)).toEqual(expected);
    }
  });

  test('WRITE payloads land in the allocated buffer; headers after a WRITE are read alone', () => {
    const payloads = [0, 1, 2].map((i) => Buffer.alloc(100000 + i * 5000, 0x30 + i));
    const stream = Buffer.concat([
      encodeClientFlags(3),
      encodeOptionRequest(Option.GO, encodeInfoRequestData({ exportName: '', infos: [] })),
      ...payloads.flatMap((p, i) => [
        encodeRequest({ type: Command.WRITE, cookie: BigInt(i), offset: 0, length: p.length }),
        p,
      ]),
    ]);
    const allocated: Buffer[] = [];
    const { msgs, targets } = decodeByTargets(stream, [Infinity], {
      allocatePayload: (n) => {
        const b = Buffer.alloc(n);
        allocated.push(b);
        return b;
      },
    });
    const writes = msgs.filter((m): m is Extract<DecodedMessage, { kind: 'request' }> => m.kind === 'request');
    expect(writes).toHaveLength(3);
    writes.forEach((w, i) => {
      expect(w.data).toBe(allocated[i]); // the very buffer, not a copy
      expect(w.data!.equals(payloads[i])).toBe(true);
    });
    // The 2nd and 3rd payloads: a 28-byte header read, then one read of the whole payload.
    const inPayload = (t: Buffer, i: number) => t.buffer === allocated[i].buffer;
    for (const i of [1, 2]) {
      const k = targets.findIndex((t) => inPayload(t, i));
      expect(targets[k].length).toBe(payloads[i].length);
      expect(targets[k].byteOffset).toBe(allocated[i].byteOffset);
      expect(targets[k - 1].length).toBe(28);
    }
  });

  test('no payload memory: next() waits, bytes are kept, providePayload() completes the request', () => {
    const p = Buffer.from(Array.from({ length: 700 }, (_, i) => i & 0xff));
    const stream = Buffer.concat([
      encodeRequest({ type: Command.WRITE, cookie: 5n, offset: 0, length: p.length }),
      p,
      encodeRequest({ type: Command.FLUSH, cookie: 6n, offset: 0, length: 0 }),
    ]);
    for (let cut = 1; cut < stream.length; cut++) {
      const d = new NbdDecoder({}, { allocatePayload: () => undefined });
      d.startTransmission();
      d.push(stream.subarray(0, cut));
      expect(d.next()).toBeUndefined();
      if (cut >= 28) {
        expect(d.payloadWanted).toBe(p.length);
        expect(() => d.providePayload(Buffer.alloc(1))).toThrow(RangeError);
        const buf = Buffer.alloc(p.length);
        d.providePayload(buf);
        expect(d.payloadWanted).toBe(0);
      }
      d.push(stream.subarray(cut));
      if (cut < 28) {
        expect(d.next()).toBeUndefined();
        d.providePayload(Buffer.alloc(p.length));
      }
      const m = d.next() as Extract<DecodedMessage, { kind: 'request' }>;
      expect(m.header.cookie).toBe(5n);
      expect(m.data!.equals(p)).toBe(true);
      expect(d.next()).toMatchObject({ kind: 'request', header: { cookie: 6n } });
      expect(d.next()).toBeUndefined();
    }
  });

  test('abandon() hands back the payload being received, and the decoder goes silent', () => {
    const buf = Buffer.alloc(1000);
    const d = new NbdDecoder({}, { allocatePayload: () => buf });
    d.startTransmission();
    d.push(encodeRequest({ type: Command.WRITE, cookie: 1n, offset: 0, length: 1000 }));
    expect(d.next()).toBeUndefined();
    d.push(Buffer.alloc(10));
    expect(d.abandon()).toBe(buf);
    d.push(encodeRequest({ type: Command.READ, cookie: 2n, offset: 0, length: 1 }));
    expect(d.next()).toBeUndefined();
    expect(d.abandon()).toBeUndefined();
  });

  test('staging does not grow when the consumer keeps pulling', () => {
    const reqs = Buffer.concat(
      Array.from({ length: 2000 }, (_, i) => encodeRequest({ type: Command.READ, cookie: BigInt(i), offset: 0, length: 1 })),
    );
    const d = new NbdDecoder({}, { stagingSize: 256, stagingReadSize: 100 });
    d.startTransmission();
    let pos = 0;
    let n = 0;
    const stores = new Set<ArrayBufferLike>();
    while (pos < reqs.length) {
      const t = d.readTarget();
      stores.add(t.buffer); // one staging buffer throughout: never grown
      expect(t.length).toBeLessThanOrEqual(100);
      const k = Math.min(t.length, reqs.length - pos);
      reqs.copy(t, 0, pos, pos + k);
      pos += k;
      d.commit(k);
      while (d.next()) n++;
    }
    expect(n).toBe(2000);
    expect(stores.size).toBe(1);
  });
});
