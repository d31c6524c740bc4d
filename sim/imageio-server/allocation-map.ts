/**
 * Which byte ranges of the image may hold data. Everything else reads as zeros. The server seeds
 * this map at open (the file's data ranges, then their non-zero blocks: see image-file.ts) and
 * then keeps it up to date: PUT marks data, PATCH zero marks zero. Used for extents and to skip
 * zeroing ranges that are already zero.
 */

export interface Extent {
  start: number;
  length: number;
  zero: boolean;
}

export class AllocationMap {
  /** Sorted, disjoint, non-adjacent [start, end) data intervals. */
  private readonly runs: [number, number][] = [];

  /** Index of the first run whose end is >= pos (or > pos when strict). */
  private firstEndingAt(pos: number, strict: boolean): number {
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const end = this.runs[mid][1];
      if (strict ? end > pos : end >= pos) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** Index of the first run whose start is > pos (or >= pos when inclusive). */
  private firstStartingAfter(pos: number, inclusive: boolean): number {
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const start = this.runs[mid][0];
      if (inclusive ? start >= pos : start > pos) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  markData(start: number, end: number): void {
    if (end <= start) return;
    const i = this.firstEndingAt(start, false);
    const j = this.firstStartingAfter(end, false);
    if (i < j) {
      start = Math.min(start, this.runs[i][0]);
      end = Math.max(end, this.runs[j - 1][1]);
    }
    this.runs.splice(i, j - i, [start, end]);
  }

  markZero(start: number, end: number): void {
    if (end <= start) return;
    const i = this.firstEndingAt(start, true);
    const j = this.firstStartingAfter(end, true);
    if (i >= j) return;
    const keep: [number, number][] = [];
    if (this.runs[i][0] < start) keep.push([this.runs[i][0], start]);
    if (this.runs[j - 1][1] > end) keep.push([end, this.runs[j - 1][1]]);
    this.runs.splice(i, j - i, ...keep);
  }

  /** Data runs overlapping [start, end), clipped to it. */
  dataRuns(start: number, end: number): [number, number][] {
    const out: [number, number][] = [];
    for (let i = this.firstEndingAt(start, true); i < this.runs.length && this.runs[i][0] < end; i++) {
      out.push([Math.max(start, this.runs[i][0]), Math.min(end, this.runs[i][1])]);
    }
    return out;
  }

  /** Alternating data and zero extents covering [0, size). */
  extents(size: number): Extent[] {
    const out: Extent[] = [];
    let pos = 0;
    for (const [s, e] of this.dataRuns(0, size)) {
      if (s > pos) out.push({ start: pos, length: s - pos, zero: true });
      out.push({ start: s, length: e - s, zero: false });
      pos = e;
    }
    if (pos < size) out.push({ start: pos, length: size - pos, zero: true });
    return out;
  }

  /** Total bytes marked as data. */
  dataBytes(): number {
    return this.runs.reduce((n, [s, e]) => n + e - s, 0);
  }
}
