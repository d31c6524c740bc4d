/**
 * Turns backend extents into base:allocation descriptors for one BLOCK_STATUS request.
 *
 * Spec: at least one descriptor; contiguous from the request offset; with REQ_ONE exactly one,
 * no longer than the request. We clip every descriptor to the request (always valid) and merge
 * neighbours with the same flags, so a 64 KiB-page backend does not produce thousands of them.
 */
import type { Extent } from '../core/backend';
import type { BlockDescriptor } from './codec/transmission';

const ALLOCATION_MASK = 3; // HOLE | ZERO

/**
 * Returns the descriptors covering a prefix of [offset, offset + length). Empty only if the
 * backend's extents do not start at or before `offset` (a backend bug the caller reports).
 */
export function toBlockDescriptors(
  extents: readonly Extent[],
  offset: number,
  length: number,
  reqOne: boolean,
): BlockDescriptor[] {
  const out: BlockDescriptor[] = [];
  const end = offset + length;
  let cursor = offset;
  for (const e of extents) {
    if (cursor >= end) break;
    const eEnd = e.offset + e.length;
    if (eEnd <= cursor || e.length <= 0) continue;
    if (e.offset > cursor) break; // a gap: report only the contiguous prefix
    const n = Math.min(eEnd, end) - cursor;
    const flags = e.flags & ALLOCATION_MASK;
    const last = out[out.length - 1];
    if (last && last.flags === flags) {
      last.length += n;
    } else {
      if (reqOne && last) break;
      out.push({ length: n, flags });
    }
    cursor += n;
  }
  return out;
}
