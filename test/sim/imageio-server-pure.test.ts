import fc from 'fast-check';
import { pyJsonLoads, PyJsonError } from '../../sim/imageio-server/py-json';
import { pyJsonDumps, pyRepr, PyFloat } from '../../sim/imageio-server/py-format';
import { parseContentRange, parseRange } from '../../sim/imageio-server/ranges';
import { AllocationMap } from '../../sim/imageio-server/allocation-map';
import { FaultInjector } from '../../sim/imageio-server/faults';
import { ImageioHttpError } from '../../sim/imageio-server/http-errors';

function jsonError(text: string): string {
  try {
    pyJsonLoads(text);
  } catch (e) {
    if (e instanceof PyJsonError) return e.message;
    throw e;
  }
  throw new Error(`parsed: ${text}`);
}

describe('Python json.loads error messages', () => {
  test.each([
    ['{"op":"zero","offset":0,', 'Expecting property name enclosed in double quotes: line 1 column 25 (char 24)'],
    ['', 'Expecting value: line 1 column 1 (char 0)'],
    ['  ', 'Expecting value: line 1 column 3 (char 2)'],
    ['{"a" 1}', "Expecting ':' delimiter: line 1 column 6 (char 5)"],
    ['{"a": 1 "b": 2}', "Expecting ',' delimiter: line 1 column 9 (char 8)"],
    ['{"a": }', 'Expecting value: line 1 column 7 (char 6)'],
    ['[1, 2', "Expecting ',' delimiter: line 1 column 6 (char 5)"],
    ['{}x', 'Extra data: line 1 column 3 (char 2)'],
    ['{\n"a": tru}', 'Expecting value: line 2 column 6 (char 7)'],
    ['"abc', 'Unterminated string starting at: line 1 column 1 (char 0)'],
    ['{"a\\x": 1}', 'Invalid \\escape: line 1 column 4 (char 3)'],
    ['{1: 2}', 'Expecting property name enclosed in double quotes: line 1 column 2 (char 1)'],
  ])('%j', (text, message) => {
    expect(jsonError(text)).toBe(message);
  });

  test('parses values with Python types', () => {
    const v = pyJsonLoads('{"op": "zero", "size": 1.0, "offset": 3, "flush": true, "x": [null]}');
    expect(pyRepr(v)).toBe("{'op': 'zero', 'size': 1.0, 'offset': 3, 'flush': True, 'x': [None]}");
    expect(pyJsonLoads('NaN')).toBeInstanceOf(PyFloat);
  });

  test('agrees with JSON.parse on valid JSON', () => {
    fc.assert(
      fc.property(fc.json(), (text) => {
        const v = pyJsonLoads(text);
        const plain = JSON.parse(text);
        const toJs = (x: unknown): unknown =>
          x instanceof Map
            ? Object.fromEntries([...x].map(([k, y]) => [k, toJs(y)]))
            : Array.isArray(x)
              ? x.map(toJs)
              : x instanceof PyFloat
                ? x.value
                : x;
        expect(toJs(v)).toEqual(plain);
      }),
    );
  });
});

describe('Python formatting', () => {
  test('json.dumps separators and ensure_ascii', () => {
    expect(pyJsonDumps({ unix_socket: '\u0000/org/ovirt/imageio', features: ['a', 'b'], n: 8 })).toBe(
      '{"unix_socket": "\\u0000/org/ovirt/imageio", "features": ["a", "b"], "n": 8}',
    );
    expect(pyJsonDumps(['é', true, null])).toBe('["\\u00e9", true, null]');
  });

  test('repr', () => {
    expect(pyRepr('yes')).toBe("'yes'");
    expect(pyRepr("it's")).toBe('"it\'s"');
    expect(pyRepr(new PyFloat(1e-5))).toBe('1e-05');
    expect(pyRepr(new PyFloat(2))).toBe('2.0');
  });
});

describe('Range headers', () => {
  const err416 = (h: string) => {
    try {
      parseRange(h);
    } catch (e) {
      expect(e).toBeInstanceOf(ImageioHttpError);
      return [(e as ImageioHttpError).status, e instanceof Error ? e.message : ''];
    }
    return undefined;
  };

  test('accepted forms', () => {
    expect(parseRange('bytes=0-4095')).toEqual({ first: 0, last: 4095 });
    expect(parseRange('bytes=100-')).toEqual({ first: 100 });
  });

  test('rejected forms, with imageio texts', () => {
    expect(err416('bytes=-100')).toEqual([416, 'suffix-byte-range-spec not supported yet']);
    expect(err416('bytes=0-1,5-6')).toEqual([416, "Cannot satisfy range 'bytes=0-1,5-6', invalid range or multiple ranges"]);
    expect(err416('bytes=10-5')).toEqual([416, "Cannot satisfy range 'bytes=10-5', first > last"]);
    expect(err416('bytes=-')).toEqual([416, "Cannot satisfy range 'bytes=-', no first or last"]);
  });

  test('Content-Range', () => {
    expect(parseContentRange('bytes 8192-8192/*').first).toBe(8192);
    expect(parseContentRange('bytes 0-*/*').first).toBe(0);
    expect(() => parseContentRange('bytes=0-4095')).toThrow("Invalid Content-Range 'bytes=0-4095'");
    expect(() => parseContentRange('bytes 4095-0/*')).toThrow("Invalid Content-Range 'bytes 4095-0/*', first > last");
    expect(() => parseContentRange('bytes 0-10/10')).toThrow('last >= complete');
  });
});

