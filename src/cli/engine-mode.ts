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
 * - The transfer is finalized only after the normal serve path returned success: the --run
 *   command exited 0, every byte written was flushed on every imageio connection, and every
 *   NBD and HTTP connection is closed.
 * - Any failure before that (a failed or killed --run command, a failed flush, SIGINT/SIGTERM,
 *   the parent exiting with --exit-with-parent, the engine pausing or cancelling the transfer,
 *   a failure to set it up) cancels the transfer, removes a disk this run created, and exits
 *   non-zero with one line naming the cause and what was cleaned up.
 * - While serving, the transfer's phase is polled: a transfer the engine paused (paused_system:
 *   the host or its imageio stopped answering, or the client was idle past inactivity_timeout)
 *   or cancelled stops the run at once and is reported as such.
 * - The engine pauses a transfer whose imageio ticket has been idle (no read, write, zero or
 *   flush; OPTIONS does not count) for longer than inactivity_timeout while no request is in
 *   flight (TransferDiskImageCommand.shouldAbortOnClientInactivityTimeout in ovirt-engine).
 *   The imageio backend already sends a PATCH flush on connections idle for --keepalive
 *   seconds; here that interval is kept at a third of the inactivity timeout or less, so a
 *   client that pauses (qemu-img between files, nbdcopy waiting on its source) never looks idle.
 *
 * Note: when an upload is cancelled, the engine removes the disk, also one that existed
 * before (TransferDiskImageCommand.endWithFailure runs RemoveDisk for every failed upload).
 * imageio-nbd says so when it happens.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { ServeHooks } from './serve';
