import { spawn, ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { Client } from 'undici';
import { tempDir } from './helpers/imageio-raw';

const ROOT = path.join(__dirname, '..');
const MAIN = path.join(ROOT, 'src/imageio-server/main.ts');

function spawnServer(args: string[]): { child: ChildProcess; lines: Promise<string[]>; exit: Promise<number | null> } {
  const child = spawn(process.execPath, ['-r', 'tsx/cjs', MAIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const want = args.includes('--unix') ? 2 : 1;
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
