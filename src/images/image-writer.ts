/**
 * Writing image files atomically: the data goes to `.NAME.tmp-<pid>.<n>` in the same directory
 * (mode 0600), is fsync'ed, then renamed to NAME and the directory fsync'ed. A writer that fails or
 * is aborted removes its temporary file, so a half-written image never appears under its final name.
 *
 * Entry layout: see kinds.ts (magic words, then u32 length + proto2 body [+ raw payload] per entry).
 *
 * Speed matters here: `criu dump` writes its images while the task is frozen, and a final dump
 * after pre-dumps writes a pagemap of thousands of small entries. So:
 *   - messages whose fields are all unsigned varints (pagemap_entry, say) are encoded
 *     straight into the record buffer (encodeFlatEntry, byte-identical to encodeEntry, without its
 *     per-entry buffer); anything else goes through encodeEntry;
 *   - writeImage, given an array, encodes everything first and writes it with one write(2)
 *     instead of awaiting each entry, synchronously when it is small (SYNC_MAX_BYTES);
 *   - writeImagesSync writes a batch of small images with synchronous calls (no thread-pool
 *     round trip per open/write/fsync/close/rename, ~9 of them per image) and syncs the
 *     directory once for the whole batch. Each file is still fsync'ed before its rename.
 */
import { closeSync, fchmodSync, fsyncSync, openSync, renameSync, unlinkSync, writevSync } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ImageError } from '../errors.js';
import { encodeEntry, prepareType, UNKNOWN_FIELDS, varintBytes, type ImageEntry } from './entry-codec.js';
import { entryType } from './image-reader.js';
import { IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, imageKind, type ImageKind } from './kinds.js';
import { fieldsByNumber, type PbType } from './schema.js';
import { EnumType } from './proto.js';

const FLUSH_BYTES = 256 * 1024;
/**
 * writeImage writes an image given as an array of at most this many bytes synchronously: ~9
 * thread-pool round trips (open, chmod, write, fsync, close, rename, and the directory's open,
 * fsync, close) cost more than the I/O of a small file, and `criu dump` waits for them frozen.
 * The event loop is blocked meanwhile, for as long as the fsyncs take.
 */
const SYNC_MAX_BYTES = 1 << 20;
let tmpSeq = 0;

type WriterState = 'open' | 'committed' | 'aborted';

