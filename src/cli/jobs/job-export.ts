/**
 * One job's data path: its transfer served by its own NBD export inside this process
 * (openExport and an NbdServer on a private unix socket), copied by qemu-img or nbdcopy as a
 * child process.
 *
 * One server per job rather than one server with an export per job: each job then has its own
 * socket, its own export stack (HTTP pool, coalescing, counters) and its own end, exactly as a
 * single engine-mode run, and closing one job can never touch another's connections. A
 * listening unix socket costs a file descriptor and nothing while idle.
 *
 * The export outlives the copy: a job of a group waits, flushed, for the rest of its group,
 * and meanwhile its imageio connections keep sending keep-alives, so the engine does not see
 * the transfer as idle (inactivity_timeout) and end it. close() sends and flushes anything
 * still buffered and says whether written data was lost.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { RunConfig } from '../parse';
import type { Logger } from '../../core/log';
import { describeError } from '../../core/errors';
import { openExport, type ExportStack } from '../../export/open-export';
import { NbdServer } from '../../nbd/nbd-server';
import type { Target } from '../../engine/transfer-lifecycle';
import type { PayloadPool } from '../../core/payload-pool';

/** Lines of the copying program's stderr kept for the failure line. */
const STDERR_KEPT = 4096;

export interface JobExportOptions {
  config: RunConfig;
  /** The payload pool every job of the command shares. */
  pool: PayloadPool;
  target: Target;
  keepAliveMs: number;
  readonly: boolean;
  logger: Logger;
}

/** How the copy ended. */
export interface CopyResult {
  /** The program's exit status (128 + signal when killed). */
  status: number;
  /** Its last stderr line, for the failure line. */
  lastError: string;
  /** Data could not be flushed to imageio. */
  dataLost: boolean;
}

export class JobExport {
  private closed?: Promise<boolean>;

  private constructor(
    private readonly stack: ExportStack,
    private readonly logger: Logger,
    private readonly readonly: boolean,
  ) {}

  /** Open the transfer's export stack (failing before anything is copied). */
  static async open(o: JobExportOptions): Promise<JobExport> {
    const stackLogger = o.logger.child({});
    // The layers' warnings are summarized by the job's outcome; -v shows them.
    if (o.config.verbose === 0) stackLogger.level = 'silent';
    // The one call of openExport here: its options follow the command line (see serve.ts); the
    // set has one progress line of its own (--progress is seconds here, not a per-export sink).
    const stack = await openExport({ ...o.config, progress: undefined, pool: o.pool, url: o.target.url, unixSocket: o.target.unixSocket, keepAliveMs: o.keepAliveMs, readonly: o.readonly }, stackLogger);
    return new JobExport(stack, o.logger, o.readonly);
  }

  /** The image's size as imageio reports it. */
  size(): number {
    return this.stack.top.size();
  }

  /** Bytes moved so far: written and zeroed for an upload, read for a download. */
  bytes(): number {
    const s = this.stack.stats.counters();
    return s.read.bytes + s.write.bytes + s.zero.bytes;
  }

  /** unix when imageio's local socket carries the data (the transfer runs on this machine), else the URL's scheme. */
  transport(): 'unix' | 'HTTPS' | 'HTTP' {
    if (this.stack.imageio?.serverInfo().transport === 'unix') return 'unix';
    return /^.*https:/.test(this.stack.describe) ? 'HTTPS' : 'HTTP';
  }

  /**
   * Serve the export on a private unix socket and run `argv(uri)` against it; flush once it
   * exited 0. `abort` ends the program (SIGTERM).
   */
  async copy(argv: (uri: string) => string[], abort: AbortSignal, threads: number): Promise<CopyResult> {
    const server = new NbdServer({
      exports: [{ name: '', description: this.stack.describe, backend: this.stack.top, readonly: this.readonly, preferredBlockSize: this.stack.preferredBlockSize }],
      logger: this.logger,
      payloadPool: this.stack.pool,
      maxInFlightPerConnection: threads,
    });
    server.on('error', (err: unknown) => this.logger.debug({ err: describeError(err) }, 'job server error'));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imageio-nbd-job-'));
    const sock = path.join(dir, 'nbd.sock');
    try {
      await server.listen({ unix: sock });
      const uri = `nbd+unix:///?socket=${sock}`;
      const [cmd, ...args] = argv(uri);
      this.logger.debug({ cmd, args }, 'job: copying');
      let stderr = '';
      const status = await new Promise<number>((resolve) => {
        if (abort.aborted) return resolve(1);
        const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
        const onAbort = () => child.kill('SIGTERM');
        abort.addEventListener('abort', onAbort, { once: true });
        child.stderr.on('data', (d: Buffer) => {
          stderr = (stderr + d.toString()).slice(-STDERR_KEPT);
        });
        child.on('error', (err) => {
          stderr += `${cmd}: ${err.message}`;
        });
        child.on('close', (code, signal) => {
          abort.removeEventListener('abort', onAbort);
          resolve(code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1));
        });
      });
      await server.close();
      const lastError = stderr.trim().split('\n').pop() ?? '';
      if (status !== 0) return { status, lastError, dataLost: false };
      let dataLost = this.stack.journal.writesFailed;
      if (!dataLost && !this.readonly && this.stack.top.capabilities().canFlush) {
        try {
          await this.stack.top.flush();
        } catch (err) {
          this.logger.debug({ err: describeError(err) }, 'job: flush after the copy failed');
          dataLost = true;
        }
      }
      return { status, lastError, dataLost };
    } finally {
      await server.close().catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  /** Close the export: send and flush what is buffered, close every connection. Resolves true when written data was lost. */
  close(): Promise<boolean> {
    this.closed ??= (async () => {
      try {
        await this.stack.top.close();
      } catch (err) {
        this.logger.debug({ err: describeError(err) }, 'job: closing the export failed');
        return true;
      }
      return this.stack.journal.writesFailed;
    })();
    return this.closed;
  }
}
