#!/usr/bin/env node
// Build step after tsc: bundle the `criu` command (dist/src/cli/criu.js and everything it imports,
// protobufjs and commander included) into one module, dist/bundle/criu.mjs, which bin/criu.js
// runs. Why: Node 20 resolves, reads and compiles each of the ~140 ES modules of dist/ on every
// start, ~85 ms of a `criu dump` or `criu restore` here; one module costs a fraction of that.
// The native addon, the stub and proto/ are still found by walking up from the module's path.
// Also saves the parsed image schema (dist/proto-schema.json, see src/images/schema.ts) and the
// message types' precompiled protobufjs coders (dist/proto-coders.cjs and its V8 code cache
// dist/proto-coders.cjs.v8cache, see src/images/static-coders.ts): made by this very node.
import { build } from 'esbuild';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const protobufjsVersion = createRequire(join(root, 'package.json'))('protobufjs/package.json').version;
await build({
  entryPoints: [join(root, 'dist/src/cli/criu.js')],
  outfile: join(root, 'dist/bundle/criu.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  logLevel: 'warning',
  // The protobufjs bundled: precompiled coders made by another are not taken (static-coders.ts).
  define: { CRIU_TS_BUNDLED_PROTOBUFJS: JSON.stringify(protobufjsVersion) },
  // CommonJS packages (protobufjs, commander) call require(): give the module one.
  banner: {
    js: "import { createRequire as __criuTsRequire } from 'node:module'; const require = __criuTsRequire(import.meta.url);",
  },
});
const { writeSchemaCache } = await import(join(root, 'dist/src/images/schema.js'));
writeSchemaCache();
