/**
 * The fake engine's subset of the engine's search language (the `search` query parameter of
 * collections): `key=value` terms joined by `and`, values optionally in double quotes, `*` as a
 * wildcard, compared without regard to case. Enough for "name=data" and
 * "datacenter=Default and status=up".
 */

export type SearchTerm = { key: string; value: string };

export class SearchError extends Error {}

export function parseSearch(q: string | null | undefined): SearchTerm[] {
  if (!q || q.trim() === '') return [];
  return q.split(/\s+and\s+/i).map((part) => {
    const m = /^\s*([A-Za-z_.]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|(\S+))\s*$/.exec(part);
    if (!m) throw new SearchError(`cannot parse search term '${part}'`);
    return { key: m[1].toLowerCase(), value: m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3] };
  });
}

/** Does `actual` match the search `pattern` (case-insensitive, * wildcard)? */
export function matches(pattern: string, actual: string | undefined): boolean {
  if (actual === undefined) return false;
  const re = new RegExp(`^${pattern.split('*').map(escapeRe).join('.*')}$`, 'i');
  return re.test(actual);
}

/** Keep the items for which every term's key has a matching value; unknown keys throw. */
export function filterBySearch<T>(items: T[], terms: SearchTerm[], fields: Record<string, (item: T) => string | undefined>): T[] {
  for (const t of terms) if (!fields[t.key]) throw new SearchError(`unknown search key '${t.key}'`);
  return items.filter((item) => terms.every((t) => matches(t.value, fields[t.key](item))));
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
