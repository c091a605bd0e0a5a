#!/usr/bin/env node
// Build step after tsc: bundle the `criu` command (dist/src/cli/criu.js and everything it imports,
// protobufjs and commander included) into one module, dist/bundle/criu.mjs, which bin/criu.js
// runs. Why: Node 20 resolves, reads and compiles each of the ~140 ES modules of dist/ on every
// start, ~85 ms of a `criu dump` or `criu restore` here; one module costs a fraction of that.
// The native addon, the stub and proto/ are still found by walking up from the module's path.
// Also saves the parsed image schema (dist/proto-schema.json, see src/images/schema.ts).
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
await build({
  entryPoints: [join(root, 'dist/src/cli/criu.js')],
  outfile: join(root, 'dist/bundle/criu.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  logLevel: 'warning',
  // CommonJS packages (protobufjs, commander) call require(): give the module one.
  banner: {
    js: "import { createRequire as __criuTsRequire } from 'node:module'; const require = __criuTsRequire(import.meta.url);",
  },
});
const { writeSchemaCache } = await import(join(root, 'dist/src/images/schema.js'));
writeSchemaCache();
