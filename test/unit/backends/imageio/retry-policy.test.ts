/**
 * The retry policy, one test per row of its table (src/backends/imageio/retry-policy.ts).
 */
import { decideRetry, retryDelayMs, type Decision, type Outcome, type RequestClass } from '../../../../src/backends/imageio/retry-policy';

const notSent: Outcome = { kind: 'not-sent' };
const s500: Outcome = { kind: 'status', status: 500, complete: true };
const s500cut: Outcome = { kind: 'status', status: 500, complete: false };
const s403: Outcome = { kind: 'status', status: 403, complete: true };
const s416: Outcome = { kind: 'status', status: 416, complete: true };
const s200: Outcome = { kind: 'status', status: 200, complete: true };
const timeout: Outcome = { kind: 'timeout' };
const lost: Outcome = { kind: 'lost' };
const bad: Outcome = { kind: 'bad-response' };
const tls: Outcome = { kind: 'tls-verify' };

const rows: Array<[RequestClass, string, Outcome, boolean, Decision]> = [
  // Reads change nothing: retried after anything but an answer about the request itself.
  ['read', 'not sent', notSent, true, 'retry'],
  ['read', '500', s500, true, 'retry'],
  ['read', '500 cut short', s500cut, true, 'retry'],
  ['read', '403', s403, true, 'fail'],
  ['read', 'unexpected 200', s200, true, 'fail'],
  ['read', 'timeout', timeout, true, 'retry'],
  ['read', 'connection lost', lost, true, 'retry'],
  ['read', 'bad response', bad, true, 'fail'],
  ['read', 'TLS verification', tls, true, 'fail'],
  // Writes: repeated only when the server provably did not and will not act on them.
  ['write', 'not sent', notSent, true, 'retry'],
  ['write', 'complete 500', s500, true, 'retry'],
  ['write', 'complete 500, dirty connection', s500, false, 'retry'],
  ['write', '500 cut short', s500cut, true, 'fail-unknown'],
  ['write', '416', s416, true, 'fail'],
  ['write', '403', s403, true, 'fail'],
  ['write', 'unexpected 200', s200, true, 'fail-unknown'],
  ['write', 'timeout', timeout, true, 'fail-unknown'],
  ['write', 'connection lost after sending', lost, true, 'fail-unknown'],
  ['write', 'bad response', bad, true, 'fail-unknown'],
  ['write', 'TLS verification', tls, true, 'fail'],
  // Flush: harmless to repeat on a clean connection; data loss on a dirty one.
  ['flush', 'not sent, clean', notSent, true, 'retry'],
  ['flush', 'not sent, dirty', notSent, false, 'data-loss'],
  ['flush', '500, clean', s500, true, 'retry'],
  ['flush', '500, dirty', s500, false, 'data-loss'],
  ['flush', '500 cut, dirty', s500cut, false, 'data-loss'],
  ['flush', '403, clean', s403, true, 'fail'],
  ['flush', '403, dirty', s403, false, 'data-loss'],
  ['flush', 'timeout, clean', timeout, true, 'retry'],
  ['flush', 'timeout, dirty', timeout, false, 'data-loss'],
  ['flush', 'lost, clean', lost, true, 'retry'],
  ['flush', 'lost, dirty', lost, false, 'data-loss'],
  ['flush', 'bad response, clean', bad, true, 'retry'],
  ['flush', 'bad response, dirty', bad, false, 'data-loss'],
  ['flush', 'TLS verification, clean', tls, true, 'fail'],
];

describe('decideRetry', () => {
  test.each(rows)('%s after %s (clean=%s)', (cls, _name, outcome, clean, expected) => {
    expect(decideRetry(cls, outcome, { connectionWasClean: clean, attempt: 0, retries: 3 })).toBe(expected);
  });

  test('a retry becomes a failure once retries are used up, or while closing', () => {
    expect(decideRetry('read', s500, { connectionWasClean: true, attempt: 3, retries: 3 })).toBe('fail');
    expect(decideRetry('write', notSent, { connectionWasClean: true, attempt: 0, retries: 0 })).toBe('fail');
    expect(decideRetry('read', timeout, { connectionWasClean: true, attempt: 0, retries: 3, closing: true })).toBe('fail');
    // Never softened: unknown outcomes and data loss stay what they are.
    expect(decideRetry('write', timeout, { connectionWasClean: true, attempt: 3, retries: 3 })).toBe('fail-unknown');
    expect(decideRetry('flush', timeout, { connectionWasClean: false, attempt: 3, retries: 3 })).toBe('data-loss');
  });

  test('backoff doubles from 100 ms up to 2 s', () => {
    expect([0, 1, 2, 3, 4, 5, 9].map(retryDelayMs)).toEqual([100, 200, 400, 800, 1600, 2000, 2000]);
  });
});
