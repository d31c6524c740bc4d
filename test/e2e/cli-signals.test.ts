/**
 * Interrupted means failed: a stop signal during --run reaches the command's whole process
 * group, is waited for, and the exit status is the command's failure or 128+N, never 0; a
 * second signal exits at once, non-zero, and removes the private socket directory. Each test
 * waits for an observable state (a marker file the command writes, bytes on the imageio
 * server), never for a fixed time.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { openFileBackend } from '../../src/backends/file-backend';
import { PassthroughLayer, type Backend } from '../../src/core/backend';
import { PayloadPool } from '../../src/core/payload-pool';
import { e2eSuite, isAlive, MiB, spawnCli, waitFor, waitForFile, type TestImageio } from '../helpers/cli';
import { startNbdServer, type TestServer } from '../helpers/nbd-server';

const SIZE = 64 * MiB;
const suite = e2eSuite({ name: 'cli-signals', size: SIZE, seed: 17 });

/** The command names of the processes in the group `pgid`. */
function groupCommands(pgid: number): string[] {
  try {
    return execFileSync('ps', ['-o', 'comm=', '-g', String(pgid)], { encoding: 'utf8' }).split('\n').map((l) => l.trim());
  } catch {
    return []; // ps exits 1 when the group is empty
  }
}

/** True while any process of the group `pgid` exists. */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A source disk whose reads from the second half on wait until the test ends: a copy stays in the middle. */
class GatedSource extends PassthroughLayer {
  blocked = false;
  private readonly gate: Promise<void>;
  open!: () => void;
  constructor(inner: Backend) {
    super(inner);
    this.gate = new Promise((resolve) => (this.open = resolve));
  }
  override async pread(offset: number, length: number): Promise<Buffer> {
    if (offset >= SIZE / 2) {
      this.blocked = true;
      await this.gate;
    }
    return super.pread(offset, length);
  }
}

let sources: Array<{ gated: GatedSource; server: TestServer }> = [];
afterEach(async () => {
  for (const { gated, server } of sources) {
    gated.open();
    await server.stop();
  }
  sources = [];
});

/** An imageio server to upload to, and the suite's source image served over NBD through a gate. */
async function midUpload(): Promise<{ s: TestImageio; src: { uri: string; readonly blocked: boolean } }> {
  const s = await suite.imageio();
  // The source's own pool: the export is only the copy's source, and its server stops in afterEach.
  const pool = new PayloadPool();
  const gated = new GatedSource(await openFileBackend(suite.source, { readonly: true, pool }));
  const server = await startNbdServer(gated, { export: { readonly: true }, payloadPool: pool });
  sources.push({ gated, server });
  return {
    s,
    src: {
      uri: server.uri,
      get blocked() {
        return gated.blocked;
      },
    },
  };
}

describe('a stop signal during --run', () => {
  test("SIGINT: the command's process group is stopped (its sleep never finishes, f is never written), exit 130", async () => {
    const marker = suite.dir.file('started');
    const f = suite.dir.file('f');
    // The shell writes its pid (the group of the command) before starting the long sleep.
    const proc = spawnCli(['--run', `echo $$ > ${marker}; sleep 30; echo x > ${f}`, 'memory:1M']);
    const shPid = Number(await waitForFile(marker));
    // Signalled once the grandchild runs (a shell told between two commands may not pass it on).
    await waitFor(() => groupCommands(shPid).includes('sleep'), 'the sleep to start');
    proc.signal('SIGINT');
    const r = await proc.exited;
    expect(r.code).toBe(130);
    // When imageio-nbd has exited, nothing of the command is left to write f later.
    expect(isAlive(shPid)).toBe(false);
    expect(groupAlive(shPid)).toBe(false);
    expect(existsSync(f)).toBe(false);
  });

  test('Ctrl-C on a terminal (SIGINT to the whole foreground group) during a qemu-img upload: exit 130', async () => {
    const { s, src } = await midUpload();
    const proc = spawnCli(['--run', `qemu-img convert -n -f raw -O raw ${src.uri} "$uri"`, s.url]);
    await waitFor(() => src.blocked, 'qemu-img to be in the middle of the copy');
    // As a terminal does: the signal goes to imageio-nbd's process group.
    process.kill(-proc.pid, 'SIGINT');
    const r = await proc.exited;
    expect(r.code).toBe(130);
  });

  test('kill -INT to imageio-nbd alone in the middle of a qemu-img upload: non-zero, qemu-img stopped', async () => {
    const { s, src } = await midUpload();
    const pidFile = suite.dir.file('qemu.pid');
    const proc = spawnCli(['--run', `echo $$ > ${pidFile}; exec qemu-img convert -n -f raw -O raw ${src.uri} "$uri"`, s.url]);
    const qemuPid = Number(await waitForFile(pidFile));
    await waitFor(() => src.blocked, 'qemu-img to be in the middle of the copy');
    proc.signal('SIGINT');
    const r = await proc.exited;
    expect(r.code).toBe(130);
    expect(isAlive(qemuPid)).toBe(false);
    // One line that names the cause (qemu-img, stopped by the signal, says nothing itself).
    expect(r.stderr.trim().split('\n').pop()).toMatch(/^imageio-nbd: interrupted by SIGINT: the --run command was stopped, the copy is NOT complete \(exit status 130\)$/);
  });

  test('a second signal exits at once, non-zero, and removes the private socket directory', async () => {
    const marker = suite.dir.file('started');
    const trapped = suite.dir.file('trapped');
    // A command that ignores the first SIGINT (it notes it) and keeps running.
    const script = `trap 'echo > ${trapped}' INT; echo "$$ $unixsocket" > ${marker}; while :; do sleep 0.1; done`;
    const proc = spawnCli(['--run', script, 'memory:1M']);
    const [shPid, sock] = (await waitForFile(marker)).trim().split(' ');
    expect(existsSync(sock)).toBe(true);
    proc.signal('SIGINT');
    await waitForFile(trapped);
    proc.signal('SIGINT');
    const r = await proc.exited;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/second SIGINT/);
    expect(existsSync(path.dirname(sock))).toBe(false);
    // The command was killed with it, not left behind.
    expect(readFileSync(trapped, 'utf8')).toBe('\n');
    await waitFor(() => !isAlive(Number(shPid)), 'the command to be gone', 5000);
  });

  test('SIGTERM with no --run still stops a server cleanly: exit 0', async () => {
    const sock = suite.dir.file('nbd.sock');
    const proc = spawnCli(['-f', '-U', sock, 'memory:1M']);
    await waitFor(() => existsSync(sock), 'the socket');
    proc.signal('SIGTERM');
    expect((await proc.exited).code).toBe(0);
  });
});
