/**
 * Engine mode: from the oVirt engine to the disk in one command.
 *
 *   log in -> [create the disk, wait until ok] -> choose the host -> create the image transfer
 *   -> wait until transferring -> serve transfer_url (or proxy_url) exactly as for a given URL
 *   -> finalize -> wait for finished_success and the disk ok -> exit 0
 *
 * The lifecycle follows the SDK's upload_disk.py and helpers/imagetransfer.py
 * (python-ovirt-engine-sdk4 examples) and the ImageTransferService documentation
 * (ovirt-engine-api-model services/ImageTransferService.java):
 * - The transfer is finalized after the normal serve path returned success: the --run
 *   command exited 0, every byte written was flushed on every imageio connection, and every
 *   NBD and HTTP connection is closed. Then the engine's final phase decides: finished_success
 *   (or, on engines before 4.4.7 whose transfer is gone at the end, the disk `ok`) is success,
 *   and the disk's id is printed on stdout (disk-id=ID). Slow or lost answers are waited out
 *   (--finalize-timeout); once finalize was sent nothing is cancelled and nothing removed,
 *   because a cancel still turns a finalizing upload into a failure and the engine then removes
 *   the disk (ovirt-engine ImageTransferPhase.isValidTransition allows any change of a phase
 *   that is not finished).
 * - Never remove a disk this run did not create. The engine removes the disk of every upload
 *   that ends in failure, also a disk that existed before (TransferDiskImageCommand
 *   .endWithFailure runs RemoveDisk; the SDK's helpers/imagetransfer.py: "the transfer owns the
 *   disk and will delete the disk if the transfer is canceled"). So a failure (a failed or
 *   killed --run command, a failed flush, SIGINT/SIGTERM, the parent exiting with
 *   --exit-with-parent, the engine pausing the transfer, a failure to set it up) ends:
 *   - an upload into a disk this run created: cancel the transfer, remove the disk;
 *   - an upload into an existing disk: finalize the transfer, which keeps the disk, and say
 *     loudly that its content is partial;
 *   - a download: finalize (a download can always be finalized, the SDK's cancel_transfer
 *     says; it never changes the disk);
 *   and exits non-zero with one line naming the cause and what was done.
 * - While serving, the transfer's phase is polled: a transfer the engine paused (paused_system:
 *   the host or its imageio stopped answering, or the client was idle past inactivity_timeout)
 *   or cancelled stops the run at once and is reported as such.
 * - The engine applies the transfer's timeout_policy to a transfer whose imageio ticket has
 *   been idle (imageio's idle_time: no operation running or completed, no OPTIONS) for longer
 *   than inactivity_timeout (TransferDiskImageCommand.shouldAbortOnClientInactivityTimeout,
 *   stopTransferIfNecessary). The imageio backend already sends a PATCH flush on connections
 *   idle for --keepalive seconds; here that interval is kept at a third of the inactivity
 *   timeout or less, so a client that pauses (qemu-img between files, nbdcopy waiting on its
 *   source) never looks idle. The policy is what ends the transfer of a run that was killed:
 *   cancel (the SDK's upload_disk.py default) unlocks the disk, and removes it for an upload;
 *   so an upload into an existing disk uses pause instead (the disk stays locked until someone
 *   finalizes or cancels the transfer), unless --timeout-policy says otherwise. Engines before
 *   4.4.5 skip the attribute (the generated JSON readers skip unknown members) and answer
 *   without it: that is said in one line; one that refuses it gets the request again without it.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { ServeHooks } from './serve';
import { processSignals } from './signals';
import type { RunConfig } from './parse';
import { ConfigError, EngineError, ImageioNbdError, describeError } from '../core/errors';
import type { Logger } from '../core/log';
import { randomBytes } from 'node:crypto';
import { FINAL_PHASES, type Disk, type ImageTransfer } from '../engine/api-types';
import { EngineClient, type NewTransferSpec } from '../engine/engine-client';
import type { EngineConfig, TimeoutPolicy } from './engine-options';
import { choosePlacement, readVdsmId, VDSM_ID_FILE, type Placement } from '../engine/placement';

/** Tests point this at a file of their own instead of /etc/vdsm/vdsm.id. */
export const VDSM_ID_FILE_ENV = 'IMAGEIO_NBD_VDSM_ID_FILE';

