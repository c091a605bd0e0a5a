/**
 * The protobuf schema of CRIU's images: our own proto2 files under proto/, wire-compatible with
 * CRIU's. The proto directory is found relative to the package root (the nearest ancestor holding
 * package.json), so this works from src/ under tsx, from dist/src/ after tsc and from the bundle.
 *
 * At run time the schema is JSON (protobufjs's Root#toJSON of the parsed files) and message types
 * are made from it as they are first used (proto.ts); entry-codec.ts encodes and decodes by them.
 * The build (bin/bundle.js) parses the .proto files with protobufjs once and saves that JSON as
 * dist/proto-schema.json, with the size and mtime of each file; it is used while those still
 * match. Without it (not built, or proto/ changed since), the files are parsed at the first use,
 * with protobufjs (~100 ms), as the build does. So protobufjs is loaded only then: a built
 * `criu dump` or `restore` spends ~5 ms on its schema instead of the ~50 ms that building
 * protobufjs's reflection and coders of its ~25 image types took.
 *
 * Touches no kernel interface; every image kind's message type is looked up here.
 */
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as Protobuf from 'protobufjs';
import { ProtoSchema, type EnumType, type Field, type MessageType, type ObjectJson } from './proto.js';

export type PbType = MessageType;
export type PbField = Field;
export type PbEnum = EnumType;

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

/** Where the schema came from: the .proto files, or the build's cache of them. */
export type SchemaOrigin = 'parsed' | 'cache';

let loaded: ProtoSchema | undefined;
let origin: SchemaOrigin = 'parsed';

function load(): ProtoSchema {
  loaded ??= loadCachedSchema() ?? new ProtoSchema(parseSchemaJson());
  return loaded;
}

/** Where the schema was taken from (reads it if not yet done): for diagnostics and tests. */
export function schemaOrigin(): SchemaOrigin {
  load();
  return origin;
}

/** The whole schema (message types are made as they are asked for). */
export function schemaRoot(): ProtoSchema {
  return load();
}

/**
 * The message type named `name` (CRIU's global message names, e.g. "pagemap_entry"; nested ones
 * dotted, "core_entry.march"; a leading "." allowed). The same object every time.
 */
export function messageType(name: string): PbType {
  return load().messageType(name);
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

function loadCachedSchema(): ProtoSchema | null {
  try {
    const saved = JSON.parse(readFileSync(SCHEMA_CACHE, 'utf8')) as { files?: unknown; schema?: unknown };
    if (JSON.stringify(saved.files) !== JSON.stringify(protoFingerprint())) return null;
    const schema = saved.schema;
    if (typeof schema !== 'object' || schema === null) return null;
    origin = 'cache';
    return new ProtoSchema(schema as ObjectJson);
  } catch {
    return null; // no cache (not built), or unreadable: parse the files
  }
}

/** Save the parsed schema for the next starts (the build calls this). */
export function writeSchemaCache(): void {
  writeFileSync(SCHEMA_CACHE, JSON.stringify({ files: protoFingerprint(), schema: parseSchemaJson() }));
}

/** The .proto files parsed by protobufjs (loaded only for this), as JSON. */
function parseSchemaJson(): ObjectJson {
  const require = createRequire(import.meta.url);
  const protobuf = require('protobufjs') as typeof Protobuf;
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
  origin = 'parsed';
  return r.toJSON({ keepComments: false }) as ObjectJson;
}

const optionsCache = new WeakMap<PbField, CriuFieldOptions>();

/** The criu options of a field (all false/undefined when it has none). */
export function criuOptions(field: PbField): CriuFieldOptions {
  const cached = optionsCache.get(field);
  if (cached !== undefined) return cached;
  const o = field.options;
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
  return type.fieldsByNumber;
}