/** Writes one image file; call commit() to publish it or abort() to drop it. Not for concurrent use. */
export class ImageWriter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private written = 0;
  private index = 0;
  private state: WriterState = 'open';

  private constructor(
    readonly path: string,
    readonly kind: ImageKind,
    private readonly tmpPath: string,
    private readonly fh: FileHandle,
  ) {}

  /** Create a writer for `path` (the final name) of the given kind; writes the magic words. */
  static async create(path: string, kind: ImageKind | string, opts: { mode?: number } = {}): Promise<ImageWriter> {
    const k = typeof kind === 'string' ? imageKind(kind) : kind;
    const tmpPath = join(dirname(path), `.${basename(path)}.tmp-${process.pid}.${tmpSeq++}`);
    const mode = opts.mode ?? 0o600;
    const fh = await open(tmpPath, 'wx', mode).catch((err: unknown) => {
      throw new ImageError(path, 'cannot create the temporary file', undefined, { cause: err, isWrite: true });
    });
    await fh.chmod(mode); // the umask must not widen or narrow what was asked
    const w = new ImageWriter(path, k, tmpPath, fh);
    w.push(magicBytes(k));
    return w;
  }

  /** Bytes written so far (header included). */
  get sizeBytes(): number {
    return this.written + this.pendingBytes;
  }

  /** Number of entries appended. */
  get entryCount(): number {
    return this.index;
  }

  /**
   * Append one entry (entry 0 uses the kind's head type, e.g. pagemap_head) and the raw payload
   * that follows it, if the kind has one. A bad entry aborts the writer and throws.
   */
  async append(entry: ImageEntry, extra?: Uint8Array): Promise<void> {
    this.assertOpen();
    if (this.kind.header === 'raw') throw new Error(`${this.kind.name} is raw: use appendRaw()`);
    try {
      for (const b of encodeRecord(this.kind, this.index, entry, extra)) this.push(b);
      this.index++;
      if (this.pendingBytes >= FLUSH_BYTES) await this.flush();
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  /** Append raw bytes (raw kinds such as pages-<n>.img, or a hand-made body). */
  async appendRaw(bytes: Uint8Array): Promise<void> {
    this.assertOpen();
    this.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    if (this.pendingBytes >= FLUSH_BYTES) {
      try {
        await this.flush();
      } catch (err) {
        await this.abort();
        throw err;
      }
    }
  }

  /** Flush, fsync, rename to the final name and fsync the directory. */
  async commit(): Promise<void> {
    this.assertOpen();
    try {
      await this.flush();
      await this.fh.sync();
      await this.fh.close();
      await rename(this.tmpPath, this.path);
      this.state = 'committed';
    } catch (err) {
      await this.abort();
      throw new ImageError(this.path, 'the file system refused it', undefined, { cause: err, isWrite: true });
    }
    await syncDir(dirname(this.path));
  }

  /** Drop everything written; the final name is left untouched. Safe to call more than once. */
  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.fh.close().catch(() => undefined);
    await unlink(this.tmpPath).catch(() => undefined);
  }

  /**
   * Append a whole image's entries as encodeImage made them (magic words first, skipped: the
   * writer wrote its own). For writeImage.
   */
  pushEncoded(bufs: readonly Buffer[], count: number): void {
    this.assertOpen();
    for (let i = 1; i < bufs.length; i++) this.push(bufs[i] as Buffer);
    this.index += count;
  }

  private push(...bufs: Buffer[]): void {
    for (const b of bufs) {
      this.pending.push(b);
      this.pendingBytes += b.length;
    }
  }

  private async flush(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const data = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    let off = 0;
    while (off < data.length) {
      const { bytesWritten } = await this.fh.write(data, off, data.length - off, this.written + off);
      off += bytesWritten;
    }
    this.written += data.length;
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new Error(`Image writer for ${this.path} is ${this.state}`);
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r').catch(() => undefined);
  if (fh === undefined) return;
  await fh.sync().catch(() => undefined); // some filesystems refuse fsync on directories
  await fh.close();
}

/** An entry to write, with its optional raw payload. */
export interface ImageRecordInput {
  readonly entry: ImageEntry;
  readonly extra?: Uint8Array;
}

/** Write a whole image atomically. Entries may be plain entries or {entry, extra} records. */
export async function writeImage(
  path: string,
  kind: ImageKind | string,
  entries: Iterable<ImageEntry | ImageRecordInput> | AsyncIterable<ImageEntry | ImageRecordInput>,
  opts: { mode?: number } = {},
): Promise<void> {
  if (Array.isArray(entries)) {
    // Everything in memory already: encode it all, then one write (see the header).
    const k = typeof kind === 'string' ? imageKind(kind) : kind;
    const bufs = encodeImage(k, entries as readonly (ImageEntry | ImageRecordInput)[]);
    if (bufs.reduce((n, b) => n + b.length, 0) <= SYNC_MAX_BYTES) {
      writeEncodedSync([{ path, mode: opts.mode ?? 0o600, bufs }]);
      return;
    }
    const w = await ImageWriter.create(path, k, opts);
    try {
      w.pushEncoded(bufs, entries.length);
      await w.commit();
    } finally {
      await w.abort();
    }
    return;
  }
  const w = await ImageWriter.create(path, kind, opts);
  try {
    for await (const e of entries) {
      if (isRecordInput(e)) await w.append(e.entry, e.extra);
      else await w.append(e);
    }
    await w.commit();
  } finally {
    await w.abort();
  }
}

/**
 * Make ready now what encoding entries of these kinds would otherwise do on first use, which
 * `criu dump` would spend with the task frozen: making their message types from the schema and
 * their codecs' field tables (entry-codec.ts), ~1 ms for a dump's kinds.
 */
export function prepareImageKinds(kinds: readonly string[]): void {
  const seen = new Set<PbType>();
  for (const name of kinds) {
    const k = imageKind(name);
    if (k.header === 'raw') continue;
    prepareType(entryType(k, 0), seen);
    prepareType(entryType(k, 1), seen);
  }
}

/** One image to write with writeImagesSync. */
export interface ImageToWrite {
  path: string;
  kind: ImageKind | string;
  entries: readonly (ImageEntry | ImageRecordInput)[];
  mode?: number;
}

/**
 * Write several small images at once, synchronously (see the header): each is encoded (an error
 * there writes nothing), written to its temporary name and fsync'ed; then all are renamed and
 * their directories fsync'ed once. On failure no temporary file is left; images already renamed
 * stay (the caller removes what a failed dump wrote).
 */
export function writeImagesSync(images: readonly ImageToWrite[], opts: WriteSyncOptions = {}): void {
  writeEncodedSync(
    images.map((img) => ({
      path: img.path,
      mode: img.mode ?? 0o600,
      bufs: encodeImage(typeof img.kind === 'string' ? imageKind(img.kind) : img.kind, img.entries),
    })),
    opts,
  );
}

export interface WriteSyncOptions {
  /**
   * fsync each file and the directory (default true). A live migration's final dump skips it:
   * its images are carried to DST at once, and a crash of SRC loses the task with them anyway.
   * Still atomic: a reader sees the whole file or none.
   */
  isDurable?: boolean;
}

/** writeImagesSync once encoded. */
function writeEncodedSync(
  images: readonly { path: string; mode: number; bufs: readonly Buffer[] }[],
  opts: WriteSyncOptions = {},
): void {
  const isDurable = opts.isDurable !== false;
  const temps: { tmpPath: string; path: string }[] = [];
  try {
    for (const img of images) {
      const tmpPath = join(dirname(img.path), `.${basename(img.path)}.tmp-${process.pid}.${tmpSeq++}`);
      let fd: number;
      try {
        fd = openSync(tmpPath, 'wx', img.mode);
      } catch (err) {
        throw new ImageError(img.path, 'cannot create the temporary file', undefined, { cause: err, isWrite: true });
      }
      temps.push({ tmpPath, path: img.path });
      try {
        fchmodSync(fd, img.mode); // the umask must not widen or narrow what was asked
        writeAllSync(fd, img.bufs);
        if (isDurable) fsyncSync(fd);
      } catch (err) {
        throw new ImageError(img.path, 'the file system refused it', undefined, { cause: err, isWrite: true });
      } finally {
        closeSync(fd);
      }
    }
    while (temps.length > 0) {
      const t = temps[0] as { tmpPath: string; path: string };
      try {
        renameSync(t.tmpPath, t.path);
      } catch (err) {
        throw new ImageError(t.path, 'the file system refused it', undefined, { cause: err, isWrite: true });
      }
      temps.shift();
    }
  } finally {
    for (const t of temps) {
      try {
        unlinkSync(t.tmpPath);
      } catch {
        // already gone
      }
    }
  }
  if (isDurable) for (const dir of new Set(images.map((img) => dirname(img.path)))) syncDirSync(dir);
}

function writeAllSync(fd: number, bufs: readonly Buffer[]): void {
  let pending = bufs.filter((b) => b.length > 0);
  let pos = 0;
  while (pending.length > 0) {
    // writev takes at most IOV_MAX (1024) buffers at a time.
    const batch = pending.slice(0, 1024);
    const want = batch.reduce((n, b) => n + b.length, 0);
    const done = writevSync(fd, batch, pos);
    if (done <= 0) throw new Error(`write returned ${done}`);
    pos += done;
    if (done === want) {
      pending = pending.slice(batch.length);
      continue;
    }
    // A short write: drop what was written and go on.
    let skip = done;
    const rest: Buffer[] = [];
    for (const b of pending) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    pending = rest;
  }
}

function syncDirSync(dir: string): void {
  let fd: number;
  try {
    fd = openSync(dir, 'r');
  } catch {
    return;
  }
  try {
    fsyncSync(fd);
  } catch {
    // some filesystems refuse fsync on directories
  } finally {
    closeSync(fd);
  }
}

function magicBytes(k: ImageKind): Buffer {
  const head: number[] =
    k.header === 'common'
      ? [IMG_COMMON_MAGIC, k.magic]
      : k.header === 'service'
        ? [IMG_SERVICE_MAGIC, k.magic]
        : k.header === 'own'
          ? [k.magic]
          : [];
  const b = Buffer.alloc(head.length * 4);
  head.forEach((m, i) => b.writeUInt32LE(m >>> 0, i * 4));
  return b;
}

/**
 * The bytes of a whole image: the magic words, then each entry's record. Records are encoded into
 * large shared buffers (no Buffer per entry: thousands of them cost more in allocation and
 * garbage collection than in encoding); raw payloads are referred to, not copied.
 */
function encodeImage(k: ImageKind, entries: readonly (ImageEntry | ImageRecordInput)[]): Buffer[] {
  if (k.header === 'raw' && entries.length > 0) throw new Error(`${k.name} is raw: use appendRaw()`);
  const enc = new RecordEncoder();
  enc.raw(magicBytes(k));
  // One schema lookup for the head and one for the rest, not one per entry.
  const headType = entryType(k, 0);
  const restType = entries.length > 1 ? entryType(k, 1) : headType;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i] as ImageEntry | ImageRecordInput;
    const type = i === 0 ? headType : restType;
    if (isRecordInput(e)) enc.record(type, e.entry, e.extra);
    else enc.record(type, e);
  }
  return enc.finish();
}

