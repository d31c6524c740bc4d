/**
 * Where each of many transfers runs, and when: the placement of src/engine/placement.ts
 * extended to a run of many transfers (--jobs), following imageio's advice to backup vendors:
 * find the hosts that see the disk's storage domain, balance the transfers over them, count
 * what each one runs already, prefer the local host (imageio's unix socket).
 *
 * - Candidates: the up hosts of the data center of the disk's storage domain, asked again at
 *   every decision (a host that went down is no longer chosen), minus the hosts a retried job
 *   failed on (unless no other host is up).
 * - A host's load: our transfers on it that are still copying, plus the engine's other busy
 *   transfers (initializing or transferring) on it when this user may list transfers (an admin
 *   query). At most `perHost` at a time: a job waits for a free slot rather than overloading a
 *   host; a slot frees when one of ours ends (the caller releases it once the transfer was
 *   finalized or ended), or, for others' transfers, at the next look (every `recheckMs`).
 * - Choice: the local host if it has a free slot, else the least loaded, at random among equals.
 * - No host information (the user sees no host or data center): no host is sent, the engine
 *   chooses (as placement.ts does), and at most `perHost` of our transfers run at a time.
 * - --host NAME: every transfer on that host, `perHost` at a time.
 * Decisions are taken one at a time, in the order asked, and each is one line (`onDecision`).
 */
import type { Disk, Host, ImageTransfer } from './api-types';
import { activeTransfersPerHost, findDataCenter, pickLeastLoaded, reasonOf, searchValue, type Placement, type PlacementQueries } from './placement';

export interface HostSlotsOptions {
  perHost: number;
  vdsmId?: string;
  forced?: string;
  random?: () => number;
  /** How often a waiting job looks again for slots taken by others' transfers, ms (default 1000). */
  recheckMs?: number;
  onDecision(line: string): void;
}

/** A slot on a host (or in the engine's choice) held by one transfer. */
export interface Slot {
  placement: Placement;
  /** Host id, or '' for the engine's choice. */
  key: string;
  released: boolean;
}

class Cancelled extends Error {}

export class HostSlots {
  /** Our slots per host id ('' for the engine's choice). */
  private readonly ours = new Map<string, number>();
  /** Our disks: their transfers are ours, not counted again as others' (also before we learn the transfer's id). */
  private readonly ourDisks = new Set<string>();
  private queue: Promise<unknown> = Promise.resolve();
  private wake?: () => void;

  constructor(
    private readonly q: PlacementQueries,
    private readonly opts: HostSlotsOptions,
  ) {}

  /** Our transfers per host id now. */
  inUse(): ReadonlyMap<string, number> {
    return this.ours;
  }


  release(slot: Slot): void {
    if (slot.released) return;
    slot.released = true;
    this.ours.set(slot.key, (this.ours.get(slot.key) ?? 1) - 1);
    this.wake?.();
  }

