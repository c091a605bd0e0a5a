/**
 * One image entry's protobuf body ⇄ a plain object (an ImageEntry), by the message types of
 * proto.ts.
 *
 * Plain entries keep the wire's snake_case field names and hold only the fields present on the
 * wire (proto2 presence), in field-number order: 64-bit integers are bigint, 32-bit integers and
 * enums are numbers, bytes are Buffers, nested messages are plain objects, repeated fields are
 * non-empty arrays. Fields this schema does not know are kept (under the UNKNOWN_FIELDS symbol)
 * and written back, so decode → encode is byte-exact even for images of a newer CRIU.
 *
 * Encoding writes what protobuf-c (CRIU) and protobufjs write: fields in number order, repeated
 * numbers one by one unless [packed = true], negative int32 and enum values as ten-byte varints,
 * the unknown fields last. Decoding takes both forms of a repeated number, keeps a field whose wire
 * type does not match its declaration as an unknown field (as protobufjs does), lets the last of a
 * repeated singular field win, and fails on a missing required field, a truncated value or a
 * reserved wire type.
 *
 * Touches no kernel interface; used by every image kind.
 */
import { Kind, MessageType, wireTypeOf, WIRE_LEN, type Field } from './proto.js';

export type EntryValue = number | bigint | boolean | string | Uint8Array | ImageEntry | readonly EntryValue[];

/** A decoded image entry: field name → value; absent fields are absent. */
export interface ImageEntry {
  [field: string]: EntryValue | undefined;
}

/** Raw wire bytes of fields the schema does not know, per message (non-enumerable). */
export const UNKNOWN_FIELDS: unique symbol = Symbol('criu-ts.unknownFields');

/** Thrown by encodeEntry for a value that does not fit its field (a programming error). */
export class EntryShapeError extends Error {}

/** Thrown by decodeEntry for a body that is not a valid encoding of its message. */
export class WireError extends Error {}

/** Nested messages deeper than this are refused (CRIU's are a few levels deep). */
const MAX_DEPTH = 64;

/** What encoding and decoding need of a field, computed once per message type. */
interface FieldPlan {
  readonly name: string;
  readonly id: number;
  readonly kind: Kind;
  readonly wire: number;
  readonly repeated: boolean;
  readonly required: boolean;
  readonly packed: boolean;
  /** A repeated number: decoding takes it packed as well. */
  readonly packable: boolean;
  /** The key (tag) of one value, as varint bytes. */
  readonly key: readonly number[];
  readonly message: MessageType | null;
}

interface Plan {
  readonly type: MessageType;
  readonly fields: readonly FieldPlan[];
  /** Index in `fields` by field number (a sparse array: numbers are small). */
  readonly byId: readonly (number | undefined)[];
  readonly required: readonly FieldPlan[];
}

const plans = new WeakMap<MessageType, Plan>();

/** The varint bytes of a non-negative integer (keys, lengths). */
export function varintBytes(v: number): number[] {
  const out: number[] = [];
  while (v > 0x7f) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

function planOf(type: MessageType): Plan {
  let plan = plans.get(type);
  if (plan !== undefined) return plan;
  const fields = type.fieldsByNumber.map((f: Field): FieldPlan => {
    const kind = f.kind;
    const wire = wireTypeOf(kind);
    const rt = f.resolvedType;
    return {
      name: f.name,
      id: f.id,
      kind,
      wire,
      repeated: f.repeated,
      required: f.required,
      packed: f.packed && wire !== WIRE_LEN,
      packable: f.repeated && wire !== WIRE_LEN,
      key: varintBytes(f.id * 8 + (f.packed && wire !== WIRE_LEN ? WIRE_LEN : wire)),
      message: rt instanceof MessageType ? rt : null,
    };
  });
  const byId: (number | undefined)[] = [];
  fields.forEach((f, i) => (byId[f.id] = i));
  plan = { type, fields, byId, required: fields.filter((f) => f.required) };
  plans.set(type, plan);
  return plan;
}

/** Make `type`'s codec ready (and those of the messages its fields hold), e.g. before a freeze. */
export function prepareType(type: MessageType, seen = new Set<MessageType>()): void {
  if (seen.has(type)) return;
  seen.add(type);
  for (const f of planOf(type).fields) if (f.message !== null) prepareType(f.message, seen);
}

// ---------------------------------------------------------------------------------------------
// Encoding.

const MASK64 = (1n << 64n) - 1n;

class Writer {
  buf: Buffer = Buffer.allocUnsafe(256);
  n = 0;

  ensure(k: number): void {
    if (this.n + k <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.n + k));
    this.buf.copy(next, 0, 0, this.n);
    this.buf = next;
  }

  bytes(key: readonly number[]): void {
    this.ensure(key.length);
    for (let i = 0; i < key.length; i++) this.buf[this.n++] = key[i] as number;
  }

  /** A varint of a non-negative integer below 2^53. */
  varint(x: number): void {
    this.ensure(10);
    const b = this.buf;
    let n = this.n;
    while (x > 0x7f) {
      b[n++] = (x % 128) | 0x80;
      x = Math.floor(x / 128);
    }
    b[n++] = x;
    this.n = n;
  }

  /** A varint of a 64-bit pattern (0 <= x < 2^64). */
  varint64(x: bigint): void {
    if (x <= 0x1f_ffff_ffff_ffffn) return this.varint(Number(x));
    this.ensure(10);
    while (x > 0x7fn) {
      this.buf[this.n++] = Number(x & 0x7fn) | 0x80;
      x >>= 7n;
    }
    this.buf[this.n++] = Number(x);
  }

  raw(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.n);
    this.n += b.length;
  }

  /** Start a length-delimited run: returns where its contents start (one byte of length reserved). */
  begin(): number {
    this.ensure(1);
    return ++this.n;
  }

  /** End the run begun at `start`: writes its length before it, moving the contents if needed. */
  end(start: number): void {
    const len = this.n - start;
    if (len < 0x80) {
      this.buf[start - 1] = len;
      return;
    }
    const lenBytes = varintBytes(len);
    const extra = lenBytes.length - 1;
    this.ensure(extra);
    this.buf.copyWithin(start + extra, start, this.n);
    for (let i = 0; i < lenBytes.length; i++) this.buf[start - 1 + i] = lenBytes[i] as number;
    this.n += extra;
  }
}

