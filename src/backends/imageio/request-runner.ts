/**
 * Requests to imageio over the connection pool: acquire a connection, exchange, classify the
 * outcome, apply the retry policy (retry-policy.ts), and keep the books on data at risk.
 *
 * Loss accounting (sticky: once set, every later flush and close rejects with it):
 * - a connection closed while it held unflushed writes (HttpConnection calls `lost`);
 * - a flush failed on a connection with unflushed writes;
 * - a write or zero whose outcome is unknown (timeout, connection lost after sending, a response
 *   we cannot trust): it may still land later, over newer data.
 * Every failure is logged once, as one line naming the request, the range and the cause.
 */
import { NbdError } from '../../nbd/codec/constants';
import { CERTIFICATE_ERROR_CODES, DataLossError, HttpError, TicketError, describeError, type HttpFailure } from '../../core/errors';
import type { Logger } from '../../core/log';
import { formatBytes } from '../../core/size';
import { ExchangeError, HttpConnection, type Effect, type Endpoint, type ExchangeResult } from './http/connection';
import { ConnectionPool } from './pool';
import { decideRetry, retryDelayMs, type Outcome, type RequestClass } from './retry-policy';
import type { UnflushedWrites } from './unflushed-writes';

export type RequestKind = 'GET' | 'PUT' | 'PATCH zero' | 'PATCH flush' | 'OPTIONS' | 'GET extents';

export interface ImageioRequest {
  kind: RequestKind;
  /** NBD-side operation for messages: read, write, zero, flush, extents, options, keepalive, size, close. */
  op: string;
  method: 'GET' | 'PUT' | 'PATCH' | 'OPTIONS';
  path: string;
  /** Extra header lines, each ending in "\r\n". */
  headers?: string;
  body?: readonly Buffer[];
  offset?: number;
  length?: number;
  /** Statuses that mean success. */
  ok: readonly number[];
  /** GET data: a successful body of exactly into.length bytes is read into it. */
  into?: Buffer;
  /** Cap for other bodies (default 64 KiB). */
  maxBody?: number;
  /** Deadline of one attempt. */
  timeoutMs: number;
  effect?: Effect;
  /** Retries allowed for this request (default: the backend's). */
  retries?: number;
  /** Failures are expected and handled by the caller (keep-alive): log them at debug only. */
  quiet?: boolean;
}

/** Counters for `--stats` and tests. Request keys: GET, PUT, PATCH zero, PATCH flush, OPTIONS, GET extents. */
export interface ImageioHttpStats {
  /** Per request kind: attempts sent, and the data bytes they covered (read, written, zeroed). */
  requests: Record<string, { count: number; bytes: number }>;
  retries: number;
  /** Sockets opened again after the first one of a pooled connection. */
  reconnects: number;
  /** Pooled connections that opened a socket at least once. */
  connectionsUsed: number;
  poolSize: number;
  /** HTTP body bytes sent and received. */
  bytesSent: number;
  bytesReceived: number;
}

/** Error bodies quoted in messages and logs. */
const ERROR_BODY_CHARS = 200;
const SMALL_BODY = 64 * 1024;

/** Failures of TLS set-up that a retry cannot fix: the certificate, or a server that speaks plain HTTP. */
export const TLS_VERIFY_CODES: ReadonlySet<string> = new Set([...CERTIFICATE_ERROR_CODES, 'ERR_SSL_WRONG_VERSION_NUMBER']);

function requestClass(kind: RequestKind): RequestClass {
  switch (kind) {
    case 'PUT':
    case 'PATCH zero':
      return 'write';
    case 'PATCH flush':
      return 'flush';
    default:
      return 'read';
  }
}

export function classifyOutcome(res: ExchangeResult | undefined, err: unknown): Outcome {
  if (res) return { kind: 'status', status: res.status, complete: !res.truncated };
  const e = err as Partial<ExchangeError>;
  if (e.code && TLS_VERIFY_CODES.has(e.code)) return { kind: 'tls-verify' };
  if (e.sent === false) return { kind: 'not-sent' };
  if (e.code === 'ERR_TIMEOUT') return { kind: 'timeout' };
  if (e.code === 'ERR_BAD_RESPONSE') return { kind: 'bad-response' };
  return { kind: 'lost' };
}