/** The normal serve path of src/cli/main.ts. */
export type ServeFn = (config: RunConfig, logger: Logger, hooks?: ServeHooks) => Promise<number>;

/** Run `config` (which has `engine` set) through the engine; returns the exit status. */
export async function runEngineMode(config: RunConfig, logger: Logger, serve: ServeFn): Promise<number> {
  return new EngineRun(config, logger).run(serve);
}

/** How long a transfer may stay finished_cleanup before it counts as ended. */
const CLEANUP_GRACE_MS = 10_000;

/** Phases in which the engine is ending the transfer by itself: wait, do not cancel. */
const ENDING_PHASES = new Set(['finalizing_success', 'finalizing_failure', 'finalizing_cleanup', 'cancelled_system', 'cancelled_user']);

class Interrupted extends EngineError {
  constructor(readonly signal: NodeJS.Signals) {
    super('ERR_INTERRUPTED', `interrupted by ${signal}`);
  }
}

interface Target {
  url: string;
  unixSocket: RunConfig['unixSocket'];
}

/** The engine's verdict on a finalize: refused (nothing changed), failure, unknown (timed out). */
type Verdict = { kind: 'success' } | { kind: 'refused' | 'failure' | 'unknown'; line: string; diskGone?: boolean };

/** imageio-nbd-20261207-021500-3f9a1c: a new disk a script can tell from any other. */
function uniqueDiskName(now = new Date()): string {
  const t = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `imageio-nbd-${t}-${randomBytes(3).toString('hex')}`;
}

class EngineRun {
  private readonly ec: EngineConfig;
  /** Lines that say what is going on at the default log level (placement, proxy fallback). */
  private readonly notice: Logger;
  private readonly abort = new AbortController();
  private client?: EngineClient;
  private interrupted?: NodeJS.Signals;
  private createdDiskId?: string;
  private disk?: Disk;
  private transfer?: ImageTransfer;
  private hostName = '';
  private served = false;
  private stopServing?: (reason: string, status: number) => void;

  constructor(
    private readonly config: RunConfig,
    private readonly logger: Logger,
  ) {
    this.ec = config.engine!;
    this.notice = logger.child({});
    if (!logger.isLevelEnabled('info')) this.notice.level = 'info';
  }