function shapeError(type: MessageType, f: FieldPlan, what: string): EntryShapeError {
  return new EntryShapeError(`${type.name}.${f.name}: expected ${what}`);
}

// Integers are taken in the signed or the unsigned range of their width, whatever the field's own
// signedness (the bits are what is written): a value outside both would be cut, and is refused.
const MIN_64 = -(1n << 63n);
const MAX_64 = (1n << 64n) - 1n;

function toBig64(type: MessageType, f: FieldPlan, v: unknown): bigint {
  const x = typeof v === 'bigint' ? v : typeof v === 'number' && Number.isInteger(v) ? BigInt(v) : null;
  if (x !== null && x >= MIN_64 && x <= MAX_64) return x;
  throw shapeError(type, f, x === null ? 'a 64-bit integer (bigint)' : `a 64-bit integer, not ${x}`);
}

function integer(type: MessageType, f: FieldPlan, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw shapeError(type, f, 'an integer');
  if (v < -0x8000_0000 || v > 0xffff_ffff) throw shapeError(type, f, `a 32-bit integer, not ${v}`);
  return v;
}

/** One value of field `f` (without its key). */
function writeValue(w: Writer, type: MessageType, f: FieldPlan, v: unknown, depth: number): void {
  switch (f.kind) {
    case Kind.Message: {
      if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array)
        throw shapeError(type, f, 'a message object');
      const start = w.begin();
      encodeInto(w, f.message as MessageType, v as ImageEntry, depth + 1);
      w.end(start);
      return;
    }
    case Kind.Int64:
    case Kind.Uint64:
      return w.varint64(toBig64(type, f, v) & MASK64);
    case Kind.Sint64: {
      const x = BigInt.asIntN(64, toBig64(type, f, v));
      return w.varint64(((x << 1n) ^ (x >> 63n)) & MASK64);
    }
    case Kind.Fixed64:
    case Kind.Sfixed64:
      w.ensure(8);
      w.buf.writeBigUInt64LE(toBig64(type, f, v) & MASK64, w.n);
      w.n += 8;
      return;
    case Kind.Bytes: {
      if (!(v instanceof Uint8Array)) throw shapeError(type, f, 'bytes');
      w.varint(v.length);
      return w.raw(v);
    }
    case Kind.String: {
      if (typeof v !== 'string') throw shapeError(type, f, 'a string');
      const len = Buffer.byteLength(v, 'utf8');
      w.varint(len);
      w.ensure(len);
      w.n += w.buf.write(v, w.n, len, 'utf8');
      return;
    }
    case Kind.Bool:
      if (typeof v !== 'boolean') throw shapeError(type, f, 'a boolean');
      w.ensure(1);
      w.buf[w.n++] = v ? 1 : 0;
      return;
    case Kind.Float:
    case Kind.Double:
      if (typeof v !== 'number') throw shapeError(type, f, 'a number');
      w.ensure(8);
      w.n = f.kind === Kind.Float ? w.buf.writeFloatLE(v, w.n) : w.buf.writeDoubleLE(v, w.n);
      return;
    case Kind.Int32:
    case Kind.Enum: {
      const x = integer(type, f, v);
      // A negative int32 is sign-extended to 64 bits on the wire (ten bytes).
      return x < 0 ? w.varint64(BigInt.asUintN(64, BigInt(x))) : w.varint(x >>> 0);
    }
    case Kind.Uint32:
      return w.varint(integer(type, f, v) >>> 0);
    case Kind.Sint32: {
      const x = integer(type, f, v);
      return w.varint(((x << 1) ^ (x >> 31)) >>> 0);
    }
    default: {
      // fixed32, sfixed32: the low 32 bits, little-endian
      const x = integer(type, f, v);
      w.ensure(4);
      w.n = w.buf.writeUInt32LE(x >>> 0, w.n);
    }
  }
}

