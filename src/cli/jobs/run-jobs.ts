/**
 * --jobs: many image transfers in one run, spread over the hosts that can serve them.
 *
 *   read and check the whole job list (and every source, with qemu-img info) -> log in once
 *   -> every job: [create its disk] -> wait for a slot on a host (./host-slots) -> create the
 *   transfer -> serve it on its own NBD export and copy with qemu-img or nbdcopy -> finalize
 *   -> one table (job, host, transport, bytes, time, rate, outcome, disk id); exit 0 only when
 *   every job succeeded.
 *
 * Every transfer follows exactly the failure rules of a single engine-mode run: they are the
 * same code (src/engine/transfer-lifecycle.ts): a new disk of a failed upload is removed, an
 * existing disk is kept (and said to be partial), a download is finalized.
 *
 * Groups finish together (a VM's disks): a job of a group is finalized only once every job of
 * the group has copied its data; when one fails (after its retries), the others are stopped
 * and every transfer of the group ends by the failure rules. A job without a group finishes on
 * its own.
 *
 * Retries (--job-retries): an upload into a new disk that failed before finalize (its disk was
 * removed by the failure rules, nothing was finalized) starts again, in a new disk, preferably
 * on another host. A host that goes down fails only the jobs on it.
 *
 * SIGINT/SIGTERM: every job still copying or waiting is stopped and ends by the same rules;
 * jobs already finalizing are waited for (a cancel would turn their success into a failure);
 * the exit status is non-zero. A second signal exits at once. This is the one place the job
 * runner handles signals (onSignals below), to be replaced by the command's signal owner.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RunConfig } from '../parse';
import { ConfigError, EngineError, ImageioNbdError, describeError } from '../../core/errors';
import type { Logger } from '../../core/log';
import { formatSize } from '../../core/size';
import { PayloadPool } from '../../core/payload-pool';
import { processSignals, signalStatus } from '../signals';
import type { EngineClient } from '../../engine/engine-client';
import { HostSlots, type Slot } from '../../engine/host-slots';
import { Interrupted, TransferLifecycle, type TransferSpec } from '../../engine/transfer-lifecycle';
import { engineLogin, localVdsmId, noticeLogger } from '../engine-mode';
import { formatDuration, ProgressLine, type ProgressReport } from '../progress';
import { parseJobList, type Job } from './job-list';
import { JobExport } from './job-export';
import type { JobsConfig } from './jobs-options';
import { sourceInfo } from './source-info';

/** A job, checked and planned: what to create, how to copy. */
interface Plan {
  n: number;
  job: Job;
  label: string;
  spec: TransferSpec;
  tool: 'qemu-img' | 'nbdcopy';
  argv: (uri: string) => string[];
  /** Bytes to move, when known before the disk is (an upload's source size). */
  size?: number;
}

type State = 'waiting' | 'running' | 'copied' | 'finalizing' | 'done' | 'failed';

/** One job while it runs, and its outcome. */
interface JobRun {
  plan: Plan;
  state: State;
  abort: AbortController;
  host: string;
  transport: string;
  total: number;
  counter?: () => number;
  bytes: number;
  started?: number;
  ended?: number;
  diskId?: string;
  line?: string;
  attempts: number;
  /** Host ids this job failed on. */
  avoid: Set<string>;
  /** The copied transfer, until it is finalized or failed. */
  held?: { lc: TransferLifecycle; exp: JobExport; monitor: { stop(): void }; slot: Slot; problem: () => EngineError | undefined };
}

class Group {
  readonly members: JobRun[] = [];
  private settled = 0;
  failedBy?: JobRun;
  private resolve!: (ok: boolean) => void;
  readonly decided = new Promise<boolean>((r) => (this.resolve = r));

  constructor(readonly name: string) {}

  /** A member copied (ok) or failed for good. */
  arrive(j: JobRun, ok: boolean): void {
    if (!ok) this.spoil(j);
    if (++this.settled === this.members.length) this.resolve(!this.failedBy);
  }

