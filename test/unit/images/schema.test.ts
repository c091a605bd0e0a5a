// The image schema and codec (src/images/schema.ts, proto.ts, entry-codec.ts) against protobufjs,
// which the build parses the .proto files with and which was criu-ts's codec before: every
// message type has the same fields (numbers, types, rules, options, resolved field types), and
// every message type encodes to the same bytes and decodes to the same entries, for the sample
// entries below and for random ones (every field kind, nested messages, repeated fields, negative
// and 64-bit values). Unknown fields, packed runs and bad bodies are checked by hand.
import protobuf from 'protobufjs';
import t from 'tap';
import {
  decodeEntry,
  encodeEntry,
  UNKNOWN_FIELDS,
  WireError,
  type EntryValue,
  type ImageEntry,
} from '../../../src/images/entry-codec.js';
import { EnumType, MessageType, ProtoSchema, type ObjectJson } from '../../../src/images/proto.js';
import { criuOptions, messageType, schemaOrigin, schemaRoot } from '../../../src/images/schema.js';
import { critJsonToEntry, entryToCritJson } from '../../../src/images/crit-json.js';
import { core as sampleCore } from '../../fixtures/images/samples.js';

const originAtStart = schemaOrigin();

/** protobufjs's reflection of the very JSON our schema is made from. */
const ourSchema = schemaRoot();
const fullRoot = protobuf.Root.fromJSON(ourSchema.toJSON() as protobuf.INamespace);
fullRoot.resolveAll();

/** Every CRIU message type (not google.protobuf's) of protobufjs's root. */
function pbTypes(ns: protobuf.NamespaceBase, out: protobuf.Type[] = []): protobuf.Type[] {
  for (const n of ns.nestedArray) {
    if (n.fullName.startsWith('.google')) continue;
    if (n instanceof protobuf.Type) out.push(n);
    if (n instanceof protobuf.Namespace) pbTypes(n, out);
  }
  return out;
}
const allPbTypes = pbTypes(fullRoot);

t.test('the schema comes from the build', async (t) => {
  t.equal(originAtStart, 'cache', 'dist/proto-schema.json (npm test builds it)');
});

t.test('every message type: the fields protobufjs sees', async (t) => {
  const problems: string[] = [];
  for (const pt of allPbTypes) {
    const ours = messageType(pt.fullName);
    if (ours.fullName !== pt.fullName) problems.push(`${pt.fullName}: named ${ours.fullName}`);
    const theirs = [...pt.fieldsArray].sort((a, b) => a.id - b.id);
    const mine = ours.fieldsByNumber;
    if (mine.length !== theirs.length) problems.push(`${pt.fullName}: ${mine.length} fields, not ${theirs.length}`);
    theirs.forEach((pf, i) => {
      const f = mine[i];
      const want = {
        name: pf.name,
        id: pf.id,
        type: pf.type,
        repeated: pf.repeated,
        required: pf.required,
        packed:
          pf.repeated &&
          pf.packed &&
          !(pf.resolvedType instanceof protobuf.Type) &&
          pf.type !== 'string' &&
          pf.type !== 'bytes',
        long: pf.long,
        resolved: pf.resolvedType?.fullName ?? null,
        options: JSON.stringify(pf.options ?? {}),
      };
      const got =
        f === undefined
          ? null
          : {
              name: f.name,
              id: f.id,
              type: f.type,
              repeated: f.repeated,
              required: f.required,
              packed: f.packed,
              long: f.long,
              resolved: f.resolvedType?.fullName ?? null,
              options: JSON.stringify(f.options),
            };
      if (JSON.stringify(got) !== JSON.stringify(want))
        problems.push(`${pt.fullName}.${pf.name}: ${JSON.stringify(got)} vs ${JSON.stringify(want)}`);
      const rt = f?.resolvedType;
      if (pf.resolvedType instanceof protobuf.Enum) {
        if (!(rt instanceof EnumType) || JSON.stringify(rt.values) !== JSON.stringify(pf.resolvedType.values))
          problems.push(`${pt.fullName}.${pf.name}: enum values differ`);
      } else if (pf.resolvedType instanceof protobuf.Type && !(rt instanceof MessageType)) {
        problems.push(`${pt.fullName}.${pf.name}: not a message`);
      }
    });
  }
  t.same(problems, [], `${allPbTypes.length} message types`);
  t.equal(messageType('.core_entry'), messageType('core_entry'), 'one object per type, by any of its names');
  t.throws(() => messageType('no_such_entry'), /no such type: no_such_entry/);
  t.throws(() => messageType('core_entry.march'), /no such type/, 'an enum is not a message type');
});

