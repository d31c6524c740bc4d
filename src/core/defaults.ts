/**
 * The one table of defaults: the command line (src/cli/parse.ts and its --help text),
 * openExport (src/export/open-export.ts), the coalescing layer and the imageio backend all read
 * their defaults from here, so a default is stated once. Units are the ones the code uses
 * (bytes, milliseconds); the help text formats them for people.
 */
const MiB = 2 ** 20;

export const DEFAULTS = {
  /** HTTP connections in the imageio pool (capped by imageio's max_readers/max_writers). */
  connections: 4,
  /** Writes are merged into HTTP requests of this size; 0 turns coalescing off. */
  requestSize: 8 * MiB,
  /** Sequential reads are read ahead in requests of this size; 0 turns read-ahead off. */
  readahead: 8 * MiB,
  /** Bound on write data buffered or in flight to imageio. */
  maxBuffer: 32 * MiB,
  /** Bound on all payload data held in memory (the payload pool). */
  maxMemory: 48 * MiB,
  /** A partly filled request is sent after this long without new writes to it. */
  coalesceIdleMs: 10,
  connectTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  /** Slowest body rate tolerated, bytes per second. */
  minRate: MiB,
  /** Retries of an HTTP request that can safely be repeated. */
  retries: 3,
  /** A keep-alive request goes on connections idle this long (imageio closes them at 60 s). */
  keepAliveMs: 30_000,
  /** Requests served at once per NBD connection. */
  threads: 16,
  /** --progress without a value: a line every this many seconds. */
  progressSeconds: 5,
  /** TCP listen address when neither -U nor -i is given. */
  host: '127.0.0.1',
  unixSocket: 'auto',
  insecure: false,
  readonly: false,
} as const;
