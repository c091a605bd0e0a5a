/**
 * The message types of CRIU's images as criu-ts sees them: names, field numbers, types, rules and
 * options, made from the schema's JSON form (protobufjs's Root#toJSON of proto/*.proto, which the
 * build saves as dist/proto-schema.json; schema.ts loads it) one type at a time, on first use.
 * There is no protobuf library at run time: entry-codec.ts encodes and decodes with these.
 *
 * Type names resolve by protobuf's scoping rules: a field's type "a.b" is looked for as "a" among
 * the nested objects of the field's message, then of each enclosing scope out to the root, and
 * "b" inside what was found; a leading "." starts at the root. (protobufjs also searches nested
 * namespaces before going out a scope; CRIU's protos never need that, and a test checks that every
 * field resolves to the object protobufjs resolves it to.)
 *
 * Touches no kernel interface; every image kind's message type is one of these.
 */

/** A message, enum or namespace as the schema JSON holds it. */
export interface ObjectJson {
  readonly edition?: string;
  readonly fields?: Readonly<Record<string, FieldJson>>;
  readonly values?: Readonly<Record<string, number>>;
  readonly nested?: Readonly<Record<string, ObjectJson>>;
  readonly extend?: string;
}

export interface FieldJson {
  readonly type: string;
  readonly id: number;
  readonly rule?: string;
  readonly keyType?: string;
  readonly options?: Readonly<Record<string, unknown>>;
}

/** Wire types (protobuf encoding). */
const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
export const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

/** How a field's values are written, one code per protobuf type (enums are int32 on the wire). */
export const Kind = {
  Int32: 0,
  Uint32: 1,
  Sint32: 2,
  Fixed32: 3,
  Sfixed32: 4,
  Int64: 5,
  Uint64: 6,
  Sint64: 7,
  Fixed64: 8,
  Sfixed64: 9,
  Bool: 10,
  Float: 11,
  Double: 12,
  String: 13,
  Bytes: 14,
  Enum: 15,
  Message: 16,
} as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

const SCALAR_KINDS: Readonly<Record<string, Kind>> = {
  int32: Kind.Int32,
  uint32: Kind.Uint32,
  sint32: Kind.Sint32,
  fixed32: Kind.Fixed32,
  sfixed32: Kind.Sfixed32,
  int64: Kind.Int64,
  uint64: Kind.Uint64,
  sint64: Kind.Sint64,
  fixed64: Kind.Fixed64,
  sfixed64: Kind.Sfixed64,
  bool: Kind.Bool,
  float: Kind.Float,
  double: Kind.Double,
  string: Kind.String,
  bytes: Kind.Bytes,
};

const LONG_KINDS: ReadonlySet<Kind> = new Set([Kind.Int64, Kind.Uint64, Kind.Sint64, Kind.Fixed64, Kind.Sfixed64]);

/** The kind of a scalar type name ("uint64"); undefined for a message's or an enum's name. */
const scalarKind = (type: string): Kind | undefined =>
  Object.hasOwn(SCALAR_KINDS, type) ? SCALAR_KINDS[type] : undefined;

/** The wire type of one value of each kind. */
export function wireTypeOf(kind: Kind): number {
  switch (kind) {
    case Kind.Fixed64:
    case Kind.Sfixed64:
    case Kind.Double:
      return WIRE_FIXED64;
    case Kind.Fixed32:
    case Kind.Sfixed32:
    case Kind.Float:
      return WIRE_FIXED32;
    case Kind.String:
    case Kind.Bytes:
    case Kind.Message:
      return WIRE_LEN;
    default:
      return WIRE_VARINT;
  }
}

export class EnumType {
  /** Value name → number, and number → the first name given it. */
  readonly values: Readonly<Record<string, number>>;
  readonly valuesById: Readonly<Record<number, string>>;

  constructor(
    readonly name: string,
    readonly fullName: string,
    json: ObjectJson,
  ) {
    const values = json.values ?? {};
    const byId: Record<number, string> = {};
    for (const [k, v] of Object.entries(values)) byId[v] ??= k;
    this.values = values;
    this.valuesById = byId;
  }
}

export class Field {
  readonly id: number;
  /** The type as written in the schema: a scalar type's name, or a message's or enum's reference. */
  readonly type: string;
  readonly repeated: boolean;
  readonly required: boolean;
  /** Repeated numbers written as one length-delimited run ([packed = true]). */
  readonly packed: boolean;
  /** A 64-bit integer type: its values are bigints. */
  readonly long: boolean;
  readonly options: Readonly<Record<string, unknown>>;
  #resolved: MessageType | EnumType | null | undefined;

