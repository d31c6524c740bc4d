/**
 * An export as the server sees it: configuration, and what one connection learned about it
 * (size, capabilities, block sizes, transmission flags), asked once and cached like nbdkit's
 * can_* results.
 */
import type { Backend, Capabilities } from '../core/backend';
import { TransmissionFlag } from './codec/constants';

/** One named export. The export served for the empty name "" is the first one. */
export interface ExportConfig {
  name: string;
  description?: string;
  backend: Backend;
  readonly?: boolean;
  /** NBD_INFO_BLOCK_SIZE preferred; default max(4 MiB, backend.blockSize().preferred); 0: send no BLOCK_SIZE info. */
  preferredBlockSize?: number;
}

/** Advertised NBD_INFO_BLOCK_SIZE maximum: qemu caps its zero requests at this, keep it >= 32 MiB. */
export const MAX_BLOCK_SIZE = 32 * 1024 * 1024;
/** Default advertised preferred size: both qemu-img and nbdcopy raise their request size to it. */
export const DEFAULT_PREFERRED_BLOCK_SIZE = 4 * 1024 * 1024;

export interface ResolvedExport {
  config: ExportConfig;
  backend: Backend;
  size: number;
  caps: Capabilities;
  /** Read-only for this connection: configured so, or the backend cannot write. */
  readonly: boolean;
  /** Undefined: no NBD_INFO_BLOCK_SIZE is sent (clients use their own sizes). */
  blockSize?: { minimum: number; preferred: number; maximum: number };
}

/** Ask the backend once what it can do; the result is cached for the connection. */
export function resolveExport(config: ExportConfig): ResolvedExport {
  const backend = config.backend;
  const caps = backend.capabilities();
  const fromBackend = backend.blockSize?.().preferred ?? 0;
  let preferred = config.preferredBlockSize ?? Math.max(DEFAULT_PREFERRED_BLOCK_SIZE, fromBackend);
  const advertise = preferred !== 0;
  preferred = Math.min(Math.max(1, preferred), MAX_BLOCK_SIZE);
  return {
    config,
    backend,
    size: backend.size(),
    caps,
    readonly: !!config.readonly || !caps.canWrite,
    blockSize: advertise ? { minimum: 1, preferred, maximum: MAX_BLOCK_SIZE } : undefined,
  };
}

/** Transmission flags for this export and connection. */
export function transmissionFlags(exp: ResolvedExport, structuredReplies: boolean): number {
  const c = exp.caps;
  let f = TransmissionFlag.HAS_FLAGS;
  if (exp.readonly) {
    f |= TransmissionFlag.READ_ONLY;
  } else {
    if (c.canFua) f |= TransmissionFlag.SEND_FUA;
    if (c.canTrim && exp.backend.trim) f |= TransmissionFlag.SEND_TRIM;
    // FAST_ZERO is advertised with WRITE_ZEROES: without backend support it fails at once with
    // ENOTSUP, which is exactly what a client asking for a fast zero wants to learn.
    if (c.canZero) f |= TransmissionFlag.SEND_WRITE_ZEROES | TransmissionFlag.SEND_FAST_ZERO;
  }
  if (c.canFlush) f |= TransmissionFlag.SEND_FLUSH;
  if (c.canCache) f |= TransmissionFlag.SEND_CACHE;
  if (structuredReplies) f |= TransmissionFlag.SEND_DF;
  if (c.canMultiConn) f |= TransmissionFlag.CAN_MULTI_CONN;
  return f;
}
