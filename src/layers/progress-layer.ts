/**
 * Tells a sink which ranges of the export are done, once the layer below has completed them:
 * data read, data written, ranges zeroed or trimmed, and holes reported by extents (ranges a
 * copying client skips). Placed directly above the backend (below write coalescing), a write
 * is reported when imageio confirmed it, not when it was buffered. It changes nothing it
 * passes on, like an nbdkit filter that only observes.
 */
import { EXTENT_ZERO, PassthroughLayer, type Backend, type Extent, type WriteFlags, type ZeroFlags } from '../core/backend';

export type DoneKind = 'read' | 'written' | 'zeroed' | 'hole';

/** Told of each completed range; must be cheap (it runs on every request). */
export interface ProgressSink {
  done(kind: DoneKind, offset: number, length: number): void;
}

export class ProgressLayer extends PassthroughLayer {
  constructor(
    inner: Backend,
    private readonly sink: ProgressSink,
  ) {
    super(inner);
  }

  override async pread(offset: number, length: number): Promise<Buffer> {
    const data = await super.pread(offset, length);
    this.sink.done('read', offset, length);
    return data;
  }

  override async pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    const length = data.length;
    await super.pwrite(data, offset, flags);
    this.sink.done('written', offset, length);
  }

  override async pwritev(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
    let length = 0;
    for (const b of data) length += b.length;
    await super.pwritev(data, offset, flags);
    this.sink.done('written', offset, length);
  }

  override async zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    await super.zero(offset, length, flags);
    this.sink.done('zeroed', offset, length);
  }

  override async trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    await super.trim(offset, length, flags);
    this.sink.done('zeroed', offset, length);
  }

  override async extents(offset: number, length: number): Promise<Extent[]> {
    const list = await super.extents(offset, length);
    const end = offset + length;
    for (const e of list) {
      // Only what was asked about: the last extent may reach past it.
      const from = Math.max(e.offset, offset);
      const to = Math.min(e.offset + e.length, end);
      if (e.flags & EXTENT_ZERO && to > from) this.sink.done('hole', from, to - from);
    }
    return list;
  }
}
