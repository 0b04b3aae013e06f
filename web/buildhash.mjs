// The hash of everything the bundle is built from. Mirrored in tests/test_dashboard_bundle.py (same files,
// same order, same framing): sha256 over, for each file in sorted order, its path, a NUL, its bytes, a NUL.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

export const INPUTS = ['index.html', 'package.json', 'package-lock.json', 'vite.config.mjs', 'buildhash.mjs', 'src'];

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out); else out.push(p);
  }
}

export function sourcesHash(root) {
  const paths = [];
  for (const item of INPUTS) {
    const p = join(root, item);
    if (statSync(p).isDirectory()) walk(p, paths); else paths.push(p);
  }
  const files = paths.map((p) => relative(root, p).split('\\').join('/')).sort();
  const h = createHash('sha256');
  for (const f of files) {
    h.update(f);
    h.update('\0');
    h.update(readFileSync(join(root, f)));
    h.update('\0');
  }
  return { sha256: h.digest('hex'), files };
}