function encodeInto(w: Writer, type: MessageType, entry: ImageEntry, depth: number): void {
  if (depth > MAX_DEPTH) throw new EntryShapeError(`${type.name}: messages nested too deep`);
  const { fields } = planOf(type);
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i] as FieldPlan;
    const v = entry[f.name];
    if (v === undefined) {
      if (f.required) throw new EntryShapeError(`${type.name}.${f.name}: required field is missing`);
      continue;
    }
    if (!f.repeated) {
      w.bytes(f.key);
      writeValue(w, type, f, v, depth);
      continue;
    }
    if (!Array.isArray(v)) throw new EntryShapeError(`${type.name}.${f.name}: expected an array`);
    const arr = v as readonly unknown[];
    if (arr.length === 0) continue;
    if (f.packed) {
      w.bytes(f.key);
      const start = w.begin();
      for (const x of arr) writeValue(w, type, f, x, depth);
      w.end(start);
    } else {
      for (const x of arr) {
        w.bytes(f.key);
        writeValue(w, type, f, x, depth);
      }
    }
  }
  const unknowns = (entry as { [UNKNOWN_FIELDS]?: readonly Uint8Array[] })[UNKNOWN_FIELDS];
  if (unknowns !== undefined) for (const u of unknowns) w.raw(u);
}

/**
 * Encode one entry body. Throws EntryShapeError for a value that does not fit its field (wrong
 * kind, or an integer beyond its width). Names the message does not have are not written.
 */
export function encodeEntry(type: MessageType, entry: ImageEntry): Buffer {
  const w = new Writer();
  encodeInto(w, type, entry, 0);
  return Buffer.from(w.buf.subarray(0, w.n));
}

// ---------------------------------------------------------------------------------------------
// Decoding.

class Reader {
  pos: number;

  constructor(
    readonly buf: Buffer,
    start: number,
    public end: number,
  ) {
    this.pos = start;
  }

  need(n: number): void {
    if (this.pos + n > this.end) throw new WireError(`index out of range: ${this.pos} + ${n} > ${this.end}`);
  }

  /** A fixed-size value of `n` bytes, read by `read` at its offset. */
  fixed<T>(n: number, read: (at: number) => T): T {
    this.need(n);
    const v = read(this.pos);
    this.pos += n;
    return v;
  }

  /** A varint's low 32 bits (as an unsigned number); the rest of a longer varint is skipped. */
  varint32(): number {
    let x = 0;
    for (let shift = 0; shift < 70; shift += 7) {
      this.need(1);
      const b = this.buf[this.pos++] as number;
      if (shift < 32) x = (x | ((b & 0x7f) << shift)) >>> 0;
      if (b < 0x80) return x;
    }
    throw new WireError(`invalid varint at ${this.pos}`);
  }

  /** A varint as a 64-bit unsigned bigint. */
  varint64(): bigint {
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      this.need(1);
      const b = this.buf[this.pos++] as number;
      const bits = b & 0x7f;
      if (i < 4) lo |= bits << (7 * i);
      else if (i === 4) {
        lo |= (bits & 0x0f) << 28;
        hi = bits >> 4;
      } else hi |= bits << (7 * i - 32);
      if (b < 0x80) return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
    }
    throw new WireError(`invalid varint at ${this.pos}`);
  }

  /** Past one value of wire type `wire` (groups included). */
  skip(wire: number, depth: number): void {
    switch (wire) {
      case 0:
        this.varint64();
        return;
      case 1:
        this.need(8);
        this.pos += 8;
        return;
      case 2: {
        const len = this.varint32();
        this.need(len);
        this.pos += len;
        return;
      }
      case 3:
        if (depth > MAX_DEPTH) throw new WireError('groups nested too deep');
        for (;;) {
          const t = this.varint32();
          if ((t & 7) === 4) return;
          this.skip(t & 7, depth + 1);
        }
      case 5:
        this.need(4);
        this.pos += 4;
        return;
      default:
        throw new WireError(`invalid wire type ${wire} at offset ${this.pos}`);
    }
  }
}

