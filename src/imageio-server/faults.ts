/**
 * Deterministic fault injection for tests: rules matched against each request at the point
 * where the server is about to perform the operation (after validation and authorization).
 */

export type FaultMethod = 'OPTIONS' | 'GET' | 'PUT' | 'PATCH';
/** zero/flush are PATCH ops; read/extents are GET ops; write is PUT; options is OPTIONS. */
export type FaultOp = 'zero' | 'flush' | 'read' | 'extents' | 'write' | 'options';

export type FaultAction =
  /** Respond with this status (body default: imageio's 500 text) without performing the op; the body is drained. */
  | { status: number; body?: string }
  /** Destroy the socket: before handling, after part of the body (or, for GET, part of the response), or after the op but before responding. */
  | { drop: 'before' | 'mid-body' | 'after' }
  /** Wait this long, then handle the request normally. */
  | { delayMs: number };

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

export class FaultInjector {
  private rules: ActiveRule[] = [];
  private appliedCount = 0;

  add(rule: FaultRule): void {
    validateRule(rule);
    this.rules.push({ rule, seen: 0 });
  }

  clear(): void {
    this.rules = [];
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
    if (action) this.appliedCount++;
    return action;
  }
}

function validateRule(rule: FaultRule): void {
  const a = rule?.action as Partial<{ status: unknown; drop: unknown; delayMs: unknown }> | undefined;
  if (!a || typeof a !== 'object') throw new TypeError('fault rule needs an action');
  const ok =
    (typeof a.status === 'number' && a.status >= 100 && a.status <= 599) ||
    a.drop === 'before' ||
    a.drop === 'mid-body' ||
    a.drop === 'after' ||
    (typeof a.delayMs === 'number' && a.delayMs >= 0);
  if (!ok) throw new TypeError(`invalid fault action ${JSON.stringify(a)}`);
}
