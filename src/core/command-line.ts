/**
 * Command lines from option tables: one parser (node:util's parseArgs, strict, with one-line
 * errors that name the option) and one help format, shared by the main command, `verify` and
 * the built-in servers' subcommands. Pure: no I/O, so every rule is unit-tested.
 *
 * node:util's parser rather than yargs: it is built in, and loading yargs cost about 30 ms of
 * every start.
 */
import { parseArgs as nodeParseArgs } from 'node:util';
import { ConfigError } from './errors';

/** A row of an option table, as the parser and the help need it. */
export interface OptionRow {
  /** Canonical long name, without dashes. */
  name: string;
  /** One-letter form, without the dash. */
  short?: string;
  /** Other long spellings, without dashes. */
  aliases?: readonly string[];
  /** 'string': takes a value; 'flag': no value; 'count': repeatable flag (-vv). */
  type: 'string' | 'flag' | 'count';
  /** Name of the value in the help: SOCKET, PORT... */
  arg?: string;
  /** The value may be left out; arg is then shown as [=ARG]. */
  optionalValue?: boolean;
  /** One line, shown as it is by the help. */
  describe: string;
}

/** What a parse gives: each option under its key (strings as typed, an array when repeated; flags true; counts a number). */
export interface ParsedOptions {
  values: Record<string, string | string[] | boolean | number>;
  positionals: string[];
}

/** An option table prepared for node:util's parser; build it once per table. */
export class OptionParser {
  /** Every long name (aliases included): its key and kind. */
  readonly specs = new Map<string, { key: string; kind: OptionRow['type'] }>();
  readonly shorts = new Set<string>();
  private readonly options: Record<string, { type: 'string' | 'boolean'; short?: string; multiple: true }> = {};

  /** `keyOf` names where a row's value goes (default: its long name). */
  constructor(rows: readonly OptionRow[], keyOf: (row: OptionRow) => string = (r) => r.name) {
    for (const row of rows) {
      const spec = { key: keyOf(row), kind: row.type };
      for (const [i, name] of [row.name, ...(row.aliases ?? [])].entries()) {
        this.specs.set(name, spec);
        const short = i === 0 ? row.short : undefined;
        this.options[name] = { type: row.type === 'string' ? 'string' : 'boolean', multiple: true, ...(short ? { short } : {}) };
        if (short) this.shorts.add(short);
      }
    }
  }

  /** True when `arg` (e.g. "--port", "--port=1", "-v") names an option of the table. */
  isOption(arg: string): boolean {
    return arg.startsWith('--') ? this.specs.has(arg.slice(2).split('=')[0]) : arg.length > 1 && this.shorts.has(arg.charAt(1));
  }

  /** Parses `args`; throws an Error whose message is one line naming the option and what is wrong. */
  parse(args: readonly string[]): ParsedOptions {
    let parsed: { values: Record<string, unknown>; positionals: string[] };
    try {
      parsed = nodeParseArgs({ args: [...args], options: this.options, allowPositionals: true, strict: true });
    } catch (err) {
      throw new Error(argumentError(err), { cause: err });
    }
    const values: ParsedOptions['values'] = {};
    for (const [name, value] of Object.entries(parsed.values)) {
      const spec = this.specs.get(name)!;
      const list = value as Array<string | boolean>;
      if (spec.kind === 'count') values[spec.key] = ((values[spec.key] as number | undefined) ?? 0) + list.length;
      else if (spec.kind === 'flag') values[spec.key] = true;
      else {
        // One value as a string, repeated ones as an array (lastValue() takes the last).
        const prev = values[spec.key] as string | string[] | undefined;
        const all = [...(prev === undefined ? [] : Array.isArray(prev) ? prev : [prev]), ...(list as string[])];
        values[spec.key] = all.length === 1 ? all[0] : all;
      }
    }
    return { values, positionals: parsed.positionals };
  }
}

/** The value of a string option as typed (the last one when repeated), or undefined. */
export function lastValue(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  return Array.isArray(v) ? String(v[v.length - 1]) : String(v);
}

/**
 * A whole-number option's value (the last one given), from min to max, or undefined when the
 * option is absent; anything else is one line naming the option (`opt`, with its dashes).
 */
export function wholeNumberOption(v: unknown, opt: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const t = lastValue(v);
  if (t === undefined) return undefined;
  const n = /^\s*\d+\s*$/.test(t) ? Number(t) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
    throw new ConfigError(`invalid ${opt} '${t}': expected a whole number ${range}`);
  }
  return n;
}

/** Every value of a repeatable string option. */
export function allValues(v: unknown): string[] {
  if (v === undefined) return [];
  return Array.isArray(v) ? v.map(String) : [String(v)];
}

/** node:util's parse errors, as one line that names the option. */
function argumentError(err: unknown): string {
  const e = err as { code?: string; message?: string };
  const msg = String(e.message ?? err);
  // "Option '-p, --port <value>' argument missing": the long name when there is one.
  const opt = /'(?:-[^-'\s], )?(-[^'\s]*)/.exec(msg)?.[1];
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${opt ?? msg}: see --help`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      if (/argument missing|ambiguous/.test(msg)) return `option ${opt ?? ''} needs a value`.replace('  ', ' ');
      if (/does not take an argument/.test(msg)) return `option ${opt ?? ''} takes no value`;
      return msg;
    default:
      return msg;
  }
}

/** "-U, --unix SOCKET", "--stats[=FILE]", "-f, --foreground, --no-fork": how the help names an option. */
export function optionLabel(o: OptionRow): string {
  const names = [...(o.short ? [`-${o.short}`] : []), `--${o.name}`, ...(o.aliases ?? []).map((a) => `--${a}`)];
  let label = names.join(', ');
  if (o.arg) label += o.optionalValue ? `[=${o.arg}]` : ` ${o.arg}`;
  return label;
}

/** Rows of "  LABEL  description", the labels padded to one column, never wrapped. */
export function helpTable(rows: ReadonlyArray<readonly [string, string]>): string[] {
  const width = Math.max(...rows.map(([l]) => l.length)) + 2;
  return rows.map(([l, d]) => `  ${l.padEnd(width)}${d}`);
}

/** A help text in the one format every command uses. */
export interface HelpText {
  /** Usage lines, without "Usage: " (the first gets it, the others are aligned under it). */
  usage: readonly string[];
  /** What the command does: a paragraph (lines kept as given). */
  description: string;
  /** Titled option tables: "options:" and the like. */
  sections: ReadonlyArray<{ title: string; rows: ReadonlyArray<readonly [string, string]> }>;
  /** Free text after the tables (notes), optional. */
  notes?: readonly string[];
  /** The exit statuses: [status, meaning], one line each. */
  exitStatus: ReadonlyArray<readonly [string, string]>;
}

/** Usage, description, option tables, notes, and the exit statuses, as every command's --help prints them. */
export function formatHelp(h: HelpText): string {
  const lines: string[] = [`Usage: ${h.usage[0]}`, ...h.usage.slice(1).map((u) => `       ${u}`), '', h.description];
  for (const s of h.sections) lines.push('', s.title, ...helpTable(s.rows));
  if (h.notes?.length) lines.push('', ...h.notes);
  // Aligned under its title rather than a titled table: the option tables above are what the
  // README mirrors, table for table.
  const width = Math.max(...h.exitStatus.map(([n]) => n.length));
  lines.push('', ...h.exitStatus.map(([n, what], i) => `${i === 0 ? 'Exit status: ' : ' '.repeat(13)}${n.padEnd(width)}  ${what}`));
  return lines.join('\n');
}
