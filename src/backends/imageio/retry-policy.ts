/**
 * When an imageio request that failed may be sent again: one small table, one function.
 *
 * The rule that shapes it: **a write is repeated only when the server provably did not and will
 * not act on the first attempt.** Repeating a PUT is idempotent, but it is not ordered against
 * what comes later: if the first attempt is still running on the server (we gave up waiting,
 * or the connection broke after the request left), the retry may succeed, the client may write
 * newer data over the same range, and then the first attempt lands on top of it. That is silent
 * corruption, seen with a 1 s request timeout and a 2.5 s server delay. So:
 *
 * - A connection that could not be made sent nothing: anything may be retried.
 * - A complete error response (5xx, body read to its end) means the server finished with the
 *   request: a write may be retried. A 5xx whose body we cut short (endless or too long) is not
 *   complete: the server is still busy with that request.
 * - 4xx is an answer about the request itself (403: ticket expired or cancelled; 416: past the
 *   end): final, never retried.
 * - A timeout, a connection lost after the request may have left, or a response we cannot trust
 *   (bad framing, wrong length): reads, OPTIONS and extents are retried (they change nothing, and
 *   a late read harms nobody); a write or zero fails with an *unknown outcome*: the caller must
 *   treat the data as possibly lost and possibly landing later, i.e. fail every later FLUSH.
 * - A flush makes one connection's writes durable. On a connection that had none (clean), a
 *   failed flush lost nothing and may be retried. On a dirty connection, no retry can prove the
 *   data durable (a retry after a reconnect flushes a *new* connection; after a failed fsync the
 *   kernel may have dropped the dirty pages): it is data loss.
 * - Certificate verification failures are configuration, not bad luck: never retried.
 */

/** read: GET data, GET extents, OPTIONS. write: PUT, PATCH zero. flush: PATCH flush. */
export type RequestClass = 'read' | 'write' | 'flush';

export type Outcome =
  /** The connection could not be made: no byte of the request left. */
  | { kind: 'not-sent' }
  /** A response arrived; `complete` when its whole body was read. */
  | { kind: 'status'; status: number; complete: boolean }
  /** The deadline passed: the server may still be working on the request. */
  | { kind: 'timeout' }
  /** The connection failed after the request may have reached the server. */
  | { kind: 'lost' }
  /** The server answered something we cannot trust (bad head, wrong body length). */
  | { kind: 'bad-response' }
  /** TLS certificate verification failed. */
  | { kind: 'tls-verify' };

export type Decision =
  | 'retry'
  /** Final; nothing of the request will land later. */
  | 'fail'
  /** Final; a write that the server may still apply later. */
  | 'fail-unknown'
  /** A flush failed on a connection with unflushed writes. */
  | 'data-loss';

export interface RetryContext {
  /** The connection had no unflushed writes when the request started (matters for flush). */
  connectionWasClean: boolean;
  /** Retries already made for this request. */
  attempt: number;
  retries: number;
  /** The backend is closing: no retries. */
  closing?: boolean;
}

type Row = Decision | { clean: Decision; dirty: Decision };

/** The table: request class x outcome. `retry` turns into `fail` when retries are used up. */
const TABLE: Record<RequestClass, Record<string, Row>> = {
  read: {
    'not-sent': 'retry',
    '5xx': 'retry',
    '5xx-cut': 'retry',
    '4xx': 'fail',
    other: 'fail',
    timeout: 'retry',
    lost: 'retry',
    'bad-response': 'fail',
    'tls-verify': 'fail',
  },
  write: {
    'not-sent': 'retry',
    '5xx': 'retry',
    '5xx-cut': 'fail-unknown',
    '4xx': 'fail',
    other: 'fail-unknown',
    timeout: 'fail-unknown',
    lost: 'fail-unknown',
    'bad-response': 'fail-unknown',
    'tls-verify': 'fail',
  },
  flush: {
    'not-sent': { clean: 'retry', dirty: 'data-loss' },
    '5xx': { clean: 'retry', dirty: 'data-loss' },
    '5xx-cut': { clean: 'retry', dirty: 'data-loss' },
    '4xx': { clean: 'fail', dirty: 'data-loss' },
    other: { clean: 'fail', dirty: 'data-loss' },
    timeout: { clean: 'retry', dirty: 'data-loss' },
    lost: { clean: 'retry', dirty: 'data-loss' },
    'bad-response': { clean: 'retry', dirty: 'data-loss' },
    'tls-verify': { clean: 'fail', dirty: 'data-loss' },
  },
};

function outcomeKey(o: Outcome): string {
  if (o.kind !== 'status') return o.kind;
  if (o.status >= 500 && o.status < 600) return o.complete ? '5xx' : '5xx-cut';
  if (o.status >= 400 && o.status < 500) return '4xx';
  // 1xx-3xx that is not the expected success: imageio never sends one; nothing to retry for.
  return 'other';
}

/** What to do about a failed request (a response that is not a success, or no response). */
export function decideRetry(cls: RequestClass, outcome: Outcome, ctx: RetryContext): Decision {
  const row = TABLE[cls][outcomeKey(outcome)];
  const d = typeof row === 'string' ? row : ctx.connectionWasClean ? row.clean : row.dirty;
  if (d === 'retry' && (ctx.closing || ctx.attempt >= ctx.retries)) return 'fail';
  return d;
}

/** Backoff before retry number `attempt` (0-based): 100 ms doubling, at most 2 s. */
export function retryDelayMs(attempt: number): number {
  return Math.min(100 * 2 ** attempt, 2000);
}
