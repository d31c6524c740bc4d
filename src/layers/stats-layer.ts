/**
 * Operation statistics, printed at exit in the format of nbdkit's stats filter
 * (filters/stats/stats.c), so users can compare the two servers line by line:
 *
 *   total: 302 ops, 0.190907 s, 65.01 MiB, 340.54 MiB/s
 *   write: 261 ops, 0.070295 s, 65.01 MiB, 924.84 MiB/s op, 340.54 MiB/s total
 *   flush: 1 ops, 0.001200 s, 0 bytes, 0 bytes/s op, 0 bytes/s total
 *
 * As in nbdkit: only successful operations are counted; "op" rates divide by the time spent
 * inside the operations, "total" rates by the wall time since the layer was created; lines
 * for operations never seen are omitted; sizes use 1024-based units with two decimals; the
 * total line counts every op except cache and the bytes of read, write, trim and zero.
 * Extents count the requested length. A pwritev (a list of buffers written as one request)
 * counts as one write of their total length. nbdkit's optional block-size histogram is not
 * produced.
 */
import { PassthroughLayer, type Backend, type Extent, type WriteFlags, type ZeroFlags } from '../core/backend';

/** Operation names as nbdkit prints them, in its order. */
export const STATS_OPS = ['read', 'write', 'trim', 'zero', 'extents', 'cache', 'flush'] as const;
export type StatsOp = (typeof STATS_OPS)[number];

export interface OpStats {
  ops: number;
  bytes: number;
  /** Time spent in the operation, summed, in nanoseconds. */
  ns: bigint;
}

export interface StatsLayerOptions {
  /** Monotonic clock in nanoseconds; process.hrtime.bigint by default (tests inject one). */
  clock?: () => bigint;
}

export class StatsLayer extends PassthroughLayer {
  private readonly clock: () => bigint;
  private readonly start: bigint;
  private readonly stats = new Map<StatsOp, OpStats>(STATS_OPS.map((op) => [op, { ops: 0, bytes: 0, ns: 0n }]));

  /** Keeps the inner backend's name: like an nbdkit filter, it changes nothing visible. */
  constructor(inner: Backend, opts: StatsLayerOptions = {}) {
    super(inner);
    this.clock = opts.clock ?? process.hrtime.bigint;
    this.start = this.clock();
  }

  override pread(offset: number, length: number): Promise<Buffer> {
    return this.time('read', length, () => super.pread(offset, length));
  }
  override pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    return this.time('write', data.length, () => super.pwrite(data, offset, flags));
  }
  override pwritev(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
    let bytes = 0;
    for (const b of data) bytes += b.length;
    return this.time('write', bytes, () => super.pwritev(data, offset, flags));
  }
  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.time('zero', length, () => super.zero(offset, length, flags));
  }
  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    return this.time('trim', length, () => super.trim(offset, length, flags));
  }
  override cache(offset: number, length: number): Promise<void> {
    return this.time('cache', length, () => super.cache(offset, length));
  }
  override flush(): Promise<void> {
    return this.time('flush', 0, () => super.flush());
  }
  override extents(offset: number, length: number): Promise<Extent[]> {
    return this.time('extents', length, () => super.extents(offset, length));
  }

  /** A copy of the counters. */
  counters(): Record<StatsOp, OpStats> {
    const out = {} as Record<StatsOp, OpStats>;
    for (const [op, st] of this.stats) out[op] = { ...st };
    return out;
  }

  /** The nbdkit-style report: a total line, then one line per operation seen. No trailing newline. */
  format(): string {
    return this.report()
      .map((l) => l.text)
      .join('\n');
  }

  /** The report's lines, each with the operation it is about ('total' for the first). */
  report(): Array<{ op: StatsOp | 'total'; text: string }> {
    const elapsedUs = usecs(this.clock() - this.start);
    const all = [...this.stats.values()];
    const get = (op: StatsOp) => this.stats.get(op)!;
    // nbdkit's print_totals: cache is left out of ops, and only these four carry bytes.
    const ops = all.reduce((n, st) => n + st.ops, 0) - get('cache').ops;
    const bytes = get('read').bytes + get('write').bytes + get('trim').bytes + get('zero').bytes;
    const lines: Array<{ op: StatsOp | 'total'; text: string }> = [
      { op: 'total', text: `total: ${ops} ops, ${seconds(elapsedUs)} s, ${humanSize(bytes)}, ${humanRate(bytes, elapsedUs)}/s` },
    ];
    for (const op of STATS_OPS) {
      const st = get(op);
      if (st.ops === 0) continue;
      const us = usecs(st.ns);
      lines.push({
        op,
        text: `${op}: ${st.ops} ops, ${seconds(us)} s, ${humanSize(st.bytes)}, ${humanRate(st.bytes, us)}/s op, ${humanRate(st.bytes, elapsedUs)}/s total`,
      });
    }
    return lines;
  }

  private async time<T>(op: StatsOp, bytes: number, fn: () => Promise<T>): Promise<T> {
    const t0 = this.clock();
    const result = await fn();
    const st = this.stats.get(op)!;
    st.ops++;
    st.bytes += bytes;
    st.ns += this.clock() - t0;
    return result;
  }
}

const KiB = 1024n;
const MiB = 1024n * KiB;
const GiB = 1024n * MiB;

function usecs(ns: bigint): bigint {
  return ns / 1000n;
}

/** printf("%.6f", usecs / 1000000.0), exact for integer microseconds. */
function seconds(us: bigint): string {
  return `${us / 1000000n}.${(us % 1000000n).toString().padStart(6, '0')}`;
}

/** n / unit with two decimals, rounding half to even like glibc's printf("%.2f"). */
function fixed2(n: bigint, unit: bigint): string {
  const scaled = n * 100n;
  let q = scaled / unit;
  const r = scaled % unit;
  if (2n * r > unit || (2n * r === unit && q % 2n === 1n)) q++;
  return `${q / 100n}.${(q % 100n).toString().padStart(2, '0')}`;
}

/** nbdkit's humansize(): the argument is converted to uint64 first, so fractions are dropped. */
export function humanSize(bytes: number): string {
  const n = BigInt(Math.trunc(bytes));
  if (n < KiB) return `${n} bytes`;
  if (n < MiB) return `${fixed2(n, KiB)} KiB`;
  if (n < GiB) return `${fixed2(n, MiB)} MiB`;
  return `${fixed2(n, GiB)} GiB`;
}

/** nbdkit's humanrate(): bytes per second over `us` microseconds, "(n/a)" when no time passed. */
export function humanRate(bytes: number, us: bigint): string {
  const secs = Number(us) / 1000000.0;
  return secs !== 0 ? humanSize(bytes / secs) : '(n/a)';
}
