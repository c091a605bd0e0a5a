#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node
// Launcher of `criu`. The compiled CLI lives in dist/ (npm run build:ts), bundled into one
// CommonJS file (bin/bundle.js says why), which runs here with V8's code cache; the unbundled tree
// is used when the bundle is missing or older than it.
//
// The code cache: V8 can save the compiled code of a script and take it back on the next start
// instead of parsing and compiling again (~25 ms of every command here). A cache holds only the
// functions that had run when it was made, so there is one per command (dump, restore, ...),
// made at the end of a command's first run that had none, and kept next to the bundle:
// dist/bundle/criu.cjs.COMMAND.v8cache. Its first line is the bundle's size and mtime: a cache of
// another build is made again, never used (V8 itself only checks the source's length). Made
// best effort: an unwritable dist/ just means no cache. CRIU_TS_CODE_CACHE=0 turns it off.
// Its first line starts node without NODE_EXTRA_CA_CERTS: node reads and parses that file of
// certificates at every start (~40 ms here, where it names the system's whole bundle), and criu-ts
// never uses it (its --tls, the page server's and criu-migrate's, names its CAs). Run as `node bin/criu.js`, that start has paid for it already; the
// variable is still taken out of the environment of the processes criu-ts starts.
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { Buffer } from 'node:buffer';
import { Module } from 'node:module';
import { setTimeout } from 'node:timers';
import { fileURLToPath, URL } from 'node:url';
import vm from 'node:vm';

delete process.env.NODE_EXTRA_CA_CERTS;

const here = (rel) => fileURLToPath(new URL(rel, import.meta.url));
const statOf = (file) => {
  try {
    return statSync(file);
  } catch {
    return null;
  }
};

function runTree() {
  import('../dist/src/cli/criu.js').catch((err) => {
    if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/src/cli/criu.js')) {
      process.stderr.write("criu: dist/ is not built: run 'npm run build:ts' in the criu-ts checkout\n");
    } else {
      process.stderr.write(`Error (criu): ${err && err.message ? err.message : String(err)}\n`);
    }
    process.exitCode = 1;
  });
}

/**
 * Commands with a code cache of their own: criu(8)'s, and swrk (an RPC worker runs dumps, not what
 * `criu --help` runs). Any other argument list shares "other".
 */
const COMMAND = /^(pre-dump|dump|restore|show|check|page-server|exec|service|swrk|dedup|cpuinfo)$/;

function runBundle(file, st) {
  const source = readFileSync(file, 'utf8');
  const stamp = `${st.size} ${st.mtimeMs}\n`;
  const isCaching = process.env.CRIU_TS_CODE_CACHE !== '0';
  const command = process.argv.slice(2).find((a) => COMMAND.test(a)) ?? 'other';
  const cacheFile = `${file}.${command}.v8cache`;
  const cachedData = isCaching ? readCache(cacheFile, stamp) : undefined;
  const script = new vm.Script(Module.wrap(source), {
    filename: file,
    cachedData,
    // The bundle has no import() of its own (esbuild inlines them); node < 20.12 lacks the constant.
    importModuleDynamically: vm.constants?.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
  if (isCaching && (cachedData === undefined || script.cachedDataRejected === true)) {
    // At exit, or after a few seconds for a command that stays (restore waits for its task).
    let isSaved = false;
    const save = () => {
      if (isSaved) return;
      isSaved = true;
      saveCache(cacheFile, stamp, script);
    };
    process.once('exit', save);
    setTimeout(save, 3000).unref();
  }
  const module = { exports: {} };
  script.runInThisContext()(module.exports, Module.createRequire(file), module, file, here('../dist/bundle'));
}

function readCache(cacheFile, stamp) {
  try {
    const data = readFileSync(cacheFile);
    const nl = data.indexOf(10);
    return nl >= 0 && data.toString('latin1', 0, nl + 1) === stamp ? data.subarray(nl + 1) : undefined;
  } catch {
    return undefined;
  }
}

function saveCache(cacheFile, stamp, script) {
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, Buffer.concat([Buffer.from(stamp, 'latin1'), script.createCachedData()]), { mode: 0o644 });
    renameSync(tmp, cacheFile);
  } catch {
    rmSync(tmp, { force: true }); // not writable, or full: no cache
  }
}

const bundle = here('../dist/bundle/criu.cjs');
const bundleStat = statOf(bundle);
if (bundleStat !== null && bundleStat.mtimeMs >= (statOf(here('../dist/src/cli/criu.js'))?.mtimeMs ?? -1))
  runBundle(bundle, bundleStat);
else runTree();
