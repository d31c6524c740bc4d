/**
 * Read-ahead for downloads, like nbdkit's readahead filter: sequential reads become large
 * reads of the layer below, served to the client as slices.
 *
 * imageio pays a high fixed cost per HTTP request; qemu-img reads 2 MiB at a time, nbdcopy
 * 256 KiB with many in flight on several connections. This layer notices sequential streams
 * (a read starting where an earlier read, or a window, ended) and reads `windowSize` bytes at
 * a time from the inner backend into one buffer (a "window"), then answers each client read
 * with a subarray of it.
 *
 * Promises (on top of the Backend ones):
 * - Never fetched beyond what the client will read: a window never extends past the data
 *   extent it starts in (when the inner backend reports extents: holes and zero ranges are
 *   never read ahead, clients skip them after asking block status), past the export, or into
 *   a range clients already read (several connections each reading their own part of a disk:
 *   what follows one part is the start of another). A read in a hole or zero range, or that
 *   is not part of a sequential stream, goes straight through. So bytes fetched stay within a
 *   few percent of the bytes the client reads.
 * - Bounded memory: windows held (fetching or ready) total at most `maxWindows` x
 *   `windowSize` bytes. A window is dropped (this layer's reference released) as soon as a
 *   read reaches its last byte. A sequential read that finds no room waits for that (the
 *   windows ahead of it are being read), at most `staleMs`, after which a window nobody read
 *   for `staleMs` is dropped to make room, or the read goes straight through. A prefetch (the
 *   next window of a stream, started when a read passes the middle of the current one) is
 *   made only with a window's worth of room to spare, so a new stream always finds some.
 * - Payload ownership (src/core/backend.ts): a read's result is a subarray of a window with a
 *   reference of its own (retainBuffer), which the caller releases; the window's memory is
 *   reused once the last slice and the window are released. A read spanning two windows gets
 *   a fresh pooled buffer. Several callers may hold slices of one window: they must not
 *   write into them (the coalescing layer checks bufferRefs and copies instead).
 * - Never stale: a write, zero or trim through this layer drops the windows it overlaps, when
 *   it starts and again when it finishes (a window fetched meanwhile may hold old data), and
 *   forgets the cached extents. A read that arrives after a write finished never sees data
 *   from before it. (Writes that bypass this layer are not seen: put it above any layer that
 *   writes, e.g. stats -> readahead -> coalesce -> imageio.)
 * - A window that fails to load fails nobody by itself: its readers retry their own ranges
 *   straight through, so an error is reported for the read that really fails.
 */
import { PassthroughLayer, EXTENT_HOLE, EXTENT_ZERO, type Backend, type Extent, type WriteFlags, type ZeroFlags } from '../core/backend';
import { releaseBuffer, retainBuffer, type PayloadPool } from '../core/payload-pool';

const MiB = 1024 * 1024;

export interface ReadaheadOptions {
  /** Size of the reads sent to the inner backend. Default 8 MiB. */
  windowSize?: number;
  /** Bound on memory: at most this many windows' worth of bytes held. Default 4. */
  maxWindows?: number;
  /** A window not read for this long may be dropped to make room for another. Default 2000 ms. */
  staleMs?: number;
  /** Pool for the windows and for reads that span two of them. */
  pool: PayloadPool;
}

export interface ReadaheadStats {
  /** Client reads, and their bytes. */
  readsIn: number;
  bytesIn: number;
  /** Reads answered from windows. */
  hits: number;
  /** Reads sent straight through (not sequential, no room, a hole, a failed window), and their bytes. */
  passthroughReads: number;
  passthroughBytes: number;
  /** Windows read from the inner backend, and their bytes. */
  windows: number;
  windowBytes: number;
  /** Windows started for a read about to come, not for one waiting. */
  prefetches: number;
  /** Windows dropped before they were read to the end: by writes, for room, or failed. */
  invalidated: number;
  evicted: number;
  failedWindows: number;
  /** extents() calls this layer made itself to bound a window. */
  extentsQueries: number;
  /** Bytes held in windows now, and the most ever. */
  heldBytes: number;
  peakHeldBytes: number;
}

