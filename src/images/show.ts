/**
 * The engine of `criu show`: an image file as the JSON document CRIU 4.2's `crit decode --pretty`
 * prints ({"magic": NAME, "entries": [...]}, see crit-json.ts for the value rules), the text
 * layout of that output, and the reverse (`crit encode`): JSON → image bytes.
 *
 * Page contents (`show -c`): for a pagemap image, every entry whose pages are in the pages file
 * (PE_PRESENT and not PE_PARENT) gets a "contents" key: a list of hexdump lines in the layout of
 * `hexdump -C`, addressed by virtual address,
 *   "00007f6b0bd40000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|"
 * with runs of identical 16-byte lines after the first shown as a single "*". The pages come from
 * pages-<pages_id>.img in the same directory. crit has no such key; it is our addition.
 */
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ImageError } from '../errors.js';
import { critJsonToEntry, entryToCritJson } from './crit-json.js';
import { encodeEntry, type ImageEntry } from './entry-codec.js';
import { listImages } from './image-dir.js';
import { entryType, ImageReader } from './image-reader.js';
import { writeImage } from './image-writer.js';
import { formatPyJson, parseJson, type JsonObject, type JsonValue } from './json-text.js';
import { IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, imageFileName, kindsByName, type ImageKind } from './kinds.js';
import { PagesReader, pagemapRun, PE_PARENT, PE_PRESENT } from './pages.js';

/** crit's JSON document of one image. */
export interface CritImage {
  readonly magic: string;
  readonly entries: readonly JsonObject[];
}

export interface ShowOptions {
  /** Add page contents to pagemap entries (`show -c`). */
  readonly pages?: boolean;
  /** Pretty values (hex, flags, ...) as `crit decode --pretty`; default true. */
  readonly pretty?: boolean;
}

/** One image file as crit 4.2's JSON document. */
export async function showImage(path: string, opts: ShowOptions = {}): Promise<CritImage> {
  const reader = await ImageReader.open(path);
  const pretty = opts.pretty ?? true;
  const entries: JsonObject[] = [];
  const kind = reader.kind;
  for await (const rec of reader.entries()) {
    const json: Record<string, JsonValue> = { ...entryToCritJson(entryType(kind, rec.index), rec.entry, pretty) };
    if (rec.extra !== undefined && kind.extra !== undefined) json['extra'] = kind.extra.toJson(rec.extra, rec.entry);
    entries.push(json);
  }
  if (opts.pages === true && kind.name === 'PAGEMAP') await addPageContents(path, entries, reader);
  return { magic: kind.name, entries };
}

async function addPageContents(path: string, entries: JsonObject[], reader: ImageReader): Promise<void> {
  // Re-read the entries as plain values: the JSON ones are pretty-printed.
  const again = await ImageReader.open(reader.path, 'PAGEMAP');
  const plain: ImageEntry[] = (await again.readAll()).map((r) => r.entry);
  const pagesId = Number(plain[0]?.['pages_id']);
  const pages = await PagesReader.open(join(dirname(path), imageFileName('PAGES', pagesId)));
  try {
    let pageOffset = 0;
    for (let i = 1; i < plain.length; i++) {
      const run = pagemapRun(plain[i] as ImageEntry);
      if ((run.flags & PE_PRESENT) === 0 || (run.flags & PE_PARENT) !== 0) continue;
      const data = await pages.read(pageOffset, run.nrPages);
      pageOffset += run.nrPages;
      (entries[i] as Record<string, JsonValue>)['contents'] = hexdumpLines(data, run.vaddr);
    }
  } finally {
    await pages.close();
  }
}

/** `hexdump -C` lines of `data`, addressed from `base`; repeated lines collapse into "*". */
export function hexdumpLines(data: Buffer, base: bigint): string[] {
  const out: string[] = [];
  let prev: string | undefined;
  let starred = false;
  for (let off = 0; off < data.length; off += 16) {
    const row = data.subarray(off, off + 16);
    const hex = [...row].map((b) => b.toString(16).padStart(2, '0'));
    const body = (hex.slice(0, 8).join(' ') + '  ' + hex.slice(8).join(' ')).padEnd(48, ' ');
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    const key = body + ascii;
    if (key === prev) {
      if (!starred) out.push('*');
      starred = true;
      continue;
    }
    prev = key;
    starred = false;
    out.push(`${(base + BigInt(off)).toString(16).padStart(16, '0')}  ${body}  |${ascii}|`);
  }
  return out;
}

/** Every image of a directory (raw files left out), keyed by file name, in name order. */
export async function showDir(dir: string, opts: ShowOptions = {}): Promise<Record<string, CritImage>> {
  const out: Record<string, CritImage> = {};
  for (const f of await listImages(dir)) {
    if (f.kind === undefined || f.kind.header === 'raw') continue;
    out[f.name] = await showImage(f.path, opts);
  }
  return out;
}

/** The text of a document exactly as `crit decode --pretty` lays it out (no trailing newline). */
export function formatShow(doc: CritImage | Record<string, CritImage> | JsonValue): string {
  return formatPyJson(doc as JsonValue);
}

/** Parse crit JSON text (big integers kept exact). */
export function parseCritJson(text: string): CritImage {
  const v = parseJson(text);
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new Error('A crit image document must be a JSON object');
  const o = v as JsonObject;
  if (typeof o['magic'] !== 'string' || !Array.isArray(o['entries']))
    throw new Error('A crit image document needs "magic" and "entries"');
  return { magic: o['magic'], entries: o['entries'] as JsonObject[] };
}

/** The records ({entry, extra}) a crit document describes. */
export function critImageRecords(doc: CritImage): {
  kind: ImageKind;
  records: { entry: ImageEntry; extra?: Buffer }[];
} {
  const kind = kindsByName.get(doc.magic);
  if (kind === undefined || kind.header === 'raw') throw new Error(`Unknown image magic "${doc.magic}"`);
  const records = doc.entries.map((json, index) => {
    const entry = critJsonToEntry(entryType(kind, index), json);
    const extraJson = json['extra'];
    if (extraJson === undefined || kind.extra === undefined) return { entry };
    return { entry, extra: kind.extra.fromJson(extraJson, entry) };
  });
  return { kind, records };
}

/** `crit encode`: the bytes of the image file a crit JSON document describes. */
export function encodeJson(doc: CritImage | string): Buffer {
  const d = typeof doc === 'string' ? parseCritJson(doc) : doc;
  const { kind, records } = critImageRecords(d);
  const parts: Buffer[] = [];
  const magics =
    kind.header === 'own'
      ? [kind.magic]
      : [kind.header === 'service' ? IMG_SERVICE_MAGIC : IMG_COMMON_MAGIC, kind.magic];
  const head = Buffer.alloc(magics.length * 4);
  magics.forEach((m, i) => head.writeUInt32LE(m >>> 0, i * 4));
  parts.push(head);
  records.forEach((r, index) => {
    const body = encodeEntry(entryType(kind, index), r.entry);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(body.length, 0);
    parts.push(len, body);
    if (r.extra !== undefined) parts.push(r.extra);
  });
  return Buffer.concat(parts);
}

/** `crit encode -i JSON -o IMG`, atomically. */
export async function encodeJsonFile(jsonPath: string, imagePath: string): Promise<void> {
  const text = await readFile(jsonPath, 'utf8');
  let parsed: CritImage;
  try {
    parsed = parseCritJson(text);
  } catch (err) {
    throw new ImageError(basename(jsonPath), 'not a crit JSON image', undefined, { cause: err });
  }
  const { kind, records } = critImageRecords(parsed);
  await writeImage(imagePath, kind, records);
}