t.test('criu field options', async (t) => {
  t.equal(criuOptions(messageType('mm_entry').fields['mm_start_code']!).hex, true);
  t.equal(criuOptions(messageType('reg_file_entry').fields['flags']!).flags, 'rfile.flags');
  t.equal(criuOptions(messageType('reg_file_entry').fields['name']!).hex, false);
});

t.test('scoping: nested names first, then out to the root; a leading dot from the root', async (t) => {
  const s = new ProtoSchema({
    nested: {
      x: { values: { TOP: 1 } },
      m: {
        fields: { a: { type: 'x', id: 1 }, b: { type: '.x', id: 2 }, c: { type: 'n.y', id: 3 } },
        nested: {
          x: { values: { INNER: 2 } },
          n: { fields: { z: { type: 'x', id: 1 } }, nested: { y: { values: {} } } },
        },
      },
      bad: { fields: { q: { type: 'm.nope', id: 1 } } },
    },
  } as ObjectJson);
  const m = s.messageType('m');
  t.equal(m.fields['a']!.resolvedType?.fullName, '.m.x');
  t.equal(m.fields['b']!.resolvedType?.fullName, '.x');
  t.equal(m.fields['c']!.resolvedType?.fullName, '.m.n.y');
  t.equal(s.messageType('m.n').fields['z']!.resolvedType?.fullName, '.m.x', 'from m.n, m.x before the root x');
  t.throws(() => s.messageType('bad').fieldsByNumber, /cannot resolve the field type m\.nope/);
});

// ---------------------------------------------------------------------------------------------
// The codec against protobufjs's, through the conversion criu-ts used with protobufjs.

const SIGNED_64 = new Set(['int64', 'sint64', 'sfixed64']);
type LongLike = { low: number; high: number; unsigned?: boolean };
type PbMessage = Record<string, unknown> & { $unknowns?: Uint8Array[] };

function refPlain(field: protobuf.Field, v: unknown): EntryValue {
  const rt = field.resolvedType;
  if (rt instanceof protobuf.Type) return refToEntry(rt, v as PbMessage);
  if (field.long) {
    if (typeof v === 'number') return BigInt(v);
    const l = v as LongLike;
    const u = (BigInt(l.high >>> 0) << 32n) | BigInt(l.low >>> 0);
    return SIGNED_64.has(field.type) ? BigInt.asIntN(64, u) : u;
  }
  if (field.type === 'bytes') return Buffer.from(v as Uint8Array);
  return v as EntryValue;
}

function refToEntry(type: protobuf.Type, msg: PbMessage): ImageEntry {
  const out: ImageEntry = {};
  for (const field of [...type.fieldsArray].sort((a, b) => a.id - b.id)) {
    const v = msg[field.name];
    if (field.repeated) {
      if (Array.isArray(v) && v.length > 0) out[field.name] = v.map((x: unknown) => refPlain(field, x));
    } else if (v !== undefined && v !== null && Object.hasOwn(msg, field.name)) {
      out[field.name] = refPlain(field, v);
    }
  }
  if (msg.$unknowns !== undefined && msg.$unknowns.length > 0)
    Object.defineProperty(out, UNKNOWN_FIELDS, { value: msg.$unknowns.map((u) => Buffer.from(u)) });
  return out;
}

function refValue(field: protobuf.Field, v: unknown): unknown {
  const rt = field.resolvedType;
  if (rt instanceof protobuf.Type) return refToMessage(rt, v as ImageEntry);
  if (field.long) {
    const u = BigInt.asUintN(64, BigInt(v as bigint));
    return { low: Number(u & 0xffffffffn) | 0, high: Number(u >> 32n) | 0, unsigned: !SIGNED_64.has(field.type) };
  }
  return v;
}

function refToMessage(type: protobuf.Type, entry: ImageEntry): protobuf.Message {
  const msg = type.create() as unknown as PbMessage;
  for (const field of type.fieldsArray) {
    const v = entry[field.name];
    if (v === undefined) continue;
    msg[field.name] = field.repeated ? (v as unknown[]).map((x) => refValue(field, x)) : refValue(field, v);
  }
  const unknowns = (entry as { [UNKNOWN_FIELDS]?: Uint8Array[] })[UNKNOWN_FIELDS];
  if (unknowns !== undefined) Object.defineProperty(msg, '$unknowns', { value: unknowns, writable: true });
  return msg as unknown as protobuf.Message;
}