interface Window {
  offset: number;
  /** Planned end until the window is loaded (extents may shorten it), then the real end. */
  end: number;
  /** Bytes counted against the bound. */
  reserved: number;
  buf?: Buffer;
  /** Resolves (never rejects) once loaded, failed or abandoned. */
  ready: Promise<void>;
  loading: boolean;
  /** Still usable: not dropped, not failed. */
  live: boolean;
  /** Readers between finding this window and taking their slice. */
  users: number;
  lastUse: number;
}

const NO_ROOM = Symbol('no room');

interface RoomWaiter {
  offset: number;
  need: number;
  /** false: no window can be made for it (it goes straight through); true: look again. */
  resolve: (again: boolean) => void;
}

/** Read ends remembered to recognise the next read of a stream (4 connections x 64 in flight). */
const EXPECT_SLOTS = 512;
/** Ranges remembered as already read (merged, so about one per stream). */
const READ_RANGES = 64;

export class ReadaheadLayer extends PassthroughLayer {
  private readonly windowSize: number;
  private readonly maxBytes: number;
  private readonly staleMs: number;
  private readonly pool: PayloadPool;
  private readonly canExtents: boolean;

  private windows: Window[] = [];
  private heldBytes = 0;
  /** Ends of recent reads, oldest first: a read starting at one of them continues a stream. */
  private readonly expect = new Set<number>();
  /**
   * Ranges clients already read (windows read to their end, reads sent straight through),
   * merged, oldest first. Windows stop where one begins: with several connections each
   * reading its own part of a disk (nbdcopy), the data after one part is the start of
   * another, read long ago; fetching it again would be waste.
   */
  private readRanges: Array<{ start: number; end: number }> = [];
  /** Allocation runs last learned, sorted and contiguous over [extentsStart, extentsEnd). */
  private extentCache: Extent[] = [];
  /** Bumped by every write-type call: extents learned across one may be stale. */
  private writeEpoch = 0;
  private closed = false;
  /** When a window last started or finished loading, or answered a read (Date.now()). */
  private lastProgress = Date.now();
  /**
   * Sequential reads waiting for room for a window, first come first served: room that comes
   * back goes to the first of them (a window is started for it here), so a stream's windows
   * are made in its order and a read far ahead never takes the room its predecessors wait for.
   */
  private roomWaiters: RoomWaiter[] = [];
  private granting = false;
  /** One timer for all of them, so reading that stopped is noticed without a timer per read. */
  private roomTimer?: NodeJS.Timeout;

  private readonly counters: ReadaheadStats = {
    readsIn: 0,
    bytesIn: 0,
    hits: 0,
    passthroughReads: 0,
    passthroughBytes: 0,
    windows: 0,
    windowBytes: 0,
    prefetches: 0,
    invalidated: 0,
    evicted: 0,
    failedWindows: 0,
    extentsQueries: 0,
    heldBytes: 0,
    peakHeldBytes: 0,
  };

  constructor(inner: Backend, opts: ReadaheadOptions) {
    super(inner);
    this.windowSize = opts.windowSize ?? 8 * MiB;
    const maxWindows = opts.maxWindows ?? 4;
    this.staleMs = opts.staleMs ?? 2000;
    this.pool = opts.pool;
    if (!Number.isSafeInteger(this.windowSize) || this.windowSize <= 0) {
      throw new RangeError(`readahead: windowSize must be a positive integer, got ${this.windowSize}`);
    }
    if (!Number.isSafeInteger(maxWindows) || maxWindows < 1) {
      throw new RangeError(`readahead: maxWindows must be at least 1, got ${maxWindows}`);
    }
    if (!(this.staleMs >= 0)) throw new RangeError(`readahead: invalid staleMs ${this.staleMs}`);
    this.maxBytes = maxWindows * this.windowSize;
    this.canExtents = !!inner.extents && inner.capabilities().canExtents;
  }

