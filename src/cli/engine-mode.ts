/**
 * Engine mode: from the oVirt engine to the disk in one command.
 *
 *   log in -> [create the disk, wait until ok] -> choose the host -> create the image transfer
 *   -> wait until transferring -> serve transfer_url (or proxy_url) exactly as for a given URL
 *   -> finalize -> wait for finished_success and the disk ok -> exit 0
 *
 * The engine steps and the failure rules (what is finalized, cancelled, removed or kept) are
 * src/engine/transfer-lifecycle.ts, shared with the job runner (--jobs, src/cli/jobs/). This
 * file logs in, chooses the host, serves the transfer with the normal serve path (the --run
 * command does the copy), owns SIGINT/SIGTERM, and prints the outcome: the disk id on stdout
 * (disk-id=ID), or one line naming the cause and what was done, with a non-zero exit status.
 */
import { readFileSync } from 'node:fs';
import type { ServeHooks } from './serve';
import { processSignals, signalStatus } from './signals';
import type { RunConfig } from './parse';
import { ConfigError, EngineError, ImageioNbdError, describeError } from '../core/errors';
import type { Logger } from '../core/log';
import { EngineClient } from '../engine/engine-client';
import type { EngineConfig, EngineSettings } from './engine-options';
import { choosePlacement, readVdsmId, VDSM_ID_FILE } from '../engine/placement';
import { Interrupted, TransferLifecycle, type ServeResult, type Target } from '../engine/transfer-lifecycle';

/** Tests point this at a file of their own instead of /etc/vdsm/vdsm.id. */
export const VDSM_ID_FILE_ENV = 'IMAGEIO_NBD_VDSM_ID_FILE';

/** The normal serve path of src/cli/main.ts. */
export type ServeFn = (config: RunConfig, logger: Logger, hooks?: ServeHooks) => Promise<number>;

/** Run `config` (which has `engine` set) through the engine; returns the exit status. */
export async function runEngineMode(config: RunConfig, logger: Logger, serve: ServeFn): Promise<number> {
  return new EngineRun(config, logger).run(serve);
}

/** A logger that shows info lines even when `logger` is quieter (placement, proxy fallback). */
export function noticeLogger(logger: Logger): Logger {
  const notice = logger.child({});
  if (!logger.isLevelEnabled('info')) notice.level = 'info';
  return notice;
}

/** Log in to the engine of `s` with the command line's TLS and timeouts. */
export async function engineLogin(s: EngineSettings, config: RunConfig, logger: Logger): Promise<EngineClient> {
  const client = new EngineClient({
    apiUrl: s.apiUrl,
    username: s.username,
    password: readPassword(s.passwordFile),
    cafile: config.cafile,
    insecure: config.insecure,
    connectTimeoutMs: config.connectTimeoutMs,
    requestTimeoutMs: config.requestTimeoutMs,
    logger,
  });
  await client.login();
  return client;
}

/** This machine's vdsm id, if it is an oVirt host. */
export function localVdsmId(): string | undefined {
  return readVdsmId(process.env[VDSM_ID_FILE_ENV] || VDSM_ID_FILE);
}

class EngineRun {
  private readonly ec: EngineConfig;
  private readonly notice: Logger;
  private readonly abort = new AbortController();
  private client?: EngineClient;
  private lc?: TransferLifecycle;
  private interrupted?: NodeJS.Signals;
  private served = false;
  private stopServing?: (reason: string, status: number) => void;

  constructor(
    private readonly config: RunConfig,
    private readonly logger: Logger,
  ) {
    this.ec = config.engine!;
    this.notice = noticeLogger(logger);
  }

  async run(serve: ServeFn): Promise<number> {
    const onSignal = (sig: NodeJS.Signals) => {
      if (this.interrupted === undefined) {
        this.interrupted = sig;
        this.abort.abort(new Interrupted(sig));
        // While serving, serve() shuts down on the signal too; this also ends the --run command.
        this.stopServing?.(`received ${sig}`, 1);
        return;
      }
      // A second signal while cleaning up. Once serve() ran, its own handler exits on it.
      if (!this.served) {
        const t = this.lc?.transfer;
        process.stderr.write(`imageio-nbd: second ${sig}, exiting without cleaning up${t ? `: cancel transfer ${t.id} in the engine` : ''}\n`);
        process.exit(signalStatus(sig));
      }
    };
    const unsubscribe = processSignals().subscribe(onSignal);
    try {
      return await this.lifecycle(serve);
    } finally {
      unsubscribe();
      if (this.client) {
        await this.client.logout();
        await this.client.close();
      }
    }
  }

