/**
 * --progress: how far a copy through the export has got, every N seconds, and a final line.
 *
 * What counts is the export's extent that is done (ProgressTracker, fed by the progress layer
 * below write coalescing, src/layers/progress-layer.ts): data read, data written once imageio
 * confirmed it, ranges zeroed, and holes that extents reported (a copying client skips them).
 * Each byte of the export counts once however often it is touched, so a finished download of
 * a sparse disk ends at 100% and an upload never shows more than imageio has confirmed. The
 * final line says "done" only when the copy succeeded and the last flush did; otherwise it
 * says what happened.
 *
 * On a terminal (pretty format) the line is rewritten in place, like `qemu-img convert -p`;
 * in a pipe or file there is one line per interval; with --log-format json, one JSON object.
 */
import { emitRecord } from '../core/log';
import { formatSize } from '../core/size';
import type { DoneKind, ProgressSink } from '../layers/progress-layer';

/** Bytes completed by kind (a byte touched twice counts twice here, once in `done`). */
export interface ProgressCounters {
  read: number;
  written: number;
  zeroed: number;
  /** Reported as holes (zero) by extents. */
  holes: number;
  /** Bytes of the export covered by any of the above, each counted once. */
  done: number;
}

/**
 * The set of byte ranges done, as sorted disjoint half-open intervals, merged as they grow:
 * a sequential copy stays a handful of intervals whatever its size.
 */
export class CoveredRanges {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];
  private total = 0;

  /** Adds [offset, offset + length); returns how many bytes were not covered before. */
  add(offset: number, length: number): number {
    if (length <= 0) return 0;
    let start = offset;
    let end = offset + length;
    // The first interval that ends at or after `start` (touching ones merge too).
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid] < start) lo = mid + 1;
      else hi = mid;
    }
    let j = lo;
    let covered = 0;
    while (j < this.starts.length && this.starts[j] <= end) {
      covered += this.ends[j] - this.starts[j];
      start = Math.min(start, this.starts[j]);
      end = Math.max(end, this.ends[j]);
      j++;
    }
    this.starts.splice(lo, j - lo, start);
    this.ends.splice(lo, j - lo, end);
    const added = end - start - covered;
    this.total += added;
    return added;
  }

  get bytes(): number {
    return this.total;
  }

  /** Number of disjoint intervals (for tests). */
  get intervals(): number {
    return this.starts.length;
  }
}

/** Collects what the progress layer reports; the reporter reads it. */
export class ProgressTracker implements ProgressSink {
  private readonly covered = new CoveredRanges();
  private readonly counters = { read: 0, written: 0, zeroed: 0, holes: 0 };

  done(kind: DoneKind, offset: number, length: number): void {
    this.covered.add(offset, length);
    if (kind === 'hole') this.counters.holes += length;
    else this.counters[kind] += length;
  }

  snapshot(): ProgressCounters {
    return { ...this.counters, done: this.covered.bytes };
  }
}

export interface ProgressOptions {
  intervalMs: number;
  size: number;
  counters: () => ProgressCounters;
  format: 'pretty' | 'json';
  /** Rewrite one line in place (a terminal). */
  tty: boolean;
  write?: (s: string) => void;
  now?: () => number;
}

/** How the run ended, for the final line. */
export type ProgressOutcome =
  /** The copy succeeded and every write was flushed. */
  | { done: true }
  /** Anything else: why, in a few words ("data not flushed", "the --run command failed with status 1"). */
  | { done: false; why: string };

/** "12.3 s", "4 min 05 s", "2 h 03 min". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const s = Math.round(seconds);
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

/** One progress report: the line for people and the JSON record's message and fields. */
export interface ProgressReport {
  text: string;
  message: string;
  fields: Record<string, unknown>;
}

/**
 * Where progress goes, every `intervalMs` and once more at the end: a line rewritten in place on
 * a terminal (other output first calls breakLine()), plain lines otherwise, or JSON records.
 * Shared by one export's progress and the --jobs set's.
 */
