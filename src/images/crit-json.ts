/**
 * Plain image entries ⇄ the JSON shape of CRIU's `crit` (pycriu's pb2dict/dict2pb), driven by the
 * criu field options of proto/opts.proto.
 *
 * Facts of crit's "pretty" shape (crit decode --pretty), which our `show` reproduces:
 * - present fields only, in field-number order; empty repeated fields are left out;
 * - integers are JSON numbers, except: (criu).hex → "0x1f" (and every integer nested inside a hex
 *   field too); (criu).dev/odev → "major:minor"; (criu).flags → "NAME | NAME | 0xrest" from a flag
 *   map ("" for 0; "0x.." when the map is unknown); (criu).dict → a value's name when it has one;
 * - enums by value name; bools true/false; strings as is;
 * - bytes as base64 in MIME lines (76 characters, each ending "\n"), or quoted-printable for
 *   (criu).conv = "unix_name";
 * - (criu).ipadd repeated u32 (network order) → a one-element list holding the address text.
 * Without `pretty`, integers are plain numbers everywhere (crit decode without --pretty).
 *
 * Touches no kernel interface.
 */
import { ipText, ipWords } from './ip-address.js';
import type { EntryValue, ImageEntry } from './entry-codec.js';
import type { JsonObject, JsonValue } from './json-text.js';
import { EnumType, MessageType } from './proto.js';
import { criuOptions, fieldsByNumber, type PbField, type PbType } from './schema.js';

type FlagMap = readonly (readonly [string, number])[];

const FLAG_MAPS: Record<string, FlagMap> = {
  'mmap.prot': [
    ['PROT_READ', 0x1],
    ['PROT_WRITE', 0x2],
    ['PROT_EXEC', 0x4],
  ],
  'mmap.flags': [
    ['MAP_SHARED', 0x1],
    ['MAP_PRIVATE', 0x2],
    ['MAP_ANON', 0x20],
    ['MAP_GROWSDOWN', 0x0100],
  ],
  'mmap.status': [
    ['VMA_AREA_NONE', 0],
    ['VMA_AREA_REGULAR', 1 << 0],
    ['VMA_AREA_STACK', 1 << 1],
    ['VMA_AREA_VSYSCALL', 1 << 2],
    ['VMA_AREA_VDSO', 1 << 3],
    ['VMA_AREA_HEAP', 1 << 5],
    ['VMA_FILE_PRIVATE', 1 << 6],
    ['VMA_FILE_SHARED', 1 << 7],
    ['VMA_ANON_SHARED', 1 << 8],
    ['VMA_ANON_PRIVATE', 1 << 9],
    ['VMA_AREA_SYSVIPC', 1 << 10],
    ['VMA_AREA_SOCKET', 1 << 11],
    ['VMA_AREA_VVAR', 1 << 12],
    ['VMA_AREA_AIORING', 1 << 13],
    ['VMA_AREA_MEMFD', 1 << 14], // CRIU 4.x
    ['VMA_UNSUPP', 2 ** 31],
  ],
  'rfile.flags': [
    ['O_WRONLY', 0o1],
    ['O_RDWR', 0o2],
    ['O_CREAT', 0o100],
    ['O_EXCL', 0o200],
    ['O_NOCTTY', 0o400],
    ['O_TRUNC', 0o1000],
    ['O_APPEND', 0o2000],
    ['O_NONBLOCK', 0o4000],
    ['O_DSYNC', 0o10000],
    ['FASYNC', 0o20000],
    ['O_DIRECT', 0o40000],
    ['O_LARGEFILE', 0o100000],
    ['O_DIRECTORY', 0o200000],
    ['O_NOFOLLOW', 0o400000],
    ['O_NOATIME', 0o1000000],
    ['O_CLOEXEC', 0o2000000],
  ],
  'pmap.flags': [
    ['PE_PARENT', 1 << 0],
    ['PE_LAZY', 1 << 1],
    ['PE_PRESENT', 1 << 2],
  ],
  'seals.flags': [
    ['F_SEAL_SEAL', 0x1],
    ['F_SEAL_SHRINK', 0x2],
    ['F_SEAL_GROW', 0x4],
    ['F_SEAL_WRITE', 0x8],
    ['F_SEAL_FUTURE_WRITE', 0x10],
  ],
};

