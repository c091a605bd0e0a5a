/**
 * Reading image files entry by entry (see kinds.ts for the layout). Files over 1 MiB are streamed
 * through a bounded buffer: only one entry (and its raw payload) is held at a time, so large images
 * do not load whole; smaller ones are read whole by synchronous calls (see WHOLE_READ_MAX). Raw
 * files (pages-<n>.img) are not read here: see pages.ts.
 *
 * Every problem (short file, wrong or unknown magic, an entry longer than the file, a body that
 * does not decode) is an ImageError naming the file and the byte offset of the bad entry.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { ImageError } from '../errors.js';
import { decodeEntry, type ImageEntry } from './entry-codec.js';
import type { EntryContext, ExtraSource } from './extras.js';
import { IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, imageKind, kindsByMagic, type ImageKind } from './kinds.js';
import { messageType, type PbType } from './schema.js';

/** One entry of an image, with its raw payload when the kind has one. */
export interface ImageRecord {
  readonly entry: ImageEntry;
  /** Raw bytes that followed the entry (pipe data, ...); absent when the kind has none. */
  readonly extra?: Buffer;
  /** Byte offset of the entry's length word in the file. */
  readonly offset: number;
  readonly index: number;
}

const CHUNK = 64 * 1024;

/** Sequential reads of a file (or a buffer) with a bounded read-ahead buffer. */
class ByteSource implements ExtraSource {
  pos = 0;
  private buf: Buffer = Buffer.alloc(0);
  private bufStart = 0;

  constructor(
    readonly file: string,
    readonly size: number,
    private readonly fh: FileHandle | undefined,
    whole?: Buffer,
  ) {
    if (whole !== undefined) this.buf = whole;
  }

  get remaining(): number {
    return this.size - this.pos;
  }

  async readExact(n: number, what: string): Promise<Buffer> {
    if (n > this.remaining) {
      throw new ImageError(this.file, `${what} is truncated: ${n} bytes needed, ${this.remaining} left`, this.pos);
    }
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const inBuf = this.bufStart + this.buf.length - this.pos;
      if (inBuf > 0) {
        const take = Math.min(inBuf, n - done);
        const from = this.pos - this.bufStart;
        this.buf.copy(out, done, from, from + take);
        done += take;
        this.pos += take;
        continue;
      }
      if (this.fh === undefined) throw new ImageError(this.file, `${what} is truncated`, this.pos);
      if (n - done >= CHUNK) {
        // Large payloads go straight into the result, bypassing the buffer.
        const { bytesRead } = await this.fh.read(out, done, n - done, this.pos);
        if (bytesRead === 0) throw new ImageError(this.file, `${what} is truncated: the file shrank`, this.pos);
        done += bytesRead;
        this.pos += bytesRead;
        continue;
      }
      const next = Buffer.allocUnsafe(CHUNK);
      const { bytesRead } = await this.fh.read(next, 0, CHUNK, this.pos);
      if (bytesRead === 0) throw new ImageError(this.file, `${what} is truncated: the file shrank`, this.pos);
      this.buf = next.subarray(0, bytesRead);
      this.bufStart = this.pos;
    }
    return out;
  }

  readRest(): Promise<Buffer> {
    return this.readExact(this.remaining, 'payload');
  }
}

/**
 * Images up to this size are read whole by synchronous calls: no thread-pool round trip for each
 * open, stat, read and close (a restore reads a dozen small images: ~2 ms so, ~10-20 ms the other
 * way here).
 */
const WHOLE_READ_MAX = 1 << 20;

/** The whole of `path` when it is at most WHOLE_READ_MAX bytes, else null (read it streaming). */
function readSmallFile(path: string): Buffer | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new ImageError(path, 'cannot open the file', undefined, { cause: err });
  }
  try {
    const { size } = fstatSync(fd);
    if (size > WHOLE_READ_MAX) return null;
    const buf = Buffer.allocUnsafe(size);
    let got = 0;
    while (got < size) {
      const n = readSync(fd, buf, got, size - got, got);
      if (n === 0) break; // shrank meanwhile: what is there is checked as a truncated image
      got += n;
    }
    return got < size ? buf.subarray(0, got) : buf;
  } catch (err) {
    throw new ImageError(path, 'cannot read the file', undefined, { cause: err });
  } finally {
    closeSync(fd);
  }
}

const hex32 = (n: number): string => '0x' + (n >>> 0).toString(16).padStart(8, '0');

/** An open image file: its kind, then its entries in order (iterate once). */
export class ImageReader {
  private constructor(
    readonly path: string,
    readonly kind: ImageKind,
    private readonly src: ByteSource,
    private readonly fh: FileHandle | undefined,
  ) {}

