/**
 * Model-based test: random writes, zeroes, reads and flushes from several NBD connections
 * (libnbd, one thread each, no two requests in flight on overlapping ranges) through the real
 * imageio-nbd command into the built-in imageio server, which meanwhile stalls requests longer
 * than --request-timeout (the op lands late, after the client gave up), answers errors and
 * drops connections, from a seeded random fault mode. The script keeps a model of the image:
 * bytes of a failed write or zero are unknown until a later successful one covers them.
 *
 * After each run, one of these must hold; anything else is "all succeeded" with a wrong byte:
 *   - every FLUSH succeeded: the image equals the model (known bytes) and every read did too;
 *   - a FLUSH failed: imageio-nbd exited non-zero.
 */
import { readFileSync } from 'node:fs';
import { abstractSocketName, ImageioServer, type RandomFaults } from '../../sim/imageio-server';
import { killAll, makeEmpty, runCli, sleep, tmpDir, type TmpDir } from '../helpers/cli';
import { PYTHON } from '../helpers/hostile-run';

const MiB = 2 ** 20;
const SIZE = 16 * MiB;

const SCRIPT = String.raw`
import json, os, random, threading, time
import nbd
seed, size, nops, nconn = (int(os.environ[k]) for k in ("SEED", "SIZE", "OPS", "CONNS"))
flush_p = float(os.environ["FLUSH_P"])
uri = os.environ["uri"]
lock = threading.Lock()
cond = threading.Condition(lock)
model = bytearray(size)               # the image starts as zeros
known = bytearray(b"\x01") * size     # 0: a failed write or zero left these bytes unknown
busy = []                             # ranges with a request in flight
flushes = []
stats = {"write": 0, "zero": 0, "read": 0, "errors": {}, "read_mismatch": []}

def known_runs(off, end):
    pos = off
    while pos < end:
        start = known.find(b"\x01", pos, end)
        if start < 0:
            return
        stop = known.find(b"\x00", start, end)
        stop = end if stop < 0 else stop
        yield start, stop
        pos = stop

def worker(i):
    rnd = random.Random(seed * 1000 + i)
    h = nbd.NBD()
    h.connect_uri(uri)
    for _ in range(nops):
        r = rnd.random()
        kind = "flush" if r < flush_p else "write" if r < flush_p + (1 - flush_p) * 0.55 else "zero" if r < flush_p + (1 - flush_p) * 0.7 else "read"
        if kind == "flush":
            try:
                h.flush()
                res = "ok"
            except nbd.Error as e:
                res = str(e.errno)
            with lock:
                flushes.append(res)
            continue
        length = min(size // 4, rnd.choice([512, 4096, 65536, 1 << 20, rnd.randrange(1, 2 << 20)]))
        off = rnd.randrange(0, size - length + 1)
        if rnd.random() < 0.5:
            off -= off % 4096
        end = off + length
        data = rnd.randbytes(length) if kind == "write" else None
        with cond:
            while any(off < e and b < end for b, e in busy):
                cond.wait()
            busy.append((off, end))
        err = got = None
        try:
            if kind == "write":
                h.pwrite(data, off)
            elif kind == "zero":
                h.zero(length, off)
            else:
                got = h.pread(length, off)
        except nbd.Error as e:
            err = str(e.errno)
        with cond:
            if kind == "write" or kind == "zero":
                if err is None:
                    model[off:end] = data if kind == "write" else bytes(length)
                    known[off:end] = b"\x01" * length
                else:
                    known[off:end] = bytes(length)
            elif err is None:
                for s, e in known_runs(off, end):
                    if got[s - off:e - off] != model[s:e]:
                        stats["read_mismatch"].append([s, e])
                        break
            stats[kind] += 1
            if err is not None:
                key = kind + ":" + err
                stats["errors"][key] = stats["errors"].get(key, 0) + 1
            busy.remove((off, end))
            cond.notify_all()
    h.shutdown()

threads = [threading.Thread(target=worker, args=(i,)) for i in range(nconn)]
for t in threads:
    t.start()
for t in threads:
    t.join()
try:
    h.flush()   # the connection python3 -m nbd opened: a last FLUSH covering everything
    flushes.append("ok")
except nbd.Error as e:
    flushes.append(str(e.errno))
with open(os.environ["MODEL_OUT"], "wb") as f:
    f.write(model)
with open(os.environ["KNOWN_OUT"], "wb") as f:
    f.write(known)
stats["flushes"] = flushes
print("RESULT " + json.dumps(stats), flush=True)
`;

interface Stats {
  write: number;
  zero: number;
  read: number;
  errors: Record<string, number>;
  read_mismatch: [number, number][];
  flushes: string[];
}

