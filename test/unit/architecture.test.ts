/**
 * The folder rules of docs/architecture.md, checked on the sources: which folder may import
 * which, and no import cycle between files. Reads imports as text (static `from`, `require()`
 * and `import()` of relative paths); a rule broken here is a design change to discuss, not a
 * test to loosen.
 */
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');

/** Folder (area) -> the areas it may import besides itself. */
const ALLOWED: Record<string, string[]> = {
  'nbd/codec': [],
  core: ['nbd/codec'],
  checksum: ['core'],
  nbd: ['core', 'nbd/codec'],
  layers: ['core', 'nbd/codec'],
  backends: ['core', 'nbd/codec', 'checksum'],
  engine: ['core'],
  export: ['core', 'nbd/codec', 'layers', 'backends'],
  cli: ['core', 'nbd/codec', 'nbd', 'layers', 'backends', 'export', 'engine', 'checksum', 'sim'],
  // The simulators are test and demo tools: they may use the product's pieces, never its CLI.
  sim: ['core', 'nbd/codec', 'checksum', 'engine'],
  // The library's entry point re-exports the public pieces.
  index: ['core', 'nbd/codec', 'nbd', 'layers', 'backends', 'export', 'engine', 'checksum', 'cli', 'sim'],
};

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? walk(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

function areaOf(rel: string): string {
  const parts = rel.split('/');
  if (parts[0] === 'sim') return 'sim';
  if (parts.length === 2) return parts[1] === 'index.ts' ? 'index' : `loose:${parts[1]}`;
  if (parts[1] === 'nbd' && parts[2] === 'codec') return 'nbd/codec';
  return parts[1];
}

const files = [...walk(path.join(ROOT, 'src')), ...walk(path.join(ROOT, 'sim'))].map((f) => path.relative(ROOT, f));

/** file -> the project files it imports. */
const graph = new Map<string, string[]>();
for (const f of files) {
  const text = readFileSync(path.join(ROOT, f), 'utf8');
  const targets: string[] = [];
  for (const m of text.matchAll(/(?:from|require\(|import\()\s*'(\.[^']*)'/g)) {
    const base = path.join(path.dirname(f), m[1]);
    const t = [`${base}.ts`, path.join(base, 'index.ts')].find((c) => existsSync(path.join(ROOT, c)));
    if (!t) throw new Error(`${f}: cannot resolve '${m[1]}'`);
    targets.push(t);
  }
  graph.set(f, targets);
}

test('every source file is in a folder that has rules (no loose files in src/ but index.ts)', () => {
  const unknown = files.filter((f) => !(areaOf(f) in ALLOWED));
  expect(unknown).toEqual([]);
});

test('each folder imports only the folders its rules allow', () => {
  const broken: string[] = [];
  for (const [f, targets] of graph) {
    const from = areaOf(f);
    for (const t of targets) {
      const to = areaOf(t);
      if (to !== from && !(ALLOWED[from] ?? []).includes(to)) broken.push(`${f} -> ${t} (${from} may not import ${to})`);
    }
  }
  expect(broken).toEqual([]);
});

test('the NBD codec is pure: no sockets, files, timers or logging', () => {
  const impure = files
    .filter((f) => areaOf(f) === 'nbd/codec')
    .filter((f) => /from '(node:)?(net|tls|fs|fs\/promises|child_process|http|https|timers)'|from 'pino'/.test(readFileSync(path.join(ROOT, f), 'utf8')));
  expect(impure).toEqual([]);
});

test('no import cycle between files', () => {
  const state = new Map<string, 'open' | 'done'>();
  const cycles: string[] = [];
  const visit = (f: string, stack: string[]): void => {
    if (state.get(f) === 'done') return;
    if (state.get(f) === 'open') {
      cycles.push([...stack.slice(stack.indexOf(f)), f].join(' -> '));
      return;
    }
    state.set(f, 'open');
    for (const t of graph.get(f) ?? []) visit(t, [...stack, f]);
    state.set(f, 'done');
  };
  for (const f of graph.keys()) visit(f, []);
  expect(cycles).toEqual([]);
});