import { processSignals } from './signals';
import type { RunConfig } from './parse';
import { ConfigError, EngineError, ImageioNbdError, describeError } from '../core/errors';
import type { Logger } from '../core/log';
import { FINAL_PHASES, type Disk, type ImageTransfer } from '../engine/api-types';
import { EngineClient } from '../engine/engine-client';
import type { EngineConfig } from './engine-options';
import { choosePlacement, readHardwareId, type Placement } from '../engine/placement';

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
    try {
      await this.finalize();
    } catch (err) {
      return this.fail(err);
    }
    this.logger.info({ transfer: this.transfer!.id, disk: this.disk!.id }, 'transfer finalized; the disk is ok');
    return 0;
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
      if (!sd) throw new EngineError('ERR_ENGINE', `the engine has no storage domain named ${spec.storageDomain}`);
      this.checkInterrupted();
      disk = await client.createDisk({
        name: spec.name ?? 'imageio-nbd-upload',
        size: spec.size,
        format: spec.format,
        sparse: spec.sparse,
        storageDomainId: sd.id,
      });
      this.createdDiskId = disk.id;
      this.logger.info({ disk: disk.id, storageDomain: sd.name }, 'created disk');
      disk = await this.waitDiskOk(disk.id, 'the new disk');
    } else {
      const found = await client.getDisk(ec.disk.id);
      if (!found) throw new EngineError('ERR_ENGINE', `the engine has no disk ${ec.disk.id}`);
      if (found.status !== 'ok') {
        throw new EngineError(
          'ERR_ENGINE',
          `disk ${found.name} (${found.id}) is ${found.status}` + (found.status === 'locked' ? ': another transfer or operation is using it' : ''),
        );
      }
      disk = found;
    }
    this.disk = disk;

    const placement = await this.place(disk);
    this.hostName = placement.host.name;
    this.notice.info(placement.line);
    this.checkInterrupted();

    const created = await client.createTransfer({
      diskId: disk.id,
      direction: ec.direction,
      hostId: placement.host.id,
      inactivityTimeout: ec.inactivityTimeoutS,
    });
    this.transfer = created;
    this.logger.info({ transfer: created.id, host: placement.host.name, direction: ec.direction }, 'created image transfer');
    const t = await this.waitTransferring(created.id);
    this.transfer = t;
    return this.chooseUrl(t, placement);
  }

  /** Steps 1-4 of placement: the storage domain's data center, its up hosts, the transfers per host. */
  private async place(disk: Disk): Promise<Placement> {
    const client = this.client!;
    const sdId = disk.storageDomainIds[0];
    if (!sdId) throw new EngineError('ERR_ENGINE', `disk ${disk.id} is on no storage domain`);
    const sd = await client.getStorageDomain(sdId);
    if (!sd) throw new EngineError('ERR_ENGINE', `the engine has no storage domain ${sdId} (of disk ${disk.id})`);
    const dcId = sd.dataCenterIds[0];
    if (!dcId) throw new EngineError('ERR_ENGINE', `storage domain ${sd.name} is not attached to a data center: no host can reach disk ${disk.id}`);
    const dc = await client.getDataCenter(dcId);
    if (!dc) throw new EngineError('ERR_ENGINE', `the engine has no data center ${dcId} (of storage domain ${sd.name})`);
    const [hosts, transfers] = await Promise.all([
      client.listHosts(`datacenter=${searchValue(dc.name)} and status=up`),
      client.listTransfers(),
    ]);
    return choosePlacement({
      candidates: hosts.filter((h) => h.status === 'up'),
      transfers,
      localHardwareId: readHardwareId(),
      forced: this.ec.host,
      dataCenter: dc.name,
    });
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
        throw new EngineError('ERR_TRANSFER', `the engine could not start transfer ${id} on host ${this.hostName} (paused_system): is ovirt-imageio running there?`);
      }
      if (t.phase !== 'initializing' && t.phase !== 'resuming') {
        throw new EngineError('ERR_TRANSFER', `transfer ${id} went from initializing to ${t.phase}`);
      }
      if (Date.now() >= deadline) {
        throw new EngineError('ERR_ENGINE_TIMEOUT', `transfer ${id} on host ${this.hostName} was still ${t.phase} after ${this.ec.timeoutS} s (--engine-timeout)`);
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
        this.notice.warn(`host ${placement.host.name} cannot be reached at ${t.transferUrl} (${why}): using the engine's imageio proxy ${t.proxyUrl}`);
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

  private async finalize(): Promise<void> {
    const client = this.client!;
    const id = this.transfer!.id;
    const diskId = this.disk!.id;
    const started = Date.now();
    await client.transferAction(id, 'finalize');
    const deadline = started + this.ec.timeoutS * 1000;
    for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
      const t = await client.getTransfer(id);
      if (!t) {
        // Engines before 4.4.7 remove the transfer as soon as it ends: the disk tells how.
        const d = await client.getDisk(diskId);
        if (!d) throw new EngineError('ERR_TRANSFER', `finalizing transfer ${id} failed: the engine removed disk ${diskId}`);
        if (d.status === 'ok') break;
        if (d.status !== 'locked') throw new EngineError('ERR_TRANSFER', `finalizing transfer ${id} failed: disk ${diskId} is ${d.status}`);
      } else if (t.phase === 'finished_success') {
        break;
      } else if (t.phase === 'finished_failure') {
        throw new EngineError('ERR_TRANSFER', `the engine failed to finalize transfer ${id} (finished_failure): the ${this.ec.direction === 'upload' ? 'uploaded image did not verify' : 'transfer failed'}`);
      } else if (t.phase === 'paused_system') {
        throw new EngineError('ERR_TRANSFER', `the engine could not finalize transfer ${id} (paused_system)`);
      } else if (!['finalizing_success', 'finalizing_failure', 'transferring'].includes(t.phase)) {
        throw new EngineError('ERR_TRANSFER', `transfer ${id} went to ${t.phase} while finalizing`);
      }
      if (Date.now() >= deadline) {
        throw new EngineError('ERR_ENGINE_TIMEOUT', `transfer ${id} was still ${t?.phase ?? 'finalizing'} after ${this.ec.timeoutS} s (--engine-timeout)`);
      }
      await this.sleep(delay);
    }
    await this.waitDiskOk(diskId, 'the disk');
    this.logger.debug({ transfer: id, ms: Date.now() - started }, 'finalized');
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

  /** Cancel the transfer, remove a disk we created, print one line; returns the exit status. */
  private async fail(err: unknown, status?: number): Promise<number> {
    const cause = err instanceof ImageioNbdError ? err.message : describeError(err);
    const done: string[] = [];
    if (this.client && this.transfer) done.push(await this.endTransfer());
    if (this.client && this.createdDiskId) done.push(await this.removeCreatedDisk(this.createdDiskId));
    else if (this.client && this.disk && this.transfer && this.ec.direction === 'upload') {
      const still = await this.client.getDisk(this.disk.id).catch(() => this.disk);
      if (!still) done.push(`the engine removed disk ${this.disk.id} (oVirt removes the disk of a failed upload)`);
    }
    const line = `${cause}${done.length ? `; ${done.join(', ')}` : ''}`;
    if (this.config.logFormat === 'json') this.logger.error({ transfer: this.transfer?.id, disk: this.disk?.id ?? this.createdDiskId }, line);
    else process.stderr.write(`imageio-nbd: ${line}\n`);
    return status !== undefined && status !== 0 ? status : 1;
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

/** A value in the engine's search language: quoted when it has spaces. */
function searchValue(v: string): string {
  return /[\s"]/.test(v) ? `"${v.replace(/"/g, '\\"')}"` : v;
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
