/**
 * The pure HTTP response reader, by properties (fast-check): any valid response, split at any
 * byte boundary, read the same as in one piece, 1xx interim responses included; hostile input
 * (bad status lines, bad or conflicting Content-Length, bad chunk sizes, oversized heads, too
 * many headers, truncation, random bytes) ends in a BadResponseError or an incomplete
 * response, never another exception, and never holds more than its limits.
 */
import fc from 'fast-check';
import { BadResponseError, MAX_HEADERS, MAX_HEAD_BYTES } from '../../../../../src/backends/imageio/http/response-head';
import { MAX_INTERIM, ResponseReader, type ReadResult, type ReadSpec } from '../../../../../src/backends/imageio/http/response-reader';

/** What the connection does: stage bytes, refeed what was not consumed, read a known-length body directly. */
function drive(spec: ReadSpec, pieces: readonly Buffer[], eof = false): { result?: ReadResult; error?: unknown; leftover: number; maxPending: number } {
  const reader = new ResponseReader(spec);
  let pending = Buffer.alloc(0);
  let maxPending = 0;
  try {
    for (let k = 0; k < pieces.length; k++) {
      let piece = pieces[k];
      while (piece.length > 0 && !reader.result) {
        const direct = pending.length === 0 ? reader.directTarget() : undefined;
        if (direct && direct.length > 0) {
          // As the kernel does with `onread`: bytes straight into the destination.
          const n = piece.copy(direct, 0, 0, Math.min(piece.length, direct.length));
          reader.advanceDirect(n);
          piece = piece.subarray(n);
          continue;
        }
        pending = Buffer.concat([pending, piece]);
        piece = Buffer.alloc(0);
        const used = reader.feed(pending, 0, pending.length);
        pending = pending.subarray(used);
        maxPending = Math.max(maxPending, pending.length);
      }
      if (reader.result) {
        const rest = pieces.slice(k + 1).reduce((sum, p) => sum + p.length, 0);
        return { result: reader.result, leftover: pending.length + piece.length + rest, maxPending };
      }
    }
    if (eof) reader.end();
    return { result: reader.result, leftover: pending.length, maxPending };
  } catch (error) {
    return { error, leftover: pending.length, maxPending };
  }
}

/** `data` cut at the given positions. */
function cut(data: Buffer, at: readonly number[]): Buffer[] {
  const points = [...new Set(at.map((p) => p % (data.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let last = 0;
  for (const p of points) {
    out.push(data.subarray(last, p));
    last = p;
  }
  out.push(data.subarray(last));
  return out;
}

type Framing = 'length' | 'chunked' | 'close';

interface Made {
  bytes: Buffer;
  status: number;
  body: Buffer;
  framing: Framing;
  headers: Array<[string, string]>;
}

const token = fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,15}$/).filter((n) => !/^(content-length|transfer-encoding|connection)$/i.test(n));
const value = fc.stringMatching(/^[ -~]{0,40}$/).map((v) => v.trim());

const interim = fc.record({
  status: fc.constantFrom(100, 102, 103),
  headers: fc.array(fc.tuple(token, value), { maxLength: 3 }),
});

const response = fc
  .record({
    interims: fc.array(interim, { maxLength: 3 }),
    status: fc.constantFrom(200, 206, 400, 403, 416, 500, 503),
    headers: fc.array(fc.tuple(token, value), { maxLength: 6 }),
    body: fc.uint8Array({ maxLength: 300 }),
    framing: fc.constantFrom<Framing>('length', 'chunked', 'close'),
    chunks: fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 8 }),
    upper: fc.boolean(),
  })
  .map((r): Made => {
    const body = Buffer.from(r.body);
    let head = '';
    for (const i of r.interims) head += `HTTP/1.1 ${i.status} Interim\r\n${i.headers.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n`;
    head += `HTTP/1.1 ${r.status} Whatever\r\n${r.headers.map(([n, v]) => `${n}: ${v}\r\n`).join('')}`;
    let payload: Buffer;
    if (r.framing === 'length') {
      head += `${r.upper ? 'Content-Length' : 'content-length'}: ${body.length}\r\n`;
      payload = body;
    } else if (r.framing === 'chunked') {
      head += 'Transfer-Encoding: chunked\r\n';
      const parts: Buffer[] = [];
      let at = 0;
      for (let k = 0; at < body.length; k++) {
        const n = Math.min(r.chunks[k % r.chunks.length], body.length - at);
        const size = r.upper ? n.toString(16).toUpperCase() : n.toString(16);
        parts.push(Buffer.from(`${size}${k % 2 ? ';ext=1' : ''}\r\n`), body.subarray(at, at + n), Buffer.from('\r\n'));
        at += n;
      }
      parts.push(Buffer.from(r.upper ? '0\r\nX-Trailer: 1\r\n\r\n' : '0\r\n\r\n'));
      payload = Buffer.concat(parts);
    } else {
      payload = body;
    }
    return { bytes: Buffer.concat([Buffer.from(head + '\r\n', 'latin1'), payload]), status: r.status, body, framing: r.framing, headers: r.headers };
  });

