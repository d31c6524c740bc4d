/**
 * --progress: how far a copy through the export has got, every N seconds, and a final line.
 * Counts what the NBD client did: bytes read (downloads), written and zeroed (uploads). The
 * percentage is of the export size; a download that skips holes may end below 100%, which is
 * why the final line says "done" rather than relying on the number.
 *
 * On a terminal (pretty format) the line is rewritten in place, like `qemu-img convert -p`;
 * in a pipe or file there is one line per interval; with --log-format json, one JSON object.
 */
import { emitRecord } from '../core/log';
import { formatSize } from '../core/size';

export interface ProgressCounters {
  read: number;
  written: number;
  zeroed: number;
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

/** "12.3 s", "4 min 05 s", "2 h 03 min". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const s = Math.round(seconds);
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

export class ProgressReporter {
  private timer?: NodeJS.Timeout;
  private readonly started: number;
  private readonly now: () => number;
  private readonly write: (s: string) => void;
  /** A line is on the terminal without its newline yet. */
  private open = false;

  constructor(private readonly opts: ProgressOptions) {
    this.now = opts.now ?? Date.now;
    this.write = opts.write ?? ((s) => process.stderr.write(s));
    this.started = this.now();
  }

  start(): void {
    this.timer = setInterval(() => this.report(false), this.opts.intervalMs);
    this.timer.unref();
  }

  /** The final line; no more lines after it. */
  finish(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.report(true);
  }

  private report(final: boolean): void {
    const c = this.opts.counters();
    const done = c.read + c.written + c.zeroed;
    const elapsed = (this.now() - this.started) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const size = this.opts.size;
    const percent = Math.min(100, (done / Math.max(1, size)) * 100);
    const eta = rate > 0 && done < size ? (size - done) / rate : 0;
    const what = `written ${formatSize(c.written)}, zeroed ${formatSize(c.zeroed)}, read ${formatSize(c.read)}`;
    const text = final
      ? `progress: done: ${percent.toFixed(1)}% of ${formatSize(size)} (${what}) in ${formatDuration(elapsed)}, ${formatSize(rate)}/s`
      : `progress: ${percent.toFixed(1)}% of ${formatSize(size)} (${what}), ${formatDuration(elapsed)}, ${formatSize(rate)}/s, ETA ${done > 0 ? formatDuration(eta) : '?'}`;
    if (this.opts.format === 'json') {
      emitRecord('json', 'progress', {
        progress: { final, percent: Number(percent.toFixed(1)), size, ...c, elapsedSeconds: Number(elapsed.toFixed(3)), bytesPerSecond: Math.round(rate), etaSeconds: final ? 0 : Math.round(eta) },
      }, this.write);
    } else if (this.opts.tty) {
      this.write(`\r${text}\x1b[K${final ? '\n' : ''}`);
      this.open = !final;
    } else {
      this.write(text + '\n');
    }
  }

  /** Before other output on a terminal: end the line being rewritten. */
  breakLine(): void {
    if (this.open) this.write('\n');
    this.open = false;
  }
}
