/**
 * imageio's validate module: typed reads of JSON messages and query strings, with its exact
 * error texts (note the quoting differs between enum and integer/boolean, as upstream).
 */
import { ImageioHttpError } from './http-errors';
import { PyDict, PyValue, pyRepr, reprString } from './py-format';

type Lookup = PyDict | Map<string, string>;

function pyList(values: string[]): string {
  return `[${[...values].sort().map(reprString).join(', ')}]`;
}

export function validateEnum<T extends string>(d: Lookup, name: string, values: readonly T[], def?: T): T {
  if (!d.has(name)) {
    if (def !== undefined) return def;
    throw new ImageioHttpError(400, `Missing required value for ${name}`);
  }
  const val = d.get(name) as PyValue;
  if (typeof val !== 'string' || !values.includes(val as T)) {
    throw new ImageioHttpError(
      400,
      `Unsupported value ${pyRepr(val)} for ${reprString(name)}, expecting one of ${pyList([...values])}`,
    );
  }
  return val as T;
}

export function validateInteger(d: PyDict, name: string, minval: number, def?: number): number {
  if (!d.has(name)) {
    if (def !== undefined) return def;
    throw new ImageioHttpError(400, `Missing required value for ${reprString(name)}`);
  }
  let val = d.get(name) as PyValue;
  // Python: isinstance(True, int) is true.
  if (typeof val === 'boolean') val = val ? 1 : 0;
  if (typeof val !== 'number') {
    throw new ImageioHttpError(400, `Integer required ${pyRepr(val)}`);
  }
  if (val < minval) throw new ImageioHttpError(400, `Invalid value ${val} < ${minval}`);
  return val;
}

export function validateBoolean(d: PyDict, name: string, def: boolean): boolean {
  if (!d.has(name)) return def;
  const val = d.get(name) as PyValue;
  if (typeof val !== 'boolean') throw new ImageioHttpError(400, `Boolean required ${pyRepr(val)}`);
  return val;
}
