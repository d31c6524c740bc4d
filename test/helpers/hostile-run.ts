/**
 * Runs the real imageio-nbd command against a HostileServer with a Python (libnbd) script in
 * captive mode (--run), watching the process's memory meanwhile, and returns what the script
 * saw (one JSON line of results), what imageio-nbd logged and how it exited.
 */
import { readFileSync } from 'node:fs';
import { spawnCli } from './cli';
import type { HostileServer } from './hostile-server';
import type { RunResult } from './run';

/** libnbd's Python binding lives in Debian's python3. */
export const PYTHON = '/usr/bin/python3';

/**
 * Prelude of every script: `h` is connected by `python3 -m nbd -u $uri`; `ctl(path)` POSTs to the
 * hostile server's control paths; `op(name, fn)` records "ok" or the (first) errno name, and the time.
 */
export const PRELUDE = `
import hashlib, json, os, sys, time, urllib.request
import nbd
CTL = os.environ["HOSTILE"]
res = {}
def ctl(path):
    urllib.request.urlopen(urllib.request.Request(CTL + path, method="POST", data=b""), timeout=10).read()
def op(name, fn):
    # Called again with the same name: the first failure is kept, the times add up.
    t = time.monotonic()
    v = None
    try:
        v = fn()
        res.setdefault(name, "ok")
    except nbd.Error as e:
        if res.get(name) in (None, "ok"):
            res[name] = str(e.errno)
            res[name + "_msg"] = e.string
    res[name + "_s"] = round(res.get(name + "_s", 0) + time.monotonic() - t, 2)
    return v
def alive():
    """A second NBD connection reads a region no rule touches: the server still serves."""
    h2 = nbd.NBD()
    h2.connect_uri(os.environ["uri"])
    d = op("alive", lambda: h2.pread(4096, 16 << 20))
    res["alive_sha"] = hashlib.sha256(d).hexdigest() if d is not None else None
    h2.shutdown()
def done():
    print("RESULT " + json.dumps(res), flush=True)
    sys.exit(0)
`;

export interface HostileRunResult extends RunResult {
  /** The script's results (ops: "ok" or an errno name; NAME_s: seconds), or undefined if it never printed. */
  res?: Record<string, string | number | null>;
  /** Peak resident memory of the imageio-nbd process while it ran, MiB. */
  peakRssMiB: number;
  /** The watchdog stopped an endless body because memory passed the limit. */
  rssExceeded: boolean;
  ms: number;
}

function rssMiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * imageio-nbd ARGS --run CMD URL. With `script`, CMD runs it with python3 -m nbd. Memory is
 * sampled every 50 ms; above `rssLimitMiB` the hostile server's endless bodies are cut (so the
 * machine survives a client that buffers them) and rssExceeded is set.
 */
export async function runAgainst(
  hostile: HostileServer,
  opts: { args?: string[]; script?: string; cmd?: string; timeoutMs?: number; rssLimitMiB?: number },
): Promise<HostileRunResult> {
  const cmd = opts.cmd ?? `${PYTHON} -m nbd -u "$uri" -c "$SCRIPT"`;
  const t0 = Date.now();
  const proc = spawnCli([...(opts.args ?? []), '--run', cmd, hostile.url], {
    env: { ...process.env, HOSTILE: hostile.controlBase, SCRIPT: opts.script ? PRELUDE + opts.script : '' },
    timeoutMs: opts.timeoutMs ?? 45_000,
  });
  let peak = 0;
  let exceeded = false;
  const limit = opts.rssLimitMiB ?? 300;
  const timer = setInterval(() => {
    const r = rssMiB(proc.pid);
    peak = Math.max(peak, r);
    if (r > limit && !exceeded) {
      exceeded = true;
      hostile.stopFloods();
    }
  }, 50);
  let r: RunResult;
  try {
    r = await proc.exited;
  } finally {
    clearInterval(timer);
  }
  const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  return {
    ...r,
    res: line ? (JSON.parse(line.slice('RESULT '.length)) as Record<string, string | number | null>) : undefined,
    peakRssMiB: Math.round(peak),
    rssExceeded: exceeded,
    ms: Date.now() - t0,
  };
}

/** Log lines (stderr without --run output), trimmed. */
export function logLines(stderr: string): string[] {
  return stderr.split('\n').map((l) => l.trim()).filter(Boolean);
}

/** True when one stderr line matches every pattern. */
export function hasLine(stderr: string, ...patterns: RegExp[]): boolean {
  return logLines(stderr).some((l) => patterns.every((p) => p.test(l)));
}

/** Run assertions; on failure, add what was observed to the message. */
export function withObserved(observed: unknown, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    (err as Error).message += `\n\nObserved: ${JSON.stringify(observed, null, 2)}`;
    throw err;
  }
}
