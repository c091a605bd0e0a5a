#!/usr/bin/env node
// Launcher of `criu`: the compiled CLI lives in dist/ (npm run build:ts), bundled into one module
// (bin/bundle.js says why); the unbundled tree is used when the bundle is missing or older.
import { statSync } from 'node:fs';
import { URL } from 'node:url';

const mtime = (rel) => {
  try {
    return statSync(new URL(rel, import.meta.url)).mtimeMs;
  } catch {
    return -1;
  }
};
const bundle = mtime('../dist/bundle/criu.mjs');
const entry =
  bundle >= 0 && bundle >= mtime('../dist/src/cli/criu.js') ? '../dist/bundle/criu.mjs' : '../dist/src/cli/criu.js';
import(entry).catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/src/cli/criu.js')) {
    process.stderr.write("criu: dist/ is not built: run 'npm run build:ts' in the criu-ts checkout\n");
  } else {
    process.stderr.write(`Error (criu): ${err && err.message ? err.message : String(err)}\n`);
  }
  process.exitCode = 1;
});