export class ProgressLine {
  private timer?: NodeJS.Timeout;
  /** A line is on the terminal without its newline yet. */
  private open = false;
  private readonly write: (s: string) => void;

  constructor(
    private readonly opts: {
      intervalMs: number;
      format: 'pretty' | 'json';
      /** Rewrite one line in place (a terminal). */
      tty: boolean;
      /** The report now; `final` for the last one. */
      report: (final: boolean) => ProgressReport;
      write?: (s: string) => void;
    },
  ) {
    this.write = opts.write ?? ((s) => process.stderr.write(s));
  }

  start(): void {
    this.timer = setInterval(() => this.emit(false), this.opts.intervalMs);
    this.timer.unref();
  }

  /** The final report; no more after it. */
  finish(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.emit(true);
  }

  /** Before other output on a terminal: end the line being rewritten. */
  breakLine(): void {
    if (this.open) this.write('\n');
    this.open = false;
  }

  private emit(final: boolean): void {
    const r = this.opts.report(final);
    if (this.opts.format === 'json') emitRecord('json', r.message, r.fields, this.write);
    else if (this.opts.tty) {
      this.write(`\r${r.text}\x1b[K${final ? '\n' : ''}`);
      this.open = !final;
    } else this.write(r.text + '\n');
  }
}

export class ProgressReporter {
  private readonly started: number;
  private readonly now: () => number;
  private readonly line: ProgressLine;
  private outcome?: ProgressOutcome;

  constructor(private readonly opts: ProgressOptions) {
    this.now = opts.now ?? Date.now;
    this.started = this.now();
    this.line = new ProgressLine({ intervalMs: opts.intervalMs, format: opts.format, tty: opts.tty, write: opts.write, report: () => this.report(this.outcome) });
  }

  start(): void {
    this.line.start();
  }

  /** The final line; no more lines after it. */
  finish(outcome: ProgressOutcome): void {
    this.outcome = outcome;
    this.line.finish();
  }

  /** Before other output on a terminal: end the line being rewritten. */
  breakLine(): void {
    this.line.breakLine();
  }

  private report(outcome?: ProgressOutcome): ProgressReport {
    const c = this.opts.counters();
    const size = this.opts.size;
    const done = Math.min(c.done, size);
    const elapsed = (this.now() - this.started) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const percent = (done / Math.max(1, size)) * 100;
    const eta = rate > 0 && done < size ? (size - done) / rate : 0;
    const what = `written ${formatSize(c.written)}, zeroed ${formatSize(c.zeroed)}, read ${formatSize(c.read)}, holes ${formatSize(c.holes)}`;
    // Never round up to 100% what is not all done.
    const shown = done < size ? Math.min(percent, 99.9) : 100;
    let text: string;
    if (!outcome) {
      text = `progress: ${shown.toFixed(1)}% of ${formatSize(size)} (${what}), ${formatDuration(elapsed)}, ${formatSize(rate)}/s, ETA ${done > 0 ? formatDuration(eta) : '?'}`;
    } else {
      const head = outcome.done ? 'done' : `NOT done (${outcome.why})`;
      text = `progress: ${head}: ${shown.toFixed(1)}% of ${formatSize(size)} (${what}) in ${formatDuration(elapsed)}, ${formatSize(rate)}/s`;
    }
    const final = outcome !== undefined;
    return {
      text,
      message: 'progress',
      fields: {
        progress: {
          final,
          ...(outcome ? { complete: outcome.done, ...(outcome.done ? {} : { why: outcome.why }) } : {}),
          percent: Number(shown.toFixed(1)),
          size,
          read: c.read,
          written: c.written,
          zeroed: c.zeroed,
          holes: c.holes,
          done,
          elapsedSeconds: Number(elapsed.toFixed(3)),
          bytesPerSecond: Math.round(rate),
          etaSeconds: final ? 0 : Math.round(eta),
        },
      },
    };
  }
}