  /**
   * A member that copied learns, while the others still copy, that the engine ended its
   * transfer: the group cannot finish together any more.
   */
  spoil(j: JobRun): void {
    if (this.failedBy || this.settled === this.members.length) return;
    this.failedBy = j;
    const why = new EngineError('ERR_GROUP', `${j.plan.label} of group ${this.name} failed`);
    for (const m of this.members) if (m !== j) m.abort.abort(why);
  }
}

export async function runJobs(config: RunConfig, logger: Logger): Promise<number> {
  const jc = config.jobs!;
  const notice = noticeLogger(logger);
  const say = (line: string) => {
    if (config.logFormat === 'json') logger.error(line);
    else process.stderr.write(`imageio-nbd: ${line}\n`);
  };
  let plans: Plan[];
  try {
    plans = await planJobs(jc, readJobList(jc.file));
  } catch (err) {
    say(err instanceof ImageioNbdError ? err.message : describeError(err));
    return 1;
  }
  return new JobsRun(config, jc, plans, logger, notice, say).run();
}

function readJobList(file: string): string {
  try {
    return fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read the job list ${file === '-' ? 'from stdin' : file}: ${(err as NodeJS.ErrnoException).code ?? describeError(err)}`);
  }
}

/** Check every job against the files it names and decide how it is copied; throws the first problem. */
async function planJobs(jc: JobsConfig, text: string): Promise<Plan[]> {
  const jobs = parseJobList(text, jc.file === '-' ? 'on stdin' : jc.file);
  return Promise.all(
    jobs.map(async (job, i): Promise<Plan> => {
      const n = i + 1;
      const fail = (why: string) => new ConfigError(`jobs ${job.where}: ${why}`);
      if (job.op === 'download') {
        const dir = path.dirname(path.resolve(job.dest));
        if (!fs.existsSync(dir)) throw fail(`directory ${dir} of ${job.dest} does not exist`);
        const tool = jc.copyWith ?? (job.destFormat === 'qcow2' ? 'qemu-img' : 'nbdcopy');
        if (tool === 'nbdcopy' && job.destFormat !== 'raw') throw fail('nbdcopy writes raw images only: use --copy-with qemu-img for --dest-format qcow2');
        return {
          n,
          job,
          label: `job ${n} (${job.where}, download ${job.diskId})`,
          spec: { disk: { id: job.diskId }, direction: 'download' },
          tool,
          argv: (uri) => (tool === 'nbdcopy' ? ['nbdcopy', uri, job.dest] : ['qemu-img', 'convert', '-f', 'raw', '-O', job.destFormat, uri, job.dest]),
        };
      }
      let info;
      try {
        info = await sourceInfo(job.src);
      } catch (err) {
        throw fail((err as Error).message);
      }
      if (info.format !== 'raw' && info.format !== 'qcow2') throw fail(`source ${job.src} is ${info.format}: expected raw or qcow2`);
      const tool = jc.copyWith ?? (info.format === 'qcow2' ? 'qemu-img' : 'nbdcopy');
      if (tool === 'nbdcopy' && info.format !== 'raw') throw fail(`source ${job.src} is qcow2, which nbdcopy cannot read: use --copy-with qemu-img (the default for qcow2)`);
      let spec: TransferSpec;
      if (job.diskId !== undefined) {
        spec = { disk: { id: job.diskId }, direction: 'upload' };
      } else {
        const storageDomain = job.storageDomain ?? jc.storageDomain;
        if (!storageDomain) throw fail('a new disk needs --storage-domain SD (on the job, or on the command line for every job)');
        const size = job.size ?? info.virtualSize;
        if (size < info.virtualSize) throw fail(`--size ${size} is smaller than source ${job.src} (${info.virtualSize} bytes)`);
        const format = job.diskFormat ?? 'raw';
        spec = { disk: { create: { storageDomain, size, format, sparse: format === 'cow' ? true : (job.sparse ?? false), name: job.diskName } }, direction: 'upload' };
      }
      const fmt = info.format;
      return {
        n,
        job,
        label: `job ${n} (${job.where}, upload ${path.basename(job.src)})`,
        spec,
        tool,
        size: info.virtualSize,
        argv: (uri) => (tool === 'nbdcopy' ? ['nbdcopy', '--flush', job.src, uri] : ['qemu-img', 'convert', '-n', '-f', fmt, '-O', 'raw', job.src, uri]),
      };
    }),
  );
}

class JobsRun {
  private client?: EngineClient;
  private slots?: HostSlots;
  private readonly runs: JobRun[];
  private readonly groups = new Map<string, Group>();
  private interrupted?: NodeJS.Signals;
  /** The payload pool every job shares (created once the number of jobs at once is known). */
  private pool?: PayloadPool;
  private readonly started = Date.now();
  private progress?: { stop(): void; breakLine(): void };

  constructor(
    private readonly config: RunConfig,
    private readonly jc: JobsConfig,
    plans: Plan[],
    private readonly logger: Logger,
    private readonly notice: Logger,
    private readonly say: (line: string) => void,
  ) {
    this.runs = plans.map((plan) => ({
      plan,
      state: 'waiting',
      abort: new AbortController(),
      host: '',
      transport: '',
      total: plan.size ?? 0,
      bytes: 0,
      attempts: 0,
      avoid: new Set(),
    }));
    for (const r of this.runs) {
      const g = r.plan.job.group;
      if (g === undefined) continue;
      if (!this.groups.has(g)) this.groups.set(g, new Group(g));
      this.groups.get(g)!.members.push(r);
    }
  }

  async run(): Promise<number> {
    const offSignals = this.onSignals();
    const progress = (this.progress = this.startProgress());
    try {
      try {
        this.client = await engineLogin(this.jc.settings, this.config, this.logger);
      } catch (err) {
        this.say(err instanceof ImageioNbdError ? err.message : describeError(err));
        return 1;
      }
      this.slots = new HostSlots(this.client, {
        perHost: this.jc.perHost,
        vdsmId: localVdsmId(),
        forced: this.jc.settings.host,
        onDecision: (line) => {
          this.progress?.breakLine();
          this.notice.info(line);
        },
      });
      // The command owns the process: every job's payloads share one pool. Its bound is a
      // --max-memory for each job of four hosts' worth (--per-host x 4) at most: how many
      // hosts there are is known only per decision, and more jobs at once share that bound.
      this.pool = new PayloadPool({ maxLiveBytes: this.config.maxMemory * Math.max(1, Math.min(this.runs.length, this.jc.perHost * 4)) });
      await Promise.all(this.runs.map((r) => this.runJob(r)));
    } finally {
      progress?.stop();
      offSignals();
      if (this.client) {
        await this.client.logout();
        await this.client.close();
      }
    }
    this.printTable();
    const failed = this.runs.filter((r) => r.state !== 'done').length;
    if (this.interrupted) this.say(`interrupted by ${this.interrupted}: ${failed} of ${this.runs.length} jobs did not complete`);
    return failed === 0 && !this.interrupted ? 0 : 1;
  }

  // ---- One job -------------------------------------------------------------------------

  private async runJob(r: JobRun): Promise<void> {
    const group = r.plan.job.group !== undefined ? this.groups.get(r.plan.job.group) : undefined;
    for (;;) {
      r.attempts++;
      const failure = await this.attempt(r);
      if (!failure) break;
      if (failure.retry && r.attempts <= this.jc.jobRetries && !r.abort.signal.aborted) {
        if (failure.hostId) r.avoid.add(failure.hostId);
        r.state = 'waiting';
        r.host = '';
        r.transport = '';
        this.sayJob(r, `${failure.line}; starting it again in a new disk${failure.hostId ? ', on another host if one is up' : ''} (try ${r.attempts + 1} of ${this.jc.jobRetries + 1})`, 'warn');
        continue;
      }
      this.ended(r, 'failed', failure.line);
      group?.arrive(r, false);
      return;
    }
    if (group) {
      r.state = 'copied';
      // A job waiting for its group does no imageio work, and holding its slot would deadlock
      // a group larger than the slots: the slot goes to the next job now. A job without a
      // group keeps it until finalized, so a host never has more than --per-host of ours.
      this.slots!.release(r.held!.slot);
      group.arrive(r, true);
      const ok = await group.decided;
      if (!ok) {
        const why = new EngineError('ERR_GROUP', `${group.failedBy!.plan.label} of group ${group.name} failed`);
        return this.failHeld(r, why);
      }
    }
    await this.finishHeld(r);
  }

  /** One try: undefined once the data is copied and flushed (r.held), or what failed and whether to try again. */
  private async attempt(r: JobRun): Promise<{ line: string; retry: boolean; hostId?: string } | undefined> {
    const abort = r.abort.signal;
    const lc = new TransferLifecycle({
      client: this.client!,
      settings: this.jc.settings,
      spec: r.plan.spec,
      logger: this.logger,
      notice: this.notice,
      abort,
      connectTimeoutMs: this.config.connectTimeoutMs,
      unixSocket: this.config.unixSocket,
    });
    let slot: Slot | undefined;
    let exp: JobExport | undefined;
    let monitor: { stop(): void } | undefined;
    let problem: EngineError | undefined;
    const copyAbort = new AbortController();
    const onAbort = () => copyAbort.abort(abort.reason);
    abort.addEventListener('abort', onAbort, { once: true });
    try {
      const disk = await lc.openDisk();
      r.diskId = disk.id;
      if (r.plan.spec.direction === 'download') r.total = disk.provisionedSize;
      slot = await this.slots!.acquire(disk, r.plan.label, r.avoid, abort);
      const target = await lc.startTransfer(slot.placement);
      r.host = lc.hostName;
      r.state = 'running';
      r.started ??= Date.now();
      monitor = lc.monitor((err) => {
        problem ??= err;
        copyAbort.abort(err);
        const g = r.plan.job.group;
        if (r.state === 'copied' && g !== undefined) this.groups.get(g)!.spoil(r);
      });
      exp = await JobExport.open({ config: this.config, pool: this.pool!, target, keepAliveMs: lc.keepAliveMs(this.config.keepAliveMs), readonly: r.plan.spec.direction === 'download', logger: this.logger });
      const e = exp;
      r.transport = e.transport();
      r.counter = () => e.bytes();
      lc.served = true;
      const res = await e.copy(r.plan.argv, copyAbort.signal, this.config.threads);
      r.bytes = e.bytes();
      r.counter = undefined;
      if (abort.aborted) throw abort.reason;
      if (problem) throw problem;
      if (res.status !== 0) throw new EngineError('ERR_TRANSFER', `${r.plan.tool} exited with status ${res.status}${res.lastError ? `: ${res.lastError}` : ''}`);
      if (res.dataLost) throw new EngineError('ERR_TRANSFER', 'written data could not be flushed to imageio');
      lc.complete = true;
      r.held = { lc, exp: e, monitor, slot, problem: () => problem };
      return undefined;
    } catch (err) {
      if (r.counter) r.bytes = r.counter();
      r.counter = undefined;
      monitor?.stop();
      if (exp) await exp.close();
      const line = await lc.fail(err);
      if (slot) this.slots!.release(slot);
      return { line, retry: lc.createdDiskId !== undefined && !abort.aborted, hostId: lc.transfer?.hostId };
    } finally {
      abort.removeEventListener('abort', onAbort);
    }
  }

  /** Close the export, then finalize (or fail, if the engine ended the transfer meanwhile). */
  private async finishHeld(r: JobRun): Promise<void> {
    const h = r.held!;
    r.state = 'finalizing';
    h.monitor.stop();
    const lost = await h.exp.close();
    const problem = lost ? new EngineError('ERR_TRANSFER', 'written data could not be flushed to imageio') : h.problem();
    if (problem) {
      h.lc.complete = false;
      const line = await h.lc.fail(problem);
      this.slots!.release(h.slot);
      return this.ended(r, 'failed', line);
    }
    const out = await h.lc.finish();
    this.slots!.release(h.slot);
    if (out.ok) this.ended(r, 'done');
    else this.ended(r, 'failed', out.line);
  }

  private async failHeld(r: JobRun, why: EngineError): Promise<void> {
    const h = r.held!;
    h.monitor.stop();
    await h.exp.close();
    // Its own transfer's end, when that is what spoiled the group.
    const line = await h.lc.fail(h.problem() ?? why);
    this.slots!.release(h.slot);
    this.ended(r, 'failed', line);
  }

  private ended(r: JobRun, state: 'done' | 'failed', line?: string): void {
    r.state = state;
    r.ended = Date.now();
    r.held = undefined;
    if (line) {
      r.line = line;
      this.sayJob(r, line, 'error');
    }
  }

  private sayJob(r: JobRun, line: string, level: 'warn' | 'error'): void {
    this.progress?.breakLine();
    if (this.config.logFormat === 'json') this.logger[level]({ job: r.plan.n, where: r.plan.job.where, disk: r.diskId }, `${r.plan.label}: ${line}`);
    else process.stderr.write(`imageio-nbd: ${r.plan.label}: ${line}\n`);
  }

  // ---- Signals -------------------------------------------------------------------------

  /** The job runner's signal handling (through the command's one signal owner); returns the function that ends it. */
  private onSignals(): () => void {
    const onSignal = (sig: NodeJS.Signals) => {
      if (this.interrupted === undefined) {
        this.interrupted = sig;
        for (const r of this.runs) r.abort.abort(new Interrupted(sig));
        return;
      }
      const open = this.runs.filter((r) => r.state !== 'done' && r.state !== 'failed');
      process.stderr.write(`imageio-nbd: second ${sig}, exiting without cleaning up: ${open.length} transfers may be left open in the engine\n`);
      process.exit(signalStatus(sig));
    };
    return processSignals().subscribe(onSignal);
  }

  // ---- Progress and outcome --------------------------------------------------------------

  private bytesOf(r: JobRun): number {
    return r.counter ? r.counter() : r.bytes;
  }

  /** Every --progress seconds (and every second on a terminal): one line for the whole set. */
  private startProgress(): { stop(): void; breakLine(): void } | undefined {
    const json = this.config.logFormat === 'json';
    const tty = !json && process.stderr.isTTY === true;
    const interval = this.config.progress ?? (tty ? 1 : undefined);
    if (interval === undefined) return undefined;
    const report = (final: boolean): ProgressReport => {
      const done = this.runs.reduce((s, r) => s + this.bytesOf(r), 0);
      const total = this.runs.reduce((s, r) => s + r.total, 0);
      const elapsed = (Date.now() - this.started) / 1000;
      const rate = elapsed > 0 ? done / elapsed : 0;
      const eta = rate > 0 && total > done ? (total - done) / rate : 0;
      const hosts: Record<string, { running: number; done: number; failed: number }> = {};
      for (const r of this.runs) {
        if (!r.host) continue;
        const h = (hosts[r.host] ??= { running: 0, done: 0, failed: 0 });
        if (r.state === 'done') h.done++;
        else if (r.state === 'failed') h.failed++;
        else h.running++;
      }
      const waiting = this.runs.filter((r) => r.state === 'waiting').length;
      const perHost = Object.entries(hosts)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([name, h]) => `${name} ${h.running}/${h.done}/${h.failed}`)
        .join(', ');
      return {
        text: `jobs: ${formatSize(done)} of ${formatSize(total)}, ${formatSize(rate)}/s, ETA ${done > 0 && !final ? formatDuration(eta) : '-'}; running/done/failed: ${perHost || 'none yet'}; ${waiting} waiting`,
        message: 'jobs progress',
        fields: {
          progress: { final, bytesDone: done, bytesTotal: total, bytesPerSecond: Math.round(rate), etaSeconds: Math.round(eta), elapsedSeconds: Number(elapsed.toFixed(3)), waiting, hosts },
        },
      };
    };
    const line = new ProgressLine({ intervalMs: interval * 1000, format: json ? 'json' : 'pretty', tty, report });
    line.start();
    return { stop: () => line.finish(), breakLine: () => line.breakLine() };
  }

  /** The outcome of every job: a table on stdout, or one JSON record per job with --log-format json. */
  private printTable(): void {
    const rows = this.runs.map((r) => {
      const secs = r.started !== undefined ? ((r.ended ?? Date.now()) - r.started) / 1000 : 0;
      return {
        job: r.plan.n,
        where: r.plan.job.where,
        op: r.plan.job.op,
        group: r.plan.job.group,
        host: r.host,
        transport: r.transport,
        bytes: r.bytes,
        seconds: Number(secs.toFixed(3)),
        bytesPerSecond: secs > 0 ? Math.round(r.bytes / secs) : 0,
        outcome: r.state === 'done' ? 'ok' : 'failed',
        attempts: r.attempts,
        diskId: r.state === 'done' ? r.diskId : undefined,
        error: r.line,
      };
    });
    // The whole run: this process's own CPU and peak RSS (not the copying programs').
    const ru = process.resourceUsage();
    const wall = (Date.now() - this.started) / 1000;
    const bytes = rows.reduce((n, x) => n + x.bytes, 0);
    const summary = {
      jobs: rows.length,
      ok: rows.filter((x) => x.outcome === 'ok').length,
      failed: rows.filter((x) => x.outcome !== 'ok').length,
      bytes,
      seconds: Number(wall.toFixed(3)),
      bytesPerSecond: wall > 0 ? Math.round(bytes / wall) : 0,
      cpuSeconds: Number(((ru.userCPUTime + ru.systemCPUTime) / 1e6).toFixed(3)),
      peakRssMiB: Number((ru.maxRSS / 1024).toFixed(1)),
    };
    if (this.config.logFormat === 'json') {
      for (const row of rows) process.stdout.write(`${JSON.stringify(row)}\n`);
      process.stdout.write(`${JSON.stringify({ summary })}\n`);
      return;
    }
    const table = [
      ['job', 'host', 'transport', 'bytes', 'time', 'rate', 'outcome', 'disk id'],
      ...rows.map((x) => [
        `${x.job} (${x.where})`,
        x.host || '-',
        x.transport || '-',
        formatSize(x.bytes),
        formatDuration(x.seconds),
        `${formatSize(x.bytesPerSecond)}/s`,
        x.outcome + (x.attempts > 1 ? ` (${x.attempts} tries)` : ''),
        x.diskId ?? '-',
      ]),
    ];
    const widths = table[0].map((_, c) => Math.max(...table.map((row) => row[c].length)));
    process.stdout.write(table.map((row) => row.map((cell, c) => (c === row.length - 1 ? cell : cell.padEnd(widths[c]))).join('  ')).join('\n') + '\n');
    process.stdout.write(
      `total: ${summary.ok} of ${summary.jobs} jobs ok, ${formatSize(bytes)} in ${formatDuration(wall)}, ${formatSize(summary.bytesPerSecond)}/s; ` +
        `imageio-nbd: ${summary.cpuSeconds.toFixed(2)} s CPU, peak RSS ${summary.peakRssMiB} MiB\n`,
    );
  }
}