/** Value dictionaries of (criu).dict, keyed by dictionary then field name. */
const DICT_MAPS: Record<string, Record<string, Record<number, string>>> = {
  gen: { task_state: { 1: 'Alive', 3: 'Zombie', 6: 'Stopped' } },
  sk: {
    family: { 1: 'UNIX', 2: 'INET', 10: 'INET6', 16: 'NETLINK', 17: 'PACKET' },
    type: { 1: 'STREAM', 2: 'DGRAM', 3: 'RAW', 5: 'SEQPACKET', 10: 'PACKET' },
    state: {
      1: 'ESTABLISHED',
      2: 'SYN_SENT',
      3: 'SYN_RECV',
      4: 'FIN_WAIT1',
      5: 'FIN_WAIT2',
      6: 'TIME_WAIT',
      7: 'CLOSE',
      8: 'CLOSE_WAIT',
      9: 'LAST_ACK',
      10: 'LISTEN',
    },
    proto: { 0: 'IP', 6: 'TCP', 17: 'UDP', 136: 'UDPLITE' },
  },
};

/** Thrown when crit JSON does not fit the schema. */
export class CritJsonError extends Error {}

// ---------------------------------------------------------------------------------------------
// Small codecs shared with the extra payloads.

/** Python's base64.encodebytes: MIME lines of 76 characters, each ending in "\n"; "" when empty. */
export function base64Lines(bytes: Uint8Array): string {
  const b64 = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
  let out = '';
  for (let i = 0; i < b64.length; i += 76) out += b64.slice(i, i + 76) + '\n';
  return out;
}

/** Python's base64.decodebytes (whitespace ignored). */
export function fromBase64(text: string): Buffer {
  return Buffer.from(text.replace(/\s+/g, ''), 'base64');
}

const hexOf = (v: bigint): string => (v < 0n ? '-0x' + (-v).toString(16) : '0x' + v.toString(16));

function mapFlags(value: bigint, map: FlagMap): string {
  const names: string[] = [];
  let known = 0n;
  for (const [name, bit] of map) {
    if ((value & BigInt(bit)) !== 0n) names.push(name);
    known |= BigInt(bit);
  }
  const rest = value & ~known;
  if (rest !== 0n) names.push(hexOf(rest));
  return names.join(' | ');
}

/** dev_t → "major:minor"; odev is glibc's encoding, dev the kernel's (minor in the low 20 bits). */
function decodeDev(v: bigint, odev: boolean): string {
  if (odev) {
    const major = ((v >> 8n) & 0xfffn) | ((v >> 32n) & ~0xfffn);
    const minor = (v & 0xffn) | ((v >> 12n) & ~0xffn);
    return `${major}:${minor}`;
  }
  return `${v >> 20n}:${v & 0xfffffn}`;
}

function encodeDev(text: string, odev: boolean): bigint {
  const [maj, min] = text.split(':').map((x) => BigInt(x.trim()));
  if (maj === undefined || min === undefined) throw new CritJsonError(`Bad device number "${text}"`);
  if (odev) return ((maj & 0xfffn) << 8n) | ((maj & ~0xfffn) << 32n) | (min & 0xffn) | ((min & ~0xffn) << 12n);
  return (maj << 20n) | min;
}

/** Python's int(text, 0): decimal, 0x, 0o, 0b, optional sign and underscores. */
export function parsePyInt(text: string): bigint {
  const t = text.trim().replace(/_/g, '');
  const m = /^([+-]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|[1-9]\d*|0+)$/.exec(t);
  if (m === null) throw new CritJsonError(`Bad integer "${text}"`);
  const body = m[2] as string;
  const v = /^0[oO]/.test(body) ? BigInt('0o' + body.slice(2)) : /^0+$/.test(body) ? 0n : BigInt(body);
  return m[1] === '-' ? -v : v;
}

