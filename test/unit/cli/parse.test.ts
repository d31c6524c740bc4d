import { parseArgs, type RunConfig } from '../../../src/cli/parse';
import { longOptionNames, shortOptionNames } from '../../../src/cli/option-table';
import { EXPORT_DEFAULTS } from '../../../src/export/open-export';
import * as lib from '../../../src';
import type { ExportOptions, ListenConfig, OptionSpec, RunConfig as LibRunConfig } from '../../../src';
import { parseSize } from '../../../src/core/size';
import { ConfigError } from '../../../src/core/errors';
import { DEFAULTS } from '../../../src/core/defaults';

async function cfg(argv: string[]): Promise<RunConfig> {
  const r = await parseArgs(argv);
  if (r.kind !== 'run') throw new Error(`expected run, got ${r.kind}`);
  return r.config;
}

describe('parseSize', () => {
  test.each([
    ['4096', 4096],
    ['8M', 8 * 2 ** 20],
    ['1G', 2 ** 30],
    ['1.5G', 1.5 * 2 ** 30],
    ['64KiB', 65536],
    ['2t', 2 * 2 ** 40],
  ])('%s', (text, bytes) => expect(parseSize(text)).toBe(bytes));
  test.each(['', 'abc', '-1', '1X', '1.3'])('rejects %p', (text) => expect(() => parseSize(text)).toThrow(ConfigError));
});

