/** Progress counts each byte of the export once, and never rounds up to 100% what is not done. */
import { CoveredRanges, ProgressReporter, ProgressTracker } from '../../../src/cli/progress';

test('covered ranges: overlaps and repeats count once, touching ranges merge', () => {
  const c = new CoveredRanges();
  expect(c.add(0, 10)).toBe(10);
  expect(c.add(20, 10)).toBe(10);
  expect(c.intervals).toBe(2);
  expect(c.add(5, 10)).toBe(5); // 10..15 is new
  expect(c.add(15, 5)).toBe(5); // fills the gap: one interval
  expect(c.intervals).toBe(1);
  expect(c.add(0, 30)).toBe(0);
  expect(c.add(100, 0)).toBe(0);
  expect(c.add(40, 5)).toBe(5);
  expect(c.add(35, 20)).toBe(15);
  expect(c.bytes).toBe(50);
  expect(c.intervals).toBe(2);
});

test('a sparse download: data read plus holes reported is the whole export, 100%', () => {
  const t = new ProgressTracker();
  t.done('hole', 0, 600);
  t.done('read', 600, 400);
  t.done('read', 600, 400); // read twice: counted once in done
  expect(t.snapshot()).toEqual({ read: 800, written: 0, zeroed: 0, holes: 600, done: 1000 });
  const out: string[] = [];
  const r = new ProgressReporter({ intervalMs: 1000, size: 1000, counters: () => t.snapshot(), format: 'pretty', tty: false, write: (s) => out.push(s), now: () => 0 });
  r.finish({ done: true });
  expect(out[0]).toMatch(/^progress: done: 100\.0% of 1000 bytes /);
});

test('99.96% is shown as 99.9%, and a failed copy is not "done"', () => {
  const out: string[] = [];
  const t = new ProgressTracker();
  t.done('written', 0, 9996);
  const r = new ProgressReporter({ intervalMs: 1000, size: 10000, counters: () => t.snapshot(), format: 'pretty', tty: false, write: (s) => out.push(s), now: () => 0 });
  r.finish({ done: false, why: 'written data not confirmed and flushed' });
  expect(out[0]).toMatch(/^progress: NOT done \(written data not confirmed and flushed\): 99\.9% of /);
});