/** Quoted-printable as Python's quopri.encodestring (binascii.b2a_qp, quotetabs off). */
function qpEncode(data: Uint8Array): string {
  let out = '';
  let line = '';
  const flush = (soft: boolean): void => {
    out += line + (soft ? '=\n' : '');
    line = '';
  };
  for (let i = 0; i < data.length; i++) {
    const c = data[i] as number;
    const atEol = i + 1 === data.length || data[i + 1] === 0x0a;
    let piece: string;
    if (c === 0x0a) {
      out += line + '\n';
      line = '';
      continue;
    } else if ((c === 0x20 || c === 0x09) && atEol) piece = '=' + c.toString(16).toUpperCase().padStart(2, '0');
    else if (c === 0x3d || c < 0x20 || c > 0x7e)
      piece = c === 0x09 ? '\t' : '=' + c.toString(16).toUpperCase().padStart(2, '0');
    else piece = String.fromCharCode(c);
    if (line.length + piece.length > 75 && !(atEol && line.length + piece.length <= 76)) flush(true);
    line += piece;
  }
  out += line;
  return out;
}

function qpDecode(text: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const ch = text[i] as string;
    if (ch === '=') {
      if (text[i + 1] === '\n') {
        i += 1;
        continue;
      }
      const hex = text.slice(i + 1, i + 3);
      if (/^[0-9A-Fa-f]{2}$/.test(hex)) {
        bytes.push(parseInt(hex, 16));
        i += 2;
        continue;
      }
    }
    bytes.push(text.charCodeAt(i) & 0xff);
  }
  return Buffer.from(bytes);
}

// ---------------------------------------------------------------------------------------------
// Entry → crit JSON.

function scalarToJson(field: PbField, v: EntryValue, pretty: boolean, isHex: boolean): JsonValue {
  const rt = field.resolvedType;
  if (rt instanceof MessageType) return entryToCritJson(rt, v as ImageEntry, pretty, isHex || criuOptions(field).hex);
  const opts = criuOptions(field);
  if (field.type === 'bytes') {
    if (opts.conv === 'unix_name') return qpEncode(v as Uint8Array);
    return base64Lines(v as Uint8Array);
  }
  // A value the enum does not name (a newer CRIU's) stays a number, as decoding keeps it.
  if (rt instanceof EnumType) return rt.valuesById[v as number] ?? (v as number);
  if (typeof v === 'boolean' || typeof v === 'string') return v;
  if (typeof v !== 'number' && typeof v !== 'bigint') throw new CritJsonError(`${field.name}: unexpected value`);
  if (!pretty) return v;
  const big = BigInt(v);
  if (isHex || opts.hex) return hexOf(big);
  if (opts.dev || opts.odev) return decodeDev(big, opts.odev);
  if (opts.flags !== undefined) {
    const map = FLAG_MAPS[opts.flags];
    return map === undefined ? hexOf(big) : mapFlags(big, map);
  }
  if (opts.dict !== undefined) {
    const name = DICT_MAPS[opts.dict]?.[field.name]?.[Number(v)];
    if (name !== undefined) return name;
  }
  return v;
}

