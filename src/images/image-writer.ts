/**
 * Writing image files atomically: the data goes to `.NAME.tmp-<pid>.<n>` in the same directory
 * (mode 0600), is fsync'ed, then renamed to NAME and the directory fsync'ed. A writer that fails or
 * is aborted removes its temporary file, so a half-written image never appears under its final name.
 *
 * Entry layout: see kinds.ts (magic words, then u32 length + proto2 body [+ raw payload] per entry).
 */
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ImageError } from '../errors.js';
import { encodeEntry, type ImageEntry } from './entry-codec.js';
import { entryType } from './image-reader.js';
import { IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, imageKind, type ImageKind } from './kinds.js';

const FLUSH_BYTES = 256 * 1024;
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
    w.push(b);
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
      const body = encodeEntry(entryType(this.kind, this.index), entry);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(body.length, 0);
      this.push(len, body);
      if (extra !== undefined && extra.length > 0)
        this.push(Buffer.from(extra.buffer, extra.byteOffset, extra.byteLength));
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

function isRecordInput(e: ImageEntry | ImageRecordInput): e is ImageRecordInput {
  const entry = (e as { entry?: unknown }).entry;
  return (
    typeof entry === 'object' &&
    entry !== null &&
    !(entry instanceof Uint8Array) &&
    !Array.isArray(entry) &&
    Object.keys(e).every((k) => k === 'entry' || k === 'extra')
  );
}
