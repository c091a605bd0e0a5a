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
 * Touches no kernel interface; every image kind's message type is looked up here.
 */
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { installStaticCoders, loadStaticCoders, writeStaticCoders, type CodersStamp } from './static-coders.js';

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

let root: protobuf.Root | undefined;
let origin: SchemaOrigin = 'parsed';

/** Where the schema came from: the .proto files, the build's cache, or the cache with precompiled coders. */
export type SchemaOrigin = 'parsed' | 'cache' | 'cache+coders';

/** Where schemaRoot() took the schema from (loads it if not yet loaded): for diagnostics and tests. */
export function schemaOrigin(): SchemaOrigin {
  schemaRoot();
  return origin;
}

/** The root namespace with every message of proto/ loaded and resolved (loaded once, lazily). */
export function schemaRoot(): protobuf.Root {
  if (root !== undefined) return root;
  root = loadCachedSchema() ?? parseSchema();
  return root;
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

function loadCachedSchema(): protobuf.Root | null {
  try {
    const saved = JSON.parse(readFileSync(SCHEMA_CACHE, 'utf8')) as { files?: unknown; id?: unknown; schema?: unknown };
    const files = protoFingerprint();
    if (JSON.stringify(saved.files) !== JSON.stringify(files)) return null;
    const r = protobuf.Root.fromJSON(saved.schema as protobuf.INamespace);
    r.resolveAll();
    // Without matching coders protobufjs generates them on first use, as it always would.
    const coders = typeof saved.id === 'string' ? loadStaticCoders(CODERS_CACHE) : null;
    const withCoders = coders !== null && installStaticCoders(r, coders, { files, id: saved.id as string });
    origin = withCoders ? 'cache+coders' : 'cache';
    return r;
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

/** The message type named `name` (CRIU's global message names, e.g. "pagemap_entry"). */
export function messageType(name: string): PbType {
  return schemaRoot().lookupType(name);
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
