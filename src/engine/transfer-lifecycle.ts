/**
 * One image transfer's lifecycle in the oVirt engine, shared by engine mode (src/cli/engine-mode.ts,
 * one transfer) and the job runner (src/cli/jobs/, many): the caller logs in, chooses the host
 * and serves the transfer's URL; this class does every engine step around that, with the same
 * failure rules for both:
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
 *
 * Who owns what: the caller owns the EngineClient (one login for any number of transfers), the
 * signal handling (it aborts `abort` with the error to report, e.g. Interrupted) and the output;
 * a TransferLifecycle owns one transfer and the disk it created.
 */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { ConfigError, EngineError, ImageioNbdError, describeError } from '../core/errors';
import type { Logger } from '../core/log';
import { FINAL_PHASES, type Disk, type ImageTransfer } from './api-types';
import type { EngineClient, NewTransferSpec } from './engine-client';
import type { Placement } from './placement';

/** ImageTransferTimeoutPolicy (ovirt-engine-api-model types/ImageTransferTimeoutPolicy.java, engines from 4.4.5). */
export type TimeoutPolicy = 'legacy' | 'pause' | 'cancel';

export interface NewDisk {
  storageDomain: string;
  /** provisioned_size, bytes. */
  size: number;
  /** oVirt disk formats: raw, or cow (qcow2). */
  format: 'raw' | 'cow';
  sparse: boolean;
  /** Undefined: a unique name is made when the run starts. */
  name?: string;
}


/** What the lifecycle needs of the command line (src/cli/engine-options.ts checks it). */
export interface LifecycleSettings {
  /** The transfer's inactivity_timeout, seconds; 0 turns the engine's check off. */
  inactivityTimeoutS: number;
  /** Undefined: cancel, except pause for an upload into an existing disk. */
  timeoutPolicy?: TimeoutPolicy;
  /** Bound on each wait for the engine before finalize, seconds. */
  timeoutS: number;
  /** Bound on the wait for the engine's verdict once finalize was sent, seconds. */
  finalizeTimeoutS: number;
}

/** How long a transfer may stay finished_cleanup before it counts as ended. */
const CLEANUP_GRACE_MS = 10_000;

/** Phases in which the engine is ending the transfer by itself: wait, do not cancel. */
const ENDING_PHASES = new Set(['finalizing_success', 'finalizing_failure', 'finalizing_cleanup', 'cancelled_system', 'cancelled_user']);

/** A run stopped by SIGINT/SIGTERM: the abort reason engine mode and the job runner give. */
export class Interrupted extends EngineError {
  constructor(readonly signal: NodeJS.Signals) {
    super('ERR_INTERRUPTED', `interrupted by ${signal}`);
  }
}

/** Where to serve the transfer from. */
export interface Target {
  url: string;
  unixSocket: 'auto' | 'never';
}

/** The disk side of one transfer: an existing disk, or one to create, and the direction. */
export interface TransferSpec {
  disk: { id: string } | { create: NewDisk };
  direction: 'upload' | 'download';
}

export interface LifecycleOptions {
  client: EngineClient;
  settings: LifecycleSettings;
  spec: TransferSpec;
  logger: Logger;
  /** Lines shown at the default level (proxy fallback, timeout_policy warnings). */
  notice: Logger;
  /** Aborted with the error to report (e.g. Interrupted): waits before finalize stop at once. */
  abort: AbortSignal;
  /** Bound on the TCP probe of transfer_url, ms. */
  connectTimeoutMs: number;
  /** --unix-socket: 'never' keeps even a local host on HTTPS. */
  unixSocket: 'auto' | 'never';
}

/** How the serving of the transfer ended (ServeHooks of src/cli/serve.ts, or a job's copy). */
export interface ServeResult {
  status: number;
  /** The copying command's exit status, when it ran. */
  runStatus?: number;
  /** Why serving stopped, when it was stopped. */
  reason: string;
  /** Written data could not be flushed to imageio. */
  dataLost: boolean;
}

/** The engine's verdict on a finalize: refused (nothing changed), failure, unknown (timed out). */
type Verdict = { kind: 'success' } | { kind: 'refused' | 'failure' | 'unknown'; line: string; diskGone?: boolean };

/** What finish() found: success, or the one line saying what failed and what was done. */
export type Outcome = { ok: true } | { ok: false; line: string };

/** imageio-nbd-20261207-021500-3f9a1c: a new disk a script can tell from any other. */
export function uniqueDiskName(now = new Date()): string {
  const t = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `imageio-nbd-${t}-${randomBytes(3).toString('hex')}`;
}

