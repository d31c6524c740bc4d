/**
 * The one owner of the process's stop signals (SIGINT, SIGTERM, SIGQUIT): nothing else in the
 * command calls process.on for them. Whoever needs to react subscribes; every subscriber hears
 * every signal, with how many have arrived while someone listened (a second one means "now").
 *
 * The process handlers are installed while at least one subscriber listens and removed with the
 * last one, so that before anything subscribes (opening the export, which may wait on retries)
 * a signal keeps its default action: the process ends at once.
 */
import { constants } from 'node:os';

/** The signals that ask the command to stop; nbdkit treats all three alike. */
export const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGQUIT'] as const;
export type StopSignal = (typeof STOP_SIGNALS)[number];

/** Told of each stop signal: which, and the how-many-th since someone listened (1, 2, ...). */
export type SignalHandler = (sig: NodeJS.Signals, count: number) => void;

/** What a subscriber needs; sim/ takes the same shape without importing this file. */
export interface SignalSource {
  /** Starts telling `handler`; returns the function that stops it. */
  subscribe(handler: SignalHandler): () => void;
}

/** Where signals come from: `process`, or a fake in tests. */
export interface SignalEmitter {
  on(sig: NodeJS.Signals, fn: (sig: NodeJS.Signals) => void): unknown;
  off(sig: NodeJS.Signals, fn: (sig: NodeJS.Signals) => void): unknown;
}

export class SignalHub implements SignalSource {
  private readonly handlers: SignalHandler[] = [];
  private count = 0;
  private readonly dispatch = (sig: NodeJS.Signals) => {
    const n = ++this.count;
    // A copy: a handler may unsubscribe (or subscribe another) while being told.
    for (const h of [...this.handlers]) h(sig, n);
  };

  constructor(private readonly emitter: SignalEmitter) {}

  subscribe(handler: SignalHandler): () => void {
    if (this.handlers.length === 0) {
      this.count = 0;
      for (const sig of STOP_SIGNALS) this.emitter.on(sig, this.dispatch);
    }
    this.handlers.push(handler);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.handlers.splice(this.handlers.indexOf(handler), 1);
      if (this.handlers.length === 0) for (const sig of STOP_SIGNALS) this.emitter.off(sig, this.dispatch);
    };
  }
}

let forProcess: SignalHub | undefined;

/** The hub of this process's own signals (there is one process, so one hub). */
export function processSignals(): SignalHub {
  return (forProcess ??= new SignalHub(process));
}

/** 128 + the signal's number: the exit status a shell reports for a process killed by it. */
export function signalStatus(sig: NodeJS.Signals): number {
  return 128 + ((constants.signals as Record<string, number | undefined>)[sig] ?? 15);
}
