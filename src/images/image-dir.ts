/**
 * Listing an image directory: every image file with its kind. Kinds come from the file's magic
 * (the authority), or from its name for raw files (pages-<n>.img, ...) that have no magic.
 */
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, kindOfFileName, kindsByMagic, type ImageKind } from './kinds.js';

export interface ImageFileInfo {
  readonly name: string;
  readonly path: string;
  /** undefined: not an image we know (no known magic, no known raw name). */
  readonly kind: ImageKind | undefined;
}

/** The kind named by a file's magic words, or undefined. */
export async function sniffKind(path: string): Promise<ImageKind | undefined> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(8);
    const { bytesRead } = await fh.read(b, 0, 8, 0);
    if (bytesRead < 4) return undefined;
    const first = b.readUInt32LE(0);
    if (first === IMG_COMMON_MAGIC || first === IMG_SERVICE_MAGIC)
      return bytesRead < 8 ? undefined : kindsByMagic.get(b.readUInt32LE(4));
    const own = kindsByMagic.get(first);
    return own?.header === 'own' ? own : undefined;
  } finally {
    await fh.close();
  }
}

/** Regular files of `dir` (sorted by name) with their kinds; the parent link and temp files are skipped. */
export async function listImages(dir: string): Promise<ImageFileInfo[]> {
  const dirents = await readdir(dir, { withFileTypes: true });
  const out: ImageFileInfo[] = [];
  for (const d of dirents.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (!d.isFile() || d.name.startsWith('.')) continue;
    const path = join(dir, d.name);
    const byName = kindOfFileName(d.name);
    const kind = byName?.header === 'raw' ? byName : await sniffKind(path);
    out.push({ name: d.name, path, kind });
  }
  return out;
}
