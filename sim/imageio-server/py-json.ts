/**
 * A JSON parser that fails with the exact messages of Python's `json.loads` (CPython 3.6-3.12
 * C scanner), e.g. "Expecting value: line 1 column 1 (char 0)". imageio returns these texts in
 * its 400 responses to PATCH, so clients and tests may see them. Positions count code points,
 * as Python str indices do. Python extensions NaN, Infinity and -Infinity are accepted.
 */
import { PyDict, PyFloat, PyValue } from './py-format';

export class PyJsonError extends Error {
  constructor(
    readonly msg: string,
    readonly pos: number,
    doc: string[],
  ) {
    let newlines = 0;
    let lastNewline = -1;
    for (let i = 0; i < pos && i < doc.length; i++) {
      if (doc[i] === '\n') {
        newlines++;
        lastNewline = i;
      }
    }
    super(`${msg}: line ${newlines + 1} column ${pos - lastNewline} (char ${pos})`);
  }
}

const WS = new Set([' ', '\t', '\n', '\r']);
const NUMBER_RX = /^(-?(?:0|[1-9]\d*))(\.\d+)?([eE][-+]?\d+)?/;
const ESCAPES: Record<string, string> = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

/** Signals "no value here" like the scanner's StopIteration. */
class NoValue {
  constructor(readonly pos: number) {}
}

class Parser {
  constructor(private readonly s: string[]) {}

  private skipWs(i: number): number {
    while (i < this.s.length && WS.has(this.s[i])) i++;
    return i;
  }

  private fail(msg: string, pos: number): never {
    throw new PyJsonError(msg, pos, this.s);
  }

  decode(): PyValue {
    const [value, end] = this.scanOrFail(this.skipWs(0));
    const e = this.skipWs(end);
    if (e !== this.s.length) this.fail('Extra data', e);
    return value;
  }

  private scanOrFail(i: number): [PyValue, number] {
    const r = this.scanOnce(i);
    if (r instanceof NoValue) this.fail('Expecting value', r.pos);
    return r;
  }

  private lit(i: number, word: string): boolean {
    return this.s.slice(i, i + word.length).join('') === word;
  }

  private scanOnce(i: number): [PyValue, number] | NoValue {
    const s = this.s;
    if (i >= s.length) return new NoValue(i);
    const c = s[i];
    if (c === '"') return this.scanString(i + 1);
    if (c === '{') return this.parseObject(i + 1);
    if (c === '[') return this.parseArray(i + 1);
    if (c === 'n' && this.lit(i, 'null')) return [null, i + 4];
    if (c === 't' && this.lit(i, 'true')) return [true, i + 4];
    if (c === 'f' && this.lit(i, 'false')) return [false, i + 5];
    // The number regex runs on the rest of the text; it is ASCII, so lengths are code points.
    const m = NUMBER_RX.exec(s.slice(i, i + 400).join(''));
    if (m) {
      const text = m[0];
      const isFloat = m[2] !== undefined || m[3] !== undefined;
      const v = Number(text);
      return [isFloat ? new PyFloat(v) : v, i + text.length];
    }
    if (c === 'N' && this.lit(i, 'NaN')) return [new PyFloat(NaN), i + 3];
    if (c === 'I' && this.lit(i, 'Infinity')) return [new PyFloat(Infinity), i + 8];
    if (c === '-' && this.lit(i, '-Infinity')) return [new PyFloat(-Infinity), i + 9];
    return new NoValue(i);
  }

  private scanString(begin: number): [string, number] {
    const s = this.s;
    let out = '';
    let i = begin;
    for (;;) {
      if (i >= s.length) this.fail('Unterminated string starting at', begin - 1);
      const c = s[i];
      if (c === '"') return [out, i + 1];
      if (c === '\\') {
        i++;
        if (i >= s.length) this.fail('Unterminated string starting at', begin - 1);
        const e = s[i];
        if (e !== 'u') {
          const r = ESCAPES[e];
          if (r === undefined) this.fail('Invalid \\escape', i - 1);
          out += r;
          i++;
        } else {
          i++;
          const hex = s.slice(i, i + 4).join('');
          if (i + 4 >= s.length || !/^[0-9a-fA-F]{4}$/.test(hex)) this.fail('Invalid \\uXXXX escape', i - 1);
          out += String.fromCharCode(parseInt(hex, 16));
          i += 4;
        }
        continue;
      }
      if (c.codePointAt(0)! < 0x20) this.fail('Invalid control character at', i);
      out += c;
      i++;
    }
  }

  private parseObject(start: number): [PyDict, number] {
    const s = this.s;
    const pairs: PyDict = new Map();
    let end = start;
    let next = s[end] ?? '';
    if (next !== '"') {
      if (WS.has(next)) {
        end = this.skipWs(end);
        next = s[end] ?? '';
      }
      if (next === '}') return [pairs, end + 1];
      if (next !== '"') this.fail('Expecting property name enclosed in double quotes', end);
    }
    end += 1;
    for (;;) {
      let key: string;
      [key, end] = this.scanString(end);
      if (s[end] !== ':') {
        end = this.skipWs(end);
        if (s[end] !== ':') this.fail("Expecting ':' delimiter", end);
      }
      end = this.skipWs(end + 1);
      const r = this.scanOnce(end);
      if (r instanceof NoValue) this.fail('Expecting value', r.pos);
      let value: PyValue;
      [value, end] = r;
      pairs.set(key, value);
      end = this.skipWs(end);
      next = s[end] ?? '';
      end += 1;
      if (next === '}') break;
      if (next !== ',') this.fail("Expecting ',' delimiter", end - 1);
      end = this.skipWs(end);
      next = s[end] ?? '';
      end += 1;
      if (next !== '"') this.fail('Expecting property name enclosed in double quotes', end - 1);
    }
    return [pairs, end];
  }

  private parseArray(start: number): [PyValue[], number] {
    const s = this.s;
    const values: PyValue[] = [];
    let end = this.skipWs(start);
    if (s[end] === ']') return [values, end + 1];
    for (;;) {
      const r = this.scanOnce(end);
      if (r instanceof NoValue) this.fail('Expecting value', r.pos);
      let value: PyValue;
      [value, end] = r;
      values.push(value);
      end = this.skipWs(end);
      const next = s[end] ?? '';
      end += 1;
      if (next === ']') break;
      if (next !== ',') this.fail("Expecting ',' delimiter", end - 1);
      end = this.skipWs(end);
    }
    return [values, end];
  }
}

/** Parse JSON text as Python's `json.loads` would; throws PyJsonError with Python's message. */
export function pyJsonLoads(text: string): PyValue {
  return new Parser(Array.from(text)).decode();
}