  stats(): ReadaheadStats {
    return { ...this.counters, heldBytes: this.heldBytes };
  }

  override pread(offset: number, length: number): Promise<Buffer> {
    this.counters.readsIn++;
    this.counters.bytesIn += length;
    // Remembered on arrival: with many reads in flight, the next one comes before this is done.
    this.remember(offset + length);
    return this.readFrom(offset, length);
  }

  private async readFrom(offset: number, length: number): Promise<Buffer> {
    const end = offset + length;
    let sequential = false;
    // A few rounds at most: a window can fail or come out shorter while we wait for it.
    for (let round = 0; round < 3 && length > 0 && !this.closed; round++) {
      let w = this.windowAt(offset);
      if (!w) {
        if (!sequential && !this.continuesStream(offset)) break;
        sequential = true; // stays so while it waits, whatever the ring of read ends forgets
        const started = this.roomWaiters.length > 0 ? NO_ROOM : this.startWindow(offset, length, false);
        if (started === NO_ROOM) {
          // The windows ahead of us are being read: room comes back as each is read to its
          // end, sooner than a small request of our own would be answered. Unless reading
          // has stopped (nothing answered for staleMs): then straight through.
          if (Date.now() - this.lastProgress > this.staleMs) break;
          if (!(await this.waitForRoom(offset, length))) break;
          round--;
          continue; // the window started for us, if any, is found at the top
        }
        if (!started) break;
        w = started;
      }
      let out: Buffer;
      let split: number;
      // Readers that found the window use its data even if a write drops it meanwhile: they
      // are concurrent with that write. Its memory goes back when the last of them is done.
      w.users++;
      try {
        if (w.loading) await w.ready;
        if (!w.buf || offset >= w.end) continue; // failed, or shortened to the data extent
        w.lastUse = this.lastProgress = Date.now();
        if (end <= w.end) {
          const slice = w.buf.subarray(offset - w.offset, end - w.offset);
          retainBuffer(slice);
          this.counters.hits++;
          this.advance(w, end);
          return slice;
        }
        // Spans into the next window: assemble a buffer of our own.
        out = this.pool.tryAllocate(length) ?? (await this.pool.allocate(length));
        w.buf.copy(out, 0, offset - w.offset);
        split = w.end;
        this.counters.hits++;
        this.advance(w, split);
      } finally {
        w.users--;
        if (w.users === 0 && !w.live && !w.loading) this.releaseWindow(w);
      }
      try {
        const rest = await this.readFrom(split, end - split);
        rest.copy(out, split - offset);
        releaseBuffer(rest);
        return out;
      } catch (err) {
        releaseBuffer(out);
        throw err;
      }
    }
    this.counters.passthroughReads++;
    this.counters.passthroughBytes += length;
    this.noteRead(offset, end);
    return this.inner.pread(offset, length);
  }

  /** A read of `w` reached `end`: drop the window once read to the end, else maybe prefetch. */
  private advance(w: Window, end: number): void {
    if (end >= w.end) {
      this.dropWindow(w, 'consumed');
      this.noteRead(w.offset, w.end);
      this.remember(w.end); // the next window of this stream starts there
      return;
    }
    // Past the middle: start the next window so the stream does not wait for it.
    if (end - w.offset >= (w.end - w.offset) / 2 && w.end < this.size() && !this.windowAt(w.end)) {
      this.startWindow(w.end, 0, true);
    }
  }

  /** A live window holding (or about to hold) `offset`. */
  private windowAt(offset: number): Window | undefined {
    for (const w of this.windows) if (w.live && offset >= w.offset && offset < w.end) return w;
    return undefined;
  }

  private continuesStream(offset: number): boolean {
    if (this.expect.has(offset)) return true;
    for (const w of this.windows) if (w.live && w.end === offset) return true;
    return false;
  }

