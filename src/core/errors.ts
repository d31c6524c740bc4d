/**
 * All error types, with stable `code` strings that callers branch on (never on message text),
 * and the one function that maps any error to the NBD errno the client receives.
 */
import { NbdError } from '../nbd/codec/constants';

/** Base of every error this project raises on purpose. */
export class ImageioNbdError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A backend failure with the errno the NBD client should see. */
export class BackendError extends ImageioNbdError {
  constructor(
    readonly errno: NbdError,
    message: string,
    options?: { cause?: unknown; code?: string },
  ) {
    super(options?.code ?? 'ERR_BACKEND', message, options);
  }
}

/** Details of a failed HTTP exchange with imageio, for logs and error messages. */
export interface HttpFailure {
  method: string;
  /** Operation as the NBD side sees it: read, write, zero, flush, extents, options. */
  op: string;
  offset?: number;
  length?: number;
  /** HTTP status, when a response arrived. */
  status?: number;
  /** First few hundred bytes of the response body. */
  body?: string;
  /** Which pooled connection carried it. */
  connection?: number;
  /** Error code when no response arrived (ECONNREFUSED, UND_ERR_SOCKET, UND_ERR_HEADERS_TIMEOUT...). */
  code?: string;
}

/** An imageio request that failed: HTTP status or network error. Reaches NBD as EIO unless said otherwise. */
export class HttpError extends BackendError {
  constructor(
    readonly failure: HttpFailure,
    message: string,
    options?: { cause?: unknown; errno?: NbdError; code?: string },
  ) {
    super(options?.errno ?? NbdError.EIO, message, { cause: options?.cause, code: options?.code ?? 'ERR_HTTP' });
  }
}

/** Written data may have been lost (a dirty connection dropped, a deferred write failed). Sticky: every later FLUSH fails too. */
export class DataLossError extends BackendError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(NbdError.EIO, message, { cause: options?.cause, code: 'ERR_DATA_LOSS' });
  }
}

/** The imageio ticket is expired, cancelled or unknown (HTTP 403). Final: never retried. */
export class TicketError extends HttpError {
  constructor(failure: HttpFailure, message: string) {
    super(failure, message, { code: 'ERR_TICKET' });
  }
}

/** A bad command line or configuration, reported before anything listens. */
export class ConfigError extends ImageioNbdError {
  constructor(message: string) {
    super('ERR_CONFIG', message);
  }
}

/** The NBD peer broke the protocol badly enough that the connection must be dropped. */
export class ProtocolError extends ImageioNbdError {
  constructor(message: string) {
    super('ERR_PROTOCOL', message);
  }
}

/** Map any error to the errno sent to the NBD client. Unknown errors are EIO, never EINVAL. */
export function toNbdErrno(err: unknown): NbdError {
  if (err instanceof BackendError) return err.errno;
  return NbdError.EIO;
}

/** One-line description of an error for logs, including its cause chain. */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let e: unknown = err;
  for (let depth = 0; e !== undefined && e !== null && depth < 4; depth++) {
    if (e instanceof Error) {
      const code = (e as { code?: unknown }).code;
      parts.push(code ? `${e.message} [${String(code)}]` : e.message);
      e = e.cause;
    } else {
      parts.push(String(e));
      break;
    }
  }
  return parts.join(': ');
}

/**
 * The oVirt engine refused a request, could not be reached, or an image transfer or disk did not
 * reach the state we wait for. `status` is the HTTP status when the engine answered.
 * Codes: ERR_ENGINE (an HTTP error), ERR_ENGINE_AUTH (login), ERR_ENGINE_UNREACHABLE,
 * ERR_ENGINE_TIMEOUT (a wait ran out), ERR_TRANSFER (a transfer phase we cannot go on from),
 * ERR_PLACEMENT (no host can run the transfer), ERR_INTERRUPTED (a signal).
 */
export class EngineError extends ImageioNbdError {
  constructor(
    code: string,
    message: string,
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

/** Codes of a server certificate that could not be verified: a configuration error, never worth a retry. */
export const CERTIFICATE_ERROR_CODES: ReadonlySet<string> = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
