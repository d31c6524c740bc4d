/**
 * Python-compatible text formatting, so that bodies match what ovirt-imageio (Python) sends:
 * `repr()` of parsed JSON values (used in its error messages) and `json.dumps()` with the
 * default separators `", "` / `": "` and `ensure_ascii`.
 */

/** A JSON number written with a fraction or exponent: a Python float, not an int. */
export class PyFloat {
  constructor(readonly value: number) {}
}

/** A JSON value as Python's json module returns it (objects keep key order in a Map). */
export type PyValue = null | boolean | number | string | PyFloat | PyValue[] | PyDict;
export type PyDict = Map<string, PyValue>;

export function isPyDict(v: PyValue): v is PyDict {
  return v instanceof Map;
}

/** Python `repr()` of a float. */
function reprFloat(v: number): string {
  if (Number.isNaN(v)) return 'nan';
  if (!Number.isFinite(v)) return v > 0 ? 'inf' : '-inf';
  const abs = Math.abs(v);
  // Python switches to exponent notation below 1e-4 and from 1e16.
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e16)) {
    const [mant, exp] = v.toExponential().split('e');
    const e = Number(exp);
    const digits = String(Math.abs(e)).padStart(2, '0');
    return `${mant}e${e < 0 ? '-' : '+'}${digits}`;
  }
  const s = String(v);
  return Number.isInteger(v) ? `${s}.0` : s;
}

/** Python `repr()` of a str: single quotes unless the text holds ' and no ". */
export function reprString(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '\\') out += '\\\\';
    else if (ch === quote) out += `\\${quote}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c === 0x7f) out += `\\x${c.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return out + quote;
}

/** Python `repr()` of a value produced by `json.loads`. */
export function pyRepr(v: PyValue): string {
  if (v === null) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return reprString(v);
  if (v instanceof PyFloat) return reprFloat(v.value);
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(', ')}]`;
  return `{${[...v].map(([k, x]) => `${reprString(k)}: ${pyRepr(x)}`).join(', ')}}`;
}

function dumpString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    const c = s.charCodeAt(i);
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    // ensure_ascii: everything outside ' '..'~' as \uXXXX (UTF-16 units, as Python does).
    else if (c < 0x20 || c > 0x7e) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return out + '"';
}

/** Plain JS data accepted by `pyJsonDumps`. Object key order is kept. */
export type JsonData = null | boolean | number | string | JsonData[] | { [k: string]: JsonData };

/** Python `json.dumps(obj)` with default arguments. */
export function pyJsonDumps(v: JsonData): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : reprFloat(v);
  if (typeof v === 'string') return dumpString(v);
  if (Array.isArray(v)) return `[${v.map(pyJsonDumps).join(', ')}]`;
  return `{${Object.entries(v)
    .map(([k, x]) => `${dumpString(k)}: ${pyJsonDumps(x)}`)
    .join(', ')}}`;
}
