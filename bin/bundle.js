#!/usr/bin/env node
// Build step after tsc: bundle the `criu` command (dist/src/cli/criu.js and everything it imports,
// commander included) into one CommonJS file, dist/bundle/criu.cjs, which
// bin/criu.js runs with a V8 code cache. Why: Node 20 resolves, reads and compiles each of the
// ~140 ES modules of dist/ on every start, ~85 ms of a `criu dump` or `criu restore` here; one
// module costs a fraction of that, and CommonJS source can be compiled through vm.Script with
// V8's code cache (Node 20 has no compile cache for ES modules): ~25 ms less again.
// The native addon, the stub and proto/ are still found by walking up from the module's path.
// Also saves the parsed image schema (dist/proto-schema.json, see src/images/schema.ts): with it,
// protobufjs is not loaded at run time.
import { build } from 'esbuild';
import { readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = join(root, 'dist/bundle');
await build({
  entryPoints: [join(root, 'dist/src/cli/criu.js')],
  outfile: join(outDir, 'criu.cjs'),
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  logLevel: 'warning',
  define: {
    // The sources are ES modules that find their files from import.meta.url.
    'import.meta.url': '__criuTsModuleUrl',
  },
  banner: { js: "const __criuTsModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
});
// Code caches of an earlier bundle (bin/criu.js makes them at run time), with the temporary file
// of a run killed while writing one, the ES module bundle of earlier versions, and the
// precompiled protobufjs coders they used.
for (const f of readdirSync(outDir)) if (/\.v8cache(\.\d+\.tmp)?$/.test(f) || f === 'criu.mjs') rmSync(join(outDir, f));
for (const f of ['proto-coders.cjs', 'proto-coders.cjs.v8cache']) rmSync(join(root, 'dist', f), { force: true });
const { writeSchemaCache } = await import(join(root, 'dist/src/images/schema.js'));
writeSchemaCache();
