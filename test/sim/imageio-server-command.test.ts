import { spawn, ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { Client } from 'undici';
import { tempDir } from '../helpers/imageio-raw';

const ROOT = path.join(__dirname, '..', '..');
const MAIN = path.join(ROOT, 'sim/imageio-server/main.ts');

function spawnServer(args: string[]): { child: ChildProcess; lines: Promise<string[]>; exit: Promise<number | null> } {
  const child = spawn(process.execPath, ['-r', 'tsx/cjs', MAIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  // The URL, then unix_socket=... unless --no-unix (or a failed start).
  const want = args.includes('--no-unix') ? 1 : 2;
  const lines = new Promise<string[]>((resolve, reject) => {
    const got: string[] = [];
    const rl = readline.createInterface({ input: child.stdout! });
    rl.on('line', (l) => {
      got.push(l);
      if (got.length === want) resolve(got);
    });
    child.on('exit', () => reject(new Error(`exited before printing; stdout ${JSON.stringify(got)}`)));
  });
  lines.catch(() => undefined); // a test that expects a failed start never awaits it
  return { child, lines, exit };
}

async function control(sock: string, method: string, p: string, body?: unknown) {
  const c = new Client('http://localhost', { socketPath: sock });
  try {
    const r = await c.request({ path: p, method: method as 'GET', body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: r.statusCode, json: (await r.body.json()) as Record<string, unknown> };
  } finally {
    await c.close();
  }
}

test('imageio-server command: URL first, control socket, SIGTERM exits 0', async () => {
  const tmp = tempDir();
  try {
    const image = tmp.file('new.raw');
    const ctl = tmp.file('control.sock');
    const unix = tmp.file('local.sock');
    const { child, lines, exit } = spawnServer([
      '--image', image, '--size', '1M', '--ticket', 'cmd', '--unix', unix, '--control', ctl, '--backend', 'file', '--idle-timeout', '30',
    ]);
    const [url, second] = await lines;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/images\/cmd$/);
    expect(second).toBe(`unix_socket=${unix}`);
    expect(fs.statSync(image).size).toBe(1 << 20);

    const u = new URL(url);
    const client = new Client(u.origin);
    const opts = await client.request({ path: u.pathname, method: 'OPTIONS' });
    expect(await opts.body.text()).toBe(
      `{"unix_socket": "${unix}", "features": ["checksum", "extents", "flush", "zero"], "max_readers": 8, "max_writers": 1}\n`,
    );
    expect((await control(ctl, 'POST', '/faults', { method: 'PUT', times: -1, action: { status: 500 } })).status).toBe(200);
    for (let i = 0; i < 2; i++) {
      const r = await client.request({ path: u.pathname, method: 'PUT', body: 'x' });
      expect(r.statusCode).toBe(500);
      await r.body.text();
    }
    await control(ctl, 'DELETE', '/faults');
    const ok = await client.request({ path: u.pathname, method: 'PUT', body: 'x' });
    expect(ok.statusCode).toBe(200);
    await ok.body.text();
    const stats = (await control(ctl, 'GET', '/stats')).json as { faultsApplied: number; methods: Record<string, number> };
    expect(stats.faultsApplied).toBe(2);
    expect(stats.methods.PUT).toBe(3);
    expect((await control(ctl, 'POST', '/close-idle')).json).toEqual({ closed: 1 });
    await control(ctl, 'POST', '/ticket/expire');
    const expired = await client.request({ path: u.pathname, method: 'OPTIONS' });
    expect(expired.statusCode).toBe(403);
    await expired.body.text();
    await client.close();

    child.kill('SIGTERM');
    expect(await exit).toBe(0);
    expect(fs.existsSync(ctl)).toBe(false);
  } finally {
    tmp.cleanup();
  }
});

test('imageio-server command: a missing image without --size is an error', async () => {
  const tmp = tempDir();
  try {
    const { exit, child } = spawnServer(['--image', tmp.file('missing.raw')]);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    expect(await exit).toBe(1);
    expect(stderr).toMatch(/does not exist/);
    expect(fs.existsSync(tmp.file('missing.raw'))).toBe(false);
  } finally {
    tmp.cleanup();
  }
});

/** Run the command to its end (help, version, bad arguments). */
function runServer(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['-r', 'tsx/cjs', MAIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

function connectResult(socketPath: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
}

test('imageio-server command: by default the local service is a fresh abstract socket, reported as imageio does', async () => {
  const tmp = tempDir();
  const started: ChildProcess[] = [];
  try {
    const a = spawnServer(['--image', tmp.file('a.raw'), '--size', '1M', '--ticket', 'abs']);
    const b = spawnServer(['--image', tmp.file('b.raw'), '--size', '1M', '--ticket', 'abs']);
    started.push(a.child, b.child);
    const [urlA, sockA] = await a.lines;
    const [, sockB] = await b.lines;
    // Shown as @name (the NUL byte is not printed); unique per server.
    expect(sockA).toBe(`unix_socket=@/org/ovirt/imageio/${a.child.pid}-1`);
    expect(sockB).toBe(`unix_socket=@/org/ovirt/imageio/${b.child.pid}-1`);
    const abstract = `\0${sockA.slice('unix_socket=@'.length)}`;

    const u = new URL(urlA);
    const tcp = new Client(u.origin);
    const opts = await tcp.request({ path: u.pathname, method: 'OPTIONS' });
    const body = await opts.body.text();
    expect(body).toBe(
      `{"unix_socket": "\\u0000${abstract.slice(1)}", "features": ["checksum", "extents", "flush", "zero"], "max_readers": 8, "max_writers": 8}\n`,
    );
    expect(JSON.parse(body).unix_socket).toBe(abstract);
    await tcp.close();

    // The name from OPTIONS is what a client on this host connects to.
    const local = new Client('http://localhost', { socketPath: abstract });
    const put = await local.request({ path: u.pathname, method: 'PUT', body: 'via-abstract' });
    expect(put.statusCode).toBe(200);
    await put.body.text();
    const info = await local.request({ path: '/info/', method: 'GET' });
    expect(info.statusCode).toBe(404); // the local service has no /info/, like imageio's
    await info.body.text();
    await local.close();
    expect(fs.readFileSync(tmp.file('a.raw')).subarray(0, 12).toString()).toBe('via-abstract');

    a.child.kill('SIGTERM');
    expect(await a.exit).toBe(0);
    expect(await connectResult(abstract)).toBe('ECONNREFUSED');
    b.child.kill('SIGTERM');
    expect(await b.exit).toBe(0);
  } finally {
    for (const c of started) if (c.exitCode === null) c.kill('SIGKILL');
    tmp.cleanup();
  }
});

test('imageio-server command: --unix @NAME is abstract, --no-unix serves TCP only', async () => {
  const tmp = tempDir();
  const started: ChildProcess[] = [];
  try {
    const name = `/imageio-nbd-test/${process.pid}-named`;
    const a = spawnServer(['--image', tmp.file('a.raw'), '--size', '1M', '--ticket', 't', '--unix', `@${name}`]);
    const b = spawnServer(['--image', tmp.file('b.raw'), '--size', '1M', '--ticket', 't', '--no-unix']);
    started.push(a.child, b.child);
    expect((await a.lines)[1]).toBe(`unix_socket=@${name}`);
    expect(await connectResult(`\0${name}`)).toBe('connected');
    const [urlB] = await b.lines;
    const u = new URL(urlB);
    const tcp = new Client(u.origin);
    const opts = await tcp.request({ path: u.pathname, method: 'OPTIONS' });
    expect(await opts.body.text()).toBe('{"features": ["checksum", "extents", "flush", "zero"], "max_readers": 8, "max_writers": 8}\n');
    await tcp.close();
    await new Promise((r) => setTimeout(r, 300));
    expect(b.child.stdout!.readableLength).toBe(0); // no unix_socket line
  } finally {
    for (const c of started) if (c.exitCode === null) c.kill('SIGTERM');
    tmp.cleanup();
  }
});

test('imageio-server command: -h, --help, -V, --version need no --image; help text does not run into type tags', async () => {
  for (const flag of ['-h', '--help']) {
    const r = await runServer([flag]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    // The help format of every command: usage, options, exit status.
    expect(r.stdout).toMatch(/^Usage: imageio-nbd imageio-server --image FILE/);
    expect(r.stdout).toMatch(/\nExit status: 0 /);
    for (const opt of ['--image', '--unix', '--latency', '--latency-ops', '--control', '--version', '--help']) expect(r.stdout).toContain(opt);
    // Every option line: description, at least one space, then [tags].
    const lines = r.stdout.split('\n').filter((l) => /^\s+-/.test(l));
    expect(lines.length).toBeGreaterThan(10);
    for (const line of lines) expect(line).not.toMatch(/[^\s\]]\[/);
  }
  for (const flag of ['-V', '--version']) {
    const r = await runServer([flag]);
    expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({
      code: 0,
      stdout: 'imageio-nbd imageio-server 0.1.0 (imageio 2.5.3 API)\n',
      stderr: '',
    });
  }
  const none = await runServer([]);
  expect(none.code).toBe(1);
  expect(none.stderr).toBe('imageio-nbd imageio-server: missing --image FILE (see --help)\n');
  const bad = await runServer(['--image', '/nonexistent/x.raw', '--latency-ops', 'write,bogus', '--size', '1M']);
  expect(bad.code).toBe(1);
  expect(bad.stderr).toMatch(/^imageio-nbd imageio-server: invalid --latency-ops 'bogus'/);
});

test('imageio-server command: --latency delays PUT responses only with --latency-ops write', async () => {
  const tmp = tempDir();
  const { child, lines, exit } = spawnServer(['--image', tmp.file('l.raw'), '--size', '1M', '--ticket', 'l', '--no-unix', '--latency', '1500', '--latency-ops', 'write']);
  try {
    const [url] = await lines;
    const u = new URL(url);
    const client = new Client(u.origin);
    let t0 = Date.now();
    const put = await client.request({ path: `${u.pathname}?flush=n`, method: 'PUT', body: Buffer.alloc(4096, 1) });
    await put.body.text();
    expect(put.statusCode).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    t0 = Date.now();
    const get = await client.request({ path: u.pathname, method: 'GET', headers: { range: 'bytes=0-4095' } });
    expect((await get.body.arrayBuffer()).byteLength).toBe(4096);
    expect(Date.now() - t0).toBeLessThan(1000);
    await client.close();
    child.kill('SIGTERM');
    expect(await exit).toBe(0);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    tmp.cleanup();
  }
});
