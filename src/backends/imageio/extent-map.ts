/**
 * An allocation map of the whole image: a sorted, contiguous list of runs with NBD
 * base:allocation flags. Loaded once from imageio's `/extents?context=zero` and then kept
 * current by our own writes (data) and zeroes (zero), so BLOCK_STATUS never needs a second
 * HTTP request. Adjacent runs with equal flags are always merged, so sequential uploads keep
 * the list short.
 */
import type { Extent } from '../../core/backend';
import { EXTENT_HOLE, EXTENT_ZERO } from '../../core/backend';

/** One extent as imageio sends it. */
export interface ImageioExtent {
  start: number;
  length: number;
  zero: boolean;
  hole?: boolean;
}

interface Run {
  start: number;
  end: number;
  flags: number;
}

export class ExtentMap {
  private runs: Run[] = [];

  /** Builds a map of [0, size) from imageio's list; gaps and anything past the list are data. */
  constructor(
    readonly size: number,
    extents: readonly ImageioExtent[] = [],
  ) {
    this.runs.push({ start: 0, end: size, flags: 0 });
    for (const e of extents) {
      const start = Math.max(0, e.start);
      const end = Math.min(size, e.start + e.length);
      if (end <= start) continue;
      const flags = (e.zero ? EXTENT_ZERO : 0) | (e.hole ? EXTENT_HOLE : 0);
      if (flags !== 0) this.set(start, end - start, flags);
    }
  }

  /** Parses and checks imageio's JSON answer; throws on a malformed one. */
  static parse(json: unknown): ImageioExtent[] {
    if (!Array.isArray(json)) throw new Error('extents: expected a JSON array');
    return json.map((e, i) => {
      const x = e as Partial<ImageioExtent>;
      if (!Number.isSafeInteger(x.start) || !Number.isSafeInteger(x.length) || typeof x.zero !== 'boolean') {
        throw new Error(`extents: malformed entry ${i}: ${JSON.stringify(e)}`);
      }
      return { start: x.start!, length: x.length!, zero: x.zero, hole: x.hole === true };
    });
  }

  /** The end of the last extent imageio reported: the image size when nothing else tells it. */
  static endOf(extents: readonly ImageioExtent[]): number {
    return extents.reduce((m, e) => Math.max(m, e.start + e.length), 0);
  }

  /** Number of runs (for tests and stats). */
  get length(): number {
    return this.runs.length;
  }

  /** Marks [offset, offset + length) with `flags` (0 = data). */
  set(offset: number, length: number, flags: number): void {
    const end = Math.min(offset + length, this.size);
    if (length <= 0 || offset >= end) return;
    const i = this.indexOf(offset);
    const j = this.indexOf(end - 1);
    const first = this.runs[i];
    const last = this.runs[j];
    const repl: Run[] = [];
    if (first.start < offset) repl.push({ start: first.start, end: offset, flags: first.flags });
    repl.push({ start: offset, end, flags });
    if (last.end > end) repl.push({ start: end, end: last.end, flags: last.flags });
    // Merge with the neighbours outside the replaced span.
    let from = i;
    let count = j - i + 1;
    const prev = this.runs[i - 1];
    if (prev && prev.flags === repl[0].flags) {
      repl[0] = { start: prev.start, end: repl[0].end, flags: prev.flags };
      from--;
      count++;
    }
    const next = this.runs[j + 1];
    if (next && next.flags === repl[repl.length - 1].flags) {
      const r = repl[repl.length - 1];
      repl[repl.length - 1] = { start: r.start, end: next.end, flags: r.flags };
      count++;
    }
    // Merge within the replacement (e.g. a data write next to data on both sides).
    const merged: Run[] = [];
    for (const r of repl) {
      const m = merged[merged.length - 1];
      if (m && m.flags === r.flags) m.end = r.end;
      else merged.push({ ...r });
    }
    this.runs.splice(from, count, ...merged);
  }

  /** Extents covering [offset, offset + length), clipped to it; at least one. */
  query(offset: number, length: number): Extent[] {
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return [{ offset, length, flags: 0 }];
    const out: Extent[] = [];
    for (let i = this.indexOf(offset); i < this.runs.length && this.runs[i].start < end; i++) {
      const r = this.runs[i];
      const s = Math.max(r.start, offset);
      out.push({ offset: s, length: Math.min(r.end, end) - s, flags: r.flags });
    }
    return out;
  }

  /** Index of the run containing `offset` (0 <= offset < size). */
  private indexOf(offset: number): number {
    let lo = 0;
    let hi = this.runs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.runs[mid].start <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}
