#!/usr/bin/env node
// `prepare`: build everything (`npm run build`) unless it is built already. `npm ci` on a fresh
// checkout builds; running `npx criu` in the repository root makes npm install this package into
// its npx cache, which runs `prepare` in this very directory: that must not rebuild (node-gyp would
// delete the addon under running programs) when nothing is missing.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outputs = [
  'build/Release/criu_native.node',
  'native/stub/criu-stub',
  'native/stub/track-holder',
  'dist/src/cli/criu.js',
  'dist/bundle/criu.cjs',
  'dist/proto-schema.json',
  'test/fixtures/bin/cr_basic',
];
if (process.env.CRIU_TS_FORCE_BUILD === undefined && outputs.every((p) => existsSync(join(root, p)))) process.exit(0);
execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
