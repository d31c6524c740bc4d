/**
 * Writes acknowledged on one HTTP connection since its last flush: what losing that
 * connection may lose. imageio gives every HTTP connection its own backend, so a flush on one
 * connection does not cover writes made on another.
 */
export class UnflushedWrites {
  /** Exact ranges, merged when adjacent; beyond MAX_RANGES only first/end/count/bytes stay exact. */
  private ranges: Array<[number, number]> = [];
  private overflow = false;
  first = Infinity;
  end = 0;
  count = 0;
  bytes = 0;

  private static readonly MAX_RANGES = 8;

  get empty(): boolean {
    return this.count === 0;
  }

  add(offset: number, length: number): void {
    this.count++;
    this.bytes += length;
    this.first = Math.min(this.first, offset);
    this.end = Math.max(this.end, offset + length);
    if (this.overflow) return;
    const last = this.ranges[this.ranges.length - 1];
    if (last && last[1] === offset) last[1] = offset + length;
    else if (this.ranges.length < UnflushedWrites.MAX_RANGES) this.ranges.push([offset, offset + length]);
    else this.overflow = true;
  }

  /** A copy, for reporting after the record is cleared. */
  snapshot(): UnflushedWrites {
    const c = new UnflushedWrites();
    c.ranges = this.ranges.map(([s, e]) => [s, e]);
    c.overflow = this.overflow;
    c.first = this.first;
    c.end = this.end;
    c.count = this.count;
    c.bytes = this.bytes;
    return c;
  }

  clear(): void {
    this.ranges = [];
    this.overflow = false;
    this.first = Infinity;
    this.end = 0;
    this.count = 0;
    this.bytes = 0;
  }

  /** E.g. "3 requests, 12582912 bytes in 0-8388607, 16777216-20971519". */
  describe(): string {
    const where = this.overflow
      ? `somewhere in ${this.first}-${this.end - 1}`
      : `in ${this.ranges.map(([s, e]) => `${s}-${e - 1}`).join(', ')}`;
    return `${this.count} request${this.count === 1 ? '' : 's'}, ${this.bytes} bytes ${where}`;
  }
}
