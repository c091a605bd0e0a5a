/**
 * Precompiled protobufjs coders. protobufjs builds each message type's constructor, encoder and
 * decoder on first use by generating JavaScript source and compiling it with `new Function`, ~60 ms
 * of every `criu dump` and `criu restore` here. The build (bin/bundle.js, through
 * writeSchemaCache in schema.ts) generates that same source once, with protobufjs's own generators,
 * for every message type of the cached schema and saves it as a CommonJS module
 * (dist/proto-coders.cjs); at run time those functions are installed on the Type objects instead.
 *
 * File shape (sloppy mode on purpose, as protobufjs compiles its code):
 *
 *   exports.files = [...]      the .proto fingerprint of the schema cache it was made with
 *   exports.id = "..."         the build stamp also saved in the schema cache
 *   exports.codegen = "..."    the version of the protobufjs that generated it (codegenIdentity)
 *   exports.coders = { ".pagemap_entry": [
 *     function () { return function pagemap_entry$ctor(p) {...} },
 *     function (Writer, Reader, types, util, C) { return [function pagemap_entry$encode(m,w,q) {...},
 *                                                         function pagemap_entry$decode(r,l,z,q,g) {...}] },
 *   ], ... }
 *
 * Beside it, dist/proto-coders.cjs.v8cache: V8's code cache of the file, so that loading it skips
 * most parsing (rejected by another V8, then the file is just parsed).
 *
 * `types` is what Type#setup passes: each field's resolvedType, in fieldsArray order (the order of
 * the cached JSON, which is why the stamp must match). Installation is lazy and per type: the
 * type's `ctor` getter and `setup` are replaced by ones that take the precompiled functions, so
 * protobufjs's own first-use path (encode → setup, create → ctor) installs them. verify,
 * fromObject and toObject (not used by criu-ts's image paths) stay protobufjs's: their first call
 * runs protobufjs's own setup, which regenerates everything with codegen (equivalent functions).
 * schema.ts installs them on the types it adds to its root as it adds them (installStaticCodersOn).
 *
 * Touches no kernel interface; concerns every image kind's message type.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Script } from 'node:vm';
import protobuf from 'protobufjs';

/** What ties a coders file to one schema cache: the .proto fingerprint and the build stamp. */
export interface CodersStamp {
  readonly files: readonly string[];
  readonly id: string;
}

type CtorFactory = () => protobuf.Constructor<object>;
type CodersFactory = (
  writer: typeof protobuf.Writer,
  reader: typeof protobuf.Reader,
  types: readonly (protobuf.Type | protobuf.Enum | null)[],
  util: typeof protobuf.util,
  ctor: protobuf.Constructor<object>,
) => [encode: protobuf.Type['encode'], decode: protobuf.Type['decode']];

/** A loaded coders module (see the header for its shape). */
export interface StaticCoders {
  readonly files: readonly string[];
  readonly id: string;
  readonly codegen: string;
  readonly coders: Readonly<Record<string, readonly [CtorFactory, CodersFactory]>>;
}

// protobufjs's own: what the precompiled coders stand in for, and the fallback.
const protoSetup = protobuf.Type.prototype.setup;
const ctorSetter = Object.getOwnPropertyDescriptor(protobuf.Type.prototype, 'ctor')?.set;

/** Every message type under `ns`, depth first. */
function allTypes(ns: protobuf.NamespaceBase, out: protobuf.Type[] = []): protobuf.Type[] {
  for (const n of ns.nestedArray) {
    if (n instanceof protobuf.Type) out.push(n);
    if (n instanceof protobuf.Namespace) allTypes(n, out); // Type extends Namespace: nested messages
  }
  return out;
}

/**
 * Whether a message type is another architecture's register set (core_entry has a field for each):
 * never in an x86-64 image. Leaving them out makes the coders file, whose size is most of its load
 * time, ~15% smaller, and prepareImageKinds skips them.
 */
export const isOtherArchType = (name: string): boolean => OTHER_ARCH.test(name);
const OTHER_ARCH = /aarch64|_arm|arm_|ppc64|s390|mips|loongarch|riscv/i;

/**
 * descriptor.proto's messages are only used while parsing .proto files (for options), never for
 * an image: they are left to protobufjs (and .google.protobuf.Any has custom wrappers in setup).
 */
const isImageType = (t: protobuf.Type): boolean => !t.fullName.startsWith('.google.') && !isOtherArchType(t.fullName);