export class RequestRunner {
  readonly conns: HttpConnection[] = [];
  pool: ConnectionPool;
  readonly stats: ImageioHttpStats = {
    requests: {},
    retries: 0,
    reconnects: 0,
    connectionsUsed: 0,
    poolSize: 0,
    bytesSent: 0,
    bytesReceived: 0,
  };
  /** Sticky: written data may be lost; every later flush and close rejects with it. */
  dataLoss: DataLossError | null = null;
  closing = false;
  private readonly debug: boolean;

  constructor(
    private endpoint: Endpoint,
    private readonly log: Logger,
    private readonly retries: number,
    /** Told of acknowledged writes that may be lost (the export's failure journal). */
    private readonly onDataLoss?: (connection: string, bytes: number) => void,
  ) {
    this.debug = log.isLevelEnabled('debug');
    this.pool = new ConnectionPool([]);
  }

  get transport(): Endpoint {
    return this.endpoint;
  }

  /** (Re)builds the pool with n connections to `endpoint`; only while no request runs. */
  async setPool(endpoint: Endpoint, n: number): Promise<void> {
    const old = this.conns.splice(0);
    this.endpoint = endpoint;
    for (let i = 0; i < n; i++) this.conns.push(this.newConnection(i));
    this.pool = new ConnectionPool(this.conns);
    this.stats.poolSize = n;
    this.stats.connectionsUsed = 0;
    this.stats.reconnects = 0;
    await Promise.all(old.map((c) => c.close()));
  }

  private newConnection(id: number): HttpConnection {
    return new HttpConnection(id, this.endpoint, {
      connected: (conn, again) => {
        if (again) {
          this.stats.reconnects++;
          if (this.debug) this.log.debug({ connection: conn.id }, 'imageio connection reopened');
        } else {
          this.stats.connectionsUsed++;
        }
      },
      lost: (conn, unflushed, cause) => this.recordLoss(conn, unflushed, cause),
      closed: (conn, cause) => {
        if (this.debug && !this.closing) {
          this.log.debug({ connection: conn.id, cause: cause ? describeError(cause) : undefined }, 'imageio connection closed (nothing unflushed)');
        }
      },
    });
  }

  /**
   * Sends `req` on a pooled connection (or on `target`), retrying as the policy allows.
   * Resolves with a success response; rejects with an HttpError (logged once), a TicketError,
   * or the sticky DataLossError.
   */
  async run(req: ImageioRequest, target?: HttpConnection): Promise<ExchangeResult> {
    const cls = requestClass(req.kind);
    for (let attempt = 0; ; attempt++) {
      const conn = target ? await this.pool.acquireThis(target) : await this.pool.acquire();
      const wasClean = conn.unflushed.empty;
      const started = this.debug ? performance.now() : 0;
      const kindStats = (this.stats.requests[req.kind] ??= { count: 0, bytes: 0 });
      kindStats.count++;
      if (req.kind === 'PUT' || req.kind === 'PATCH zero' || (req.kind === 'GET' && req.op !== 'size')) {
        kindStats.bytes += req.length ?? 0;
      }
      const sent0 = conn.bytesSent;
      const recv0 = conn.bytesReceived;
      let res: ExchangeResult | undefined;
      let err: unknown;
      try {
        res = await conn.request({
          method: req.method,
          path: req.path,
          headers: req.headers,
          body: req.body,
          ok: req.ok,
          into: req.into,
          maxBody: req.maxBody ?? SMALL_BODY,
          timeoutMs: req.timeoutMs,
          effect: req.effect,
        });
      } catch (e) {
        err = e;
      }
      this.stats.bytesSent += conn.bytesSent - sent0;
      this.stats.bytesReceived += conn.bytesReceived - recv0;
      this.pool.release(conn);
      if (this.debug) {
        this.log.debug(
          {
            method: req.method,
            op: req.op,
            offset: req.offset,
            length: req.length,
            connection: conn.id,
            status: res?.status,
            err: err ? describeError(err) : undefined,
            ms: Math.round((performance.now() - started) * 10) / 10,
          },
          'imageio request',
        );
      }
      if (res && req.ok.includes(res.status)) return res;

      const failure: HttpFailure = {
        method: req.method,
        op: req.op,
        offset: req.offset,
        length: req.length,
        status: res?.status,
        body: res ? res.body.toString('utf8', 0, ERROR_BODY_CHARS).trim() : undefined,
        connection: conn.id,
        code: err ? ((err as { code?: string }).code ?? undefined) : undefined,
      };
      const outcome = classifyOutcome(res, err);
      const decision = decideRetry(cls, outcome, {
        connectionWasClean: wasClean,
        attempt,
        retries: req.retries ?? this.retries,
        closing: this.closing,
      });
      switch (decision) {
        case 'retry': {
          this.stats.retries++;
          const delay = retryDelayMs(attempt);
          this.log[req.quiet ? 'debug' : 'warn'](
            { ...failure, attempt: attempt + 1, retries: req.retries ?? this.retries, delayMs: delay },
            `${describeRequest(req)} failed (${describeFailure(failure, err)}); retrying`,
          );
          await sleep(delay);
          continue;
        }
        case 'fail':
          throw this.fail(req, failure, err, attempt);
        case 'fail-unknown': {
          // One line: the loss line below says what failed and why it matters.
          const e = this.fail(req, failure, err, attempt, false);
          this.setLoss(
            `${describeRequest(req)} may still be written by imageio after this failure (${describeFailure(failure, err)}), ` +
              `over anything written there since: ${formatBytes(req.length ?? 0)} at offset ${req.offset} not confirmed`,
            e,
            { offset: req.offset, length: req.length, connection: conn.id },
          );
          throw e;
        }
        case 'data-loss': {
          const e = this.fail(req, failure, err, attempt);
          // Writes on that connection may not be durable, and no retry can prove otherwise.
          // (A connection that closed has reported its writes as lost already.)
          const lost = conn.unflushed.snapshot();
          conn.unflushed.clear();
          if (!lost.empty) this.recordLoss(conn, lost, e);
          else if (!this.dataLoss) this.setLoss(`flush failed on imageio connection ${conn.id}, which had unflushed writes`, e, { connection: conn.id });
          throw this.dataLoss ?? e;
        }
      }
    }
  }

