import { parseArgs, type RunConfig } from '../src/config';
import { parseSize } from '../src/size';
import { ConfigError } from '../src/errors';

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

  test('imageio-server subcommand passes its arguments through', async () => {
    expect(await parseArgs(['imageio-server', '--image', 'x'])).toEqual({ kind: 'imageio-server', argv: ['--image', 'x'] });
  });
});
