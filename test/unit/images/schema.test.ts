// The image schema loaded on demand (src/images/schema.ts, LazySchema): a type loaded alone is
// built and resolved exactly as in the whole root (field order, edition features, options, field
// types), it is the very object the whole root later holds, and it encodes like the whole root.
import protobuf from 'protobufjs';
import t from 'tap';
import { decodeEntry, encodeEntry, type ImageEntry } from '../../../src/images/entry-codec.js';
import { IMAGE_KINDS } from '../../../src/images/kinds.js';
import { criuOptions, LazySchema, messageType, schemaOrigin, schemaRoot } from '../../../src/images/schema.js';
import { core as sampleCore } from '../../fixtures/images/samples.js';

// First of all, before anything loads the whole schema: the module's own path, as in `criu dump`.
const originAtStart = schemaOrigin();
const coreAtStart = messageType('core_entry');
const loadedAtStart = coreAtStart.root.nestedArray.length;

const schemaText = JSON.stringify(schemaRoot().toJSON({ keepComments: false }));
const schemaJson = (): protobuf.INamespace => JSON.parse(schemaText) as protobuf.INamespace;
/** The whole root, as Root.fromJSON makes it (what the build generates the coders from). */
const fullRoot = protobuf.Root.fromJSON(schemaJson());

/** Full names of every message type and enum under `ns`. */
function objectNames(ns: protobuf.NamespaceBase, out: { types: string[]; enums: string[] }): typeof out {
  for (const n of ns.nestedArray) {
    if (n instanceof protobuf.Type) out.types.push(n.fullName);
    if (n instanceof protobuf.Enum) out.enums.push(n.fullName);
    if (n instanceof protobuf.Namespace) objectNames(n, out);
  }
  return out;
}
const { types: typeNames, enums: enumNames } = objectNames(fullRoot, { types: [], enums: [] });
const imageTypeNames = [...new Set(IMAGE_KINDS.flatMap((k) => [k.type, k.headType ?? '']).filter((n) => n !== ''))];

interface FeatureBearing {
  _features?: unknown;
}
/** Everything about a message type that its coders and the image code depend on, as plain data. */
function describeType(type: protobuf.Type): unknown {
  return {
    fullName: type.fullName,
    features: (type as FeatureBearing)._features,
    nested: type.nestedArray.map((n) => n.fullName),
    fields: type.fieldsArray.map((f) => ({
      name: f.name,
      id: f.id,
      type: f.type,
      rule: f.rule,
      required: f.required,
      repeated: f.repeated,
      packed: f.packed,
      hasPresence: f.hasPresence,
      delimited: f.delimited,
      features: (f as FeatureBearing)._features,
      options: f.options,
      resolvedType: f.resolvedType?.fullName ?? null,
      defaultValue: String(f.defaultValue),
      typeDefault: String(f.typeDefault),
    })),
  };
}
const describeEnum = (e: protobuf.Enum): unknown => ({
  fullName: e.fullName,
  values: e.values,
  features: (e as FeatureBearing)._features,
});

/** The types and enums of `root` that differ from fullRoot's (described as above). */
function differences(root: protobuf.Root): string[] {
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
  return [
    ...typeNames.filter((n) => !same(describeType(root.lookupType(n)), describeType(fullRoot.lookupType(n)))),
    ...enumNames.filter((n) => !same(describeEnum(root.lookupEnum(n)), describeEnum(fullRoot.lookupEnum(n)))),
  ];
}

const notBuilt = originAtStart === 'parsed' && 'dist/proto-schema.json missing or stale: run npm run build:ts';

t.test('the module loads what messageType needs, then everything for schemaRoot', { skip: notBuilt }, async (t) => {
  t.ok(loadedAtStart < fullRoot.nestedArray.length, `core_entry alone: ${loadedAtStart} top-level objects loaded`);
  t.equal(schemaRoot().lookupType('core_entry'), coreAtStart, 'the same Type object in the whole root');
  t.equal(messageType('.core_entry'), coreAtStart, 'by its full name');
  t.equal(schemaRoot().nestedArray.length, fullRoot.nestedArray.length, 'schemaRoot: everything');
});

t.test('messageType first, then the whole root: same objects, built as in Root.fromJSON', async (t) => {
  const lazy = new LazySchema(schemaJson(), null);
  const first = new Map(typeNames.map((n) => [n, lazy.messageType(n)]));
  const root = lazy.all();
  t.equal(root, lazy.root);
  const problems: string[] = [];
  for (const n of typeNames) {
    if (root.lookupType(n) !== first.get(n)) problems.push(`${n}: another object in the whole root`);
    if (lazy.messageType(n) !== first.get(n)) problems.push(`${n}: another object on a second call`);
  }
  for (const n of enumNames) if (root.lookupEnum(n) !== lazy.root.lookupEnum(n)) problems.push(n);
  t.same(problems, [], `${typeNames.length} types`);
  t.same(differences(root), [], 'fields, features, options and field types as in Root.fromJSON');
});

t.test('the whole root first, then messageType: same objects', async (t) => {
  const lazy = new LazySchema(schemaJson(), null);
  const root = lazy.all();
  t.equal(root.nestedArray.length, fullRoot.nestedArray.length);
  const problems = typeNames.filter((n) => lazy.messageType(n) !== root.lookupType(n));
  t.same(problems, [], `${typeNames.length} types`);
  t.same(differences(root), [], 'as in Root.fromJSON');
});

