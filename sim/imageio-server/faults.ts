/**
 * Fault injection for tests and benchmarks, applied at the point where the server is about to
 * perform an operation (after validation and authorization):
 * - rules, matched deterministically by count (the first matching rule in the window wins);
 * - a seeded random mode (setRandom) drawing stalls, error statuses and drops for requests no
 *   rule took, for model-based tests: the same seed gives the same sequence of draws;
 * - a fixed latency (setLatency) added to every data request's response.
 */
import { prng } from '../sparse-image';

export type FaultMethod = 'OPTIONS' | 'GET' | 'PUT' | 'PATCH';
/** zero/flush are PATCH ops; read/extents are GET ops; write is PUT; options is OPTIONS. */
export type FaultOp = 'zero' | 'flush' | 'read' | 'extents' | 'write' | 'options';

export type FaultAction =
  /** Respond with this status (body default: imageio's 500 text) without performing the op; the body is drained. */
  | { status: number; body?: string }
  /** Destroy the socket: before handling, after part of the body (or, for GET, part of the response), or after the op but before responding. */
  | { drop: 'before' | 'mid-body' | 'after' }
  /** Wait this long, then handle the request normally (a PUT body is read after the wait). */
  | { delayMs: number }
  /**
   * A storage stall: receive the whole request first, wait this long, then perform the op even
   * if the client has gone meanwhile, then answer. The op lands after the client gave up on it.
   */
  | { stallMs: number };

export interface FaultRule {
  method?: FaultMethod;
  op?: FaultOp;
  /** Skip the first N matching requests (default 0). */
  after?: number;
  /** Apply to this many matches (default 1; Infinity = always). */
  times?: number;
  action: FaultAction;
}

interface ActiveRule {
  rule: FaultRule;
  seen: number;
}

/** Ops that move data or state: what latency and the random mode apply to by default. */
export const DATA_OPS: readonly FaultOp[] = ['read', 'write', 'zero', 'flush'];

/** Seeded random faults: each request no rule took draws, in this order, a drop, an error, a delay. */
export interface RandomFaults {
  seed: number;
  /** Ops drawn for (default DATA_OPS). */
  ops?: FaultOp[];
  /** Probability of a stall: the request is received, then the op is performed late (it still succeeds). */
  delayProbability?: number;
  /** Stall range in ms, inclusive (default [0, 1000]). */
  delayMs?: [number, number];
  /** Probability of an error status without performing the op. */
  errorProbability?: number;
  /** Status for errors (default 500). */
  errorStatus?: number;
  /** Probability of a dropped socket, at a random point (before, mid-body, after). */
  dropProbability?: number;
}

export class FaultInjector {
  private rules: ActiveRule[] = [];
  private appliedCount = 0;
  private latencyMs = 0;
  private latencyOps: ReadonlySet<FaultOp> = new Set(DATA_OPS);
  private random?: { opts: RandomFaults; ops: ReadonlySet<FaultOp>; next: () => number };

  add(rule: FaultRule): void {
    validateRule(rule);
    this.rules.push({ rule, seen: 0 });
  }

  /** Remove every rule and the random mode (latency stays: it is configuration, not a fault). */
  clear(): void {
    this.rules = [];
    this.random = undefined;
  }

  /** Delay the response of every request doing one of `ops` by `ms` (0: none). */
  setLatency(ms: number, ops: readonly FaultOp[] = DATA_OPS): void {
    if (!Number.isFinite(ms) || ms < 0) throw new TypeError(`invalid latency ${ms}`);
    this.latencyMs = ms;
    this.latencyOps = new Set(ops);
  }

  /** The response delay for this op. */
  latency(op: FaultOp): number {
    return this.latencyOps.has(op) ? this.latencyMs : 0;
  }

  /** Start (or restart, with its seed) the random mode. */
  setRandom(opts: RandomFaults): void {
    const p = (v: number | undefined) => {
      if (v !== undefined && !(v >= 0 && v <= 1)) throw new TypeError(`invalid probability ${v}`);
    };
    p(opts.delayProbability);
    p(opts.errorProbability);
    p(opts.dropProbability);
    const [lo, hi] = opts.delayMs ?? [0, 1000];
    if (!(lo >= 0 && hi >= lo)) throw new TypeError(`invalid delay range ${JSON.stringify(opts.delayMs)}`);
    this.random = { opts, ops: new Set(opts.ops ?? DATA_OPS), next: prng(opts.seed) };
  }

  /** How many faults fired so far. */
  get applied(): number {
    return this.appliedCount;
  }

  /**
   * Count this request against every matching rule; return the action of the first rule
   * (in the order added) whose window [after, after+times) holds it.
   */
  match(method: FaultMethod, op: FaultOp): FaultAction | undefined {
    let action: FaultAction | undefined;
    for (const r of this.rules) {
      if (r.rule.method !== undefined && r.rule.method !== method) continue;
      if (r.rule.op !== undefined && r.rule.op !== op) continue;
      const n = r.seen++;
      const after = r.rule.after ?? 0;
      const times = r.rule.times ?? 1;
      if (action === undefined && n >= after && n - after < times) action = r.rule.action;
    }
    if (!action && this.random?.ops.has(op)) action = this.draw(this.random.opts, this.random.next);
    if (action) this.appliedCount++;
    return action;
  }

  private draw(o: RandomFaults, next: () => number): FaultAction | undefined {
    // Always three draws, so one request's outcome does not shift the sequence of the next.
    const drop = next();
    const error = next();
    const delay = next();
    if (drop < (o.dropProbability ?? 0)) {
      const where = (['before', 'mid-body', 'after'] as const)[Math.floor((drop / o.dropProbability!) * 3) % 3];
      return { drop: where };
    }
    if (error < (o.errorProbability ?? 0)) return { status: o.errorStatus ?? 500 };
    if (delay < (o.delayProbability ?? 0)) {
      const [lo, hi] = o.delayMs ?? [0, 1000];
      return { stallMs: Math.round(lo + (delay / o.delayProbability!) * (hi - lo)) };
    }
    return undefined;
  }
}

function validateRule(rule: FaultRule): void {
  const a = rule?.action as Partial<{ status: unknown; drop: unknown; delayMs: unknown; stallMs: unknown }> | undefined;
  if (!a || typeof a !== 'object') throw new TypeError('fault rule needs an action');
  const ok =
    (typeof a.status === 'number' && a.status >= 100 && a.status <= 599) ||
    a.drop === 'before' ||
    a.drop === 'mid-body' ||
    a.drop === 'after' ||
    (typeof a.delayMs === 'number' && a.delayMs >= 0) ||
    (typeof a.stallMs === 'number' && a.stallMs >= 0);
  if (!ok) throw new TypeError(`invalid fault action ${JSON.stringify(a)}`);
}
