/**
 * Reads through the coalescing layer see pending writes: the parts of buffered or in-flight
 * data (and queued zeroes) that a read's range overlaps are copied over what the inner
 * backend returned, oldest first, so the read sees the client's own order.
 */
import { retainBuffer } from '../../core/payload-pool';

/** Pending bytes to copy over a read's result; `data` undefined means zeroes. */
export interface Overlay {
  offset: number;
  end: number;
  /** A retained subarray, released once the read is answered. */
  data?: Buffer;
}

/** Add the parts of `segs` (starting at `at`) within [start, end), each retained. */
export function collectOverlays(out: Overlay[], segs: readonly Buffer[], at: number, start: number, end: number): void {
  for (const s of segs) {
    const segEnd = at + s.length;
    if (segEnd > start && at < end) {
      const from = Math.max(at, start);
      const to = Math.min(segEnd, end);
      const data = from === at && to === segEnd ? s : s.subarray(from - at, to - at);
      retainBuffer(data);
      out.push({ offset: from, end: to, data });
    }
    if (segEnd >= end) break;
    at = segEnd;
  }
}

/** Copy `overlays`, in order, over `out`, which holds the bytes from `offset`. */
export function applyOverlays(out: Buffer, offset: number, overlays: readonly Overlay[]): void {
  for (const o of overlays) {
    if (o.data) o.data.copy(out, o.offset - offset);
    else out.fill(0, o.offset - offset, o.end - offset);
  }
}