/** One entry's record: u32 length, body, and its raw payload if any. */
function encodeRecord(k: ImageKind, index: number, entry: ImageEntry, extra?: Uint8Array): Buffer[] {
  const enc = new RecordEncoder();
  enc.record(entryType(k, index), entry, extra);
  return enc.finish();
}

/** Appends records to a list of buffers (see encodeImage). */
class RecordEncoder {
  private readonly out: Buffer[] = [];
  private buf = Buffer.allocUnsafe(4096);
  /** Start of the bytes of `buf` not yet in `out`, and its end. */
  private from = 0;
  private n = 0;

  record(type: PbType, entry: ImageEntry, extra?: Uint8Array): void {
    this.reserve(4 + FLAT_MAX_BYTES);
    const len = encodeFlatInto(type, entry, this.buf, this.n + 4);
    if (len >= 0) {
      this.buf.writeUInt32LE(len, this.n);
      this.n += 4 + len;
    } else {
      const body = encodeEntry(type, entry);
      this.reserve(4 + body.length);
      this.buf.writeUInt32LE(body.length, this.n);
      this.n += 4;
      this.n += body.copy(this.buf, this.n);
    }
    if (extra !== undefined && extra.length > 0)
      this.raw(Buffer.from(extra.buffer, extra.byteOffset, extra.byteLength));
  }

