import fc from 'fast-check';
import { toBlockDescriptors } from '../../../src/nbd/block-status';
import type { Extent } from '../../../src/core/backend';

describe('toBlockDescriptors', () => {
  test('clips to the request and merges equal neighbours', () => {
    const ex: Extent[] = [
      { offset: 0, length: 100, flags: 3 },
      { offset: 100, length: 100, flags: 3 },
      { offset: 200, length: 50, flags: 0 },
      { offset: 250, length: 1000, flags: 3 },
    ];
    expect(toBlockDescriptors(ex, 50, 500, false)).toEqual([
      { length: 150, flags: 3 },
      { length: 50, flags: 0 },
      { length: 300, flags: 3 },
    ]);
    expect(toBlockDescriptors(ex, 50, 500, true)).toEqual([{ length: 150, flags: 3 }]);
    expect(toBlockDescriptors(ex, 210, 10, true)).toEqual([{ length: 10, flags: 0 }]);
  });

  test('a gap or a late start stops the reply', () => {
    expect(toBlockDescriptors([{ offset: 10, length: 5, flags: 0 }], 0, 20, false)).toEqual([]);
    expect(
      toBlockDescriptors(
        [
          { offset: 0, length: 5, flags: 0 },
          { offset: 8, length: 5, flags: 3 },
        ],
        0,
        20,
        false,
      ),
    ).toEqual([{ length: 5, flags: 0 }]);
  });

  test('spec invariants hold for any contiguous extent list (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ length: fc.integer({ min: 1, max: 1000 }), flags: fc.integer({ min: 0, max: 7 }) }), {
          minLength: 1,
          maxLength: 30,
        }),
        fc.integer({ min: 0, max: 500 }),
        fc.integer({ min: 1, max: 40000 }),
        fc.boolean(),
        (parts, start, length, reqOne) => {
          const extents: Extent[] = [];
          let off = 0;
          for (const p of parts) {
            extents.push({ offset: off, length: p.length, flags: p.flags });
            off += p.length;
          }
          fc.pre(start < off);
          const d = toBlockDescriptors(extents, start, length, reqOne);
          expect(d.length).toBeGreaterThanOrEqual(1);
          if (reqOne) expect(d).toHaveLength(1);
          const total = d.reduce((s, x) => s + x.length, 0);
          expect(total).toBeLessThanOrEqual(length);
          for (const x of d) expect(x.length).toBeGreaterThan(0);
          for (let i = 1; i < d.length; i++) expect(d[i].flags).not.toBe(d[i - 1].flags);
          expect(d.every((x) => x.flags <= 3)).toBe(true);
        },
      ),
    );
  });
});