  /** Open `path` and read its header; `expect` (a kind or its name) makes other kinds an error. */
  static async open(path: string, expect?: ImageKind | string): Promise<ImageReader> {
    const whole = readSmallFile(path);
    if (whole !== null) return ImageReader.fromBuffer(whole, path, expect);
    const fh = await open(path, 'r').catch((err: unknown) => {
      throw new ImageError(path, 'cannot open the file', undefined, { cause: err });
    });
    try {
      const { size } = await fh.stat();
      const src = new ByteSource(path, size, fh);
      const kind = await readHeader(src, expect);
      return new ImageReader(path, kind, src, fh);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** Parse an image held in memory (`name` is used in errors). */
  static async fromBuffer(buf: Buffer, name: string, expect?: ImageKind | string): Promise<ImageReader> {
    const src = new ByteSource(name, buf.length, undefined, buf);
    const kind = await readHeader(src, expect);
    return new ImageReader(name, kind, src, undefined);
  }

  /** Byte size of the file. */
  get sizeBytes(): number {
    return this.src.size;
  }

  /** The entries, one at a time. Closes the file at the end (or when the loop is left early). */
  async *entries(): AsyncGenerator<ImageRecord, void, undefined> {
    const { src, kind } = this;
    let head: ImageEntry | undefined;
    try {
      for (let index = 0; src.remaining > 0; index++) {
        const offset = src.pos;
        const lenBytes = await src.readExact(4, `entry ${index} length`);
        const len = lenBytes.readUInt32LE(0);
        if (len > src.remaining) {
          throw new ImageError(
            this.path,
            `entry ${index} is longer than the file: ${len} bytes, ${src.remaining} left`,
            offset,
          );
        }
        const body = await src.readExact(len, `entry ${index}`);
        const type = entryType(kind, index);
        let entry: ImageEntry;
        try {
          entry = decodeEntry(type, body);
        } catch (err) {
          const why = err instanceof Error ? err.message : String(err);
          throw new ImageError(this.path, `entry ${index} does not decode as ${type.name}: ${why}`, offset, {
            cause: err,
          });
        }
        if (index === 0) head = entry;
        const ctx: EntryContext = { index, head };
        let extra: Buffer | null = null;
        try {
          extra = kind.extra === undefined ? null : await kind.extra.read(src, entry, ctx);
        } catch (err) {
          if (err instanceof ImageError) throw err;
          const why = err instanceof Error ? err.message : String(err);
          throw new ImageError(this.path, `the payload of entry ${index} does not decode: ${why}`, offset, {
            cause: err,
          });
        }
        yield extra === null ? { entry, offset, index } : { entry, extra, offset, index };
      }
    } finally {
      await this.close();
    }
  }

  /** Every entry (for small images). */
  async readAll(): Promise<ImageRecord[]> {
    const out: ImageRecord[] = [];
    for await (const r of this.entries()) out.push(r);
    return out;
  }

  async close(): Promise<void> {
    await this.fh?.close().catch(() => undefined);
  }
}

/** The message type of entry `index` of a kind. */
export function entryType(kind: ImageKind, index: number): PbType {
  return messageType(index === 0 && kind.headType !== undefined ? kind.headType : kind.type);
}

async function readHeader(src: ByteSource, expect: ImageKind | string | undefined): Promise<ImageKind> {
  const want = typeof expect === 'string' ? imageKind(expect) : expect;
  if (want?.header === 'raw') throw new ImageError(src.file, `${want.name} is a raw image without entries`, 0);
  if (src.size < 4)
    throw new ImageError(src.file, src.size === 0 ? 'the file is empty' : 'the file is too short for a magic', 0);
  const first = (await src.readExact(4, 'magic')).readUInt32LE(0);
  let kind: ImageKind | undefined;
  if (first === IMG_COMMON_MAGIC || first === IMG_SERVICE_MAGIC) {
    const second = (await src.readExact(4, 'kind magic')).readUInt32LE(0);
    kind = kindsByMagic.get(second);
    if (kind === undefined || kind.header === 'own')
      throw new ImageError(src.file, `unknown image magic ${hex32(second)}`, 4);
    const header = first === IMG_COMMON_MAGIC ? 'common' : 'service';
    if (kind.header !== header) {
      throw new ImageError(
        src.file,
        `${kind.name} images start with the ${kind.header} magic, not the ${header} one`,
        0,
      );
    }
  } else {
    kind = kindsByMagic.get(first);
    if (kind?.header !== 'own') throw new ImageError(src.file, `unknown image magic ${hex32(first)}`, 0);
  }
  if (want !== undefined && want.name !== kind.name) {
    throw new ImageError(src.file, `wrong magic: expected a ${want.name} image, found ${kind.name}`, 0);
  }
  return kind;
}

/** Open an image for streaming its entries. */
export function openImage(path: string, expect?: ImageKind | string): Promise<ImageReader> {
  return ImageReader.open(path, expect);
}

/** Read a whole image: its kind and every entry. */
export async function readImage(
  path: string,
  expect?: ImageKind | string,
): Promise<{ kind: ImageKind; records: ImageRecord[] }> {
  const reader = await ImageReader.open(path, expect);
  return { kind: reader.kind, records: await reader.readAll() };
}

/** Read the entries of an image, without payloads (the common case). */
export async function readEntries(path: string, expect?: ImageKind | string): Promise<ImageEntry[]> {
  return (await readImage(path, expect)).records.map((r) => r.entry);
}
