/**
 * The one ticket this server serves, with imageio's authorization rules: unknown id, cancelled,
 * expired (timeout seconds after install or after the last completed operation), or an op the
 * ticket does not allow, all give 403 and close the connection.
 */
import { forbidden } from './http-errors';

export type TicketOp = 'read' | 'write';

export interface TicketOptions {
  id: string;
  size: number;
  ops: TicketOp[];
  timeoutS: number;
  transferId?: string;
}

export class Ticket {
  readonly id: string;
  readonly size: number;
  readonly ops: TicketOp[];
  readonly transferId: string;
  private readonly timeoutMs: number;
  private expiresAt: number;
  private canceled = false;
  private ongoing = 0;

  constructor(opts: TicketOptions) {
    this.id = opts.id;
    this.size = opts.size;
    this.ops = opts.ops;
    this.timeoutMs = opts.timeoutS * 1000;
    // Engines before 4.2.7 sent no transfer id; imageio then derives one from the uuid.
    this.transferId = opts.transferId ?? `(ticket/${opts.id.slice(0, 18)})`;
    this.expiresAt = Date.now() + this.timeoutMs;
  }

  /** "write" implies "read". */
  may(op: TicketOp): boolean {
    return op === 'read' ? this.ops.includes('read') || this.ops.includes('write') : this.ops.includes(op);
  }

  /** Throws 403 unless `ticketId` names this ticket and it allows `op` now. */
  authorize(ticketId: string, op: TicketOp): Ticket {
    if (ticketId !== this.id) throw forbidden(`No such ticket ${ticketId}`);
    if (this.canceled) throw forbidden(`Transfer=${this.transferId} was canceled`);
    if (this.expiresAt <= Date.now()) throw forbidden(`Transfer=${this.transferId} expired`);
    if (!this.may(op)) throw forbidden(`Transfer=${this.transferId} forbids ${op}`);
    return this;
  }

  /** Extend the ticket after client activity (imageio's touch()). */
  touch(): void {
    if (this.expiresAt > Date.now()) this.expiresAt = Date.now() + this.timeoutMs;
  }

  /** Run an operation bound to the ticket: a cancel during it gives 403 at the end. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.canceled) throw forbidden(`Transfer=${this.transferId} was canceled`);
    this.ongoing++;
    try {
      const r = await fn();
      if (this.canceled) throw forbidden(`Transfer=${this.transferId} was canceled`);
      this.touch();
      return r;
    } finally {
      this.ongoing--;
    }
  }

  get active(): boolean {
    return this.ongoing > 0;
  }

  get isCanceled(): boolean {
    return this.canceled;
  }

  expire(): void {
    this.expiresAt = 0;
  }

  cancel(): void {
    this.canceled = true;
  }
}
