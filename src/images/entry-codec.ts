/**
 * One image entry's protobuf body ⇄ a plain object (an ImageEntry).
 *
 * Plain entries keep the wire's snake_case field names and hold only the fields present on the
 * wire (proto2 presence): 64-bit integers are bigint, 32-bit integers and enums are numbers, bytes
 * are Buffers, nested messages are plain objects, repeated fields are arrays. Fields this schema does
 * not know are kept (under the UNKNOWN_FIELDS symbol) and written back, so decode → encode is
 * byte-exact even for images of a newer CRIU.
 *
 * Touches no kernel interface; used by every image kind.
 */
import protobuf from 'protobufjs';
import { fieldsByNumber, type PbField, type PbType } from './schema.js';

export type EntryValue = number | bigint | boolean | string | Uint8Array | ImageEntry | readonly EntryValue[];

/** A decoded image entry: field name → value; absent fields are absent. */
export interface ImageEntry {
  [field: string]: EntryValue | undefined;
}

/** Raw wire bytes of fields the schema does not know, per message (non-enumerable). */
export const UNKNOWN_FIELDS: unique symbol = Symbol('criu-ts.unknownFields');

/** Thrown by encodeEntry for a value that does not fit its field (a programming error). */
export class EntryShapeError extends Error {}

const SIGNED_64 = new Set(['int64', 'sint64', 'sfixed64']);

type LongLike = { low: number; high: number; unsigned?: boolean };
type PbMessage = Record<string, unknown> & { $unknowns?: Uint8Array[] };

function longToBigint(v: unknown, signed: boolean): bigint {
  if (typeof v === 'number') return BigInt(v);
  if (typeof v === 'bigint') return v;
  const l = v as LongLike;
  const u = (BigInt(l.high >>> 0) << 32n) | BigInt(l.low >>> 0);
  return signed ? BigInt.asIntN(64, u) : u;
}

function bigintToLong(v: bigint, unsigned: boolean): LongLike {
  const u = BigInt.asUintN(64, v);
  return { low: Number(u & 0xffffffffn) | 0, high: Number(u >> 32n) | 0, unsigned };
}

function plainValue(field: PbField, v: unknown): EntryValue {
  const rt = field.resolvedType;
  if (rt instanceof protobuf.Type) return messageToEntry(rt, v as PbMessage);
  if (field.long) return longToBigint(v, SIGNED_64.has(field.type));
  if (field.type === 'bytes') return Buffer.isBuffer(v) ? v : Buffer.from(v as Uint8Array);
  return v as EntryValue;
}

/** A protobufjs message → plain entry. */
export function messageToEntry(type: PbType, msg: PbMessage): ImageEntry {
  const out: ImageEntry = {};
  for (const field of fieldsByNumber(type)) {
    const v = msg[field.name];
    if (field.repeated) {
      if (Array.isArray(v) && v.length > 0) out[field.name] = v.map((x: unknown) => plainValue(field, x));
    } else if (v !== undefined && v !== null && Object.hasOwn(msg, field.name)) {
      out[field.name] = plainValue(field, v);
    }
  }
  const unknowns = msg.$unknowns;
  if (unknowns !== undefined && unknowns.length > 0) {
    Object.defineProperty(out, UNKNOWN_FIELDS, { value: unknowns.map((u) => Buffer.from(u)), enumerable: false });
  }
  return out;
}

function messageValue(type: PbType, field: PbField, v: unknown): unknown {
  const where = `${type.name}.${field.name}`;
  const rt = field.resolvedType;
  if (rt instanceof protobuf.Type) {
    if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) {
      throw new EntryShapeError(`${where}: expected a message object`);
    }
    return entryToMessage(rt, v as ImageEntry);
  }
  if (field.long) {
    if (typeof v === 'bigint') return bigintToLong(v, !SIGNED_64.has(field.type));
    if (typeof v === 'number' && Number.isInteger(v)) return bigintToLong(BigInt(v), !SIGNED_64.has(field.type));
    throw new EntryShapeError(`${where}: expected a 64-bit integer (bigint)`);
  }
  switch (field.type) {
    case 'bytes':
      if (v instanceof Uint8Array) return v;
      throw new EntryShapeError(`${where}: expected bytes`);
    case 'string':
      if (typeof v === 'string') return v;
      throw new EntryShapeError(`${where}: expected a string`);
    case 'bool':
      if (typeof v === 'boolean') return v;
      throw new EntryShapeError(`${where}: expected a boolean`);
    case 'float':
    case 'double':
      if (typeof v === 'number') return v;
      throw new EntryShapeError(`${where}: expected a number`);
    default:
      if (typeof v === 'number' && Number.isInteger(v)) return v;
      throw new EntryShapeError(`${where}: expected an integer`);
  }
}

/** A plain entry → protobufjs message; checks that required fields are set. */
export function entryToMessage(type: PbType, entry: ImageEntry): protobuf.Message {
  const msg = type.create() as unknown as PbMessage;
  for (const field of fieldsByNumber(type)) {
    const v = entry[field.name];
    if (v === undefined) {
      if (field.required) throw new EntryShapeError(`${type.name}.${field.name}: required field is missing`);
      continue;
    }
    if (field.repeated) {
      if (!Array.isArray(v)) throw new EntryShapeError(`${type.name}.${field.name}: expected an array`);
      msg[field.name] = v.map((x: unknown) => messageValue(type, field, x));
    } else {
      msg[field.name] = messageValue(type, field, v);
    }
  }
  const unknowns = (entry as { [UNKNOWN_FIELDS]?: Uint8Array[] })[UNKNOWN_FIELDS];
  if (unknowns !== undefined) {
    Object.defineProperty(msg, '$unknowns', { value: unknowns, enumerable: false, writable: true });
  }
  return msg as unknown as protobuf.Message;
}

/** Decode one entry body. Throws protobufjs's error on malformed input (callers wrap it). */
export function decodeEntry(type: PbType, bytes: Uint8Array): ImageEntry {
  const reader = protobuf.Reader.create(bytes);
  reader.discardUnknown = false;
  const msg = type.decode(reader) as unknown as PbMessage;
  return messageToEntry(type, msg);
}

/** Encode one entry body (fields in field-number order, as protobuf-c writes them). */
export function encodeEntry(type: PbType, entry: ImageEntry): Buffer {
  const bytes = type.encode(entryToMessage(type, entry)).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