  async run(serve: ServeFn): Promise<number> {
    const onSignal = (sig: NodeJS.Signals) => {
      if (this.interrupted === undefined) {
        this.interrupted = sig;
        this.abort.abort();
        // While serving, serve() shuts down on the signal too; this also ends the --run command.
        this.stopServing?.(`received ${sig}`, 1);
        return;
      }
      // A second signal while cleaning up. Once serve() ran, its own handler exits on it.
      if (!this.served) {
        process.stderr.write(`imageio-nbd: second ${sig}, exiting without cleaning up${this.transfer ? `: cancel transfer ${this.transfer.id} in the engine` : ''}\n`);
        process.exit(1);
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
    try {
      target = await this.prepare();
    } catch (err) {
      return this.fail(err);
    }

    let runStatus: number | undefined;
    let shutdown = { reason: '', dataLost: false };
    let problem: EngineError | undefined;
    let stop: ((reason: string, status: number) => void) | undefined;
    const monitor = this.monitorTransfer((err) => {
      problem ??= err;
      stop?.(err.message, 1);
    });
    const inactivityMs = this.ec.inactivityTimeoutS * 1000;
    const keepAliveMs = inactivityMs > 0 ? Math.max(100, Math.min(this.config.keepAliveMs, Math.floor(inactivityMs / 3))) : this.config.keepAliveMs;
    this.logger.debug({ keepAliveMs, inactivityTimeoutS: this.ec.inactivityTimeoutS }, 'engine mode: keep-alive interval');
    this.served = true;
    const status = await serve({ ...this.config, url: target.url, unixSocket: target.unixSocket, keepAliveMs }, this.logger, {
      onStart: (s) => {
        stop = this.stopServing = s;
        if (problem) s(problem.message, 1);
        if (this.interrupted) s(`received ${this.interrupted}`, 1);
      },
      onRunExit: (code) => (runStatus = code),
      onShutdown: (reason, dataLost) => (shutdown = { reason, dataLost }),
    });
    monitor.stop();
    this.stopServing = undefined;

    if (this.interrupted) return this.fail(new Interrupted(this.interrupted), status);
    if (problem) return this.fail(problem, status);
    if (status !== 0 || runStatus !== 0 || shutdown.dataLost) {
      let cause: string;
      if (shutdown.dataLost) cause = 'written data could not be flushed to imageio';
      else if (runStatus !== undefined && runStatus !== 0) cause = `the --run command exited with status ${runStatus}`;
      else if (shutdown.reason) cause = shutdown.reason;
      else cause = `the transfer could not be served (status ${status}; see above)`;
      return this.fail(new EngineError('ERR_TRANSFER', cause), status);
    }

    const verdict = await this.finalize();
    if (verdict.kind === 'success') {
      this.logger.info({ transfer: this.transfer!.id, disk: this.disk!.id }, 'transfer finalized; the disk is ok');
      this.printDiskId();
      return 0;
    }
    return this.report(verdict.kind === 'refused' ? verdict.line : `${verdict.line}${await this.afterFailedFinalize(verdict)}`, 1);
  }

  // ---- Setting up ----------------------------------------------------------------------

  private async prepare(): Promise<Target> {
    const ec = this.ec;
    const client = (this.client = new EngineClient({
      apiUrl: ec.apiUrl,
      username: ec.username,
      password: readPassword(ec.passwordFile),
      cafile: this.config.cafile,
      insecure: this.config.insecure,
      connectTimeoutMs: this.config.connectTimeoutMs,
      requestTimeoutMs: this.config.requestTimeoutMs,
      logger: this.logger,
    }));
    await client.login();
    this.checkInterrupted();

    let disk: Disk;
    if ('create' in ec.disk) {
      const spec = ec.disk.create;
      const sd = await client.findStorageDomain(spec.storageDomain);
      if (!sd) throw new EngineError('ERR_ENGINE', `the engine has no storage domain named ${spec.storageDomain} (or this user cannot see it)`);
      // ImagesHandler.checkImageConfiguration: no RAW sparse volume on block storage.
      if (spec.format === 'raw' && spec.sparse && (sd.storageType === 'iscsi' || sd.storageType === 'fcp')) {
        throw new ConfigError(`storage domain ${sd.name} is block storage (${sd.storageType}): the engine refuses raw --sparse disks there; drop --sparse, or use --disk-format cow`);
      }
      this.checkInterrupted();
      disk = await client.createDisk({
        name: spec.name ?? uniqueDiskName(),
        size: spec.size,
        format: spec.format,
        sparse: spec.sparse,
        storageDomainId: sd.id,
      });
      this.createdDiskId = disk.id;
      this.logger.info({ disk: disk.id, name: disk.name, storageDomain: sd.name }, 'created disk');
      disk = await this.waitDiskOk(disk.id, 'the new disk');
    } else {
      const found = await client.getDisk(ec.disk.id);
      if (!found) throw new EngineError('ERR_ENGINE', `the engine has no disk ${ec.disk.id} (or this user cannot see it)`);
      if (found.status !== 'ok') {
        throw new EngineError(
          'ERR_ENGINE',
          `disk ${found.name} (${found.id}) is ${found.status}` + (found.status === 'locked' ? ': another transfer or operation is using it' : ''),
        );
      }
      disk = found;
    }
    this.disk = disk;

    const placement = await choosePlacement(client, disk, {
      forced: ec.host,
      vdsmId: readVdsmId(process.env[VDSM_ID_FILE_ENV] || VDSM_ID_FILE),
    });
    this.hostName = placement.host?.name ?? '';
    this.notice.info(placement.line);
    this.checkInterrupted();

    const created = await this.createTransfer({
      diskId: disk.id,
      direction: ec.direction,
      hostId: placement.host?.id,
      inactivityTimeout: ec.inactivityTimeoutS,
      timeoutPolicy: this.timeoutPolicy(),
    });
    this.transfer = created;
    if (!this.hostName && created.hostId) this.hostName = (await client.getHost(created.hostId).catch(() => undefined))?.name ?? created.hostId;
    this.logger.info({ transfer: created.id, host: this.hostName, direction: ec.direction, timeoutPolicy: created.timeoutPolicy }, 'created image transfer');
    const t = await this.waitTransferring(created.id);
    this.transfer = t;
    if (!this.hostName && t.hostId) this.hostName = (await client.getHost(t.hostId).catch(() => undefined))?.name ?? t.hostId;
    return this.chooseUrl(t, placement);
  }

  /**
   * --timeout-policy, or: cancel, except for an upload into a disk this run did not create,
   * where cancel would remove the disk (ImageTransferTimeoutPolicy.CANCEL: "For image transfer
   * using upload direction, the disk is deleted").
   */
  private timeoutPolicy(): TimeoutPolicy {
    if (this.ec.timeoutPolicy) return this.ec.timeoutPolicy;
    return this.ec.direction === 'upload' && !this.createdDiskId ? 'pause' : 'cancel';
  }

  /** POST imagetransfers; without timeout_policy again if the engine refuses the request with it. */
  private async createTransfer(spec: NewTransferSpec): Promise<ImageTransfer> {
    const client = this.client!;
    let t: ImageTransfer;
    try {
      t = await client.createTransfer(spec);
    } catch (err) {
      if (!(err instanceof EngineError && err.status === 400 && spec.timeoutPolicy)) throw err;
      t = await client.createTransfer({ ...spec, timeoutPolicy: undefined });
      this.notice.warn(`the engine refused timeout_policy=${spec.timeoutPolicy} (${err.message}): sent without it; an idle upload is then paused and its disk stays locked`);
      return t;
    }
    if (spec.timeoutPolicy && t.timeoutPolicy === undefined) {
      this.notice.warn(`the engine does not know timeout_policy (engines before 4.4.5): if this run is killed, an upload is paused and its disk stays locked until the transfer is ended in the engine`);
    }
    return t;
  }

  private async waitTransferring(id: string): Promise<ImageTransfer> {
    const client = this.client!;
    const deadline = Date.now() + this.ec.timeoutS * 1000;
    for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
      const t = await client.getTransfer(id);
      if (!t) throw new EngineError('ERR_TRANSFER', `the engine removed transfer ${id} while it was initializing`);
      if (t.phase === 'transferring') {
        if (!t.transferUrl && !t.proxyUrl) throw new EngineError('ERR_TRANSFER', `transfer ${id} is transferring but has neither transfer_url nor proxy_url`);
        return t;
      }
      if (t.phase === 'paused_system') {
        throw new EngineError('ERR_TRANSFER', `the engine could not start transfer ${id} on host ${this.hostName || t.hostId} (paused_system): is ovirt-imageio running there?`);
      }
      if (t.phase !== 'initializing' && t.phase !== 'resuming') {
        throw new EngineError('ERR_TRANSFER', `transfer ${id} went from initializing to ${t.phase}`);
      }
      if (Date.now() >= deadline) {
        throw new EngineError('ERR_ENGINE_TIMEOUT', `transfer ${id} on host ${this.hostName || t.hostId || '(not chosen yet)'} was still ${t.phase} after ${this.ec.timeoutS} s (--engine-timeout)`);
      }
      await this.sleep(delay);
    }
  }

  /** transfer_url, unless the host cannot be reached from here: then the engine's proxy_url. */
  private async chooseUrl(t: ImageTransfer, placement: Placement): Promise<Target> {
    if (t.transferUrl) {
      const why = await unreachable(t.transferUrl, this.config.connectTimeoutMs);
      if (!why) return { url: t.transferUrl, unixSocket: placement.local ? this.config.unixSocket : 'never' };
      if (t.proxyUrl && t.proxyUrl !== t.transferUrl) {
        this.notice.warn(`host ${this.hostName} cannot be reached at ${t.transferUrl} (${why}): using the engine's imageio proxy ${t.proxyUrl}`);
        return { url: t.proxyUrl, unixSocket: 'never' };
      }
      return { url: t.transferUrl, unixSocket: 'never' };
    }
    return { url: t.proxyUrl!, unixSocket: 'never' };
  }

  // ---- While serving -------------------------------------------------------------------

  /** Poll the transfer's phase; report once if the engine paused, cancelled or removed it. */
  private monitorTransfer(onProblem: (err: EngineError) => void): { stop(): void } {
    const client = this.client!;
    const t = this.transfer!;
    const inactivity = this.ec.inactivityTimeoutS;
    const periodMs = inactivity > 0 ? Math.min(10_000, Math.max(500, inactivity * 250)) : 10_000;
    let busy = false;
    let done = false;
    const timer = setInterval(() => {
      if (busy || done) return;
      busy = true;
      client
        .getTransfer(t.id)
        .then((now) => {
          if (done) return;
          if (!now) {
            done = true;
            onProblem(new EngineError('ERR_TRANSFER', `the engine removed transfer ${t.id} while it was in use`));
          } else if (now.phase !== 'transferring') {
            done = true;
            onProblem(this.phaseProblem(now));
          }
        })
        .catch((err) => this.logger.debug({ err: describeError(err) }, 'polling the transfer failed'))
        .finally(() => (busy = false));
    }, periodMs);
    timer.unref();
    return {
      stop: () => {
        done = true;
        clearInterval(timer);
      },
    };
  }

  private phaseProblem(t: ImageTransfer): EngineError {
    const on = `transfer ${t.id} on host ${this.hostName}`;
    switch (t.phase) {
      case 'paused_system':
        return new EngineError(
          'ERR_TRANSFER',
          `the engine paused ${on} (paused_system): the host or its imageio stopped answering the engine, ` +
            `or the transfer saw no activity for more than its inactivity timeout (${this.ec.inactivityTimeoutS} s)`,
        );
      case 'paused_user':
        return new EngineError('ERR_TRANSFER', `someone paused ${on} (paused_user)`);
      default:
        return new EngineError('ERR_TRANSFER', `the engine ended ${on} while it was in use (${t.phase})`);
    }
  }

  // ---- Finishing -----------------------------------------------------------------------

  /**
   * POST finalize, then wait for the engine's verdict (the SDK's finalize_transfer): the
   * transfer's final phase, or on engines before 4.4.7, which remove the transfer at the end,
   * the disk. Lost and failed polls are waited out until --finalize-timeout; a finalize whose
   * answer was lost is sent again while the transfer is still transferring.
   */
  private async finalize(): Promise<Verdict> {
    const client = this.client!;
    const id = this.transfer!.id;
    const diskId = this.disk!.id;
    const started = Date.now();
    const deadline = started + this.ec.finalizeTimeoutS * 1000;
    let lastPost = 0;
    let lastSeen = 'transferring';
    const post = async (): Promise<Verdict | undefined> => {
      lastPost = Date.now();
      try {
        await client.transferAction(id, 'finalize');
      } catch (err) {
        // An answer with an HTTP status: the engine refused it, nothing changed.
        if (err instanceof EngineError && err.status !== undefined) return { kind: 'refused', line: `finalizing transfer ${id} failed: ${err.message}` };
        this.logger.debug({ err: describeError(err) }, 'no answer to finalize: it may have been done; polling');
      }
      return undefined;
    };
    const refused = await post();
    if (refused) return refused;
    for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
      try {
        const t = await client.getTransfer(id);
        if (!t) {
          const d = await client.getDisk(diskId);
          if (!d) return { kind: 'failure', line: `finalizing transfer ${id} failed: the engine removed disk ${diskId}`, diskGone: true };
          if (d.status === 'ok') break;
          if (d.status !== 'locked') return { kind: 'failure', line: `finalizing transfer ${id} failed: disk ${diskId} is ${d.status}` };
        } else {
          lastSeen = t.phase;
          if (t.phase === 'finished_success') break;
          if (t.phase === 'finished_failure') {
            const what = this.ec.direction === 'upload' ? 'the uploaded image did not verify' : 'the transfer failed';
            return { kind: 'failure', line: `the engine failed to finalize transfer ${id} (finished_failure): ${what}` };
          }
          // The SDK: "If oVirt fails to finalize the transfer, transfer's phase will change to
          // PAUSED_SYSTEM. In this case the disk's status will change to ILLEGAL and it will
          // not be removed."
          if (t.phase === 'paused_system') return { kind: 'failure', line: `the engine could not finalize transfer ${id} (paused_system): the disk was not removed; see the engine's events` };
          if (t.phase === 'transferring' && Date.now() - lastPost > 5000) {
            const again = await post();
            if (again) return again;
          }
        }
      } catch (err) {
        this.logger.debug({ err: describeError(err) }, 'polling the finalizing transfer failed; trying again');
      }
      if (Date.now() >= deadline) {
        return {
          kind: 'unknown',
          line:
            `transfer ${id} was still ${lastSeen} ${this.ec.finalizeTimeoutS} s after finalize (--finalize-timeout): its outcome is unknown; ` +
            `nothing was cancelled or removed: check transfer ${id} and disk ${diskId} in the engine`,
        };
      }
      await plainSleep(delay);
    }
    // finished_success: the disk is unlocked in the same step; wait for it within the same bound.
    for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
      try {
        const d = await client.getDisk(diskId);
        if (d?.status === 'ok') break;
        if (d && d.status !== 'locked') return { kind: 'failure', line: `transfer ${id} finished, but disk ${diskId} is ${d.status}` };
        if (!d) return { kind: 'failure', line: `transfer ${id} finished, but the engine removed disk ${diskId}`, diskGone: true };
      } catch (err) {
        this.logger.debug({ err: describeError(err) }, 'reading the disk failed; trying again');
      }
      if (Date.now() >= deadline) return { kind: 'unknown', line: `transfer ${id} finished, but disk ${diskId} was still locked ${this.ec.finalizeTimeoutS} s after finalize (--finalize-timeout)` };
      await plainSleep(delay);
    }
    this.logger.debug({ transfer: id, ms: Date.now() - started }, 'finalized');
    return { kind: 'success' };
  }

  /** What a failed finalize left: a disk this run created is removed if the engine did not. */
  private async afterFailedFinalize(v: Verdict): Promise<string> {
    if (v.kind !== 'failure' || !this.createdDiskId || v.diskGone) return '';
    return `; ${await this.removeCreatedDisk(this.createdDiskId)}`;
  }

  /** disk-id=ID on stdout (a JSON record with --log-format json), for scripts. */
  private printDiskId(): void {
    const d = this.disk!;
    if (this.config.logFormat === 'json') {
      process.stdout.write(`${JSON.stringify({ disk_id: d.id, disk_name: d.name, transfer_id: this.transfer!.id, direction: this.ec.direction })}\n`);
    } else {
      process.stdout.write(`disk-id=${d.id}\n`);
    }
  }

  private async waitDiskOk(id: string, what: string): Promise<Disk> {
    const deadline = Date.now() + this.ec.timeoutS * 1000;
    for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
      const d = await this.client!.getDisk(id);
      if (!d) throw new EngineError('ERR_ENGINE', `${what} ${id} disappeared`);
      if (d.status === 'ok') return d;
      if (d.status !== 'locked') throw new EngineError('ERR_ENGINE', `${what} ${id} is ${d.status}`);
      if (Date.now() >= deadline) throw new EngineError('ERR_ENGINE_TIMEOUT', `${what} ${id} was still locked after ${this.ec.timeoutS} s (--engine-timeout)`);
      await this.sleep(delay);
    }
  }

  // ---- Failing -------------------------------------------------------------------------

  /**
   * The run failed before finalize: end the transfer without losing a disk this run did not
   * create (see the header), print one line; returns the exit status.
   */
  private async fail(err: unknown, status?: number): Promise<number> {
    const cause = err instanceof ImageioNbdError ? err.message : describeError(err);
    const exit = status !== undefined && status !== 0 ? status : 1;
    const done: string[] = [];
    if (this.client && this.transfer && !this.createdDiskId) {
      return this.report(`${cause}; ${await this.finalizeAfterFailure()}`, exit);
    }
    if (this.client && this.transfer) done.push(await this.endTransfer());
    if (this.client && this.createdDiskId) done.push(await this.removeCreatedDisk(this.createdDiskId));
    return this.report(`${cause}${done.length ? `; ${done.join(', ')}` : ''}`, exit);
  }

  /**
   * A failed run on a disk that existed before: finalize, never cancel (a cancelled or failed
   * upload has its disk removed by the engine). An upload's disk then holds whatever was
   * written: partial content, which is said loudly.
   */
  private async finalizeAfterFailure(): Promise<string> {
    const id = this.transfer!.id;
    const disk = this.disk!;
    const upload = this.ec.direction === 'upload';
    let phase: string | undefined;
    try {
      phase = (await this.client!.getTransfer(id))?.phase;
    } catch {
      /* finalize anyway */
    }
    // The engine is already ending it with a failure: an upload's disk is then removed by it.
    if (phase !== undefined && phase !== 'finalizing_success' && (ENDING_PHASES.has(phase) || phase === 'finished_failure' || phase === 'finished_cleanup')) {
      const ended = await this.endTransfer();
      const still = await this.client!.getDisk(disk.id).catch(() => disk);
      return upload && !still
        ? `${ended}; the engine removed disk ${disk.id} (${disk.name}): oVirt removes the disk of an upload that ends in failure`
        : `${ended}; disk ${disk.id} (${disk.name}) was kept`;
    }
    // No ticket on the host yet: a finalize would wait for ever (handleFinalizingSuccess changes
    // nothing until the ticket is removed), and a cancel removes an upload's disk.
    if (phase === 'initializing' || phase === 'resuming') {
      if (!upload) return this.endTransfer(); // a download's disk is only unlocked (cleanup)
      phase = await this.waitWhileStarting(id);
      if (phase === 'initializing' || phase === 'resuming') {
        return `transfer ${id} is still ${phase}: not cancelled, because cancelling an upload removes disk ${disk.id} (${disk.name}); end it in the engine`;
      }
    }
    const v = phase === 'finished_success' ? ({ kind: 'success' } as Verdict) : await this.finalize();
    if (v.kind === 'success') {
      // Nothing was served, so nothing was written.
      if (!upload || !this.served) return `transfer ${id} finalized; disk ${disk.id} (${disk.name}) is unchanged`;
      return `transfer ${id} finalized to keep disk ${disk.id} (${disk.name}), but the upload did NOT complete: the disk's content is PARTIAL, write it again`;
    }
    return v.line;
  }

  /** The transfer's phase once it left initializing/resuming, or after --engine-timeout. */
  private async waitWhileStarting(id: string): Promise<string | undefined> {
    const deadline = Date.now() + this.ec.timeoutS * 1000;
    for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
      const phase = (await this.client!.getTransfer(id).catch(() => undefined))?.phase;
      if ((phase !== 'initializing' && phase !== 'resuming') || Date.now() >= deadline) return phase;
      await plainSleep(delay);
    }
  }

  /** Print the one line (an error record with --log-format json); returns `status`. */
  private report(line: string, status: number): number {
    if (this.config.logFormat === 'json') this.logger.error({ transfer: this.transfer?.id, disk: this.disk?.id ?? this.createdDiskId }, line);
    else process.stderr.write(`imageio-nbd: ${line}\n`);
    return status;
  }

  /** Cancel the transfer unless the engine is ending it already; wait until it has ended. */
  private async endTransfer(): Promise<string> {
    const client = this.client!;
    const id = this.transfer!.id;
    try {
      let t = await client.getTransfer(id);
      if (!t || FINAL_PHASES.has(t.phase)) return `transfer ${id} ${t ? `ended (${t.phase})` : 'is gone'}`;
      let cancelled = false;
      if (!ENDING_PHASES.has(t.phase)) {
        await client.transferAction(id, 'cancel');
        cancelled = true;
      }
      const deadline = Date.now() + this.ec.timeoutS * 1000;
      let cleanupSince: number | undefined;
      for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
        t = await client.getTransfer(id);
        // finished_cleanup is followed by finished_failure once the engine has ended the
        // command (and removed the disk of an upload): wait for that, within reason.
        if (t?.phase === 'finished_cleanup') cleanupSince ??= Date.now();
        if (!t || (FINAL_PHASES.has(t.phase) && t.phase !== 'finished_cleanup')) break;
        if (cleanupSince !== undefined && Date.now() - cleanupSince > CLEANUP_GRACE_MS) break;
        if (Date.now() >= deadline) return `transfer ${id} was still ${t.phase} after ${this.ec.timeoutS} s: check it in the engine`;
        await plainSleep(delay);
      }
      return cancelled ? `transfer ${id} cancelled` : `transfer ${id} ended (${t?.phase ?? 'removed'})`;
    } catch (err) {
      return `cancelling transfer ${id} failed (${describeError(err)}): cancel it in the engine`;
    }
  }

  /** Remove the disk this run created, unless the engine removed it already (it does for a failed upload). */
  private async removeCreatedDisk(id: string): Promise<string> {
    const client = this.client!;
    const deadline = Date.now() + this.ec.timeoutS * 1000;
    let deleted = false;
    try {
      for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
        const d = await client.getDisk(id);
        if (!d) return `disk ${id} removed`;
        if (!deleted && d.status !== 'locked') {
          try {
            deleted = await client.removeDisk(id);
          } catch (err) {
            // 409: locked by an operation still running; try again.
            if (!(err instanceof EngineError && err.status === 409)) throw err;
          }
        }
        if (Date.now() >= deadline) return `disk ${id} still exists after ${this.ec.timeoutS} s: remove it in the engine`;
        await plainSleep(delay);
      }
    } catch (err) {
      return `removing disk ${id} failed (${describeError(err)}): remove it in the engine`;
    }
  }

  // ---- Helpers -------------------------------------------------------------------------

  private checkInterrupted(): void {
    if (this.interrupted) throw new Interrupted(this.interrupted);
  }

  /** Sleep, unless a signal arrives. */
  private sleep(ms: number): Promise<void> {
    this.checkInterrupted();
    return new Promise((resolve, reject) => {
      const signal = this.abort.signal;
      const onAbort = () => {
        clearTimeout(timer);
        reject(new Interrupted(this.interrupted ?? 'SIGTERM'));
      };
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}

function plainSleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
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

/** Why a TCP connection to the URL's host and port cannot be made, or undefined when it can. */
function unreachable(url: string, timeoutMs: number): Promise<string | undefined> {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(u.port) || (u.protocol === 'https:' ? 443 : 80);
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      resolve(`no answer in ${timeoutMs} ms`);
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.destroy();
      resolve(undefined);
    });
    s.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(err.code ?? err.message);
    });
  });
}
