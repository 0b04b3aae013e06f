// Builds web/ into api/static/ (committed: the Python package serves it with no build step at run time).
// build-info.json records a hash of every input (buildhash.mjs); tests/test_dashboard_bundle.py recomputes it.
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { defineConfig } from 'vite';
import { sourcesHash } from './buildhash.mjs';

const here = import.meta.dirname;
const outDir = process.env.TRAINSCOPE_UI_OUT ? resolve(process.env.TRAINSCOPE_UI_OUT) : resolve(here, '../api/static');

export default defineConfig({
  root: here,
  base: './', // relative asset URLs: the API may sit behind a path prefix
  logLevel: 'warn',
  build: {
    outDir,
    emptyOutDir: true,
    assetsDir: 'assets',
    target: 'es2022',
    sourcemap: false,
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
  plugins: [{
    name: 'trainscope-build-info',
    closeBundle() {
      const { sha256, files } = sourcesHash(here);
      writeFileSync(resolve(outDir, 'build-info.json'),
        `${JSON.stringify({ sources_sha256: sha256, files, built_by: 'npm run build (web/)' }, null, 2)}\n`);
    },
  }],
});