  /** Bytes to follow as they are (not copied). */
  raw(bytes: Buffer): void {
    this.cut();
    this.out.push(bytes);
  }

  finish(): Buffer[] {
    this.cut();
    return this.out;
  }

  private cut(): void {
    if (this.n > this.from) this.out.push(this.buf.subarray(this.from, this.n));
    this.from = this.n;
  }

  private reserve(bytes: number): void {
    if (this.n + bytes <= this.buf.length) return;
    this.cut();
    // What is in `out` keeps the old buffer alive; new records go to a fresh one.
    // Doubling, so that thousands of entries cost a few allocations.
    this.buf = Buffer.allocUnsafe(Math.max(2 * this.buf.length, bytes, 4096));
    this.from = this.n = 0;
  }
}

// ---- the flat-message encoder -------------------------------------------------------------------

/** A field the flat encoder handles: an unsigned varint (or bool, or a non-negative int32/enum). */
interface FlatField {
  name: string;
  /** The field key, encoded (field number << 3 | wire type 0). */
  key: readonly number[];
  isRequired: boolean;
  is64: boolean;
  isBool: boolean;
  /** The largest value taken as is: int32 and enums are signed (a negative one is 10 bytes). */
  max32: number;
}

const FLAT_TYPES = new Set(['uint32', 'uint64', 'bool', 'int32', 'int64']);
/** Flat messages with more fields than this go to encodeEntry (keeps the bound below simple). */
const FLAT_MAX_FIELDS = 32;
/** The largest flat body: per field a key of at most 3 bytes and a value of at most 10. */
const FLAT_MAX_BYTES = FLAT_MAX_FIELDS * 13;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const flatCache = new WeakMap<PbType, readonly FlatField[] | null>();