const spec = (maxBody = 1 << 20): ReadSpec => ({ ok: [200, 206], maxBody });

function expectSame(got: ReturnType<typeof drive>, m: Made): void {
  expect(got.error).toBeUndefined();
  expect(got.result).toBeDefined();
  expect(got.result!.head.status).toBe(m.status);
  expect(got.result!.truncated).toBe(false);
  expect(got.result!.body.equals(m.body)).toBe(true);
  expect(got.leftover).toBe(0);
  for (const [n, v] of m.headers) expect(got.result!.head.headers[n.toLowerCase()]).toContain(v);
}

function expectBad(got: ReturnType<typeof drive>, message: RegExp): void {
  expect(got.error).toBeInstanceOf(BadResponseError);
  expect((got.error as Error).message).toMatch(message);
}

describe('ResponseReader: valid responses', () => {
  test('split at every byte boundary, one split at a time, reads the same as in one piece (1xx interim responses skipped)', () => {
    fc.assert(
      fc.property(response, (m) => {
        const eof = m.framing === 'close';
        expectSame(drive(spec(), [m.bytes], eof), m);
        for (let at = 0; at <= m.bytes.length; at++) expectSame(drive(spec(), cut(m.bytes, [at]), eof), m);
      }),
      { numRuns: 60 },
    );
  });

  test('split into many random pieces, down to single bytes, reads the same', () => {
    fc.assert(
      fc.property(response, fc.array(fc.nat(), { maxLength: 40 }), fc.boolean(), (m, at, bytewise) => {
        const pieces = bytewise ? [...m.bytes].map((b) => Buffer.from([b])) : cut(m.bytes, at);
        expectSame(drive(spec(), pieces, m.framing === 'close'), m);
      }),
      { numRuns: 300 },
    );
  });

  test('a successful body with `into` lands in it, at every split; the bytes after the response are left to the caller', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 500 }), fc.nat(), (bytes, extra) => {
        const body = Buffer.from(bytes);
        const wire = Buffer.concat([Buffer.from(`HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 206 Partial Content\r\nContent-Length: ${body.length}\r\n\r\n`), body]);
        const trailing = Buffer.alloc(extra % 5, 0x41);
        for (let at = 0; at <= wire.length; at += 7) {
          const into = Buffer.alloc(body.length);
          const got = drive({ ok: [206], into, maxBody: 10 }, [...cut(wire, [at]), trailing]);
          expect(got.error).toBeUndefined();
          expect(got.result!.head.status).toBe(206);
          expect(got.result!.body.length).toBe(0);
          expect(into.equals(body)).toBe(true);
          expect(got.leftover).toBe(trailing.length);
        }
      }),
      { numRuns: 100 },
    );
  });

  test('100 Continue then the final response: the final one is the result', () => {
    const got = drive(spec(), [Buffer.from('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')]);
    expect(got.result?.head.status).toBe(200);
    expect(got.result?.body.toString()).toBe('ok');
  });

  test('bodies past maxBody are cut and marked truncated, whatever the framing; memory stays at maxBody', () => {
    fc.assert(
      fc.property(response, fc.integer({ min: 0, max: 50 }), fc.array(fc.nat(), { maxLength: 10 }), (m, maxBody, at) => {
        fc.pre(m.body.length > maxBody);
        const got = drive(spec(maxBody), cut(m.bytes, at), m.framing === 'close');
        expect(got.error).toBeUndefined();
        expect(got.result!.truncated).toBe(true);
        expect(got.result!.body.length).toBeLessThanOrEqual(maxBody);
        expect(got.result!.body.equals(m.body.subarray(0, got.result!.body.length))).toBe(true);
      }),
      { numRuns: 200 },
    );
  });
});

