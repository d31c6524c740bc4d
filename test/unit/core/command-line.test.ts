/** The one option parser and help format of every command. */
import { formatHelp, lastValue, OptionParser, optionLabel, type OptionRow } from '../../../src/core/command-line';

const ROWS: OptionRow[] = [
  { name: 'port', short: 'p', type: 'string', arg: 'PORT', describe: 'A port' },
  { name: 'disk', type: 'string', arg: 'SIZE', describe: 'Repeatable' },
  { name: 'readonly', aliases: ['read-only'], type: 'flag', describe: 'A flag' },
  { name: 'verbose', short: 'v', type: 'count', describe: 'More' },
];

test('values under their names, aliases folded in, repeats kept, counts counted, positionals apart', () => {
  const p = new OptionParser(ROWS);
  expect(p.parse(['-p', '1', '--disk', '1M', '--disk=2M', '--read-only', '-vv', 'FILE'])).toEqual({
    values: { port: '1', disk: ['1M', '2M'], readonly: true, verbose: 2 },
    positionals: ['FILE'],
  });
  expect(lastValue(['1M', '2M'])).toBe('2M');
  expect(p.isOption('--port=3')).toBe(true);
  expect(p.isOption('-x')).toBe(false);
});

test('errors are one line naming the option', () => {
  const p = new OptionParser(ROWS);
  expect(() => p.parse(['--frob'])).toThrow(/^unknown option --frob: see --help$/);
  expect(() => p.parse(['--port'])).toThrow(/^option --port needs a value$/);
  expect(() => p.parse(['--readonly=yes'])).toThrow(/^option --readonly takes no value$/);
});

test('help: usage, description, option tables, exit status aligned under its title', () => {
  const text = formatHelp({
    usage: ['x [OPTIONS] FILE', 'x --other'],
    description: 'Does x.',
    sections: [{ title: 'options:', rows: ROWS.map((r) => [optionLabel(r), r.describe] as const) }],
    exitStatus: [['0', 'fine'], ['128+N', 'a signal']],
  });
  expect(text.split('\n')).toEqual([
    'Usage: x [OPTIONS] FILE',
    '       x --other',
    '',
    'Does x.',
    '',
    'options:',
    '  -p, --port PORT          A port',
    '  --disk SIZE              Repeatable',
    '  --readonly, --read-only  A flag',
    '  -v, --verbose            More',
    '',
    'Exit status: 0      fine',
    '             128+N  a signal',
  ]);
});