/** "function (" → "function NAME(": names show in stack traces and CPU profiles. */
function named(source: string, name: string): string {
  if (!source.startsWith('function (')) throw new Error('unexpected protobufjs codegen output: ' + source.slice(0, 40));
  // Codegen joins the body's lines with "\n  " (its string literals are JSON, never a raw newline):
  // the indentation is ~8% of the file, which costs load time and says nothing.
  return 'function ' + name + source.slice('function '.length).replaceAll('\n  ', '\n');
}

interface FeatureRoot {
  _needsRecursiveFeatureResolution?: boolean;
  _edition?: string;
  _resolveFeaturesRecursive?(edition: string): void;
}

/** The source of the coders module for every image message type of `root` (the build calls this). */
export function staticCodersSource(root: protobuf.Root, stamp: CodersStamp): string {
  const parts: string[] = [
    '// Generated by criu-ts (src/images/static-coders.ts) with ' + codegenIdentity() + ': do not edit.',
    'exports.files = ' + JSON.stringify(stamp.files) + ';',
    'exports.id = ' + JSON.stringify(stamp.id) + ';',
    'exports.codegen = ' + JSON.stringify(codegenIdentity()) + ';',
    'exports.coders = {',
  ];
  for (const type of allTypes(root).filter(isImageType)) {
    // What Type#setup does before generating: resolve edition features (none for proto2 files).
    const r = type.root as unknown as FeatureRoot | null;
    const edition = r?._edition ?? (type as unknown as FeatureRoot)._edition;
    if (r?._needsRecursiveFeatureResolution === true && edition !== undefined) r._resolveFeaturesRecursive?.(edition);
    for (const f of type.fieldsArray) f.resolve();
    const base = type.fullName.replace(/^\./, '').replace(/\W/g, '_');
    const ctor = named(protobuf.Type.generateConstructor(type).toString(), base + '$ctor');
    const encode = named(protobuf.encoder(type).toString(), base + '$encode');
    const decode = named(protobuf.decoder(type).toString(), base + '$decode');
    parts.push(
      JSON.stringify(type.fullName) + ': [',
      'function () { return ' + ctor + '; },',
      'function (Writer, Reader, types, util, C) { return [' + encode + ',\n' + decode + ']; }',
      '],',
    );
  }
  parts.push('};', '');
  return parts.join('\n');
}

declare const CRIU_TS_BUNDLED_PROTOBUFJS: string | undefined;

/**
 * The version of the protobufjs that runs here: coders made by another one (upgraded in
 * node_modules without a rebuild, say) are not taken. In the esbuild bundle it is the version of
 * the copy bundled (bin/bundle.js defines CRIU_TS_BUNDLED_PROTOBUFJS); elsewhere node_modules'.
 */
export function codegenIdentity(): string {
  if (typeof CRIU_TS_BUNDLED_PROTOBUFJS === 'string') return 'protobufjs ' + CRIU_TS_BUNDLED_PROTOBUFJS;
  try {
    return 'protobufjs ' + (createRequire(import.meta.url)('protobufjs/package.json') as { version: string }).version;
  } catch {
    return 'protobufjs of unknown version';
  }
}

/** The coders file as the script that is compiled (the V8 code cache is made for this exact text). */
const wrap = (source: string): string => '(function (exports) {' + source + '\n})';

/**
 * Write the coders module to `path` and V8's code cache of it to `path + ".v8cache"` (the build
 * calls this, with the node that will run `criu`). With the code cache, loading the ~400 KB file
 * skips most of its parsing (~5 ms instead of ~15 ms here); each factory is compiled on first use.
 */
export function writeStaticCoders(root: protobuf.Root, stamp: CodersStamp, path: string): void {
  const source = staticCodersSource(root, stamp);
  writeFileSync(path, source);
  const cache = new Script(wrap(source), { filename: path }).createCachedData();
  writeFileSync(path + V8_CACHE_SUFFIX, cache);
}

const V8_CACHE_SUFFIX = '.v8cache';

/**
 * Load a coders module; null when it is missing or does not load (then protobufjs generates).
 * Its code cache is used when present and accepted by this V8 (else the file is parsed: correct,
 * only slower).
 */
export function loadStaticCoders(path: string): StaticCoders | null {
  try {
    const source = readFileSync(path, 'utf8');
    let cachedData: Buffer | undefined;
    try {
      cachedData = readFileSync(path + V8_CACHE_SUFFIX);
    } catch {
      cachedData = undefined;
    }
    // Compiled like a CommonJS module (the file is one, for tools), synchronously: this works the
    // same from the esbuild bundle and from the unbundled tree.
    const script = new Script(
      wrap(source),
      cachedData === undefined ? { filename: path } : { filename: path, cachedData },
    );
    const m: Partial<StaticCoders> = {};
    (script.runInThisContext() as (exports: object) => void)(m);
    if (
      !Array.isArray(m.files) ||
      typeof m.id !== 'string' ||
      typeof m.codegen !== 'string' ||
      typeof m.coders !== 'object' ||
      m.coders === null
    ) {
      return null;
    }
    return m as StaticCoders;
  } catch {
    return null;
  }
}