describe('ResponseReader: hostile input ends in a clear error', () => {
  const bad = (text: string | Buffer, message: RegExp, s: ReadSpec = spec()) => {
    const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text, 'latin1');
    // Whole, and split at every byte: the same error, whenever it shows.
    expectBad(drive(s, [bytes]), message);
    for (let at = 0; at <= bytes.length; at += Math.max(1, Math.floor(bytes.length / 64))) expectBad(drive(s, cut(bytes, [at])), message);
  };

  test('bad status lines', () => {
    bad('HTTP/2 200 OK\r\n\r\n', /bad status line/);
    bad('HTTP/1.1 20 OK\r\n\r\n', /bad status line/);
    bad('HTTP/1.1 2000 OK\r\n\r\n', /bad status line/);
    bad('HTTP/1.1  200 OK\r\n\r\n', /bad status line/);
    // Caught as soon as 5 bytes show, or at the end of the head.
    bad('SSH-2.0-OpenSSH_9.2\r\n\r\n', /not an HTTP response|bad status line/);
    bad('<html>hello</html>\r\n\r\n', /not an HTTP response|bad status line/);
  });

  test('bad, conflicting or oversized Content-Length', () => {
    bad('HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n', /bad Content-Length/);
    bad('HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', /bad Content-Length/);
    bad('HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n', /bad Content-Length/);
    bad('HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n', /bad Content-Length/);
    bad('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n', /bad Content-Length/);
    bad('HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n', /bad Content-Length/);
    bad('HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999\r\n\r\n', /bad Content-Length/);
    bad('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n', /both Content-Length and Transfer-Encoding/);
    bad('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n', /unsupported Transfer-Encoding/);
  });

  test('a successful `into` response announcing another length, or none', () => {
    const into = () => ({ ok: [206], into: Buffer.alloc(8), maxBody: 100 });
    bad('HTTP/1.1 206 P\r\nContent-Length: 7\r\n\r\n1234567', /expected a body of 8 bytes, the server announced 7 bytes/, into());
    bad('HTTP/1.1 206 P\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n0\r\n\r\n', /chunked-delimited/, into());
    bad('HTTP/1.1 206 P\r\n\r\n12345678', /close-delimited/, into());
  });

  test('chunked bodies with bad sizes or framing', () => {
    const h = 'HTTP/1.1 500 E\r\nTransfer-Encoding: chunked\r\n\r\n';
    bad(`${h}z\r\n`, /bad chunk size/);
    bad(`${h}-1\r\n`, /bad chunk size/);
    bad(`${h}\r\n`, /bad chunk size/);
    bad(`${h} 5\r\n`, /bad chunk size/);
    bad(`${h}1234567890abc\r\n`, /bad chunk size/);
    bad(`${h}${'0'.repeat(2000)}`, /line too long/);
    bad(`${h}3\r\nabcX\r\n`, /missing CRLF after chunk data/);
    bad(`${h}3\r\nabc\r\r\n0\r\n\r\n`, /missing CRLF after chunk data/);
  });

  test('header limits: a head longer than MAX_HEAD_BYTES, more than MAX_HEADERS lines, bad names', () => {
    bad(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(MAX_HEAD_BYTES)}\r\n\r\n`, /response head longer than/);
    // Never ending: the reader gives up at the limit instead of buffering on.
    bad(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(MAX_HEAD_BYTES + 10)}`, /response head longer than/);
    bad(`HTTP/1.1 200 OK\r\n${'X: 1\r\n'.repeat(MAX_HEADERS + 1)}Content-Length: 0\r\n\r\n`, /more than 100 header lines/);
    bad('HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n', /bad header line/);
    bad('HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n', /bad header line/);
    bad('HTTP/1.1 200 OK\r\n folded: 1\r\n\r\n', /bad header line/);
    bad('HTTP/1.1 200 OK\r\n: empty name\r\n\r\n', /bad header line/);
  });

  test('interim responses: 101 without asking, or an endless series', () => {
    bad('HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n', /switched protocols/);
    bad('HTTP/1.1 100 Continue\r\n\r\n'.repeat(MAX_INTERIM + 1), /more than 16 interim/);
  });

  test('a truncated response is incomplete at EOF, never a result', () => {
    fc.assert(
      fc.property(response, fc.nat(), (m, n) => {
        const at = n % m.bytes.length;
        const got = drive(spec(), [m.bytes.subarray(0, at)], true);
        expect(got.error).toBeUndefined();
        if (m.framing === 'close' && got.result) {
          // Close-delimited: EOF after the head is the end of the body, by definition.
          expect(m.body.subarray(0, got.result.body.length).equals(got.result.body)).toBe(true);
        } else {
          expect(got.result).toBeUndefined();
        }
      }),
      { numRuns: 300 },
    );
  });

  test('random bytes and mutated responses: a result, an incomplete response or a BadResponseError; staging stays bounded', () => {
    const mutated = fc.tuple(response, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 })).map(([m, edits]) => {
      const b = Buffer.from(m.bytes);
      for (const [at, v] of edits) b[at % b.length] = v;
      return b;
    });
    const random = fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a));
    const prefixed = fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\n'), Buffer.from(a)]));
    fc.assert(
      fc.property(fc.oneof(mutated, random, prefixed), fc.array(fc.nat(), { maxLength: 8 }), fc.integer({ min: 0, max: 64 }), (bytes, at, maxBody) => {
        for (const eof of [false, true]) {
          const got = drive({ ok: [200, 206], maxBody }, cut(bytes, at), eof);
          if (got.error !== undefined) expect(got.error).toBeInstanceOf(BadResponseError);
          if (got.result) expect(got.result.body.length).toBeLessThanOrEqual(maxBody);
          expect(got.maxPending).toBeLessThanOrEqual(MAX_HEAD_BYTES);
        }
      }),
      { numRuns: 1000 },
    );
  });
});