  private noteRead(start: number, end: number): void {
    // Merge with every range it touches (it may join two), keeping the newest position.
    const ranges = this.readRanges;
    for (let i = 0; i < ranges.length; ) {
      const r = ranges[i];
      if (start <= r.end && end >= r.start) {
        start = Math.min(r.start, start);
        end = Math.max(r.end, end);
        ranges.splice(i, 1);
      } else {
        i++;
      }
    }
    if (ranges.length >= READ_RANGES) ranges.shift();
    ranges.push({ start, end });
  }

  private remember(end: number): void {
    const expect = this.expect;
    expect.delete(end);
    expect.add(end);
    if (expect.size > EXPECT_SLOTS) expect.delete(expect.values().next().value!);
  }

  /**
   * Start loading a window at `offset`, of at least `need` bytes. A prefetch (nobody waiting)
   * leaves a window's worth of room for another stream; a window for a waiting read takes
   * whatever room there is, dropping a stale window if it must.
   */
  private startWindow(offset: number, need: number, prefetch: boolean): Window | typeof NO_ROOM | undefined {
    let size = Math.min(this.windowSize, this.size() - offset);
    if (size <= 0 || size < need) return undefined;
    let free = this.maxBytes - this.heldBytes;
    if (prefetch) {
      // Only with a window's worth to spare for a stream that has none, and nobody waiting.
      if (this.roomWaiters.length > 0 || free - size < Math.min(this.windowSize, this.maxBytes - size)) return undefined;
    } else {
      const min = Math.max(need, Math.min(size, MiB));
      while (free < min && this.evictStale()) free = this.maxBytes - this.heldBytes;
      if (free < min) return this.windows.length > 0 ? NO_ROOM : undefined;
      size = Math.min(size, free);
    }
    // Not over a later window (one prefetched for this stream, or another stream's), nor into
    // what was read already. (A client reading a range again gets windows for what it asks, but
    // no prefetch there.)
    let end = offset + size;
    for (const o of this.windows) if (o.live && o.offset > offset && o.offset < end) end = o.offset;
    for (const r of this.readRanges) {
      if (prefetch && r.start <= offset && offset < r.end) return undefined;
      if (r.start > offset && r.start < end) end = r.start;
    }
    if (end - offset < need || end === offset) return undefined;
    size = end - offset;
    let resolve!: () => void;
    const ready = new Promise<void>((r) => (resolve = r));
    const w: Window = {
      offset,
      end,
      reserved: size,
      ready,
      loading: true,
      live: true,
      users: 0,
      lastUse: Date.now(),
    };
    this.windows.push(w);
    this.hold(size);
    this.lastProgress = w.lastUse;
    if (prefetch) this.counters.prefetches++;
    void this.load(w).finally(resolve);
    return w;
  }

  private async load(w: Window): Promise<void> {
    try {
      if (this.canExtents) {
        const dataEnd = await this.dataEnd(w.offset, w.end - w.offset);
        if (dataEnd < w.end) {
          // Never past the data extent; nothing at all in a hole or zero range.
          this.unhold(w.end - Math.max(dataEnd, w.offset));
          w.reserved -= w.end - Math.max(dataEnd, w.offset);
          w.end = Math.max(dataEnd, w.offset);
          if (w.end === w.offset) {
            this.dropWindow(w, 'hole');
            return;
          }
        }
      }
      if (!w.live) return;
      const buf = await this.inner.pread(w.offset, w.end - w.offset);
      this.counters.windows++;
      this.counters.windowBytes += buf.length;
      w.buf = buf;
      this.lastProgress = Date.now();
      // Dropped while loading and nobody waits: give the memory back now.
      if (!w.live && w.users === 0) this.releaseWindow(w);
    } catch {
      // Readers retry their own ranges straight through and get their own error, if any.
      this.counters.failedWindows++;
      this.dropWindow(w, 'failed');
    } finally {
      w.loading = false;
    }
  }