t.test('each image kind type loaded alone, on a fresh schema', async (t) => {
  const problems: string[] = [];
  for (const name of imageTypeNames) {
    const lazy = new LazySchema(schemaJson(), null);
    const type = lazy.messageType(name);
    // Its closure: every type its fields lead to, resolved as in the whole root.
    const seen = new Set<protobuf.Type>();
    const visit = (ty: protobuf.Type): void => {
      if (seen.has(ty)) return;
      seen.add(ty);
      const expected = JSON.stringify(describeType(fullRoot.lookupType(ty.fullName)));
      if (JSON.stringify(describeType(ty)) !== expected)
        problems.push(`${name}: ${ty.fullName} differs from Root.fromJSON's`);
      for (const f of ty.fieldsArray) if (f.resolvedType instanceof protobuf.Type) visit(f.resolvedType);
    };
    visit(type);
    if (lazy.root.nestedArray.length >= fullRoot.nestedArray.length) problems.push(`${name}: loaded everything`);
    if (lazy.all().lookupType(name) !== type) problems.push(`${name}: another object in the whole root`);
  }
  t.same(problems, [], `${imageTypeNames.length} image types`);
});

t.test('a type loaded alone encodes and decodes like the whole root', async (t) => {
  const check = (name: string, entry: ImageEntry): void => {
    const lazy = new LazySchema(schemaJson(), null);
    const type = lazy.messageType(name);
    const bytes = encodeEntry(type, entry);
    t.ok(bytes.equals(encodeEntry(fullRoot.lookupType(name), entry)), `${name}: same bytes as the whole root`);
    t.same(decodeEntry(type, bytes), decodeEntry(fullRoot.lookupType(name), bytes), `${name}: same decoding`);
    t.ok(lazy.root.nestedArray.length < fullRoot.nestedArray.length, `${name}: not everything loaded`);
  };
  // Nested messages, enums (core_entry.march, seccomp_mode, fd_types), repeated and packed fields.
  check('core_entry', {
    mtype: 1,
    thread_info: { clear_tid_addr: 0x7f00n, gpregs: { ...gpregs(), mode: 1 }, fpregs: fpregs() },
    tc: {
      task_state: 1,
      exit_code: 0,
      personality: 0,
      flags: 0x400000,
      blk_sigset: 0n,
      comm: 'cr_basic',
      timers: { real: itimer(), virt: itimer(), prof: itimer() },
      old_seccomp_mode: 2,
      rlimits: { rlimits: [{ cur: 8388608n, max: 0xffffffffffffffffn }] },
    },
    thread_core: { futex_rla: 0n, futex_rla_len: 24, sched_nice: -2, seccomp_mode: 1, pdeath_sig: 0 },
  });
  check('mm_entry', {
    mm_start_code: 0x400000n,
    mm_end_code: 0x401000n,
    mm_start_data: 0x402000n,
    mm_end_data: 0x403000n,
    mm_start_stack: 0x7ffd0000n,
    mm_start_brk: 0x404000n,
    mm_brk: 0x425000n,
    mm_arg_start: 1n,
    mm_arg_end: 2n,
    mm_env_start: 3n,
    mm_env_end: 4n,
    exe_file_id: 5,
    mm_saved_auxv: [33n, 0x7ffd1000n, 0n, 0n],
    vmas: [{ start: 0x400000n, end: 0x401000n, pgoff: 0n, shmid: 0n, prot: 5, flags: 2, status: 1, fd: -1n }],
    dumpable: 1,
  });
  check('pagemap_entry', { vaddr: 0x400000n, compat_nr_pages: 0, flags: 1, nr_pages: 3n });
  check('fdinfo_entry', { id: 3, flags: 0, type: 1, fd: 0 });
  check('file_entry', {
    type: 1,
    id: 3,
    reg: { id: 3, flags: 0x8002, pos: 0n, fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 }, name: '/tmp/x' },
  });
});

t.test('criu field options are visible on a type loaded alone', async (t) => {
  const lazy = new LazySchema(schemaJson(), null);
  const mm = lazy.messageType('mm_entry');
  t.equal(criuOptions(mm.fields['mm_start_code'] as protobuf.Field).hex, true);
  const reg = lazy.messageType('reg_file_entry');
  t.equal(criuOptions(reg.fields['flags'] as protobuf.Field).flags, 'rfile.flags');
  t.equal(lazy.root.lookup('criu'), null, 'the criu extension waits for the whole root');
  t.ok(lazy.all().lookup('criu') instanceof protobuf.Field, 'then it is there');
});

t.test('names that are not top-level, or unknown', async (t) => {
  const lazy = new LazySchema(schemaJson(), null);
  t.throws(() => lazy.messageType('no_such_entry'), /no such type/);
  t.equal(lazy.root.nestedArray.length, fullRoot.nestedArray.length, 'an unknown name loads everything first');
  const fresh = new LazySchema(schemaJson(), null);
  t.equal(fresh.messageType('core_entry').lookupEnum('march'), fresh.all().lookupEnum('core_entry.march'));
});

const itimer = (): ImageEntry => ({ isec: 1n, iusec: 2n, vsec: 3n, vusec: 4n });

function gpregs(): ImageEntry {
  const names = ['r15', 'r14', 'r13', 'r12', 'bp', 'bx', 'r11', 'r10', 'r9', 'r8', 'ax', 'cx', 'dx', 'si', 'di'];
  const more = ['orig_ax', 'ip', 'cs', 'flags', 'sp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs'];
  return Object.fromEntries([...names, ...more].map((n, i) => [n, BigInt(i * 0x1000 + 7)]));
}

/** The floating-point registers of the sample core image (test/fixtures/images/samples.ts). */
function fpregs(): ImageEntry {
  return (sampleCore['thread_info'] as ImageEntry)['fpregs'] as ImageEntry;
}