/** The fields of `type` if every one is a flat varint scalar (not repeated, not a message), else null. */
function flatFields(type: PbType): readonly FlatField[] | null {
  const cached = flatCache.get(type);
  if (cached !== undefined) return cached;
  let fields: FlatField[] | null = [];
  for (const f of fieldsByNumber(type)) {
    const isEnum = f.resolvedType instanceof EnumType;
    if (f.repeated || (f.resolvedType !== null && !isEnum) || (!isEnum && !FLAT_TYPES.has(f.type))) {
      fields = null;
      break;
    }
    fields.push({
      name: f.name,
      key: varintBytes(f.id * 8),
      isRequired: f.required,
      is64: f.type === 'uint64' || f.type === 'int64',
      isBool: f.type === 'bool',
      max32: f.type === 'uint32' ? 0xffff_ffff : 0x7fff_ffff,
    });
  }
  if (fields !== null && fields.length > FLAT_MAX_FIELDS) fields = null;
  flatCache.set(type, fields);
  return fields;
}

/**
 * Encode `entry` into `buf` at `at` when `type` is a flat message and the entry is plainly valid
 * (known fields only, values of the right kind, non-negative, required fields present, no unknown
 * fields kept); returns the body's length, or -1 (buf then holds garbage past `at`): encodeEntry
 * must do the work and report what is wrong. The bytes are those encodeEntry writes: fields in
 * number order, keys and values as varints. `buf` must have FLAT_MAX_BYTES from `at`.
 */
function encodeFlatInto(type: PbType, entry: ImageEntry, buf: Buffer, at: number): number {
  const fields = flatFields(type);
  if (fields === null || (entry as { [UNKNOWN_FIELDS]?: unknown })[UNKNOWN_FIELDS] !== undefined) return -1;
  let seen = 0;
  let n = at;
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i] as FlatField;
    const v = entry[f.name];
    if (v === undefined) {
      if (f.isRequired) return -1;
      continue;
    }
    seen++;
    for (let j = 0; j < f.key.length; j++) buf[n++] = f.key[j] as number;
    if (f.isBool) {
      if (typeof v !== 'boolean') return -1;
      buf[n++] = v ? 1 : 0;
      continue;
    }
    let x: number;
    if (typeof v === 'number') {
      if (!Number.isSafeInteger(v) || v < 0 || (!f.is64 && v > f.max32)) return -1;
      x = v;
    } else if (typeof v === 'bigint') {
      if (!f.is64 || v < 0n || v > MAX_SAFE) return -1;
      x = Number(v);
    } else return -1;
    while (x > 0x7f) {
      buf[n++] = (x % 128) | 0x80;
      x = Math.floor(x / 128);
    }
    buf[n++] = x;
  }
  // A field the schema does not know: encodeEntry decides what to do with it.
  let keys = 0;
  for (const k in entry) if (entry[k] !== undefined) keys++;
  return keys === seen ? n - at : -1;
}

/** encodeFlatInto as a function of its own, for tests: the body, or null when not flat. */
export function encodeFlatEntry(type: PbType, entry: ImageEntry): Buffer | null {
  const buf = Buffer.alloc(FLAT_MAX_BYTES);
  const len = encodeFlatInto(type, entry, buf, 0);
  return len < 0 ? null : buf.subarray(0, len);
}

function isRecordInput(e: ImageEntry | ImageRecordInput): e is ImageRecordInput {
  const entry = (e as { entry?: unknown }).entry;
  if (typeof entry !== 'object' || entry === null || entry instanceof Uint8Array || Array.isArray(entry)) return false;
  // No Object.keys array per entry: images can have thousands.
  for (const k in e) if (k !== 'entry' && k !== 'extra') return false;
  return true;
}