interface Run {
  name: string;
  seed: number;
  faults?: Omit<RandomFaults, 'seed'>;
  /** Image size (smaller: more overlapping requests); default 16 MiB. */
  size?: number;
  /** Share of FLUSHes among the requests (more: connections are clean more often); default 0.12. */
  flushP?: number;
}

/** Stalls last longer than --request-timeout 1 (plus undici's coarse timers): the op lands late. */
const STALL: [number, number] = [1500, 2500];

const RUNS: Run[] = [
  // The harness itself: without faults everything succeeds and matches.
  { name: 'no faults', seed: 101 },
  { name: 'stalls longer than the request timeout', seed: 202, faults: { delayProbability: 0.08, delayMs: STALL } },
  { name: 'errors, stalls and dropped connections', seed: 404, faults: { errorProbability: 0.03, delayProbability: 0.03, delayMs: STALL, dropProbability: 0.02 } },
  // Frequent FLUSHes keep connections clean, so a stalled PUT or zero is the only thing at
  // stake; a small image makes later requests overwrite the ranges of stalled ones.
  {
    name: 'stalled writes and zeroes between frequent FLUSHes, overlapping',
    seed: 505,
    size: 2 * MiB,
    flushP: 0.45,
    faults: { ops: ['write', 'zero'], delayProbability: 0.12, delayMs: STALL },
  },
];

let dir: TmpDir;
let server: ImageioServer | undefined;
beforeEach(() => {
  dir = tmpDir('model-');
});
afterEach(async () => {
  await killAll();
  await server?.close();
  server = undefined;
  dir.cleanup();
});

test.each(RUNS)('model: $name (seed $seed): every FLUSH ok and the image equals the model, or a FLUSH failed and exit non-zero', async (run) => {
  const size = run.size ?? SIZE;
  const image = dir.file('image.raw');
  makeEmpty(image, size);
  server = new ImageioServer({ image, ticket: 'model', unix: abstractSocketName(), idleTimeoutMs: 60_000 });
  await server.start();
  if (run.faults) server.faults.setRandom({ seed: run.seed, ...run.faults });
  const r = await runCli(
    ['--request-timeout', '1', '--retries', '2', '--run', `${PYTHON} -m nbd -u "$uri" -c "$SCRIPT"`, server.url],
    {
      env: {
        ...process.env,
        SCRIPT,
        SEED: String(run.seed),
        SIZE: String(size),
        FLUSH_P: String(run.flushP ?? 0.12),
        OPS: '40',
        CONNS: '3',
        MODEL_OUT: dir.file('model.raw'),
        KNOWN_OUT: dir.file('known.raw'),
      },
      timeoutMs: 60_000,
    },
  );
  // Stalled ops land after their stall, client or not: let the last ones land.
  await sleep(STALL[1] + 500);
  const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  const stats = line ? (JSON.parse(line.slice('RESULT '.length)) as Stats) : undefined;
  let wrongBytes = -1;
  let firstWrong: number | undefined;
  if (stats) {
    const img = readFileSync(image);
    const model = readFileSync(dir.file('model.raw'));
    const known = readFileSync(dir.file('known.raw'));
    wrongBytes = 0;
    for (let i = 0; i < size; i++) {
      if (known[i] && img[i] !== model[i]) {
        wrongBytes++;
        firstWrong ??= i;
      }
    }
  }
  const allFlushed = !!stats && stats.flushes.length > 0 && stats.flushes.every((f) => f === 'ok');
  const observed = {
    code: r.code,
    signal: r.signal,
    timedOut: r.timedOut,
    ops: stats && { write: stats.write, zero: stats.zero, read: stats.read, flushes: stats.flushes.join(' ') },
    errors: stats?.errors,
    readMismatches: stats?.read_mismatch.length,
    wrongBytes,
    firstWrong,
    faultsApplied: server.stats().faultsApplied,
    stderr: r.stderr.split('\n').filter(Boolean).slice(0, 12),
  };
  try {
    expect(stats).toBeDefined();
    // 40 requests on each of 3 connections, FLUSHes not counted: at least half the rest ran.
    expect(stats!.write + stats!.zero + stats!.read).toBeGreaterThan(0.5 * 120 * (1 - (run.flushP ?? 0.12)));
    if (run.faults) expect(server.stats().faultsApplied).toBeGreaterThan(0);
    else expect(allFlushed).toBe(true);
    if (allFlushed) {
      // Every FLUSH said the data is safe: it must be exactly what the model says.
      expect({ wrongBytes, readMismatches: stats!.read_mismatch.length }).toEqual({ wrongBytes: 0, readMismatches: 0 });
    } else {
      // A FLUSH failed: the transfer must not be reported complete.
      expect(r.code).not.toBe(0);
      expect(r.code).not.toBeNull();
    }
  } catch (err) {
    (err as Error).message += `\n\nObserved: ${JSON.stringify(observed, null, 2)}`;
    throw err;
  }
});