describe('parseArgs', () => {
  test('virt-v2v invocation: nbdkit flags and key=value parameters', async () => {
    const c = await cfg([
      '--exit-with-parent', '--foreground', '--pidfile', '/tmp/p', '--unix', '/tmp/s', '--threads', '8',
      '-D', 'nbdkit.backend.datapath=0', 'python', '/usr/lib/virt-v2v/rhv-upload-plugin.py',
      'url=https://h:54322/images/T', 'size=6442450944', 'insecure=true', 'is_ovirt_host=true',
    ]);
    expect(c).toMatchObject({
      url: 'https://h:54322/images/T', size: 6442450944, insecure: true, unixSocket: 'auto',
      listen: { unix: '/tmp/s' }, pidfile: '/tmp/p', threads: 8, foreground: true, exitWithParent: true,
    });
    expect(c.ignored.join(' ')).toContain('-D nbdkit.backend.datapath=0');
    expect(c.ignored.join(' ')).toContain('plugin python');
  });

  test('is_ovirt_host=false keeps off the unix socket, as the python plugin does', async () => {
    expect((await cfg(['url=http://h/images/T', 'is_ovirt_host=false'])).unixSocket).toBe('never');
    expect((await cfg(['http://h/images/T'])).unixSocket).toBe('auto');
  });

  test('defaults: TCP 10809 on loopback, 8M coalescing, 4 connections', async () => {
    const c = await cfg(['memory:1G']);
    expect(c.listen).toEqual({ port: 10809, host: '127.0.0.1' });
    expect(c.requestSize).toBe(8 * 2 ** 20);
    expect(c.connections).toBe(4);
    expect(c.foreground).toBe(false);
  });

  test('--run implies a private unix socket and the foreground', async () => {
    const c = await cfg(['--run', 'true', 'memory:1M']);
    expect(c.listen).toEqual({ privateUnix: true });
    expect(c.foreground).toBe(true);
    expect((await cfg(['-U', '-', 'memory:1M'])).listen).toEqual({ privateUnix: true });
  });

  test('--stats with and without a file, --request-size 0', async () => {
    expect((await cfg(['--stats', 'memory:1M'])).stats).toBe('');
    expect((await cfg(['--stats=/tmp/x', 'memory:1M'])).stats).toBe('/tmp/x');
    expect((await cfg(['--request-size', '0', 'memory:1M'])).requestSize).toBe(0);
    expect((await cfg(['memory:1M'])).coalesceIdleMs).toBe(10);
    expect((await cfg(['--coalesce-idle', '2.5', 'memory:1M'])).coalesceIdleMs).toBe(2500);
  });

  test.each([
    [[], /missing URL/],
    [['ftp://x'], /unsupported URL/],
    [['url=http://a/images/t', 'http://b/images/t'], /twice|only one URL/],
    [['memory:1M', 'memory:2M'], /only one URL/],
    [['bogus=1', 'memory:1M'], /unknown parameter 'bogus='/],
    [['--size', 'lots', 'memory:1M'], /invalid size 'lots'/],
    [['--size', '0', 'memory:1M'], /size 0/],
    [['-U', '/s', '-p', '1', 'memory:1M'], /either/],
    [['--connections', '0', 'memory:1M'], /connections/],
    [['--request-size', '100M', 'memory:1M'], /at most 64M/],
    [['--cafile', 'x', '--insecure', 'http://h/images/t'], /contradict/],
    [['--bogus-option', 'memory:1M'], /bogus-option/],
    [['--block-size', '3000', 'memory:1M'], /power of two/],
    [['--coalesce-idle', '0', 'memory:1M'], /coalesce-idle/],
  ])('rejects %p', async (argv, re) => {
    await expect(parseArgs(argv as string[])).rejects.toThrow(re);
  });

  test('--help and --version', async () => {
    const h = await parseArgs(['--help']);
    expect(h.kind).toBe('help');
    if (h.kind === 'help') {
      for (const opt of ['--unix', '--port', '--run', '--pidfile', '--exit-with-parent', '--cafile', '--insecure', '--request-size', '--stats', '--progress', '--unix-socket']) {
        expect(h.text).toContain(opt);
      }
    }
    expect((await parseArgs(['-V'])).kind).toBe('version');
  });

  test("nbdkit's spellings of the same options", async () => {
    const c = await cfg(['--read-only', '--pid-file', '/tmp/p', '--no-fork', '--export-name', 'x', '--ip-addr', '127.0.0.1', 'memory:1M']);
    expect(c).toMatchObject({ readonly: true, pidfile: '/tmp/p', foreground: true, exportName: 'x', listen: { port: 10809, host: '127.0.0.1' } });
    expect((await cfg(['--export', 'y', 'memory:1M'])).exportName).toBe('y');
    expect((await cfg(['-n', '--new-style', 'memory:1M'])).ignored).toContain('--newstyle (always)');
  });

  test('--exit-with-parent implies --foreground, as in nbdkit', async () => {
    expect((await cfg(['--exit-with-parent', '-U', '/tmp/s', 'memory:1M'])).foreground).toBe(true);
  });

  test('-4 and -6 pick the default address; a contradicting -i is refused', async () => {
    expect((await cfg(['-4', 'memory:1M'])).listen).toEqual({ port: 10809, host: '127.0.0.1' });
    expect((await cfg(['-6', 'memory:1M'])).listen).toEqual({ port: 10809, host: '::1' });
    await expect(parseArgs(['-6', '-i', '127.0.0.1', 'memory:1M'])).rejects.toThrow(/-i 127\.0\.0\.1 is not an IPv6 address/);
    await expect(parseArgs(['-4', '-i', '::1', 'memory:1M'])).rejects.toThrow(/not an IPv4 address/);
    await expect(parseArgs(['-4', '-6', 'memory:1M'])).rejects.toThrow(/contradict/);
  });

  test('-s/--single/--stdin serve stdin/stdout in the foreground, alone', async () => {
    for (const flag of ['-s', '--single', '--stdin']) {
      const c = await cfg([flag, 'memory:1M']);
      expect(c.listen).toEqual({ stdio: true });
      expect(c.foreground).toBe(true);
    }
    await expect(parseArgs(['-s', '-U', '/tmp/s', 'memory:1M'])).rejects.toThrow(/-s\/--single .* cannot be combined/);
    await expect(parseArgs(['-s', '--run', 'true', 'memory:1M'])).rejects.toThrow(/cannot be combined/);
  });

  test('unsupported nbdkit options are refused with a reason', async () => {
    await expect(parseArgs(['--tls=on', 'memory:1M'])).rejects.toThrow(/--tls is not supported by imageio-nbd: NBD over TLS/);
    await expect(parseArgs(['--filter', 'cache', 'memory:1M'])).rejects.toThrow(/--filter is not supported/);
    await expect(parseArgs(['-o', 'memory:1M'])).rejects.toThrow(/--oldstyle is not supported/);
  });

  test('numbers echo what was typed; every seconds option takes fractions', async () => {
    await expect(parseArgs(['--connections', 'two', 'memory:1M'])).rejects.toThrow("invalid --connections 'two': expected a whole number >= 1");
    await expect(parseArgs(['-p', 'abc', 'memory:1M'])).rejects.toThrow("invalid --port 'abc': expected a whole number from 0 to 65535");
    await expect(parseArgs(['-t', '1.5', 'memory:1M'])).rejects.toThrow("invalid --threads '1.5'");
    await expect(parseArgs(['--retries', 'x', 'memory:1M'])).rejects.toThrow("invalid --retries 'x'");
    await expect(parseArgs(['--connect-timeout', 'soon', 'memory:1M'])).rejects.toThrow("invalid --connect-timeout 'soon': expected seconds");
    const c = await cfg(['--connect-timeout', '0.5', '--request-timeout', '2.5', '--keepalive', '0.25', '--coalesce-idle', '.05', '--progress', '0.5', 'memory:1M']);
    expect(c).toMatchObject({ connectTimeoutMs: 500, requestTimeoutMs: 2500, keepAliveMs: 250, coalesceIdleMs: 50, progress: 0.5 });
  });

  test('a plain path is a file export; file:// needs an absolute path', async () => {
    expect((await cfg(['disk.raw'])).url).toBe(`file://${process.cwd()}/disk.raw`);
    expect((await cfg(['/var/tmp/a b.raw'])).url).toBe('file:///var/tmp/a%20b.raw');
    expect((await cfg(['file:///var/tmp/x.raw'])).url).toBe('file:///var/tmp/x.raw');
    await expect(parseArgs(['file://rel.raw'])).rejects.toThrow(/file:\/\/\/absolute\/path \(three slashes\); or give the path itself \(rel\.raw\)/);
  });

  test('--stats FILE URL, --stats URL, --stats=FILE', async () => {
    expect((await cfg(['--stats', '/tmp/s.txt', 'memory:1M'])).stats).toBe('/tmp/s.txt');
    expect((await cfg(['--stats', 'memory:1M'])).stats).toBe('');
    expect((await cfg(['--stats', 'disk.raw'])).url).toMatch(/disk\.raw$/);
    expect((await cfg(['--stats', '/tmp/s.txt', 'url=memory:1M'])).stats).toBe('/tmp/s.txt');
    expect((await cfg(['memory:1M', '--stats', '/tmp/s.txt'])).stats).toBe('/tmp/s.txt');
  });

  test("virt-v2v 2.x's script= parameter is ignored like the plugin name", async () => {
    const c = await cfg(['python', 'script=/tmp/v2v/rhv-upload-plugin.py', 'size=1024', 'url=http://h/images/T']);
    expect(c.url).toBe('http://h/images/T');
    expect(c.ignored).toContain('script=/tmp/v2v/rhv-upload-plugin.py');
  });

  test("nbdkit's informational modes need no URL", async () => {
    expect(await parseArgs(['--dump-config'])).toEqual({ kind: 'info', info: 'dump-config' });
    expect(await parseArgs(['python', '/tmp/x/rhv-upload-plugin.py', '--dump-plugin'])).toEqual({ kind: 'info', info: 'dump-plugin', plugin: 'python' });
    expect(await parseArgs(['--long-options'])).toEqual({ kind: 'info', info: 'long-options' });
    expect(await parseArgs(['--short-options'])).toEqual({ kind: 'info', info: 'short-options' });
    expect((await parseArgs(['--version'])).kind).toBe('version');
  });

  test('every listed long and short option parses', async () => {
    const needsValue: Record<string, string> = { unix: '/tmp/s', 'unix-socket': 'auto', 'log-format': 'json', port: '1', ipaddr: '127.0.0.1' };
    for (const name of longOptionNames()) {
      if (['help', 'version', 'dump-config', 'dump-plugin', 'long-options', 'short-options'].includes(name)) continue;
      const args = [`--${name}`];
      const r = await parseArgs([...args, ...(needsValue[name] ? [needsValue[name]] : []), 'memory:1M']).catch((e: Error) => e);
      // Only combinations are refused here (e.g. -s with nothing else is fine); never "unknown".
      if (r instanceof Error) expect(r.message).not.toMatch(/Unknown|unknown/);
    }
    expect(shortOptionNames()).toEqual(expect.arrayContaining(['U', 'p', 'i', '4', '6', 's', 'f', 'P', 'r', 'e', 't', 'n', 'v', 'V', 'D', 'h']));
  });

  test("the command's defaults are the library's (EXPORT_DEFAULTS)", async () => {
    const c = await cfg(['memory:1M']);
    for (const [k, v] of Object.entries(EXPORT_DEFAULTS)) expect({ [k]: c[k as keyof RunConfig] }).toEqual({ [k]: v });
  });

  test('the library exports the defaults, parseArgs, RunConfig and the option types', async () => {
    expect(lib.EXPORT_DEFAULTS).toBe(EXPORT_DEFAULTS);
    expect(lib.CLI_DEFAULTS.connections).toBe(EXPORT_DEFAULTS.connections);
    expect(lib.OPTIONS.length).toBeGreaterThan(30);
    const opts: ExportOptions = { url: 'memory:1M', pool: new lib.PayloadPool() }; // every other field is optional
    const listen: ListenConfig = { stdio: true };
    const spec: OptionSpec = lib.OPTIONS[0];
    const r = await lib.parseArgs(['memory:1M']);
    const c: LibRunConfig | undefined = r.kind === 'run' ? r.config : undefined;
    expect([opts.url, 'stdio' in listen, spec.name, c?.url]).toEqual(['memory:1M', true, 'unix', 'memory:1M']);
  });

  test('imageio-server subcommand passes its arguments through', async () => {
    expect(await parseArgs(['imageio-server', '--image', 'x'])).toEqual({ kind: 'imageio-server', argv: ['--image', 'x'] });
  });
});