  /**
   * End of the data run starting at `offset`, looking at most `length` bytes ahead; `offset`
   * itself when it is in a hole or zero range.
   */
  private async dataEnd(offset: number, length: number): Promise<number> {
    const want = offset + length;
    let pos = this.dataEndCached(offset, want);
    if (pos !== undefined) return pos;
    const epoch = this.writeEpoch;
    this.counters.extentsQueries++;
    // Ask for more than one window: the next windows of this stream find it cached.
    const ask = Math.min(this.size() - offset, Math.max(length, 16 * this.windowSize));
    const extents = await this.inner.extents!(offset, ask);
    if (epoch === this.writeEpoch) this.learnExtents(extents);
    pos = dataEndIn(extents, offset, want);
    return pos ?? offset; // a backend that answered nothing useful: read nothing ahead
  }

  /** As dataEndIn over the cached extents; undefined unless they settle it. */
  private dataEndCached(offset: number, want: number): number | undefined {
    const cache = this.extentCache;
    if (cache.length === 0) return undefined;
    const pos = dataEndIn(cache, offset, want);
    const last = cache[cache.length - 1];
    // A data run reaching the end of what we know may go on: ask.
    if (pos === undefined || (pos < want && pos >= last.offset + last.length)) return undefined;
    return pos;
  }

  private learnExtents(extents: readonly Extent[]): void {
    // Only a well-formed, contiguous list is kept.
    for (let i = 1; i < extents.length; i++) {
      if (extents[i].offset !== extents[i - 1].offset + extents[i - 1].length) return;
    }
    this.extentCache = extents.slice();
  }

  private evictStale(): boolean {
    const now = Date.now();
    let victim: Window | undefined;
    for (const w of this.windows) {
      if (!w.live || w.loading || w.users > 0 || now - w.lastUse < this.staleMs) continue;
      if (!victim || w.lastUse < victim.lastUse) victim = w;
    }
    if (!victim) return false;
    this.dropWindow(victim, 'evicted');
    return true;
  }

  private waitForRoom(offset: number, need: number): Promise<boolean> {
    const p = new Promise<boolean>((resolve) => this.roomWaiters.push({ offset, need, resolve }));
    this.roomTimer ??= setTimeout(() => this.onRoomTimer(), Math.max(1, this.staleMs / 2));
    return p;
  }

  /** Give room that came back to the waiting reads, in order, as far as it goes. */
  private grantRoom(): void {
    if (this.granting) return;
    this.granting = true;
    try {
      // In order: a window for each waiting read while there is room. Reads that a window now
      // covers (made here for an earlier read of their stream) need no room: they go on too.
      const waiters = this.roomWaiters;
      let full = false;
      for (let i = 0; i < waiters.length; ) {
        const h = waiters[i];
        let started: Window | typeof NO_ROOM | undefined = this.windowAt(h.offset);
        if (!started) {
          if (full) {
            i++;
            continue;
          }
          started = this.startWindow(h.offset, h.need, false);
          if (started === NO_ROOM) {
            full = true;
            i++;
            continue;
          }
        }
        waiters.splice(i, 1);
        h.resolve(started !== undefined); // undefined: no window to be had; straight through
      }
    } finally {
      this.granting = false;
    }
    if (this.roomWaiters.length === 0 && this.roomTimer) {
      clearTimeout(this.roomTimer);
      this.roomTimer = undefined;
    }
  }

  /** Waiting reads look again: room may have come back by a stale window, or reading stopped. */
  private onRoomTimer(): void {
    this.roomTimer = undefined;
    this.grantRoom();
    if (Date.now() - this.lastProgress > this.staleMs) this.wakeRoomWaiters();
    if (this.roomWaiters.length > 0) this.roomTimer = setTimeout(() => this.onRoomTimer(), Math.max(1, this.staleMs / 2));
  }