const refEncode = (type: protobuf.Type, entry: ImageEntry): Buffer =>
  Buffer.from(type.encode(refToMessage(type, entry)).finish());
function refDecode(type: protobuf.Type, bytes: Uint8Array): ImageEntry {
  const r = protobuf.Reader.create(bytes);
  r.discardUnknown = false;
  return refToEntry(type, type.decode(r) as unknown as PbMessage);
}

/** A small deterministic random source (xorshift), so that a failure can be replayed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

function randomEntry(type: protobuf.Type, r: () => number, depth: number): ImageEntry {
  const out: ImageEntry = {};
  const int = (lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo));
  const big = (bits: number, signed: boolean): bigint => {
    let v = 0n;
    for (let i = 0; i < bits; i += 16) v = (v << 16n) | BigInt(int(0, 0x10000));
    const small = r() < 0.3; // small values too (short varints)
    if (small) v &= 0xffn;
    return signed ? BigInt.asIntN(bits, v) : BigInt.asUintN(bits, v);
  };
  const value = (f: protobuf.Field): EntryValue | undefined => {
    const rt = f.resolvedType;
    if (rt instanceof protobuf.Type) return depth > 3 ? undefined : randomEntry(rt, r, depth + 1);
    if (rt instanceof protobuf.Enum) {
      const ids = Object.values(rt.values);
      // Known values only: protobufjs drops an unknown value of a proto2 enum (see below).
      return ids[int(0, ids.length)] as number;
    }
    switch (f.type) {
      case 'int32':
      case 'sfixed32':
      case 'sint32':
        return r() < 0.5 ? int(-100, 100) : int(-0x8000_0000, 0x7fff_ffff);
      case 'uint32':
      case 'fixed32':
        return r() < 0.5 ? int(0, 300) : int(0, 0xffff_ffff);
      case 'int64':
      case 'sint64':
      case 'sfixed64':
        return big(64, true);
      case 'uint64':
      case 'fixed64':
        return big(64, false);
      case 'bool':
        return r() < 0.5;
      case 'float':
        return Math.fround((r() - 0.5) * 1e6);
      case 'double':
        return (r() - 0.5) * 1e12;
      case 'string':
        return ['', 'cr_basic', '/tmp/x y', 'ünïcødé ✓', 'a'.repeat(int(0, 300))][int(0, 5)] as string;
      case 'bytes':
        return Buffer.from(Array.from({ length: int(0, r() < 0.9 ? 20 : 400) }, () => int(0, 256)));
      default:
        throw new Error(`no generator for ${f.type}`);
    }
  };
  for (const f of type.fieldsArray) {
    if (!f.required && r() < 0.35) continue;
    if (f.repeated) {
      const arr = Array.from({ length: int(0, 4) }, () => value(f)).filter((v) => v !== undefined);
      if (arr.length > 0) out[f.name] = arr;
    } else {
      const v = value(f);
      if (v !== undefined) out[f.name] = v;
    }
  }
  return out;
}

/** JSON of a value with its objects' keys sorted. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => {
    if (typeof x === 'bigint') return `${x}n`;
    if (x === null || typeof x !== 'object' || Array.isArray(x) || Buffer.isBuffer(x)) return x;
    const o = x as Record<string, unknown>;
    if ((o as { type?: unknown }).type === 'Buffer') return x;
    return Object.fromEntries(
      Object.keys(o)
        .sort()
        .map((k) => [k, o[k]]),
    );
  });
}

/** Whether `type` can be filled without nesting past the generator's depth (required messages). */
function fillable(type: protobuf.Type, depth = 0): boolean {
  if (depth > 3) return false;
  return type.fieldsArray.every(
    (f) => !f.required || !(f.resolvedType instanceof protobuf.Type) || fillable(f.resolvedType, depth + 1),
  );
}