describe('arguments that are not what they look like', () => {
  test('a host:port without its scheme is named as such, not opened as a file', async () => {
    await expect(parseArgs(['127.0.0.1:54322/images/T'])).rejects.toThrow("'127.0.0.1:54322/images/T' looks like a URL without its scheme: write https://127.0.0.1:54322/images/T");
    await expect(parseArgs(['host.example.com:54322/images/T'])).rejects.toThrow(/looks like a URL without its scheme/);
    // A path that merely contains a colon elsewhere is still a file.
    expect(await parseArgs(['./a:b.raw'])).toMatchObject({ kind: 'run' });
  });

  test('"help" and near-misses of a subcommand, before their options are parsed', async () => {
    await expect(parseArgs(['help'])).rejects.toThrow("'help' is not a subcommand: for help, run imageio-nbd --help");
    await expect(parseArgs(['imageio-sever', '--image', 'x'])).rejects.toThrow("unknown subcommand 'imageio-sever': did you mean 'imageio-server'?");
    await expect(parseArgs(['engine-srver'])).rejects.toThrow(/did you mean 'engine-server'/);
    // A word far from every subcommand may be a file.
    expect(await parseArgs(['disk'])).toMatchObject({ kind: 'run' });
  });
});

describe('--help states the defaults the parser applies (one table: src/core/defaults.ts)', () => {
  /** Option -> the RunConfig field it sets. */
  const FIELDS: Record<string, keyof RunConfig> = {
    threads: 'threads',
    'unix-socket': 'unixSocket',
    connections: 'connections',
    'request-size': 'requestSize',
    readahead: 'readahead',
    'max-buffer': 'maxBuffer',
    'coalesce-idle': 'coalesceIdleMs',
    'connect-timeout': 'connectTimeoutMs',
    'request-timeout': 'requestTimeoutMs',
    'min-rate': 'minRate',
    'max-memory': 'maxMemory',
    retries: 'retries',
    keepalive: 'keepAliveMs',
  };
  const config = async (argv: string[]): Promise<RunConfig> => {
    const r = await parseArgs(argv);
    if (r.kind !== 'run') throw new Error(`not a run: ${r.kind}`);
    return r.config;
  };

  test.each(Object.entries(FIELDS))('--%s: giving the default that --help names changes nothing', async (option, field) => {
    const help = await parseArgs(['--help']);
    if (help.kind !== 'help') throw new Error('no help');
    const line = help.text.split('\n').find((l) => l.trimStart().startsWith(`--${option} `) || l.includes(`, --${option} `));
    expect(line).toBeDefined();
    const stated = /\(default ([^;,)\s]+)/.exec(line!)?.[1];
    expect(stated).toBeDefined();
    const base = await config(['memory:1G']);
    const given = await config([`--${option}`, stated!, 'memory:1G']);
    expect({ [field]: given[field] }).toEqual({ [field]: base[field] });
  });

  test('the defaults are the table’s', async () => {
    const c = await config(['memory:1G']);
    expect([c.connections, c.requestSize, c.readahead, c.maxBuffer, c.maxMemory, c.retries]).toEqual([
      DEFAULTS.connections,
      DEFAULTS.requestSize,
      DEFAULTS.readahead,
      DEFAULTS.maxBuffer,
      DEFAULTS.maxMemory,
      DEFAULTS.retries,
    ]);
    expect([c.coalesceIdleMs, c.connectTimeoutMs, c.requestTimeoutMs, c.keepAliveMs, c.minRate, c.threads]).toEqual([
      DEFAULTS.coalesceIdleMs,
      DEFAULTS.connectTimeoutMs,
      DEFAULTS.requestTimeoutMs,
      DEFAULTS.keepAliveMs,
      DEFAULTS.minRate,
      DEFAULTS.threads,
    ]);
  });
});
