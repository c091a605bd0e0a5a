// Precompiled protobufjs coders (src/images/static-coders.ts): on the CRIU 4.2 golden images they
// must decode and encode exactly like protobufjs's own generated coders, and a coders file made for
// another schema (or a missing/broken one) must leave protobufjs's codegen in place.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import protobuf from 'protobufjs';
import t, { type Test } from 'tap';
import { decodeEntry, encodeEntry, entryToMessage } from '../../../src/images/entry-codec.js';
import { entryType, ImageReader } from '../../../src/images/image-reader.js';
import { LazySchema, schemaOrigin, schemaRoot } from '../../../src/images/schema.js';
import {
  codersFit,
  hasStaticCoders,
  installStaticCodersOn,
  loadStaticCoders,
  writeStaticCoders,
  type CodersStamp,
  type StaticCoders,
} from '../../../src/images/static-coders.js';

const GOLDEN = '/work/shared/golden';

// Every root below is made from the same JSON, as the build and `criu` make theirs.
const schemaText = JSON.stringify(schemaRoot().toJSON({ keepComments: false }));
const freshRoot = (): protobuf.Root => {
  const r = protobuf.Root.fromJSON(JSON.parse(schemaText) as protobuf.INamespace);
  r.resolveAll();
  return r;
};
const stamp: CodersStamp = { files: ['a.proto 1 2'], id: 'test-stamp' };

/** Write a coders file for the schema into a fresh test dir; its path. */
function makeCoders(t: Test): string {
  const path = join(t.testdir({}), 'proto-coders.cjs');
  writeStaticCoders(freshRoot(), stamp, path);
  return path;
}

const dirs = existsSync(GOLDEN) ? readdirSync(GOLDEN).filter((d) => d.startsWith('criu-')) : [];
const noGolden = dirs.length === 0 && 'golden images missing: /work/shared/golden/criu-* not found';

type Lookup = (name: string) => protobuf.Type;

/**
 * Decode and re-encode every entry of the golden images with the types of `lookupFor()` (called
 * once per image) and with a protobufjs-codegen root: same decodings, byte-identical encodings
 * (and the original bytes).
 */
async function compareOnGolden(t: Test, lookupFor: () => Lookup): Promise<void> {
  const codegenRoot = freshRoot();
  const typesSeen = new Set<string>();
  let entries = 0;
  for (const d of dirs) {
    const dir = join(GOLDEN, d);
    for (const f of readdirSync(dir).filter((f) => existsSync(join(dir, f + '.json')))) {
      const file = readFileSync(join(dir, f));
      const reader = await ImageReader.open(join(dir, f));
      const lookup = lookupFor();
      const problems: string[] = [];
      const decodedStatic: unknown[] = [];
      const decodedCodegen: unknown[] = [];
      for await (const rec of reader.entries()) {
        const len = file.readUInt32LE(rec.offset);
        const body = file.subarray(rec.offset + 4, rec.offset + 4 + len);
        const name = entryType(reader.kind, rec.index).fullName;
        const st = lookup(name);
        const cg = codegenRoot.lookupType(name);
        const a = decodeEntry(st, body);
        const b = decodeEntry(cg, body);
        const encA = encodeEntry(st, a);
        const encB = encodeEntry(cg, b);
        if (!hasStaticCoders(st)) problems.push(`${name}: static coders not installed`);
        if (hasStaticCoders(cg)) problems.push(`${name}: static coders in the codegen root`);
        if (!encA.equals(encB)) problems.push(`entry ${rec.index}: encodings differ`);
        if (!encA.equals(body)) problems.push(`entry ${rec.index}: not the original bytes`);
        decodedStatic.push(a);
        decodedCodegen.push(b);
        typesSeen.add(name);
        entries++;
      }
      t.same(decodedStatic, decodedCodegen, `${d}/${f}: same decodings`);
      t.same(problems, [], `${d}/${f}: byte-identical encodings`);
    }
  }
  t.ok(entries > 30 && typesSeen.size > 10, `${entries} entries of ${typesSeen.size} message types compared`);
}

/** The coders on every type of `root`, if they fit `stamp` (what schema.ts does type by type). */
function installStaticCoders(root: protobuf.Root, coders: StaticCoders, stamp: CodersStamp): boolean {
  if (!codersFit(coders, stamp)) return false;
  installStaticCodersOn([root], coders);
  return true;
}

t.test('golden images: static coders decode and encode like protobufjs codegen', { skip: noGolden }, async (t) => {
  const coders = loadStaticCoders(makeCoders(t));
  if (coders === null) return t.fail('the coders file does not load');
  const staticRoot = freshRoot();
  t.ok(installStaticCoders(staticRoot, coders, stamp), 'coders taken for their own stamp');
  await compareOnGolden(t, () => (name) => staticRoot.lookupType(name));
  // Nested messages go through the static coders too (core_entry holds thread_info, tc, ...).
  const core = staticRoot.lookupType('core_entry');
  t.match(String((core.encode as { name?: string }).name), /\$encode$/);
  t.ok(hasStaticCoders(staticRoot.lookupType('thread_core_entry')), 'nested types installed on use');
});

