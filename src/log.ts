/**
 * Logging with pino: quiet by default (warnings and errors), debug per request with -v.
 * On a terminal one readable line per event (pino-pretty); JSON with --log-format json.
 * Logs go to stderr so stdout stays free for output other programs read (URLs, stats).
 */
import pino from 'pino';

export type Logger = pino.Logger;

export interface LogOptions {
  /** 0: warn (default), 1: debug (-v), 2+: trace. */
  verbose?: number;
  format?: 'pretty' | 'json';
  /** Overrides the level derived from `verbose`. */
  level?: pino.Level | 'silent';
}

export function createLogger(opts: LogOptions = {}): Logger {
  const verbose = opts.verbose ?? 0;
  const level = opts.level ?? (verbose >= 2 ? 'trace' : verbose === 1 ? 'debug' : 'warn');
  const format = opts.format ?? 'pretty';
  if (format === 'json') {
    return pino({ level, base: { name: 'imageio-nbd' } }, pino.destination({ fd: 2, sync: true }));
  }
  // pino-pretty in the same thread (sync) so that lines logged just before exit are not lost.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const pretty = require('pino-pretty') as (o: object) => NodeJS.WritableStream;
  const stream = pretty({
    destination: 2,
    sync: true,
    colorize: false,
    ignore: 'pid,hostname',
    translateTime: 'SYS:HH:MM:ss.l',
    singleLine: true,
  });
  return pino({ level, base: undefined }, stream as unknown as pino.DestinationStream);
}

/** A logger that drops everything, for library users and unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
