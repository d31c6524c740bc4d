import fc from 'fast-check';
import { EXTENT_HOLE, EXTENT_ZERO } from '../../../../src/core/backend';
import { ExtentMap } from '../../../../src/backends/imageio/extent-map';

const Z = EXTENT_ZERO;
const HZ = EXTENT_HOLE | EXTENT_ZERO;

describe('ExtentMap (imageio extents cache)', () => {
  test('converts imageio extents and fills gaps with data', () => {
    const m = new ExtentMap(100, [
      { start: 0, length: 10, zero: false, hole: false },
      { start: 10, length: 30, zero: true, hole: false },
      { start: 60, length: 40, zero: true, hole: true },
    ]);
    expect(m.query(0, 100)).toEqual([
      { offset: 0, length: 10, flags: 0 },
      { offset: 10, length: 30, flags: Z },
      { offset: 40, length: 20, flags: 0 },
      { offset: 60, length: 40, flags: HZ },
    ]);
    expect(m.query(15, 30)).toEqual([
      { offset: 15, length: 25, flags: Z },
      { offset: 40, length: 5, flags: 0 },
    ]);
  });

  test('writes become data and zeroes become zero, merging neighbours', () => {
    const m = new ExtentMap(100, [{ start: 0, length: 100, zero: true, hole: true }]);
    m.set(10, 10, 0);
    m.set(20, 10, 0);
    expect(m.query(0, 100)).toEqual([
      { offset: 0, length: 10, flags: HZ },
      { offset: 10, length: 20, flags: 0 },
      { offset: 30, length: 70, flags: HZ },
    ]);
    m.set(0, 100, Z);
    expect(m.query(0, 100)).toEqual([{ offset: 0, length: 100, flags: Z }]);
    expect(m.length).toBe(1);
  });

  test('parse rejects malformed answers; endOf finds the size', () => {
    expect(() => ExtentMap.parse({})).toThrow(/array/);
    expect(() => ExtentMap.parse([{ start: 0 }])).toThrow(/malformed/);
    const list = ExtentMap.parse([
      { start: 0, length: 5, zero: false, hole: false },
      { start: 5, length: 7, zero: true, hole: false },
    ]);
    expect(ExtentMap.endOf(list)).toBe(12);
  });

  test('matches a byte-per-byte model under random updates', () => {
    const size = 64;
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(size - 1), fc.integer({ min: 1, max: size }), fc.constantFrom(0, Z, HZ)), {
          maxLength: 30,
        }),
        fc.nat(size - 1),
        fc.integer({ min: 1, max: size }),
        (ops, qo, ql) => {
          const m = new ExtentMap(size, [{ start: 0, length: size, zero: true, hole: true }]);
          const model = new Array<number>(size).fill(HZ);
          for (const [o, l, f] of ops) {
            m.set(o, l, f);
            for (let i = o; i < Math.min(o + l, size); i++) model[i] = f;
          }
          const ex = m.query(qo, ql);
          let pos = qo;
          for (let k = 0; k < ex.length; k++) {
            const e = ex[k];
            expect(e.offset).toBe(pos);
            expect(e.length).toBeGreaterThan(0);
            if (k > 0) expect(e.flags).not.toBe(ex[k - 1].flags);
            for (let i = e.offset; i < e.offset + e.length; i++) expect(model[i]).toBe(e.flags);
            pos += e.length;
          }
          expect(pos).toBe(Math.min(qo + ql, size));
        },
      ),
    );
  });
});