  /** Builds the final error for a failed request and logs it once. */
  private fail(req: ImageioRequest, failure: HttpFailure, cause: unknown, retries: number, log = true): HttpError {
    const suffix = retries > 0 ? ` (after ${retries} ${retries === 1 ? 'retry' : 'retries'})` : '';
    let err: HttpError;
    if (failure.status === 403) {
      err = new TicketError(
        failure,
        `${describeRequest(req)} failed: HTTP 403: the imageio ticket expired, was cancelled or does not exist: ${failure.body ?? ''}`.trim(),
      );
    } else {
      const errno =
        failure.status === 416 && (req.kind === 'PUT' || req.kind === 'PATCH zero') ? NbdError.ENOSPC : NbdError.EIO;
      err = new HttpError(failure, `${describeRequest(req)} failed: ${describeFailure(failure, cause)}${suffix}`, {
        cause,
        errno,
      });
    }
    this.log[req.quiet || !log ? 'debug' : 'error']({ ...failure, retries }, err.message);
    return err;
  }

  /**
   * The unflushed writes of `conn` may be gone: log them, tell the loss sink how much, and make
   * data loss sticky.
   */
  recordLoss(conn: HttpConnection, unflushed: UnflushedWrites, cause: unknown): void {
    const msg =
      `imageio connection ${conn.id} ${cause instanceof HttpError ? 'failed to flush' : 'was lost'} ` +
      `with unflushed writes (${unflushed.describe()}); that data may not have reached the disk` +
      (cause ? `: ${cause instanceof HttpError ? cause.message : describeError(cause)}` : '');
    this.setLoss(msg, cause, {
      connection: conn.id,
      first: unflushed.first,
      end: unflushed.end,
      requests: unflushed.count,
      bytes: unflushed.bytes,
    });
    this.onDataLoss?.(String(conn.id), unflushed.bytes);
  }

  private setLoss(msg: string, cause: unknown, fields: Record<string, unknown>): void {
    this.log.error(fields, msg);
    this.dataLoss ??= new DataLossError(`${msg}; transfer NOT complete`, { cause });
  }

  /** Close every connection (graceful, then forced after a few seconds). */
  async closeAll(): Promise<void> {
    this.closing = true;
    this.pool.close();
    await Promise.all(this.conns.map((c) => c.close()));
  }
}

export function describeRequest(req: Pick<ImageioRequest, 'kind' | 'offset' | 'length'>): string {
  return req.offset !== undefined ? `${req.kind} offset=${req.offset} length=${req.length}` : req.kind;
}

function describeFailure(f: HttpFailure, cause: unknown): string {
  if (f.status !== undefined) return `HTTP ${f.status} ${f.body ?? ''}`.trim();
  const e = cause as { code?: string; message?: string } | undefined;
  return `connection ${f.connection}: ${e?.message ?? String(cause)}${e?.code ? ` [${e.code}]` : ''}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