export class TransferLifecycle {
  /** The disk this lifecycle created (removed again on failure). */
  createdDiskId?: string;
  disk?: Disk;
  transfer?: ImageTransfer;
  /** The transfer's host, once known. */
  hostName = '';
  /** Serving started: an upload may have written something. */
  served = false;
  /** The copy finished and was flushed (a job of --jobs whose group failed is then not partial). */
  complete = false;
  private readonly client: EngineClient;
  private readonly s: LifecycleSettings;
  private readonly spec: TransferSpec;
  private readonly logger: Logger;
  private readonly notice: Logger;

  constructor(private readonly opts: LifecycleOptions) {
    this.client = opts.client;
    this.s = opts.settings;
    this.spec = opts.spec;
    this.logger = opts.logger;
    this.notice = opts.notice;
  }

  // ---- Setting up ----------------------------------------------------------------------

  /** Create the disk (and wait until it is ok), or check that the existing one is ok. */
  async openDisk(): Promise<Disk> {
    const client = this.client;
    let disk: Disk;
    if ('create' in this.spec.disk) {
      const spec = this.spec.disk.create;
      const sd = await client.findStorageDomain(spec.storageDomain);
      if (!sd) throw new EngineError('ERR_ENGINE', `the engine has no storage domain named ${spec.storageDomain} (or this user cannot see it)`);
      // ImagesHandler.checkImageConfiguration: no RAW sparse volume on block storage.
      if (spec.format === 'raw' && spec.sparse && (sd.storageType === 'iscsi' || sd.storageType === 'fcp')) {
        throw new ConfigError(`storage domain ${sd.name} is block storage (${sd.storageType}): the engine refuses raw --sparse disks there; drop --sparse, or use --disk-format cow`);
      }
      this.checkAborted();
      disk = await client.createDisk({
        name: spec.name ?? uniqueDiskName(),
        size: spec.size,
        format: spec.format,
        sparse: spec.sparse,
        storageDomainId: sd.id,
      });
      this.createdDiskId = disk.id;
      this.disk = disk;
      this.logger.info({ disk: disk.id, name: disk.name, storageDomain: sd.name }, 'created disk');
      disk = await this.waitDiskOk(disk.id, 'the new disk');
    } else {
      const found = await client.getDisk(this.spec.disk.id);
      if (!found) throw new EngineError('ERR_ENGINE', `the engine has no disk ${this.spec.disk.id} (or this user cannot see it)`);
      if (found.status !== 'ok') {
        throw new EngineError(
          'ERR_ENGINE',
          `disk ${found.name} (${found.id}) is ${found.status}` + (found.status === 'locked' ? ': another transfer or operation is using it' : ''),
        );
      }
      disk = found;
    }
    this.disk = disk;
    return disk;
  }

  /** Create the image transfer on the placement's host (or the engine's choice) and wait until it is transferring. */
  async startTransfer(placement: Placement): Promise<Target> {
    const client = this.client;
    const disk = this.disk!;
    this.hostName = placement.host?.name ?? '';
    this.checkAborted();
    const created = await this.createTransfer({
      diskId: disk.id,
      direction: this.spec.direction,
      hostId: placement.host?.id,
      inactivityTimeout: this.s.inactivityTimeoutS,
      timeoutPolicy: this.timeoutPolicy(),
    });
    this.transfer = created;
    if (!this.hostName && created.hostId) this.hostName = (await client.getHost(created.hostId).catch(() => undefined))?.name ?? created.hostId;
    this.logger.info({ transfer: created.id, host: this.hostName, direction: this.spec.direction, timeoutPolicy: created.timeoutPolicy }, 'created image transfer');
    const t = await this.waitTransferring(created.id);
    this.transfer = t;
    if (!this.hostName && t.hostId) this.hostName = (await client.getHost(t.hostId).catch(() => undefined))?.name ?? t.hostId;
    return this.chooseUrl(t, placement);
  }

  /** The keep-alive interval to serve with: a third of the inactivity timeout or less (see the header). */
  keepAliveMs(configured: number): number {
    const inactivityMs = this.s.inactivityTimeoutS * 1000;
    return inactivityMs > 0 ? Math.max(100, Math.min(configured, Math.floor(inactivityMs / 3))) : configured;
  }

  /** While serving: poll the transfer's phase; `onProblem` once if the engine paused, cancelled or removed it. */
  monitor(onProblem: (err: EngineError) => void): { stop(): void } {
    return this.monitorTransfer(onProblem);
  }