/** The precompiled factories of each type whose getters were replaced. */
const factories = new WeakMap<protobuf.Type, readonly [CtorFactory, CodersFactory]>();
/** Types whose precompiled encode/decode are in place. */
const installed = new WeakSet<protobuf.Type>();

interface TypeInternals {
  _ctor: protobuf.Constructor<object> | null;
  encode: unknown;
  decode: unknown;
  verify: unknown;
  fromObject: unknown;
  toObject: unknown;
  setup: () => protobuf.Type;
}

/** The `ctor` getter of a type with a precompiled constructor (protobufjs's getter generates one). */
function staticCtor(this: protobuf.Type): protobuf.Constructor<object> {
  const self = this as unknown as TypeInternals;
  if (self._ctor === null || self._ctor === undefined) {
    const f = factories.get(this);
    // The prototype setter gives the constructor its Message prototype, $type and field defaults.
    if (f === undefined || ctorSetter === undefined) throw new Error(`no precompiled constructor for ${this.fullName}`);
    ctorSetter.call(this, f[0]());
  }
  return self._ctor as protobuf.Constructor<object>;
}

function setCtor(this: protobuf.Type, ctor: protobuf.Constructor<object>): void {
  ctorSetter?.call(this, ctor);
}

/** Type#setup for a type with precompiled coders. */
function staticSetup(this: protobuf.Type): protobuf.Type {
  if (installed.has(this)) return this;
  const f = factories.get(this);
  if (f === undefined) return protoSetup.call(this);
  const types = this.fieldsArray.map((field) => field.resolve().resolvedType);
  const C = this.ctor; // first: setting the ctor deletes the type's own decode and fromObject
  const [encode, decode] = f[1](protobuf.Writer, protobuf.Reader, types, protobuf.util, C);
  const self = this as unknown as TypeInternals;
  self.encode = encode;
  self.decode = decode;
  self.verify = verifyByCodegen;
  self.fromObject = fromObjectByCodegen;
  self.toObject = toObjectByCodegen;
  installed.add(this);
  return this;
}

// Off the image paths: protobufjs's own setup generates these (and, equivalently, the rest).
function verifyByCodegen(this: protobuf.Type, message: Record<string, unknown>): string | null {
  return protoSetup.call(this).verify(message);
}
function fromObjectByCodegen(this: protobuf.Type, object: Record<string, unknown>): protobuf.Message {
  return protoSetup.call(this).fromObject(object);
}
function toObjectByCodegen(
  this: protobuf.Type,
  message: protobuf.Message,
  options?: protobuf.IConversionOptions,
): Record<string, unknown> {
  return protoSetup.call(this).toObject(message, options);
}

/**
 * Whether `coders` was made for this very schema (`stamp`: the schema cache's) by this protobufjs,
 * and can be installed (installStaticCodersOn).
 */
export function codersFit(coders: StaticCoders, stamp: CodersStamp): boolean {
  if (coders.id !== stamp.id || JSON.stringify(coders.files) !== JSON.stringify(stamp.files)) return false;
  if (coders.codegen !== codegenIdentity()) return false;
  return ctorSetter !== undefined; // a protobufjs without the ctor accessor: keep its codegen
}

/**
 * Install the precompiled coders on each message type in `objects` and under them (nested
 * types): schema.ts calls this for the types it has just added to its lazily filled root. The
 * coders must fit the schema the objects come from (codersFit), and the objects be resolved.
 * Cheap: each type only gets its `ctor` getter and `setup` replaced; the functions are made on
 * first use.
 */
export function installStaticCodersOn(objects: readonly protobuf.ReflectionObject[], coders: StaticCoders): void {
  const types: protobuf.Type[] = [];
  for (const o of objects) {
    if (o instanceof protobuf.Type) types.push(o);
    if (o instanceof protobuf.Namespace) allTypes(o, types);
  }
  for (const type of types) {
    const f = coders.coders[type.fullName];
    if (f === undefined) continue;
    factories.set(type, f);
    Object.defineProperty(type, 'ctor', { get: staticCtor, set: setCtor, configurable: true, enumerable: false });
    (type as unknown as TypeInternals).setup = staticSetup;
  }
}

/** Whether `type` got the precompiled encode/decode (for tests and diagnostics). */
export function hasStaticCoders(type: protobuf.Type): boolean {
  return installed.has(type);
}