t.test('random entries of every message type: same bytes and entries as protobufjs', async (t) => {
  const problems: string[] = [];
  let n = 0;
  for (const pt of allPbTypes.filter((ty) => fillable(ty))) {
    const ours = messageType(pt.fullName);
    for (let seed = 1; seed <= 12; seed++) {
      const entry = randomEntry(pt, rng(seed * 7919 + pt.fullName.length), 0);
      n++;
      const where = `${pt.fullName} seed ${seed}`;
      let bytes: Buffer;
      try {
        bytes = encodeEntry(ours, entry);
      } catch (err) {
        problems.push(`${where}: ${String(err)}`);
        continue;
      }
      const ref = refEncode(pt, entry);
      if (!bytes.equals(ref)) {
        problems.push(`${where}: bytes ${bytes.toString('hex')} vs ${ref.toString('hex')}`);
        continue;
      }
      const back = decodeEntry(ours, bytes);
      let theirs: ImageEntry;
      try {
        theirs = refDecode(pt, bytes);
      } catch (err) {
        problems.push(`${where}: protobufjs cannot decode it: ${String(err)}`);
        continue;
      }
      const same = (a: unknown, b: unknown): boolean =>
        JSON.stringify(a, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)) ===
        JSON.stringify(b, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
      // The generator fills fields in schema order, decoding gives number order: compared sorted.
      if (canonical(back) !== canonical(entry)) problems.push(`${where}: decodes to another entry`);
      if (!same(back, theirs)) {
        problems.push(`${where}: decodes unlike protobufjs`);
      }
      if (Object.keys(back).join() !== Object.keys(theirs).join()) problems.push(`${where}: keys in another order`);
    }
  }
  t.same(problems.slice(0, 20), [], `${n} entries`);
});

t.test('sample entries: nested messages, enums, repeated fields', async (t) => {
  const check = (name: string, entry: ImageEntry): void => {
    const bytes = encodeEntry(messageType(name), entry);
    t.ok(bytes.equals(refEncode(fullRoot.lookupType(name), entry)), `${name}: same bytes as protobufjs`);
    t.same(decodeEntry(messageType(name), bytes), refDecode(fullRoot.lookupType(name), bytes), `${name}: same entry`);
  };
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
  check('pagemap_entry', { vaddr: 0x400000n, compat_nr_pages: 0, flags: 1, nr_pages: 3n });
  check('file_entry', {
    type: 1,
    id: 3,
    reg: { id: 3, flags: 0x8002, pos: 0n, fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 }, name: '/tmp/x' },
  });
});

t.test('unknown fields and mismatched wire types are kept and written back', async (t) => {
  const type = messageType('pagemap_entry');
  const known = encodeEntry(type, { vaddr: 0x1000n, compat_nr_pages: 1 });
  // field 9 (varint 5), field 10 (length 2 "hi"), field 4 sent as fixed32 instead of a varint
  const extra = Buffer.from([0x48, 0x05, 0x52, 0x02, 0x68, 0x69, 0x25, 1, 2, 3, 4]);
  const bytes = Buffer.concat([known, extra]);
  const e = decodeEntry(type, bytes);
  t.same(e, { vaddr: 0x1000n, compat_nr_pages: 1 });
  const unknowns = (e as { [UNKNOWN_FIELDS]?: Buffer[] })[UNKNOWN_FIELDS];
  t.same(
    unknowns?.map((b) => b.toString('hex')),
    ['4805', '52026869', '2501020304'],
  );
  t.ok(encodeEntry(type, e).equals(bytes), 'written back byte for byte');
  t.same(refDecode(fullRoot.lookupType('pagemap_entry'), bytes), e, 'as protobufjs decodes it');
  t.same(Object.keys(e), ['vaddr', 'compat_nr_pages'], 'unknowns are not enumerable');
});

t.test('an enum value the schema does not name is kept, as protobuf-c keeps it', async (t) => {
  const type = messageType('user_x86_regs_entry');
  const regs = Object.fromEntries(type.fieldsByNumber.filter((f) => f.required).map((f) => [f.name, 7n]));
  const bytes = encodeEntry(type, { ...regs, mode: 194 });
  t.equal(decodeEntry(type, bytes)['mode'], 194);
  t.ok(encodeEntry(type, decodeEntry(type, bytes)).equals(bytes), 'written back as it was');
  t.equal(refDecode(fullRoot.lookupType('user_x86_regs_entry'), bytes)['mode'], undefined, 'where protobufjs drops it');
});

t.test('an unnamed enum value shows as its number in crit JSON, and reads back', async (t) => {
  const type = messageType('fdinfo_entry');
  const entry = { id: 3, flags: 0, type: 77, fd: 4 };
  const json = entryToCritJson(type, entry);
  t.equal(json['type'], 77);
  t.same(critJsonToEntry(type, json), entry);
  t.equal(entryToCritJson(type, { ...entry, type: 1 })['type'], 'REG', 'a named one by its name');
  t.throws(() => critJsonToEntry(type, { ...json, type: 'toString' }), /unknown fd_types value "toString"/);
});