  /** Why a finished serve is a failure, or undefined when it succeeded. */
  serveFailure(r: ServeResult): EngineError | undefined {
    if (r.status === 0 && r.runStatus === 0 && !r.dataLost) return undefined;
    let cause: string;
    if (r.dataLost) cause = 'written data could not be flushed to imageio';
    else if (r.runStatus !== undefined && r.runStatus !== 0) cause = `the --run command exited with status ${r.runStatus}`;
    else if (r.reason) cause = r.reason;
    else cause = `the transfer could not be served (status ${r.status}; see above)`;
    return new EngineError('ERR_TRANSFER', cause);
  }

  /** Serving succeeded: finalize and wait for the engine's verdict. */
  async finish(): Promise<Outcome> {
    const verdict = await this.finalizeTransfer();
    if (verdict.kind === 'success') {
      this.logger.info({ transfer: this.transfer!.id, disk: this.disk!.id }, 'transfer finalized; the disk is ok');
      return { ok: true };
    }
    return { ok: false, line: verdict.kind === 'refused' ? verdict.line : `${verdict.line}${await this.afterFailedFinalize(verdict)}` };
  }

  /**
   * --timeout-policy, or: cancel, except for an upload into a disk this run did not create,
   * where cancel would remove the disk (ImageTransferTimeoutPolicy.CANCEL: "For image transfer
   * using upload direction, the disk is deleted").
   */
  private timeoutPolicy(): TimeoutPolicy {
    if (this.s.timeoutPolicy) return this.s.timeoutPolicy;
    return this.spec.direction === 'upload' && !this.createdDiskId ? 'pause' : 'cancel';
  }

