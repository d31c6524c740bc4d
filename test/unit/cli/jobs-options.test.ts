/**
 * --jobs on the command line (src/cli/jobs/jobs-options.ts through parseArgs) and the job list
 * (src/cli/jobs/job-list.ts): pure, no engine, no files.
 */
import { parseArgs, type RunConfig } from '../../../src/cli/parse';
import { parseJobList, splitWords } from '../../../src/cli/jobs/job-list';

const ENGINE = ['--engine', 'https://engine.example.com/ovirt-engine/api', '--username', 'admin@internal', '--password-file', '/pw'];

async function cfg(argv: string[]): Promise<RunConfig> {
  const r = await parseArgs(argv);
  if (r.kind !== 'run') throw new Error(`expected run, got ${r.kind}`);
  return r.config;
}

describe('--jobs options', () => {
  test('defaults: --per-host 3, --job-retries 1, copy tool from the source; no --run needed; foreground', async () => {
    const c = await cfg([...ENGINE, '--jobs', 'list.txt', '--storage-domain', 'data']);
    expect(c.engine).toBeUndefined();
    expect(c.url).toBe('');
    expect(c.foreground).toBe(true);
    expect(c.jobs).toMatchObject({ file: 'list.txt', perHost: 3, jobRetries: 1, copyWith: undefined, storageDomain: 'data' });
    expect(c.jobs!.settings).toMatchObject({ apiUrl: 'https://engine.example.com/ovirt-engine/api', username: 'admin@internal', timeoutS: 300 });
    // --retries stays the HTTP retry count.
    expect((await cfg([...ENGINE, '--jobs', '-', '--retries', '5', '--job-retries', '0', '--per-host', '2', '--copy-with', 'qemu-img'])).jobs).toMatchObject({
      jobRetries: 0,
      perHost: 2,
      copyWith: 'qemu-img',
    });
  });

  test.each([
    [['--jobs', 'f', '--run', 'true'], '--run describes one transfer: with --jobs, give it on the job\'s line'],
    [['--jobs', 'f', '--disk-id', 'X'], '--disk-id describes one transfer: with --jobs, give it on the job\'s line'],
    [['--jobs', 'f', '--per-host', '0'], "invalid --per-host '0': a whole number from 1 to 1000"],
    [['--jobs', 'f', '--copy-with', 'dd'], "invalid --copy-with 'dd': expected qemu-img or nbdcopy"],
    [['--per-host', '2', '--run', 'true', '--disk-id', 'X', '--direction', 'upload'], '--per-host goes with --jobs'],
  ])('%j is refused in one line', async (extra, message) => {
    await expect(parseArgs([...ENGINE, ...extra])).rejects.toThrow(message);
  });

  test('--jobs needs --engine', async () => {
    await expect(parseArgs(['--jobs', 'f'])).rejects.toThrow('--jobs needs --engine');
  });
});

describe('the job list', () => {
  test('lines: comments and blank lines skipped, quoting as a shell does, every option', () => {
    const jobs = parseJobList(
      [
        '# a VM',
        '',
        "upload 'my disk.qcow2' --storage-domain data --size 2G --disk-format qcow2 --disk-name \"vm1 sda\" --group vm1",
        'upload b.raw --disk-id D1 --group=vm1',
        'download D2 /backup/d2.qcow2 --dest-format qcow2',
      ].join('\n'),
      'f',
    );
    expect(jobs).toEqual([
      { op: 'upload', where: 'line 3', src: 'my disk.qcow2', diskId: undefined, storageDomain: 'data', size: 2 * 2 ** 30, diskFormat: 'cow', sparse: true, diskName: 'vm1 sda', group: 'vm1' },
      { op: 'upload', where: 'line 4', src: 'b.raw', diskId: 'D1', storageDomain: undefined, size: undefined, diskFormat: undefined, sparse: undefined, diskName: undefined, group: 'vm1' },
      { op: 'download', where: 'line 5', diskId: 'D2', dest: '/backup/d2.qcow2', destFormat: 'qcow2', group: undefined },
    ]);
    expect(splitWords(`a\\ b "c \\"d\\"" 'e'f`)).toEqual(['a b', 'c "d"', 'ef']);
  });

  test('a JSON array: the same words as keys, dashes or underscores', () => {
    expect(parseJobList(JSON.stringify([{ upload: 'a.raw', disk_name: 'n', sparse: true }, { download: 'D', dest: 'out.raw', group: 'g' }]), 'f')).toEqual([
      { op: 'upload', where: 'item 1', src: 'a.raw', diskId: undefined, storageDomain: undefined, size: undefined, diskFormat: undefined, sparse: true, diskName: 'n', group: undefined },
      { op: 'download', where: 'item 2', diskId: 'D', dest: 'out.raw', destFormat: 'raw', group: 'g' },
    ]);
  });

  test.each([
    ['copy a b', "jobs line 1: unknown job 'copy': expected upload or download"],
    ['upload a.raw\nupload b.raw --bogus 1', 'jobs line 2: unknown option --bogus for upload'],
    ['upload a.raw --disk-id D --size 1G', 'jobs line 1: --size describes a new disk: it does not go with --disk-id'],
    ['upload a.raw b.raw', 'jobs line 1: upload takes one source image: upload SRC'],
    ['download D', 'jobs line 1: download takes a disk id and a destination: download DISK-ID DEST'],
    ["upload 'a.raw", "jobs line 1: unterminated ' quote"],
    ['upload a.raw --group', 'jobs line 1: --group needs a value'],
    ['download D x.raw\ndownload D y.raw', 'jobs line 2: disk D is also used by line 1: a disk can be in one transfer at a time'],
    ['download D1 x.raw\ndownload D2 x.raw', 'jobs line 2: x.raw is also the destination of line 1'],
    ['# nothing', 'jobs f: no jobs'],
    ['[{"upload": "a", "download": "b"}]', 'jobs item 1: give exactly one of "upload": SRC or "download": DISK-ID'],
    ['[1', 'jobs f: not valid JSON'],
  ])('%j: %s', (text, message) => {
    expect(() => parseJobList(text, 'f')).toThrow(message);
  });
});