  /**
   * Wait for a slot for a transfer of `disk`; `label` names the job in the decision line,
   * `avoid` are host ids to leave out if another host is up. Rejects with abort's reason.
   */
  acquire(disk: Disk, label: string, avoid: ReadonlySet<string>, abort: AbortSignal): Promise<Slot> {
    this.ourDisks.add(disk.id);
    const turn = this.queue.then(() => this.decide(disk, label, avoid, abort));
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  private async decide(disk: Disk, label: string, avoid: ReadonlySet<string>, abort: AbortSignal): Promise<Slot> {
    let toldWaiting = false;
    for (;;) {
      if (abort.aborted) throw abort.reason;
      const view = await this.look(disk, avoid);
      if (view.kind === 'engine') {
        if ((this.ours.get('') ?? 0) < this.opts.perHost) {
          this.opts.onDecision(`${label}: no host chosen, the engine picks one: ${view.reason}`);
          return this.take('', { local: false, line: view.reason });
        }
      } else {
        const free = view.hosts.filter((h) => view.load(h) < this.opts.perHost);
        const local = view.local && free.find((h) => h.id === view.local!.id);
        if (local) {
          this.opts.onDecision(`${label}: ${local.name}: this machine (vdsm id ${this.opts.vdsmId}), ${this.loadText(view, local)}, chosen`);
          return this.take(local.id, { host: local, local: true, line: '' });
        }
        if (free.length > 0) {
          const { host, tied } = pickLeastLoaded(free, view.load, this.opts.random);
          const rest = view.hosts.filter((h) => h !== host).map((h) => `${h.name}: ${view.load(h)}`);
          const why = this.opts.forced !== undefined ? 'chosen by --host' : rest.length ? `chosen over ${rest.join(', ')}${tied > 1 ? ' (ties broken at random)' : ''}` : 'the only candidate';
          this.opts.onDecision(`${label}: ${host.name}: ${this.loadText(view, host)}, ${why}`);
          return this.take(host.id, { host, local: false, line: '' });
        }
        if (!toldWaiting) {
          toldWaiting = true;
          this.opts.onDecision(`${label}: waiting for a free slot: ${view.hosts.map((h) => `${h.name}: ${view.load(h)}`).join(', ')} of ${this.opts.perHost} (--per-host)`);
        }
      }
      await this.waitForChange(abort);
    }
  }

  private loadText(view: HostView, h: Host): string {
    const ours = this.ours.get(h.id) ?? 0;
    const all = view.load(h);
    const n = (k: number) => `${k} active transfer${k === 1 ? '' : 's'}`;
    return view.others ? `${n(all)} (${ours} of ours)` : `${n(ours)} of ours (others not visible to this user)`;
  }

  private take(key: string, placement: Placement): Slot {
    this.ours.set(key, (this.ours.get(key) ?? 0) + 1);
    return { placement, key, released: false };
  }

  /** Until a slot of ours frees, or `recheckMs` passed (others' transfers may have ended). */
  private waitForChange(abort: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        abort.removeEventListener('abort', onAbort);
        this.wake = undefined;
      };
      const onAbort = () => {
        done();
        reject(abort.reason instanceof Error ? abort.reason : new Cancelled('aborted'));
      };
      const timer = setTimeout(() => {
        done();
        resolve();
      }, this.opts.recheckMs ?? 1000);
      this.wake = () => {
        done();
        resolve();
      };
      abort.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** The candidate hosts and their load now, or why the engine must choose. */
  private async look(disk: Disk, avoid: ReadonlySet<string>): Promise<HostView | { kind: 'engine'; reason: string }> {
    let dcName: string;
    try {
      dcName = (await findDataCenter(this.q, disk)).name;
    } catch (err) {
      return { kind: 'engine', reason: `cannot find the data center of disk ${disk.id} (${reasonOf(err)})` };
    }
    const inDc = `datacenter=${searchValue(dcName)} and status=up`;
    let hosts: Host[];
    try {
      hosts = (await this.q.listHosts(inDc)).filter((h) => h.status === 'up');
    } catch (err) {
      return { kind: 'engine', reason: `cannot list the hosts of data center ${dcName} (${reasonOf(err)})` };
    }
    if (this.opts.forced !== undefined) {
      const f = hosts.find((h) => h.name === this.opts.forced);
      // --host names a host that is not up (any more): wait for it, as for a full host.
      hosts = f ? [f] : [];
    } else {
      if (hosts.length === 0) return { kind: 'engine', reason: `this user sees no up host in data center ${dcName}` };
      const kept = hosts.filter((h) => !avoid.has(h.id));
      if (kept.length > 0) hosts = kept;
    }
    let local: Host | undefined;
    if (this.opts.vdsmId !== undefined) {
      try {
        local = (await this.q.listHosts(`hw_id=${searchValue(this.opts.vdsmId)} and ${inDc}`)).find((h) => h.status === 'up' && hosts.some((c) => c.id === h.id));
      } catch {
        /* not found this way: choose among the others */
      }
    }
    let others = new Map<string, number>();
    let seesOthers = false;
    try {
      const all: ImageTransfer[] = await this.q.listTransfers();
      others = activeTransfersPerHost(all.filter((t) => !(t.diskId && this.ourDisks.has(t.diskId))));
      seesOthers = true;
    } catch {
      /* an ordinary user: count ours only */
    }
    return {
      kind: 'hosts',
      hosts,
      local,
      others: seesOthers,
      load: (h: Host) => (this.ours.get(h.id) ?? 0) + (others.get(h.id) ?? 0),
    };
  }
}

interface HostView {
  kind: 'hosts';
  hosts: Host[];
  local?: Host;
  /** Others' transfers are counted. */
  others: boolean;
  load(h: Host): number;
}