t.test('golden images: types loaded on demand (a fresh LazySchema per image)', { skip: noGolden }, async (t) => {
  const coders = loadStaticCoders(makeCoders(t));
  if (coders === null) return t.fail('the coders file does not load');
  const schemas: LazySchema[] = [];
  // What `criu dump` and `restore` do: messageType() on a schema with nothing loaded yet.
  await compareOnGolden(t, () => {
    const lazy = new LazySchema(JSON.parse(schemaText) as protobuf.INamespace, coders);
    schemas.push(lazy);
    return (name) => lazy.messageType(name);
  });
  const total = freshRoot().nestedArray.length;
  const partial = schemas.filter((s) => s.root.nestedArray.length < total).length;
  t.equal(partial, schemas.length, `each image's types loaded without the whole schema (${total} objects)`);
});

t.test('the ctor, verify, fromObject and toObject of a static type', async (t) => {
  const coders = loadStaticCoders(makeCoders(t));
  if (coders === null) return t.fail('the coders file does not load');
  const staticRoot = freshRoot();
  installStaticCoders(staticRoot, coders, stamp);
  const st = staticRoot.lookupType('pstree_entry');
  const cg = freshRoot().lookupType('pstree_entry');
  const entry = { pid: 12, ppid: 1, pgid: 12, sid: 12, threads: [12, 13] };
  const msgA = entryToMessage(st, entry);
  const msgB = entryToMessage(cg, entry);
  t.ok(msgA instanceof st.ctor && msgA instanceof protobuf.Message, 'messages are of the type ctor');
  t.equal(st.ctor.name, 'pstree_entry$ctor');
  t.same(st.create().threads, [], 'ctor initialises repeated fields');
  t.same(st.encode(msgA).finish(), cg.encode(msgB).finish(), 'same bytes');
  // Off the image paths, protobufjs's own setup takes over lazily: same results.
  t.equal(st.verify({ pid: 'x' }), cg.verify({ pid: 'x' }));
  t.same(st.toObject(msgA), cg.toObject(msgB));
  t.same(st.toObject(st.fromObject({ pid: 3, threads: [3] })), cg.toObject(cg.fromObject({ pid: 3, threads: [3] })));
  t.ok(st.decode(st.encode(msgA).finish()) instanceof st.ctor, 'decode after the codegen setup still works');
});

t.test('a stamp mismatch, a missing or broken file: protobufjs codegen', async (t) => {
  const path = makeCoders(t);
  const coders = loadStaticCoders(path);
  if (coders === null) return t.fail('the coders file does not load');
  const r = freshRoot();
  t.notOk(installStaticCoders(r, coders, { files: stamp.files, id: 'another-build' }), 'other build stamp');
  t.notOk(installStaticCoders(r, coders, { files: ['a.proto 1 3'], id: stamp.id }), 'other .proto fingerprint');
  t.notOk(installStaticCoders(r, { ...coders, codegen: 'protobufjs 0.0.1' }, stamp), 'made by another protobufjs');
  const type = r.lookupType('pagemap_entry');
  const entry = { vaddr: 0x400000n, compat_nr_pages: 0, flags: 1, nr_pages: 3n };
  const bytes = encodeEntry(type, entry);
  t.notOk(hasStaticCoders(type), 'not installed');
  t.equal((type.encode as { name?: string }).name, '', 'protobufjs generated encoder (anonymous)');
  t.same(decodeEntry(type, bytes), entry, 'round trip');

  t.equal(loadStaticCoders(path + '.missing'), null, 'missing file');
  const broken = join(dirname(path), 'broken.cjs'); // (one testdir per test: beside the other)
  writeFileSync(broken, 'exports.files = [;');
  t.equal(loadStaticCoders(broken), null, 'syntax error');
  writeFileSync(path + '.v8cache', 'not a code cache');
  t.ok(loadStaticCoders(path) !== null, 'a rejected code cache only means parsing the file');
});

// Only when dist/ is built and current (otherwise schema.ts parses the .proto files).
const origin = schemaOrigin();
const notBuilt =
  (origin === 'parsed' && 'dist/proto-schema.json missing or stale: run npm run build:ts') ||
  (!existsSync(new URL('../../../dist/proto-coders.cjs', import.meta.url)) &&
    'dist/proto-coders.cjs missing: run npm run build:ts');

t.test('schema.ts takes the build coders with its schema cache', { skip: notBuilt }, async (t) => {
  t.equal(origin, 'cache+coders');
  t.ok(hasStaticCoders(schemaRoot().lookupType('inventory_entry').setup()), 'inventory_entry coders installed');
  // The very file the build made (dist/proto-coders.cjs), on the golden images.
  if (dirs.length > 0) await compareOnGolden(t, () => (name) => schemaRoot().lookupType(name));
});