  constructor(
    readonly name: string,
    json: FieldJson,
    readonly parent: MessageType,
    private readonly schema: ProtoSchema,
  ) {
    if (json.keyType !== undefined) throw new Error(`${parent.fullName}.${name}: map fields are not supported`);
    this.id = json.id;
    this.type = json.type;
    this.repeated = json.rule === 'repeated';
    this.required = json.rule === 'required';
    this.options = json.options ?? {};
    this.packed = this.repeated && this.options['packed'] === true;
    const k = scalarKind(json.type);
    this.long = k !== undefined && LONG_KINDS.has(k);
  }

  /** The message or enum the field's type names; null for a scalar type. */
  get resolvedType(): MessageType | EnumType | null {
    if (this.#resolved === undefined) {
      this.#resolved = scalarKind(this.type) !== undefined ? null : this.schema.resolve(this.type, this.parent);
    }
    return this.#resolved;
  }

  get kind(): Kind {
    return scalarKind(this.type) ?? (this.resolvedType instanceof EnumType ? Kind.Enum : Kind.Message);
  }
}

export class MessageType {
  /** Fields in the schema's order, and by name. */
  readonly fieldsArray: readonly Field[];
  readonly fields: Readonly<Record<string, Field>>;
  #byNumber: readonly Field[] | undefined;

  constructor(
    readonly name: string,
    readonly fullName: string,
    /** Names from the root to this message (its scope for name resolution). */
    readonly path: readonly string[],
    json: ObjectJson,
    schema: ProtoSchema,
  ) {
    // proto2 only: its rules (presence, packing only when asked) are the ones applied here.
    if (json.edition !== undefined && json.edition !== 'proto2')
      throw new Error(`${fullName}: ${json.edition} messages are not supported`);
    const fields: Record<string, Field> = {};
    const arr: Field[] = [];
    for (const [fname, fj] of Object.entries(json.fields ?? {})) {
      const f = new Field(fname, fj, this, schema);
      fields[fname] = f;
      arr.push(f);
    }
    this.fields = fields;
    this.fieldsArray = arr;
  }

  /** Fields in field-number order (the order protobuf-c writes and crit prints), types resolved. */
  get fieldsByNumber(): readonly Field[] {
    if (this.#byNumber === undefined) {
      const sorted = [...this.fieldsArray].sort((a, b) => a.id - b.id);
      for (const f of sorted) void f.resolvedType; // an unresolvable type fails here, not mid-encoding
      this.#byNumber = sorted;
    }
    return this.#byNumber;
  }
}

/** A schema (the JSON of a protobufjs Root) whose message and enum types are made on first use. */
export class ProtoSchema {
  readonly #root: ObjectJson;
  /** Made objects by full name (".a.b"). */
  readonly #made = new Map<string, MessageType | EnumType>();

  constructor(root: ObjectJson) {
    this.#root = root;
  }

  /** The schema's JSON, as given. */
  toJSON(): ObjectJson {
    return this.#root;
  }

  /** The message type `name` ("pagemap_entry", "core_entry.x", ".a.b"); throws if there is none. */
  messageType(name: string): MessageType {
    const path = name.replace(/^\./, '').split('.');
    const o = this.#object(path);
    if (!(o instanceof MessageType)) throw new Error(`no such type: ${name}`);
    return o;
  }

  /** The object a field of `from` names by `ref`, by protobuf's scoping rules. */
  resolve(ref: string, from: MessageType): MessageType | EnumType {
    const parts = ref.replace(/^\./, '').split('.');
    const first = parts[0] ?? '';
    const scopes = ref.startsWith('.') ? [[]] : from.path.map((_, i) => from.path.slice(0, from.path.length - i));
    if (!ref.startsWith('.')) scopes.push([]);
    for (const scope of scopes) {
      if (this.#json([...scope, first]) === undefined) continue;
      const o = this.#object([...scope, ...parts]);
      if (o === null) break; // found "a" but not "a.b": protobuf does not look further out
      return o;
    }
    throw new Error(`${from.fullName}: cannot resolve the field type ${ref}`);
  }

  #json(path: readonly string[]): ObjectJson | undefined {
    let o: ObjectJson | undefined = this.#root;
    for (const p of path) {
      o = o.nested !== undefined && Object.hasOwn(o.nested, p) ? o.nested[p] : undefined;
      if (o === undefined) return undefined;
    }
    return o;
  }

  #object(path: readonly string[]): MessageType | EnumType | null {
    const fullName = '.' + path.join('.');
    const made = this.#made.get(fullName);
    if (made !== undefined) return made;
    const json = this.#json(path);
    if (json === undefined || path.length === 0) return null;
    const name = path[path.length - 1] as string;
    let o: MessageType | EnumType;
    if (json.fields !== undefined) o = new MessageType(name, fullName, path, json, this);
    else if (json.values !== undefined) o = new EnumType(name, fullName, json);
    else return null; // a namespace or an extension
    this.#made.set(fullName, o);
    return o;
  }
}
