/**
 * Failures while serving, turned into one line a person can act on.
 *
 * FailureJournal sits at the top of the export stack and remembers every request that failed
 * (the NBD client was told EIO/ENOSPC...), in order; the command adds what failed at shutdown
 * (the final flush) and what the backend reported lost. summarize() names the root cause (the
 * first HTTP failure, as "imageio closed connection 2 while PUT offset=... length=... was in
 * flight"), how much written data imageio did not confirm, and whether the transfer is
 * incomplete. The whole chain of messages is for -v.
 */
import { PassthroughLayer, type Backend, type Extent, type WriteFlags, type ZeroFlags } from '../core/backend';
import { DataLossError, HttpError, TicketError, describeError, type HttpFailure } from '../core/errors';
import { formatSize } from '../core/size';

export interface RecordedFailure {
  op: 'read' | 'write' | 'zero' | 'flush' | 'extents' | 'close' | 'trim';
  offset?: number;
  length?: number;
  err: unknown;
}

/** Codes of "the server closed the connection" (the imageio backend's own, Node's, undici's). */
const CLOSED_CODES = new Set(['ERR_CLOSED', 'ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
/** Codes of "no answer in time". */
const TIMEOUT_CODES = new Set(['ERR_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

export class FailureJournal extends PassthroughLayer {
  readonly failures: RecordedFailure[] = [];
  /** Written bytes acknowledged earlier and then reported lost, per imageio connection. */
  private readonly lost = new Map<string, number>();

  constructor(inner: Backend) {
    super(inner);
  }

  override pread(offset: number, length: number): Promise<Buffer> {
    return this.watch(super.pread(offset, length), 'read', offset, length);
  }
  override pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    return this.watch(super.pwrite(data, offset, flags), 'write', offset, data.length);
  }
  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.watch(super.zero(offset, length, flags), 'zero', offset, length);
  }
  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    return this.watch(super.trim(offset, length, flags), 'trim', offset, length);
  }
  override flush(): Promise<void> {
    return this.watch(super.flush(), 'flush');
  }
  override extents(offset: number, length: number): Promise<Extent[]> {
    return this.watch(super.extents(offset, length), 'extents', offset, length);
  }

  /** Remember a failure seen outside a request (the final flush and close). */
  note(op: RecordedFailure['op'], err: unknown): void {
    this.failures.push({ op, err });
  }

  /**
   * The backend reported `bytes` of acknowledged writes on `connection` as possibly lost: the
   * data-loss sink openExport() gives the backend (a bound function, so it can be passed as is).
   */
  readonly onDataLoss = (connection: string, bytes: number): void => {
    this.lost.set(connection, (this.lost.get(connection) ?? 0) + bytes);
  };

  get failed(): boolean {
    return this.failures.length > 0;
  }

  /** True when written data may not be on imageio: the transfer is not complete. */
  get writesFailed(): boolean {
    return this.lost.size > 0 || this.failures.some((f) => f.op !== 'read' && f.op !== 'extents');
  }

  /** One line: the root cause, what was not confirmed, and the outcome. Undefined when nothing failed. */
  summarize(): string | undefined {
    if (this.failures.length === 0 && this.lost.size === 0) return undefined;
    const root = rootCause(this.failures.map((f) => f.err));
    const parts = [root ? describeRoot(root) : 'written data was reported lost by the imageio backend'];
    if (this.writesFailed) {
      const bytes = this.unconfirmedBytes();
      parts.push(bytes > 0 ? `${formatSize(bytes)} not confirmed` : 'written data not confirmed');
      parts.push('the transfer is NOT complete');
    } else {
      const n = this.failures.length;
      parts.push(`${n} ${n === 1 ? 'request' : 'requests'} failed (the NBD client was told)`);
    }
    return parts.join('; ');
  }

  /** Bytes written by the client that imageio did not confirm: failed writes and zeroes, and lost ones. */
  private unconfirmedBytes(): number {
    const seen = new Set<string>();
    let total = 0;
    const add = (key: string, n: number | undefined) => {
      if (n === undefined || seen.has(key)) return;
      seen.add(key);
      total += n;
    };
    for (const f of this.failures) {
      if (f.op === 'write' || f.op === 'zero') add(`${f.op}@${f.offset}`, f.length);
      // A merged write that failed behind the client's back surfaces on a later request.
      const h = findHttpError(f.err);
      if (h && (h.failure.method === 'PUT' || h.failure.op === 'zero')) add(`${h.failure.op}@${h.failure.offset}`, h.failure.length);
    }
    for (const n of this.lost.values()) total += n;
    return total;
  }

  private watch<T>(p: Promise<T>, op: RecordedFailure['op'], offset?: number, length?: number): Promise<T> {
    return p.catch((err: unknown) => {
      this.failures.push({ op, offset, length, err });
      throw err;
    });
  }
}

/** The HttpError in an error's cause chain, if any. */
export function findHttpError(err: unknown): HttpError | undefined {
  for (let e = err, i = 0; e && i < 8; i++) {
    if (e instanceof HttpError) return e;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The error that explains the others: the first HTTP failure, else the first data loss, else the first error. */
function rootCause(errors: unknown[]): unknown {
  return errors.map(findHttpError).find(Boolean) ?? errors.find((e) => e instanceof DataLossError) ?? errors[0];
}

function describeRequest(f: HttpFailure): string {
  const name = f.method === 'PATCH' || f.op === 'extents' ? `${f.method} ${f.op}` : f.method;
  return f.offset !== undefined ? `${name} offset=${f.offset} length=${f.length}` : name;
}

/** The root cause as a person reads it. */
export function describeRoot(err: unknown): string {
  const h = findHttpError(err);
  if (!h && err instanceof DataLossError) {
    // Its message names the connection and the ranges; the cause adds only its code.
    const code = causeCode(err.cause);
    // The outcome is said once, at the end of the summary.
    const message = err.message.replace(/;? *(the )?transfer (is )?NOT complete$/, '');
    return code ? `${message} (${code})` : message;
  }
  if (!h) return describeError(err);
  const f = h.failure;
  const req = describeRequest(f);
  const conn = f.connection !== undefined ? `connection ${f.connection}` : 'a connection';
  if (h instanceof TicketError || f.status === 403) {
    return `the imageio ticket expired, was cancelled or does not exist (HTTP 403 to ${req}${f.body ? `: ${f.body}` : ''})`;
  }
  if (f.status !== undefined) return `imageio answered ${req} with HTTP ${f.status}${f.body ? `: ${f.body}` : ''}`;
  if (f.code && CLOSED_CODES.has(f.code)) return `imageio closed ${conn} while ${req} was in flight (${f.code})`;
  if (f.code && TIMEOUT_CODES.has(f.code)) return `imageio did not answer ${req} on ${conn} in time (${f.code})`;
  if (f.code === 'ECONNREFUSED') return `imageio refused ${conn} for ${req} (ECONNREFUSED)`;
  return `${req} on ${conn} failed: ${describeError(h.cause ?? h)}`;
}

/** The first string `code` in an error's cause chain. */
function causeCode(err: unknown): string | undefined {
  for (let e = err, i = 0; e && i < 8; i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}
