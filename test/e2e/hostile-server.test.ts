/**
 * "Never wrong, never down": the real imageio-nbd command against a hostile imageio server
 * (test/helpers/hostile-server.ts). Each row is one misbehaviour aimed at one kind of request,
 * reached through a real NBD client (libnbd's Python binding, in --run captive mode):
 *
 *   read, write, zero, flush: the NBD client gets EIO (for writes and zeroes, at the latest from
 *     the FLUSH after them, and imageio-nbd exits non-zero: the data was not confirmed), one
 *     clear log line names the request, nothing crashes (no stack trace), memory stays bounded,
 *     and afterwards a second NBD connection is served normally;
 *   start-up: the start fails with one line on stderr and exit status 1; the --run command never
 *     runs.
 *
 * The misbehaviour is armed by the script right before its request (the hostile server's
 * /__hostile/arm), so the negotiation at start-up is sane; start-up rows are armed from the start.
 */
import { createHash } from 'node:crypto';
import { HostileServer, type Behaviour, type HostileRule, type HostileServerOptions, type RequestKind } from '../helpers/hostile-server';
import { hasLine, logLines, runAgainst, withObserved, type HostileRunResult } from '../helpers/hostile-run';
import { killAll } from '../helpers/cli';

const MiB = 2 ** 20;
const SIZE = 64 * MiB;
/** Short deadlines so that rows are quick; one retry so that a persistent fault fails fast. */
const BASE_ARGS = ['--request-timeout', '1', '--retries', '1'];
/** Every request with a misbehaviour must fail within this (a few request timeouts, with margin for a loaded machine). */
const FAIL_WITHIN_S = 8;

type Op = 'read' | 'write' | 'zero' | 'flush' | 'startup';

interface Row {
  name: string;
  op: Op;
  behaviour: Behaviour;
  /** The request kind the behaviour hits (default: the op's). */
  kind?: RequestKind;
  server?: Partial<HostileServerOptions>;
  args?: string[];
  /** Reads: offset and length (default 4096, 40). */
  read?: [number, number];
  /** The op must succeed (a control row). */
  succeeds?: boolean;
  /** Seconds within which the failing op must fail. */
  within?: number;
}

const OP_KIND: Record<Exclude<Op, 'startup'>, RequestKind> = { read: 'read', write: 'write', zero: 'zero', flush: 'flush' };

/** The script for an op row: arm, the op (and for writes the FLUSH after it), disarm, check a second connection. */
function opScript(row: Row): string {
  const [off, len] = row.read ?? [4096, 40];
  const body: Record<Exclude<Op, 'startup'>, string> = {
    read: `ctl("/arm/x")\nop("read", lambda: h.pread(${len}, ${off}))`,
    // Four 1 MiB writes: merged by the coalescing layer, acknowledged before their PUT is sent.
    write: `ctl("/arm/x")\nfor i in range(4):\n    op("write", lambda: h.pwrite(b"\\xaa" * ${MiB}, i * ${MiB}))\nop("flush", lambda: h.flush())`,
    zero: `ctl("/arm/x")\nop("zero", lambda: h.zero(${MiB}, 0))\nop("flush", lambda: h.flush())`,
    flush: `op("write", lambda: h.pwrite(b"\\x55" * 65536, 0))\nctl("/arm/x")\nop("flush", lambda: h.flush())`,
  };
  return `${body[row.op as Exclude<Op, 'startup'>]}\nctl("/disarm")\nalive()\ndone()\n`;
}

/** The clear log line a failed op must leave: the request named, and that it failed. */
const LOG_LINE: Record<Exclude<Op, 'startup'>, RegExp[]> = {
  read: [/\bGET\b/, /\b4096\b|\b8388608\b/, /fail|error|timed? ?out/i],
  write: [/\bPUT\b/, /fail|error|timed? ?out|not confirmed/i],
  zero: [/\bzero\b/i, /\b1048576\b/, /fail|error|timed? ?out|not confirmed/i],
  flush: [/flush/i, /fail|error|timed? ?out|lost|not have reached|not confirmed/i],
};

function opRows(name: string, behaviour: Behaviour, ops: Exclude<Op, 'startup'>[], extra: Partial<Row> = {}): Row[] {
  return ops.map((op) => ({ name: `${name}: ${op}`, op, behaviour, ...extra }));
}

/** Behaviours that make a request outlive --request-timeout. */
const TIMEOUTS = new Set<Behaviour['type']>(['trickle', 'late']);

const NO_EXTENTS = { features: ['checksum', 'flush', 'zero'] };
const ALL: Exclude<Op, 'startup'>[] = ['read', 'write', 'zero', 'flush'];
const ABSTRACT = () => ({ unixSocket: `\0/imageio-nbd-test/hostile-${process.pid}-${Math.random().toString(36).slice(2)}` });

