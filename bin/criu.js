#!/usr/bin/env node
// Launcher of `criu`: the compiled CLI lives in dist/ (npm run build:ts).
import('../dist/src/cli/criu.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/src/cli/criu.js')) {
    process.stderr.write("criu: dist/ is not built: run 'npm run build:ts' in the criu-ts checkout\n");
  } else {
    process.stderr.write(`Error (criu): ${err && err.message ? err.message : String(err)}\n`);
  }
  process.exitCode = 1;
});
