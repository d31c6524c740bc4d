/**
 * Logging with pino: quiet by default (warnings and errors), debug per request with -v.
 * Pretty format: one line per event, `[HH:MM:SS.mmm] LEVEL: message key=value ...`, values
 * as they are unless they hold spaces (then JSON-quoted). JSON format (--log-format json): one
 * pino JSON object per line. Logs go to stderr so stdout stays free for what other programs
 * read (URLs, --run output, NBD itself with -s).
 */
import pino from 'pino';

export type Logger = pino.Logger;

/**
 * Decides, for each log call, whether it is written: return false to drop it. `logger` is the
 * logger (or child) it was made on; `args` are the call's arguments ([obj, msg] or [msg]).
 */
export type LogFilter = (level: number, args: unknown[], logger: Logger) => boolean;

export interface LogOptions {
  /** 0: warn (default), 1: debug (-v), 2+: trace. */
  verbose?: number;
  format?: 'pretty' | 'json';
  /** Overrides the level derived from `verbose`. */
  level?: pino.Level | 'silent';
  filter?: LogFilter;
  /** Where lines go (default: stderr, written synchronously so nothing is lost at exit). */
  write?: (line: string) => void;
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

function writeStderr(line: string): void {
  try {
    require('node:fs').writeSync(2, line);
  } catch {
    /* stderr closed: nothing to tell anyone */
  }
}

function pad(n: number, w = 2): string {
  return String(n).padStart(w, '0');
}

function formatValue(v: unknown): string {
  if (typeof v === 'string') return v === '' || /[\s]/.test(v) ? JSON.stringify(v) : v;
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  if (v instanceof Error) return JSON.stringify(v.message);
  return JSON.stringify(v);
}

/** One pino JSON record as one readable line. */
export function formatPretty(record: Record<string, unknown>): string {
  const { level, time, msg, pid: _pid, hostname: _h, name: _n, ...fields } = record;
  const d = new Date(typeof time === 'number' ? time : Date.now());
  const ts = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  const kv = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => {
      // pino serializes an `err` Error as an object: its message is what a person needs.
      if (v && typeof v === 'object' && 'message' in (v as object) && 'type' in (v as object)) return `${k}=${formatValue((v as { message: unknown }).message)}`;
      return `${k}=${formatValue(v)}`;
    });
  const text = [msg === undefined ? '' : String(msg), ...kv].filter(Boolean).join(' ');
  return `[${ts}] ${LEVEL_NAMES[level as number] ?? String(level)}: ${text}\n`;
}

export function createLogger(opts: LogOptions = {}): Logger {
  const verbose = opts.verbose ?? 0;
  const level = opts.level ?? (verbose >= 2 ? 'trace' : verbose === 1 ? 'debug' : 'warn');
  const format = opts.format ?? 'pretty';
  const write = opts.write ?? writeStderr;
  const filter = opts.filter;
  const hooks = filter
    ? {
        logMethod(this: Logger, args: unknown[], method: (...a: unknown[]) => void, lvl: number) {
          if (filter(lvl, args, this)) method.apply(this, args);
        },
      }
    : undefined;
  const stream = {
    write: format === 'json' ? (s: string) => write(s) : (s: string) => write(formatPretty(JSON.parse(s) as Record<string, unknown>)),
  };
  const options: pino.LoggerOptions = { level, base: format === 'json' ? { name: 'imageio-nbd' } : undefined };
  if (hooks) options.hooks = hooks as pino.LoggerOptions['hooks'];
  return pino(options, stream);
}

/**
 * A record that is written whatever the level (progress, stats): in the JSON format a pino-
 * shaped object with level 30, so every line of stderr parses; otherwise the text as it is.
 */
export function emitRecord(format: 'pretty' | 'json', text: string, fields: Record<string, unknown> = {}, write: (line: string) => void = writeStderr): void {
  if (format === 'json') write(JSON.stringify({ level: 30, time: Date.now(), name: 'imageio-nbd', msg: text, ...fields }) + '\n');
  else write(text + '\n');
}

/** A logger that drops everything, for library users and unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