const ROWS: Row[] = [
  // A 206 whose length is not the range asked for: today an unhandled 'error' event (UND_ERR_ABORTED).
  ...opRows('206 with Content-Length 10 bytes short', { type: 'wrong-length', delta: -10 }, ['read']),
  ...opRows('206 with Content-Length 10 bytes long', { type: 'wrong-length', delta: 10 }, ['read']),
  { name: '206 with Content-Length 0 for the size probe: start-up', op: 'startup', kind: 'read', behaviour: { type: 'wrong-length', delta: -1 }, server: NO_EXTENTS },
  { name: '206 with Content-Length 2 for the size probe: start-up', op: 'startup', kind: 'read', behaviour: { type: 'wrong-length', delta: 1 }, server: NO_EXTENTS },

  // Error responses without Content-Length whose body never ends: today RSS grows without bound.
  ...opRows('endless chunked 500', { type: 'endless', status: 500, framing: 'chunked' }, ALL),
  { name: 'endless chunked 500: start-up', op: 'startup', kind: 'options', behaviour: { type: 'endless', status: 500, framing: 'chunked' } },
  ...opRows('endless close-delimited 500 (abstract unix socket)', { type: 'endless', status: 500, framing: 'close' }, ['read', 'write'], {
    server: ABSTRACT(),
  }),
  { name: 'endless close-delimited 200 OPTIONS: start-up', op: 'startup', kind: 'options', behaviour: { type: 'endless', status: 200, framing: 'close' } },

  // Absurd sizes at start-up: today a RangeError in the first NBD handshake.
  ...['99999999999999999999', '9007199254740993', '18446744073709551615'].map(
    (total): Row => ({ name: `Content-Range total ${total}: start-up`, op: 'startup', kind: 'read', behaviour: { type: 'size-total', total }, server: NO_EXTENTS }),
  ),
  ...['99999999999999999999', '9007199254740993'].map(
    (length): Row => ({ name: `extents length ${length}: start-up`, op: 'startup', kind: 'extents', behaviour: { type: 'extents-length', length } }),
  ),

  // Trickled responses, one byte every 0.5 s: --request-timeout is a deadline for the whole request.
  ...opRows('body trickled 1 byte / 0.5 s', { type: 'trickle', intervalMs: 500, part: 'body' }, ['read'], { within: FAIL_WITHIN_S }),
  // A PUT or PATCH zero whose response trickles outlives --request-timeout: not retried, FLUSH fails.
  // (No flush row: how long a flush may take is the client's policy, a sync can be slow.)
  ...opRows('response trickled 1 byte / 0.5 s', { type: 'trickle', intervalMs: 500, part: 'all' }, ['write', 'zero'], {
    within: FAIL_WITHIN_S,
  }),
  { name: 'OPTIONS body trickled 1 byte / 0.5 s: start-up', op: 'startup', kind: 'options', behaviour: { type: 'trickle', intervalMs: 500, part: 'body' } },
  // --min-rate (not yet an option of the client): a large body below the rate fails long before
  // it would end (64 s here); one above it passes even with a deadline shorter than its transfer.
  {
    name: '8 MiB body at 128 KiB/s, --request-timeout 2 --min-rate 1M: read',
    op: 'read',
    behaviour: { type: 'trickle', intervalMs: 500, part: 'body', bytes: 64 << 10 },
    read: [0, 8 * MiB],
    args: ['--request-timeout', '2', '--retries', '0', '--min-rate', '1M'],
    within: 25,
  },
  {
    name: '8 MiB body at 4 MiB/s, --request-timeout 1 --min-rate 1M: read succeeds',
    op: 'read',
    behaviour: { type: 'trickle', intervalMs: 62, part: 'body', bytes: 256 << 10 },
    read: [0, 8 * MiB],
    args: ['--request-timeout', '1', '--retries', '0', '--min-rate', '1M'],
    succeeds: true,
  },

  // Not HTTP at all.
  ...opRows('garbage instead of a status line', { type: 'garbage' }, ALL),
  { name: 'garbage instead of a status line: start-up', op: 'startup', kind: 'options', behaviour: { type: 'garbage' } },
  ...opRows('close in the middle of the headers', { type: 'close-in-headers' }, ALL, { server: ABSTRACT() }),
  { name: 'close in the middle of the headers: start-up', op: 'startup', kind: 'options', behaviour: { type: 'close-in-headers' } },
];

let hostile: HostileServer | undefined;
afterEach(async () => {
  await killAll();
  await hostile?.stop();
  hostile = undefined;
});