describe('AllocationMap', () => {
  test('matches a byte model under random marks', () => {
    const SIZE = 256;
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.nat(SIZE), fc.nat(64)), { maxLength: 40 }),
        (ops) => {
          const map = new AllocationMap();
          const model = new Array<boolean>(SIZE).fill(false);
          for (const [data, start, len] of ops) {
            const end = Math.min(SIZE, start + len);
            if (data) map.markData(start, end);
            else map.markZero(start, end);
            for (let i = start; i < end; i++) model[i] = data;
          }
          const ext = map.extents(SIZE);
          let pos = 0;
          for (let i = 0; i < ext.length; i++) {
            const e = ext[i];
            expect(e.start).toBe(pos);
            expect(e.length).toBeGreaterThan(0);
            if (i > 0) expect(e.zero).not.toBe(ext[i - 1].zero);
            for (let b = e.start; b < e.start + e.length; b++) expect(model[b]).toBe(!e.zero);
            pos += e.length;
          }
          expect(pos).toBe(SIZE);
        },
      ),
    );
  });
});

describe('FaultInjector', () => {
  test('after/times windows and matching', () => {
    const f = new FaultInjector();
    f.add({ method: 'PUT', after: 1, times: 2, action: { status: 500 } });
    f.add({ op: 'flush', times: Infinity, action: { drop: 'before' } });
    expect(f.match('PUT', 'write')).toBeUndefined();
    expect(f.match('PUT', 'write')).toEqual({ status: 500 });
    expect(f.match('GET', 'read')).toBeUndefined();
    expect(f.match('PUT', 'write')).toEqual({ status: 500 });
    expect(f.match('PUT', 'write')).toBeUndefined();
    for (let i = 0; i < 5; i++) expect(f.match('PATCH', 'flush')).toEqual({ drop: 'before' });
    expect(f.applied).toBe(7);
    f.clear();
    expect(f.match('PATCH', 'flush')).toBeUndefined();
    expect(() => f.add({ action: {} as never })).toThrow();
  });

  test('random mode: seeded, rules first, only its ops, within its ranges', () => {
    const draw = (seed: number) => {
      const f = new FaultInjector();
      f.setRandom({ seed, delayProbability: 0.3, delayMs: [100, 200], errorProbability: 0.2, errorStatus: 503, dropProbability: 0.1 });
      return Array.from({ length: 300 }, () => f.match('PUT', 'write'));
    };
    const a = draw(7);
    expect(draw(7)).toEqual(a);
    expect(draw(8)).not.toEqual(a);
    const kinds = { none: 0, delay: 0, status: 0, drop: 0 };
    for (const x of a) {
      if (!x) kinds.none++;
      else if ('stallMs' in x) {
        kinds.delay++;
        expect(x.stallMs).toBeGreaterThanOrEqual(100);
        expect(x.stallMs).toBeLessThanOrEqual(200);
      } else if ('status' in x) {
        kinds.status++;
        expect(x.status).toBe(503);
      } else kinds.drop++;
    }
    // 300 draws: each kind shows up, roughly in proportion (drop 10%, error 18%, delay 22%).
    expect(kinds.drop).toBeGreaterThan(10);
    expect(kinds.status).toBeGreaterThan(20);
    expect(kinds.delay).toBeGreaterThan(30);
    expect(kinds.none).toBeGreaterThan(100);
    expect(new Set(a.filter((x) => x && 'drop' in x).map((x) => (x as { drop: string }).drop))).toEqual(
      new Set(['before', 'mid-body', 'after']),
    );

    const f = new FaultInjector();
    f.setRandom({ seed: 1, errorProbability: 1 });
    f.add({ method: 'PATCH', action: { delayMs: 5 } });
    expect(f.match('PATCH', 'flush')).toEqual({ delayMs: 5 }); // a rule wins
    expect(f.match('PATCH', 'flush')).toEqual({ status: 500 });
    expect(f.match('OPTIONS', 'options')).toBeUndefined(); // not a data op
    expect(f.match('GET', 'extents')).toBeUndefined();
    f.clear();
    expect(f.match('PUT', 'write')).toBeUndefined();
    expect(() => f.setRandom({ seed: 1, errorProbability: 2 })).toThrow();
  });

  test('latency: per op, 0 by default, kept across clear()', () => {
    const f = new FaultInjector();
    expect(f.latency('write')).toBe(0);
    f.setLatency(50, ['write']);
    expect(f.latency('write')).toBe(50);
    expect(f.latency('read')).toBe(0);
    f.clear();
    expect(f.latency('write')).toBe(50);
    f.setLatency(20);
    expect(['read', 'write', 'zero', 'flush', 'extents', 'options'].map((op) => f.latency(op as never))).toEqual([20, 20, 20, 20, 0, 0]);
    expect(() => f.setLatency(-1)).toThrow();
  });
});