  /** POST imagetransfers; without timeout_policy again if the engine refuses the request with it. */
  private async createTransfer(spec: NewTransferSpec): Promise<ImageTransfer> {
    const client = this.client;
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
    const client = this.client;
    const deadline = Date.now() + this.s.timeoutS * 1000;
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
        throw new EngineError('ERR_ENGINE_TIMEOUT', `transfer ${id} on host ${this.hostName || t.hostId || '(not chosen yet)'} was still ${t.phase} after ${this.s.timeoutS} s (--engine-timeout)`);
      }
      await this.sleep(delay);
    }
  }

  /** transfer_url, unless the host cannot be reached from here: then the engine's proxy_url. */
  private async chooseUrl(t: ImageTransfer, placement: Placement): Promise<Target> {
    if (t.transferUrl) {
      const why = await unreachable(t.transferUrl, this.opts.connectTimeoutMs);
      if (!why) return { url: t.transferUrl, unixSocket: placement.local ? this.opts.unixSocket : 'never' };
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
    const client = this.client;
    const t = this.transfer!;
    const inactivity = this.s.inactivityTimeoutS;
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
            `or the transfer saw no activity for more than its inactivity timeout (${this.s.inactivityTimeoutS} s)`,
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
  private async finalizeTransfer(): Promise<Verdict> {
    const client = this.client;
    const id = this.transfer!.id;
    const diskId = this.disk!.id;
    const started = Date.now();
    const deadline = started + this.s.finalizeTimeoutS * 1000;
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
            const what = this.spec.direction === 'upload' ? 'the uploaded image did not verify' : 'the transfer failed';
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
            `transfer ${id} was still ${lastSeen} ${this.s.finalizeTimeoutS} s after finalize (--finalize-timeout): its outcome is unknown; ` +
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
      if (Date.now() >= deadline) return { kind: 'unknown', line: `transfer ${id} finished, but disk ${diskId} was still locked ${this.s.finalizeTimeoutS} s after finalize (--finalize-timeout)` };
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

  private async waitDiskOk(id: string, what: string): Promise<Disk> {
    const deadline = Date.now() + this.s.timeoutS * 1000;
    for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
      const d = await this.client.getDisk(id);
      if (!d) throw new EngineError('ERR_ENGINE', `${what} ${id} disappeared`);
      if (d.status === 'ok') return d;
      if (d.status !== 'locked') throw new EngineError('ERR_ENGINE', `${what} ${id} is ${d.status}`);
      if (Date.now() >= deadline) throw new EngineError('ERR_ENGINE_TIMEOUT', `${what} ${id} was still locked after ${this.s.timeoutS} s (--engine-timeout)`);
      await this.sleep(delay);
    }
  }

  // ---- Failing -------------------------------------------------------------------------

  /**
   * The transfer failed before finalize: end it without losing a disk this run did not create
   * (see the header). Returns the one line: the cause, and what was done.
   */
  async fail(err: unknown): Promise<string> {
    const cause = err instanceof ImageioNbdError ? err.message : describeError(err);
    if (this.transfer && !this.createdDiskId) return `${cause}; ${await this.finalizeAfterFailure()}`;
    const done: string[] = [];
    if (this.transfer) done.push(await this.endTransfer());
    if (this.createdDiskId) done.push(await this.removeCreatedDisk(this.createdDiskId));
    return `${cause}${done.length ? `; ${done.join(', ')}` : ''}`;
  }

  /**
   * A failed run on a disk that existed before: finalize, never cancel (a cancelled or failed
   * upload has its disk removed by the engine). An upload's disk then holds whatever was
   * written: partial content, which is said loudly.
   */
  private async finalizeAfterFailure(): Promise<string> {
    const id = this.transfer!.id;
    const disk = this.disk!;
    const upload = this.spec.direction === 'upload';
    let phase: string | undefined;
    try {
      phase = (await this.client.getTransfer(id))?.phase;
    } catch {
      /* finalize anyway */
    }
    // The engine is already ending it with a failure: an upload's disk is then removed by it.
    if (phase !== undefined && phase !== 'finalizing_success' && (ENDING_PHASES.has(phase) || phase === 'finished_failure' || phase === 'finished_cleanup')) {
      const ended = await this.endTransfer();
      const still = await this.client.getDisk(disk.id).catch(() => disk);
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
    const v = phase === 'finished_success' ? ({ kind: 'success' } as Verdict) : await this.finalizeTransfer();
    if (v.kind === 'success') {
      // Nothing was served, so nothing was written.
      if (!upload || !this.served) return `transfer ${id} finalized; disk ${disk.id} (${disk.name}) is unchanged`;
      if (this.complete) return `transfer ${id} finalized to keep disk ${disk.id} (${disk.name}); its upload was complete, but the disks that go with it were not all written`;
      return `transfer ${id} finalized to keep disk ${disk.id} (${disk.name}), but the upload did NOT complete: the disk's content is PARTIAL, write it again`;
    }
    return v.line;
  }

  /** The transfer's phase once it left initializing/resuming, or after --engine-timeout. */
  private async waitWhileStarting(id: string): Promise<string | undefined> {
    const deadline = Date.now() + this.s.timeoutS * 1000;
    for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
      const phase = (await this.client.getTransfer(id).catch(() => undefined))?.phase;
      if ((phase !== 'initializing' && phase !== 'resuming') || Date.now() >= deadline) return phase;
      await plainSleep(delay);
    }
  }

  /** Cancel the transfer unless the engine is ending it already; wait until it has ended. */
  private async endTransfer(): Promise<string> {
    const client = this.client;
    const id = this.transfer!.id;
    try {
      let t = await client.getTransfer(id);
      if (!t || FINAL_PHASES.has(t.phase)) return `transfer ${id} ${t ? `ended (${t.phase})` : 'is gone'}`;
      let cancelled = false;
      if (!ENDING_PHASES.has(t.phase)) {
        await client.transferAction(id, 'cancel');
        cancelled = true;
      }
      const deadline = Date.now() + this.s.timeoutS * 1000;
      let cleanupSince: number | undefined;
      for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
        t = await client.getTransfer(id);
        // finished_cleanup is followed by finished_failure once the engine has ended the
        // command (and removed the disk of an upload): wait for that, within reason.
        if (t?.phase === 'finished_cleanup') cleanupSince ??= Date.now();
        if (!t || (FINAL_PHASES.has(t.phase) && t.phase !== 'finished_cleanup')) break;
        if (cleanupSince !== undefined && Date.now() - cleanupSince > CLEANUP_GRACE_MS) break;
        if (Date.now() >= deadline) return `transfer ${id} was still ${t.phase} after ${this.s.timeoutS} s: check it in the engine`;
        await plainSleep(delay);
      }
      return cancelled ? `transfer ${id} cancelled` : `transfer ${id} ended (${t?.phase ?? 'removed'})`;
    } catch (err) {
      return `cancelling transfer ${id} failed (${describeError(err)}): cancel it in the engine`;
    }
  }

  /** Remove the disk this run created, unless the engine removed it already (it does for a failed upload). */
  private async removeCreatedDisk(id: string): Promise<string> {
    const client = this.client;
    const deadline = Date.now() + this.s.timeoutS * 1000;
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
        if (Date.now() >= deadline) return `disk ${id} still exists after ${this.s.timeoutS} s: remove it in the engine`;
        await plainSleep(delay);
      }
    } catch (err) {
      return `removing disk ${id} failed (${describeError(err)}): remove it in the engine`;
    }
  }

  // ---- Helpers -------------------------------------------------------------------------

  private checkAborted(): void {
    const signal = this.opts.abort;
    if (signal.aborted) throw signal.reason;
  }

  /** Sleep, unless the run is aborted. */
  private sleep(ms: number): Promise<void> {
    this.checkAborted();
    return new Promise((resolve, reject) => {
      const signal = this.opts.abort;
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal.reason);
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