/** An entry in crit's JSON shape (pb2dict). `inheritedHex`: a parent field was (criu).hex. */
export function entryToCritJson(type: PbType, entry: ImageEntry, pretty = true, inheritedHex = false): JsonObject {
  const out: Record<string, JsonValue> = {};
  for (const field of fieldsByNumber(type)) {
    const v = entry[field.name];
    if (v === undefined) continue;
    if (field.repeated) {
      const arr = v as readonly EntryValue[];
      if (arr.length === 0) continue;
      if (pretty && criuOptions(field).ipadd) out[field.name] = [ipText(arr as readonly number[])];
      else out[field.name] = arr.map((x) => scalarToJson(field, x, pretty, inheritedHex));
    } else {
      out[field.name] = scalarToJson(field, v, pretty, inheritedHex);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// crit JSON → entry (dict2pb).

function ipFromText(text: string): number[] {
  try {
    return ipWords(text);
  } catch (err) {
    throw new CritJsonError(`Bad IP address "${text}"`, { cause: err });
  }
}

function intFromJson(field: PbField, v: JsonValue): bigint {
  const opts = criuOptions(field);
  if (typeof v === 'number' || typeof v === 'bigint') return BigInt(v);
  if (typeof v === 'boolean') return v ? 1n : 0n;
  if (typeof v !== 'string') throw new CritJsonError(`${field.name}: expected an integer`);
  if (opts.dev || opts.odev) return encodeDev(v, opts.odev);
  if (opts.flags !== undefined) {
    const map = FLAG_MAPS[opts.flags];
    if (map !== undefined) {
      if (v === '') return 0n;
      const byName = new Map(map);
      return v
        .split('|')
        .map((t) => t.trim())
        .reduce((acc, t) => acc + (byName.has(t) ? BigInt(byName.get(t) as number) : parsePyInt(t)), 0n);
    }
  }
  if (opts.dict !== undefined) {
    const dict = DICT_MAPS[opts.dict]?.[field.name] ?? {};
    const hit = Object.entries(dict).find(([, name]) => name === v);
    if (hit !== undefined) return BigInt(hit[0]);
  }
  return parsePyInt(v);
}

function scalarFromJson(field: PbField, v: JsonValue): EntryValue {
  const rt = field.resolvedType;
  if (rt instanceof MessageType) {
    if (v === null || typeof v !== 'object' || Array.isArray(v))
      throw new CritJsonError(`${field.name}: expected an object`);
    return critJsonToEntry(rt, v as JsonObject);
  }
  if (field.type === 'bytes') {
    if (typeof v !== 'string') throw new CritJsonError(`${field.name}: expected a base64 string`);
    return criuOptions(field).conv === 'unix_name' ? qpDecode(v) : fromBase64(v);
  }
  if (rt instanceof EnumType) {
    const n =
      typeof v === 'string'
        ? Object.hasOwn(rt.values, v)
          ? rt.values[v]
          : undefined
        : typeof v === 'number'
          ? v
          : undefined;
    if (n === undefined) throw new CritJsonError(`${field.name}: unknown ${rt.name} value ${JSON.stringify(v)}`);
    return n;
  }
  if (field.type === 'bool') return Boolean(v);
  if (field.type === 'string') {
    if (typeof v !== 'string') throw new CritJsonError(`${field.name}: expected a string`);
    return v;
  }
  if (field.type === 'float' || field.type === 'double') return Number(v);
  const n = intFromJson(field, v);
  if (field.long)
    return field.type.startsWith('u') || field.type === 'fixed64' ? BigInt.asUintN(64, n) : BigInt.asIntN(64, n);
  return field.type.startsWith('u') || field.type === 'fixed32'
    ? Number(BigInt.asUintN(32, n))
    : Number(BigInt.asIntN(32, n));
}

/** crit JSON (pretty or not) → plain entry. Unknown keys (e.g. "extra") are ignored. */
export function critJsonToEntry(type: PbType, json: JsonObject): ImageEntry {
  const out: ImageEntry = {};
  for (const field of fieldsByNumber(type)) {
    if (!Object.hasOwn(json, field.name)) continue;
    const v = json[field.name] as JsonValue;
    if (field.repeated) {
      if (!Array.isArray(v)) throw new CritJsonError(`${type.name}.${field.name}: expected a list`);
      const arr = v as readonly JsonValue[];
      if (arr.length > 0 && typeof arr[0] === 'string' && criuOptions(field).ipadd)
        out[field.name] = ipFromText(arr[0]);
      else out[field.name] = arr.map((x) => scalarFromJson(field, x));
    } else {
      out[field.name] = scalarFromJson(field, v);
    }
  }
  return out;
}