t.test('integers beyond their field width are refused, not cut', async (t) => {
  const type = messageType('pagemap_entry');
  t.throws(() => encodeEntry(type, { vaddr: 1n << 64n, compat_nr_pages: 1 }), /vaddr: expected a 64-bit integer, not/);
  t.throws(() => encodeEntry(type, { vaddr: 1n, compat_nr_pages: 2 ** 32 + 5 }), /a 32-bit integer, not 4294967301/);
  t.throws(() => encodeEntry(type, { vaddr: -(1n << 63n) - 1n, compat_nr_pages: 1 }), /64-bit integer/);
  // Either signedness of the width is taken: the bits are what is written.
  const bits = decodeEntry(type, encodeEntry(type, { vaddr: -1n, compat_nr_pages: 1, flags: -1 }));
  t.same(bits, { vaddr: (1n << 64n) - 1n, compat_nr_pages: 1, flags: 0xffffffff });
  const fs = messageType('fs_entry');
  t.throws(() => encodeEntry(fs, { cwd_id: 1, root_id: 2, umask: -(2 ** 40) }), /a 32-bit integer/);
});

t.test('repeated numbers are read packed or not; the last of a singular field wins', async (t) => {
  const type = messageType('mm_entry');
  const base = encodeEntry(type, minimalMm());
  const auxv = [33n, 0x7ffd1000n, 0n];
  const body = Buffer.from([...varint(33), ...varint(0x7ffd1000), ...varint(0)]);
  const packed = Buffer.concat([base, Buffer.from([0x6a, body.length]), body]);
  t.same(decodeEntry(type, packed)['mm_saved_auxv'], auxv, 'packed (field 13, wire type 2)');
  t.ok(encodeEntry(type, decodeEntry(type, packed)).equals(encodeEntry(type, { ...minimalMm(), mm_saved_auxv: auxv })));
  const twice = Buffer.concat([base, Buffer.from([0x60, 0x09])]); // exe_file_id again: 9
  t.equal(decodeEntry(type, twice)['exe_file_id'], 9);
});

t.test('bad bodies: one error each, never a wrong entry', async (t) => {
  const type = messageType('pagemap_entry');
  const good = encodeEntry(type, { vaddr: 0x7f0000001000n, compat_nr_pages: 1, nr_pages: 300n });
  // 8 bytes of vaddr's key and value, 2 of compat_nr_pages's, 3 of nr_pages's: a cut at 10 is a
  // whole entry without nr_pages (optional); any other cut is an error.
  for (let cut = 1; cut < good.length; cut++) {
    const e = trap(() => decodeEntry(type, good.subarray(0, cut)));
    if (cut === 10) t.same(decodeEntry(type, good.subarray(0, cut)), { vaddr: 0x7f0000001000n, compat_nr_pages: 1 });
    else t.ok(e instanceof WireError, `cut at ${cut}: ${String(e)}`);
  }
  t.match(
    trap(() => decodeEntry(type, Buffer.from([0x08, 0x01]))),
    /missing required 'compat_nr_pages'/,
  );
  t.match(
    trap(() => decodeEntry(type, Buffer.concat([good, Buffer.from([0x0f])]))),
    /invalid wire type 7/,
  );
  t.match(
    trap(() =>
      decodeEntry(
        type,
        Buffer.concat([good, Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])]),
      ),
    ),
    /invalid varint/,
  );
  t.match(
    trap(() => encodeEntry(type, { vaddr: 1n })),
    /pagemap_entry.compat_nr_pages: required field is missing/,
  );
  t.match(
    trap(() => encodeEntry(type, { vaddr: 'x', compat_nr_pages: 1 })),
    /expected a 64-bit integer/,
  );
  t.match(
    trap(() => encodeEntry(messageType('mm_entry'), { ...minimalMm(), vmas: [1] })),
    /expected a message object/,
  );
});

function varint(v: number): number[] {
  const out: number[] = [];
  while (v > 0x7f) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  return [...out, v];
}

function trap(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return null;
}

function minimalMm(): ImageEntry {
  const e: ImageEntry = { exe_file_id: 5 };
  for (const k of ['start_code', 'end_code', 'start_data', 'end_data', 'start_stack', 'start_brk', 'brk'])
    e[`mm_${k}`] = 0x400000n;
  for (const k of ['arg_start', 'arg_end', 'env_start', 'env_end']) e[`mm_${k}`] = 1n;
  return e;
}

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
