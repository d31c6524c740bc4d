/** The signal owner: handlers installed while someone listens, every subscriber told, counted. */
import { EventEmitter } from 'node:events';
import { SignalHub, signalStatus } from '../../../src/cli/signals';

test('installs the process handlers with the first subscriber, removes them with the last, counts signals', () => {
  const emitter = new EventEmitter();
  const hub = new SignalHub(emitter as unknown as ConstructorParameters<typeof SignalHub>[0]);
  expect(emitter.listenerCount('SIGINT')).toBe(0);
  const a: string[] = [];
  const b: string[] = [];
  const offA = hub.subscribe((sig, n) => a.push(`${sig}#${n}`));
  const offB = hub.subscribe((sig, n) => b.push(`${sig}#${n}`));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGQUIT']) expect(emitter.listenerCount(sig)).toBe(1);
  emitter.emit('SIGINT', 'SIGINT');
  emitter.emit('SIGTERM', 'SIGTERM');
  expect(a).toEqual(['SIGINT#1', 'SIGTERM#2']);
  expect(b).toEqual(a);
  offA();
  offA();
  expect(emitter.listenerCount('SIGINT')).toBe(1);
  offB();
  expect(emitter.listenerCount('SIGINT')).toBe(0);
  // A new listener starts counting afresh.
  const c: number[] = [];
  const offC = hub.subscribe((_sig, n) => c.push(n));
  emitter.emit('SIGQUIT', 'SIGQUIT');
  expect(c).toEqual([1]);
  offC();
});

test('128 + N, as a shell reports a process killed by the signal', () => {
  expect(signalStatus('SIGINT')).toBe(130);
  expect(signalStatus('SIGTERM')).toBe(143);
  expect(signalStatus('SIGQUIT')).toBe(131);
});