function readValue(r: Reader, f: FieldPlan, depth: number): EntryValue {
  const b = r.buf;
  switch (f.kind) {
    case Kind.Message: {
      const len = r.varint32();
      r.need(len);
      const end = r.pos + len;
      const v = decodeFrom(r.buf, r.pos, end, f.message as MessageType, depth + 1);
      r.pos = end;
      return v;
    }
    case Kind.Int32:
    case Kind.Enum:
      return r.varint32() | 0;
    case Kind.Uint32:
      return r.varint32();
    case Kind.Sint32: {
      const n = r.varint32();
      return (n >>> 1) ^ -(n & 1);
    }
    case Kind.Bool:
      return r.varint32() !== 0;
    case Kind.Int64:
      return BigInt.asIntN(64, r.varint64());
    case Kind.Uint64:
      return r.varint64();
    case Kind.Sint64: {
      const n = r.varint64();
      return (n >> 1n) ^ -(n & 1n);
    }
    case Kind.Fixed64:
      return r.fixed(8, (at) => b.readBigUInt64LE(at));
    case Kind.Sfixed64:
      return r.fixed(8, (at) => b.readBigInt64LE(at));
    case Kind.Double:
      return r.fixed(8, (at) => b.readDoubleLE(at));
    case Kind.Float:
      return r.fixed(4, (at) => b.readFloatLE(at));
    case Kind.Fixed32:
      return r.fixed(4, (at) => b.readUInt32LE(at));
    case Kind.Sfixed32:
      return r.fixed(4, (at) => b.readInt32LE(at));
    default: {
      // string, bytes
      const len = r.varint32();
      r.need(len);
      const start = r.pos;
      r.pos += len;
      return f.kind === Kind.String ? b.toString('utf8', start, r.pos) : b.subarray(start, r.pos);
    }
  }
}

function decodeFrom(buf: Buffer, start: number, end: number, type: MessageType, depth: number): ImageEntry {
  if (depth > MAX_DEPTH) throw new WireError(`${type.name}: messages nested too deep`);
  const plan = planOf(type);
  const { fields, byId } = plan;
  const values: (EntryValue | EntryValue[] | undefined)[] = new Array(fields.length);
  let unknowns: Buffer[] | undefined;
  const r = new Reader(buf, start, end);
  while (r.pos < end) {
    const at = r.pos;
    const tag = r.varint32();
    const wire = tag & 7;
    const i = byId[tag >>> 3];
    if (i !== undefined) {
      const f = fields[i] as FieldPlan;
      if (f.packable && wire === WIRE_LEN) {
        const len = r.varint32();
        r.need(len);
        const stop = r.pos + len;
        const arr = (values[i] as EntryValue[] | undefined) ?? (values[i] = []);
        const inner = new Reader(buf, r.pos, stop);
        while (inner.pos < stop) arr.push(readValue(inner, f, depth));
        r.pos = stop;
        continue;
      }
      if (wire === f.wire) {
        const v = readValue(r, f, depth);
        if (f.repeated) ((values[i] as EntryValue[] | undefined) ?? (values[i] = [])).push(v);
        else values[i] = v;
        continue;
      }
    }
    // Not a field of this message (or not of its declared type): kept as is.
    r.skip(wire, depth);
    (unknowns ??= []).push(Buffer.from(buf.subarray(at, r.pos)));
  }
  const out: ImageEntry = {};
  for (let i = 0; i < fields.length; i++) {
    const v = values[i];
    if (v === undefined || (Array.isArray(v) && v.length === 0)) continue;
    out[(fields[i] as FieldPlan).name] = v;
  }
  for (const f of plan.required) {
    if (out[f.name] === undefined) throw new WireError(`missing required '${f.name}'`);
  }
  if (unknowns !== undefined) Object.defineProperty(out, UNKNOWN_FIELDS, { value: unknowns, enumerable: false });
  return out;
}

/**
 * Decode one entry body. Throws WireError on malformed input (callers say which entry). Bytes
 * fields are views of `bytes`, not copies: it must not be reused while the entry is.
 */
export function decodeEntry(type: MessageType, bytes: Uint8Array): ImageEntry {
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return decodeFrom(buf, 0, buf.length, type, 0);
}
