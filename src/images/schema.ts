/**
 * The protobuf schema of CRIU's images, loaded at run time with protobufjs from proto/*.proto
 * (our own proto2 files, wire-compatible with CRIU's). The proto directory is found relative to the
 * package root (the nearest ancestor holding package.json), so this works from src/ under tsx and
 * from dist/src/ after tsc.
 *
 * Parsing the 73 .proto files costs ~100 ms at every start of `criu`; the build (bin/bundle.js)
 * saves the parsed schema as JSON (dist/proto-schema.json) with the size and mtime of each file,
 * and it is used while those still match (otherwise the files are parsed, as without a build).
 * With it the build saves the message types' precompiled coders (dist/proto-coders.cjs, see
 * static-coders.ts), taken only together with that very schema cache (same fingerprint and stamp).
 *
 * What is loaded when. Building the reflection of all ~180 top-level objects (Root.fromJSON and
 * resolveAll) costs ~30-60 ms at every start, and a `criu dump` or `restore` needs just over half
 * of them (its ~25 image types, and what they reference: core_entry names every architecture's
 * registers, file_entry every fd kind). So from the cache the schema is filled on demand
 * (LazySchema): messageType(name), the images' path, adds that type with everything its fields
 * reference, resolves them and installs their precompiled coders; schemaRoot() (show, crit,
 * tests) adds all the rest. Both hand out the same objects. Without a cache the .proto files are
 * parsed whole at the first call of either.
 *
 * Touches no kernel interface; every image kind's message type is looked up here.
 */
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import {
  codersFit,
  installStaticCodersOn,
  loadStaticCoders,
  writeStaticCoders,
  type CodersStamp,
  type StaticCoders,
} from './static-coders.js';

export type PbType = protobuf.Type;
export type PbField = protobuf.Field;
export type PbEnum = protobuf.Enum;

/** The criu custom field options (proto/opts.proto, extension 1018 of FieldOptions). */
export interface CriuFieldOptions {
  readonly hex: boolean;
  readonly ipadd: boolean;
  readonly flags: string | undefined;
  readonly dev: boolean;
  readonly odev: boolean;
  readonly dict: string | undefined;
  readonly conv: string | undefined;
}

function findPackageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'proto'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('Cannot find the proto/ directory above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

const packageRoot = findPackageRoot();
/** Absolute path of the proto/ directory. */
export const protoDir: string = join(packageRoot, 'proto');
const SCHEMA_CACHE = join(packageRoot, 'dist/proto-schema.json');
const CODERS_CACHE = join(packageRoot, 'dist/proto-coders.cjs');

/** The schema as loaded: filled on demand from the build's cache, or parsed whole from proto/. */
let loaded: LazySchema | protobuf.Root | undefined;
let origin: SchemaOrigin = 'parsed';

/** Where the schema came from: the .proto files, the build's cache, or the cache with precompiled coders. */
export type SchemaOrigin = 'parsed' | 'cache' | 'cache+coders';

function load(): LazySchema | protobuf.Root {
  loaded ??= loadCachedSchema() ?? parseSchema();
  return loaded;
}

/** Where the schema was taken from (reads the cache if not yet done): for diagnostics and tests. */
export function schemaOrigin(): SchemaOrigin {
  load();
  return origin;
}

/** The root namespace with every message of proto/ loaded and resolved (loaded once, lazily). */
export function schemaRoot(): protobuf.Root {
  const s = load();
  return s instanceof LazySchema ? s.all() : s;
}

/**
 * The message type named `name` (CRIU's global message names, e.g. "pagemap_entry"; nested ones
 * dotted, "core_entry.march"; a leading "." allowed). From the cache only that type and what its
 * fields reference are loaded; it is the very object schemaRoot() holds.
 */
export function messageType(name: string): PbType {
  const s = load();
  return s instanceof LazySchema ? s.messageType(name) : s.lookupType(name);
}

/** A schema object as saved in the cache's JSON (a message, enum, extension field or namespace). */
interface NestedJson {
  readonly fields?: Readonly<Record<string, { readonly type: string; readonly keyType?: string }>>;
  readonly nested?: Readonly<Record<string, NestedJson>>;
  readonly extend?: string;
}

/**
 * A protobufjs Root filled from the schema JSON on demand, one top-level object (a CRIU message
 * with its nested types, an enum, the google namespace) at a time, each with every top-level
 * object its fields reference, recursively: exactly what resolving them needs.
 *
 * Equivalence with Root.fromJSON + resolveAll (what the build's coders and every encoding rely
 * on): each object is made by the same Namespace#addJSON from the same JSON, so the fields keep
 * the JSON order; the root's resolveAll then resolves the new objects' edition features (from
 * their own "edition": proto2 defaults, required/packed inferred per field, nested objects
 * inheriting from their parent) and field types exactly as the whole-root resolveAll does, and
 * skips the objects already resolved (protobufjs keeps per-object flags). Type references resolve
 * to the same objects too: the type's own nested objects first, then fully qualified names, which
 * the root indexes as objects are added. Only the order of the root's own `nested` differs (load
 * order); nothing here depends on it.
 *
 * Extension fields (opts.proto's `criu`, extending google.protobuf.FieldOptions) are only loaded
 * with everything (all()): protobufjs's resolveAll refuses an extension of a type not yet there,
 * and images never need it (fields' "(criu).xxx" options are plain option values in the JSON).
 */
export class LazySchema {
  /** The root, holding what has been loaded so far. */
  readonly root = new protobuf.Root();
  readonly #json: Readonly<Record<string, NestedJson>>;
  /** Top-level names not yet added, in file order. */
  readonly #pending: Set<string>;
  readonly #coders: StaticCoders | null;

  /**
   * `schema` is the cached JSON (Root#toJSON), `coders` the precompiled coders made for this very
   * JSON (codersFit checked by the caller), or null for protobufjs's codegen.
   */
  constructor(schema: protobuf.INamespace, coders: StaticCoders | null) {
    if (schema.options !== undefined) this.root.setOptions(schema.options);
    this.#json = (schema.nested ?? {}) as Readonly<Record<string, NestedJson>>;
    this.#pending = new Set(Object.keys(this.#json));
    this.#coders = coders;
  }

  /** The message type `name` (as Namespace#lookupType from the root), loading what it needs. */
  messageType(name: string): PbType {
    const top = name.replace(/^\./, '').split('.', 1)[0] ?? '';
    if (this.#pending.has(top)) {
      const needed = this.#closure(top);
      if (needed === null) this.all();
      else this.#add(needed);
    } else if (!Object.hasOwn(this.#json, top)) {
      this.all(); // not a top-level name: a nested one may be anywhere (or an error, thrown by the lookup)
    }
    return this.root.lookupType(name);
  }

  /** The root with everything loaded and resolved. */
  all(): protobuf.Root {
    if (this.#pending.size > 0) this.#add([...this.#pending]);
    return this.root;
  }

  /** The pending top-level names `top` needs, itself first; null if one holds an extension field. */
  #closure(top: string): string[] | null {
    const out = [top];
    const seen = new Set(out);
    let hasExtension = false;
    const visit = (o: NestedJson): void => {
      if (o.extend !== undefined) hasExtension = true;
      for (const f of Object.values(o.fields ?? {})) {
        for (const ref of f.keyType === undefined ? [f.type] : [f.type, f.keyType]) {
          // "core_entry.march", ".x.y": the first component is a top-level object, if any (a scalar
          // type or one of the type's own nested objects names none that is pending: no harm if so).
          const first = ref.replace(/^\./, '').split('.', 1)[0] ?? '';
          if (this.#pending.has(first) && !seen.has(first)) {
            seen.add(first);
            out.push(first);
          }
        }
      }
      for (const n of Object.values(o.nested ?? {})) visit(n);
    };
    for (let i = 0; i < out.length; i++) visit(this.#json[out[i] as string] as NestedJson);
    return hasExtension ? null : out;
  }

  #add(names: readonly string[]): void {
    const json: Record<string, NestedJson> = {};
    for (const n of names) {
      json[n] = this.#json[n] as NestedJson;
      this.#pending.delete(n);
    }
    this.root.addJSON(json as Record<string, protobuf.AnyNestedObject>);
    this.root.resolveAll(); // only the new objects: the others are marked resolved
    const added = names.map((n) => this.root.get(n)).filter((o) => o !== null);
    // An extension adds a field to the extended type, which resolveAll skips if it was resolved
    // before (the whole-root path resolves that field with everything).
    for (const o of added) resolveExtensions(o);
    if (this.#coders !== null) installStaticCodersOn(added, this.#coders);
  }
}

function resolveExtensions(o: protobuf.ReflectionObject): void {
  if (o instanceof protobuf.Field) o.extensionField?.resolve();
  if (o instanceof protobuf.Namespace) for (const n of o.nestedArray) resolveExtensions(n);
}

/** "name size mtime" of each .proto file: what the cached schema was made from. */
function protoFingerprint(): string[] {
  return readdirSync(protoDir)
    .filter((f) => f.endsWith('.proto'))
    .sort()
    .map((f) => {
      const st = statSync(join(protoDir, f));
      return `${f} ${st.size} ${st.mtimeMs}`;
    });
}

function loadCachedSchema(): LazySchema | null {
  try {
    const saved = JSON.parse(readFileSync(SCHEMA_CACHE, 'utf8')) as { files?: unknown; id?: unknown; schema?: unknown };
    const files = protoFingerprint();
    if (JSON.stringify(saved.files) !== JSON.stringify(files)) return null;
    const schema = saved.schema as protobuf.INamespace;
    if (typeof schema !== 'object' || schema === null) return null;
    // Without matching coders protobufjs generates them on first use, as it always would.
    const coders = typeof saved.id === 'string' ? loadStaticCoders(CODERS_CACHE) : null;
    const fit = coders !== null && codersFit(coders, { files, id: saved.id as string });
    origin = fit ? 'cache+coders' : 'cache';
    return new LazySchema(schema, fit ? coders : null);
  } catch {
    return null; // no cache (not built), or unreadable: parse the files
  }
}

/**
 * Save the parsed schema for the next starts, and the precompiled coders of its message types
 * (the build calls this). The coders are generated from the schema as it will be loaded (from the
 * saved JSON), so that field order, which the generated code depends on, is the one at run time.
 */
export function writeSchemaCache(): void {
  const schema = parseSchema().toJSON({ keepComments: false });
  // A stamp unique to this build: the coders file is only taken with this schema cache.
  const stamp: CodersStamp = { files: protoFingerprint(), id: `${Date.now()}-${process.pid}-${Math.random()}` };
  const text = JSON.stringify({ files: stamp.files, id: stamp.id, schema });
  const r = protobuf.Root.fromJSON((JSON.parse(text) as { schema: protobuf.INamespace }).schema);
  r.resolveAll();
  writeStaticCoders(r, stamp, CODERS_CACHE);
  writeFileSync(SCHEMA_CACHE, text);
}

function parseSchema(): protobuf.Root {
  const require = createRequire(import.meta.url);
  // protobufjs ships google/protobuf/descriptor.proto, which opts.proto extends.
  const pbDir = dirname(require.resolve('protobufjs/package.json'));
  const r = new protobuf.Root();
  r.resolvePath = (_origin, target) =>
    target.startsWith('google/protobuf/') ? join(pbDir, target) : join(protoDir, target);
  const files = readdirSync(protoDir)
    .filter((f) => f.endsWith('.proto'))
    .sort();
  // keepCase: field names stay snake_case, as on the wire and in crit's JSON.
  r.loadSync(files, { keepCase: true });
  r.resolveAll();
  return r;
}

const optionsCache = new WeakMap<PbField, CriuFieldOptions>();

/** The criu options of a field (all false/undefined when it has none). */
export function criuOptions(field: PbField): CriuFieldOptions {
  const cached = optionsCache.get(field);
  if (cached !== undefined) return cached;
  const o = (field.options ?? {}) as Record<string, unknown>;
  const str = (k: string): string | undefined => (typeof o[k] === 'string' ? (o[k] as string) : undefined);
  const opts: CriuFieldOptions = {
    hex: o['(criu).hex'] === true,
    ipadd: o['(criu).ipadd'] === true,
    flags: str('(criu).flags'),
    dev: o['(criu).dev'] === true,
    odev: o['(criu).odev'] === true,
    dict: str('(criu).dict'),
    conv: str('(criu).conv'),
  };
  optionsCache.set(field, opts);
  return opts;
}

/** Fields of a message type in field-number order (the order protobuf-c writes and crit prints). */
export function fieldsByNumber(type: PbType): readonly PbField[] {
  let sorted = sortedCache.get(type);
  if (sorted === undefined) {
    sorted = [...type.fieldsArray].sort((a, b) => a.id - b.id);
    for (const f of sorted) f.resolve();
    sortedCache.set(type, sorted);
  }
  return sorted;
}
const sortedCache = new WeakMap<PbType, readonly PbField[]>();