  private async lifecycle(serve: ServeFn): Promise<number> {
    let target: Target;
    let lc: TransferLifecycle;
    try {
      this.client = await engineLogin(this.ec, this.config, this.logger);
      if (this.abort.signal.aborted) throw this.abort.signal.reason;
      lc = this.lc = new TransferLifecycle({
        client: this.client,
        settings: this.ec,
        spec: { disk: this.ec.disk, direction: this.ec.direction },
        logger: this.logger,
        notice: this.notice,
        abort: this.abort.signal,
        connectTimeoutMs: this.config.connectTimeoutMs,
        unixSocket: this.config.unixSocket,
      });
      const disk = await lc.openDisk();
      const placement = await choosePlacement(this.client, disk, { forced: this.ec.host, vdsmId: localVdsmId() });
      this.notice.info(placement.line);
      target = await lc.startTransfer(placement);
    } catch (err) {
      return this.fail(err);
    }

    let problem: EngineError | undefined;
    let stop: ((reason: string, status: number) => void) | undefined;
    const monitor = lc.monitor((err) => {
      problem ??= err;
      stop?.(err.message, 1);
    });
    const keepAliveMs = lc.keepAliveMs(this.config.keepAliveMs);
    this.logger.debug({ keepAliveMs, inactivityTimeoutS: this.ec.inactivityTimeoutS }, 'engine mode: keep-alive interval');
    this.served = lc.served = true;
    let runStatus: number | undefined;
    let shutdown = { reason: '', dataLost: false };
    const status = await serve({ ...this.config, url: target.url, unixSocket: target.unixSocket, keepAliveMs }, this.logger, {
      onStart: (s) => {
        stop = this.stopServing = s;
        if (problem) s(problem.message, 1);
        if (this.interrupted) s(`received ${this.interrupted}`, 1);
      },
      onRunExit: (code) => (runStatus = code),
      onShutdown: (reason, dataLost) => (shutdown = { reason, dataLost }),
    });
    const result: ServeResult = { status, runStatus, ...shutdown };
    monitor.stop();
    this.stopServing = undefined;

    const failure = this.interrupted ? new Interrupted(this.interrupted) : (problem ?? lc.serveFailure(result));
    if (failure) return this.fail(failure, status);

    const outcome = await lc.finish();
    if (outcome.ok) {
      this.printDiskId();
      return 0;
    }
    return this.report(outcome.line, 1);
  }

  /** The run failed before finalize: the lifecycle ends the transfer by the rules; one line, exit non-zero. */
  private async fail(err: unknown, status?: number): Promise<number> {
    const exit = status !== undefined && status !== 0 ? status : 1;
    if (this.lc) return this.report(await this.lc.fail(err), exit);
    return this.report(err instanceof ImageioNbdError ? err.message : describeError(err), exit);
  }

  /** disk-id=ID on stdout (a JSON record with --log-format json), for scripts. */
  private printDiskId(): void {
    const d = this.lc!.disk!;
    if (this.config.logFormat === 'json') {
      process.stdout.write(`${JSON.stringify({ disk_id: d.id, disk_name: d.name, transfer_id: this.lc!.transfer!.id, direction: this.ec.direction })}\n`);
    } else {
      process.stdout.write(`disk-id=${d.id}\n`);
    }
  }

  /** Print the one line (an error record with --log-format json); returns `status`. */
  private report(line: string, status: number): number {
    if (this.config.logFormat === 'json') this.logger.error({ transfer: this.lc?.transfer?.id, disk: this.lc?.disk?.id ?? this.lc?.createdDiskId }, line);
    else process.stderr.write(`imageio-nbd: ${line}\n`);
    return status;
  }
}

/** The first line of the password file. */
function readPassword(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read password file ${file}: ${describeError(err)}`);
  }
  const password = text.split('\n')[0].replace(/\r$/, '');
  if (password === '') throw new ConfigError(`password file ${file} is empty`);
  return password;
}