function summary(r: HostileRunResult, h: HostileServer) {
  return {
    code: r.code,
    signal: r.signal,
    timedOut: r.timedOut,
    res: r.res,
    peakRssMiB: r.peakRssMiB,
    seconds: Math.round(r.ms / 100) / 10,
    served: h.log.map((l) => `${l.kind}${l.behaviour === 'sane' ? '' : `:${l.behaviour}`}`).join(' '),
    stderr: r.stderr.slice(0, 3000),
  };
}

describe.each(ROWS)('hostile imageio: $name', (row) => {
  test(row.op === 'startup' ? 'the start fails with one line' : row.succeeds ? 'the request succeeds' : 'EIO, a clear log line, still serving', async () => {
    const rule: HostileRule = {
      kind: row.kind ?? OP_KIND[row.op as Exclude<Op, 'startup'>],
      behaviour: row.behaviour,
      ...(row.op === 'startup' ? {} : { name: 'x' }),
    };
    hostile = new HostileServer({ size: SIZE, ...row.server }).addRule(rule);
    await hostile.start();
    const h = hostile;
    const args = row.args ?? BASE_ARGS;

    if (row.op === 'startup') {
      const r = await runAgainst(h, { args, cmd: 'echo RAN' });
      withObserved(summary(r, h), () => {
        // The misbehaviour was met (not a vacuous pass), and the start failed cleanly and quickly.
        expect(h.log.some((l) => l.behaviour === row.behaviour.type)).toBe(true);
        expect({ code: r.code, ran: r.stdout.includes('RAN'), lines: logLines(r.stderr).length, rssExceeded: r.rssExceeded }).toEqual({
          code: 1,
          ran: false,
          lines: 1,
          rssExceeded: false,
        });
        expect(r.stderr).toMatch(/^imageio-nbd: \S/);
        expect(r.ms).toBeLessThan(20_000);
      });
      return;
    }

    const r = await runAgainst(h, { args, script: opScript(row) });
    const res = r.res ?? {};
    const op = row.op as Exclude<Op, 'startup'>;
    withObserved(summary(r, h), () => {
      expect(h.log.some((l) => l.behaviour === row.behaviour.type)).toBe(true);
      // Never down: no crash, no stack trace, bounded memory, and a second connection is served.
      expect({ script: r.res !== undefined, timedOut: r.timedOut, signal: r.signal, rssExceeded: r.rssExceeded, alive: res.alive }).toEqual({
        script: true,
        timedOut: false,
        signal: null,
        rssExceeded: false,
        alive: 'ok',
      });
      expect(res.alive_sha).toBe(createHash('sha256').update(h.image.subarray(16 * MiB, 16 * MiB + 4096)).digest('hex'));
      expect(r.stderr).not.toMatch(/^\s+at \S+ \(|Unhandled|uncaught|RangeError|TypeError/m);
      expect(r.peakRssMiB).toBeLessThan(300);

      if (row.succeeds) {
        expect(res.read).toBe('ok');
        expect(r.code).toBe(0);
        return;
      }
      // Never wrong: the NBD client hears EIO for the request: a read at once; writes were
      // acknowledged before their PUT, so at the latest at the FLUSH after them.
      const first = op === 'read' ? res.read : op === 'flush' ? res.flush : res[op] !== 'ok' ? res[op] : res.flush;
      expect(first).toBe('EIO');
      // The FLUSH must fail when acknowledged data was not written (writes, flushes), and when a
      // write or zero outlived --request-timeout: it may still land later, so nothing after it is
      // sure. (A read that outlived it changes nothing: later FLUSHes are not its business.)
      if (op === 'write' || op === 'flush' || (op === 'zero' && TIMEOUTS.has(row.behaviour.type))) expect(res.flush).toBe('EIO');
      // ... and it is not sent again: a retry could land before the original, which then
      // overwrites what was written after it.
      // (The four writes may go out as more than one PUT if the coalescing idle timer fires
      // between them on a loaded machine: what must never happen is one range sent twice.)
      if ((op === 'write' || op === 'zero') && TIMEOUTS.has(row.behaviour.type)) {
        const sent = h.requests(OP_KIND[op]).filter((l) => l.behaviour === row.behaviour.type);
        expect(sent.length).toBeGreaterThanOrEqual(1);
        expect(new Set(sent.map((l) => `${l.offset}+${l.length}`)).size).toBe(sent.length);
      }
      if (row.within) {
        const seconds = op === 'read' ? res.read_s : op === 'flush' ? res.flush_s : Number(res[`${op}_s`]) + Number(res.flush_s);
        expect(seconds).toBeLessThan(row.within);
      }
      expect(hasLine(r.stderr, ...LOG_LINE[op])).toBe(true);
      // Reads lose nothing: the script's status. A failed FLUSH: imageio-nbd exits non-zero.
      if (op === 'read') expect(r.code).toBe(0);
      if (res.flush !== undefined && res.flush !== 'ok') expect(r.code).not.toBe(0);
    });
  });
});
