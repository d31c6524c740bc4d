/**
 * Keeps pooled connections alive while the NBD client pauses: imageio closes connections idle
 * for 60 s, and losing one that holds unflushed writes is data loss. A connection idle longer
 * than `idleMs` gets a `PATCH flush` (which also makes its writes durable), or OPTIONS on
 * servers without the flush feature.
 *
 * Failures: on a connection with unflushed writes, a failed flush is data loss (recorded by
 * the request runner, reported by the next FLUSH). On a clean connection nothing was at risk:
 * the failure is logged at debug level only (a broken socket is replaced on next use). A
 * keep-alive failure is never reported to an unrelated request.
 */
import type { Logger } from '../../core/log';
import { describeError } from '../../core/errors';
import type { HttpConnection } from './http/connection';
import type { RequestRunner } from './request-runner';

export interface KeepAliveOptions {
  idleMs: number;
  /** The server has the flush feature. */
  flush: boolean;
  path: string;
  timeoutMs: number;
}

export class KeepAlive {
  private timer: NodeJS.Timeout | null = null;
  private readonly keeping = new Set<HttpConnection>();

  constructor(
    private readonly runner: RequestRunner,
    private readonly opts: KeepAliveOptions,
    private readonly log: Logger,
  ) {}

  start(): void {
    const period = Math.max(50, Math.min(this.opts.idleMs / 2, 15_000));
    this.timer = setInterval(() => this.tick(), period);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private tick(): void {
    const now = Date.now();
    for (const conn of this.runner.conns) {
      if (this.runner.closing || !this.timer) return;
      if (!conn.connected || conn.busy || this.keeping.has(conn)) continue;
      if (now - conn.lastUsed < this.opts.idleMs) continue;
      this.keeping.add(conn);
      this.keep(conn).finally(() => this.keeping.delete(conn));
    }
  }

  private async keep(conn: HttpConnection): Promise<void> {
    const clean = conn.unflushed.empty;
    try {
      if (this.opts.flush) {
        await this.runner.run(
          {
            kind: 'PATCH flush',
            method: 'PATCH',
            op: 'keepalive',
            path: this.opts.path,
            headers: 'Content-Type: application/json\r\n',
            body: [Buffer.from('{"op":"flush"}')],
            ok: [200, 204],
            timeoutMs: this.opts.timeoutMs,
            effect: { kind: 'flushed' },
            retries: 0,
            quiet: clean,
          },
          conn,
        );
      } else {
        await this.runner.run(
          { kind: 'OPTIONS', method: 'OPTIONS', op: 'keepalive', path: this.opts.path, ok: [200, 204, 405], timeoutMs: this.opts.timeoutMs, retries: 0, quiet: true },
          conn,
        );
      }
    } catch (err) {
      if (this.runner.closing) return;
      // A broken socket was closed by the connection itself, and the next request opens a new
      // one. On a dirty connection the runner has recorded the data loss: the next FLUSH fails.
      if (clean) this.log.debug({ connection: conn.id, err: describeError(err) }, 'keep-alive failed on a clean connection');
    }
  }
}
