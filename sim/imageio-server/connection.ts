/**
 * Per-connection state, keyed by socket: its own file handle (opened on the first authorized
 * request, closed with the connection), its stats, the queue that runs its requests strictly one
 * after another (Node's parser hands over pipelined requests early), and its idle timer.
 */
import type { Socket } from 'node:net';
import type { FileHandle } from 'node:fs/promises';
import { ImageioConnectionStats } from './stats';
import type { ImageFile } from './image-file';

export class Connection {
  private handle?: Promise<FileHandle>;
  private tail: Promise<void> = Promise.resolve();
  private idleTimer?: NodeJS.Timeout;
  /** Requests received and not yet finished (queued or running). */
  inFlight = 0;
  closed = false;
  /** The client half-closed before a request body was complete. */
  shortBody = false;
  /** Set while a request is reading its body: called when the client half-closes too early. */
  onShortBody?: () => void;

  constructor(
    readonly socket: Socket,
    readonly stats: ImageioConnectionStats,
    private readonly idleTimeoutMs: number,
  ) {
    this.armIdle();
  }

  /** Run `fn` after every earlier request on this connection has finished. */
  enqueue(fn: () => Promise<void>): void {
    this.inFlight++;
    this.stopIdle();
    const run = this.tail.then(fn).catch(() => undefined);
    this.tail = run.then(() => {
      this.inFlight--;
      if (this.inFlight === 0) this.armIdle();
    });
  }

  /** This connection's file handle, opened on first use. */
  fileHandle(image: ImageFile): Promise<FileHandle> {
    this.handle ??= image.openHandle();
    return this.handle;
  }

  private armIdle(): void {
    this.stopIdle();
    if (this.closed || this.idleTimeoutMs <= 0) return;
    this.idleTimer = setTimeout(() => this.destroy('idle'), this.idleTimeoutMs);
    this.idleTimer.unref();
  }

  private stopIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /** Close the socket now, remembering why (first reason wins). */
  destroy(reason: NonNullable<ImageioConnectionStats['closedBy']>): void {
    this.stats.closedBy ??= reason;
    this.socket.destroy();
  }

  /** Called once the socket closed: release the file handle after running requests finish. */
  onClosed(): Promise<void> {
    this.closed = true;
    this.stopIdle();
    this.stats.open = false;
    this.stats.closedAt = Date.now();
    this.stats.closedBy ??= 'client';
    // After the requests still running: one of them (say a stalled op) may open the handle yet.
    return this.tail.then(async () => {
      const handle = this.handle;
      if (handle) await (await handle.catch(() => undefined))?.close().catch(() => undefined);
    });
  }
}