  /** Every waiting read looks again (close, or reading stopped). */
  private wakeRoomWaiters(): void {
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    if (this.roomTimer) clearTimeout(this.roomTimer);
    this.roomTimer = undefined;
    for (const w of waiters) w.resolve(true);
  }

  /** Stop using `w`; its memory goes back once nobody is between finding it and slicing it. */
  private dropWindow(w: Window, why: 'consumed' | 'invalidated' | 'evicted' | 'failed' | 'hole' | 'closed'): void {
    if (!w.live) return;
    w.live = false;
    if (why === 'invalidated') this.counters.invalidated++;
    else if (why === 'evicted') this.counters.evicted++;
    this.windows.splice(this.windows.indexOf(w), 1);
    this.unhold(w.reserved);
    w.reserved = 0;
    if (w.users === 0 && !w.loading) this.releaseWindow(w);
  }

  private releaseWindow(w: Window): void {
    if (w.buf) releaseBuffer(w.buf);
    w.buf = undefined;
  }

  private hold(n: number): void {
    this.heldBytes += n;
    if (this.heldBytes > this.counters.peakHeldBytes) this.counters.peakHeldBytes = this.heldBytes;
  }

  private unhold(n: number): void {
    this.heldBytes -= n;
    if (n > 0 && this.roomWaiters.length > 0) this.grantRoom();
  }

  // ---- calls that change data: drop what they overlap, before and after ----

  private invalidate(offset: number, length: number): void {
    const end = offset + length;
    this.writeEpoch++;
    this.extentCache = [];
    for (let i = this.windows.length - 1; i >= 0; i--) {
      const w = this.windows[i];
      if (w.offset < end && w.end > offset) this.dropWindow(w, 'invalidated');
    }
  }

  private changing<T>(offset: number, length: number, call: () => Promise<T>): Promise<T> {
    this.invalidate(offset, length);
    return call().finally(() => this.invalidate(offset, length));
  }

  override pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    return this.changing(offset, data.length, () => this.inner.pwrite(data, offset, flags));
  }

  override pwritev(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
    let length = 0;
    for (const b of data) length += b.length;
    return this.changing(offset, length, () => super.pwritev(data, offset, flags));
  }

  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.changing(offset, length, () => this.inner.zero(offset, length, flags));
  }

  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    return this.changing(offset, length, () => super.trim(offset, length, flags));
  }

  override async extents(offset: number, length: number): Promise<Extent[]> {
    const epoch = this.writeEpoch;
    const extents = await super.extents(offset, length);
    // Clients ask block status before reading: what they learn bounds our windows for free.
    if (this.canExtents && epoch === this.writeEpoch) this.learnExtents(extents);
    return extents;
  }

  override async close(): Promise<void> {
    this.closed = true;
    this.wakeRoomWaiters();
    const loading = this.windows.filter((w) => w.loading).map((w) => w.ready);
    for (const w of this.windows.slice()) this.dropWindow(w, 'closed');
    // No read of ours still running when the backend below closes; their memory comes back.
    await Promise.all(loading);
    await super.close();
  }
}

/** End of the data run at `offset` within `extents`, capped at `want`; undefined if not covered. */
function dataEndIn(extents: readonly Extent[], offset: number, want: number): number | undefined {
  if (extents.length === 0) return undefined;
  const last = extents[extents.length - 1];
  if (offset < extents[0].offset || offset >= last.offset + last.length) return undefined;
  // Binary search for the extent holding offset.
  let lo = 0;
  let hi = extents.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (extents[mid].offset <= offset) lo = mid;
    else hi = mid - 1;
  }
  let pos = offset;
  for (let i = lo; i < extents.length; i++) {
    const e = extents[i];
    if ((e.flags & (EXTENT_HOLE | EXTENT_ZERO)) !== 0) return pos;
    pos = e.offset + e.length;
    if (pos >= want) return want;
  }
  // The data run reaches past what is known: only as far as known.
  return pos;
}
