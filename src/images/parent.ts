/**
 * The `parent` link of an image directory: a relative symlink to the previous (pre-)dump's
 * directory, whose images hold the pages marked PE_PARENT.
 */
import { readlink, rm, stat, symlink } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve } from 'node:path';

export const PARENT_LINK = 'parent';

/** The link's text, or null when `dir` has no parent link. */
export async function readParentLink(dir: string): Promise<string | null> {
  try {
    return await readlink(join(dir, PARENT_LINK));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Point `dir`/parent at `parentDir`. An absolute or cwd-relative `parentDir` is turned into a path
 * relative to `dir` (like CRIU's "../1"), so the chain survives moving the tree. Replaces a link
 * already there.
 */
export async function writeParentLink(
  dir: string,
  parentDir: string,
  opts: { relativeTo?: 'dir' | 'cwd' } = {},
): Promise<string> {
  const target =
    isAbsolute(parentDir) || opts.relativeTo === 'cwd' ? relative(resolve(dir), resolve(parentDir)) : parentDir;
  await rm(join(dir, PARENT_LINK), { force: true });
  await symlink(target, join(dir, PARENT_LINK));
  return target;
}

/** Absolute path of the parent image directory, or null when there is none (or it is gone). */
export async function parentDir(dir: string): Promise<string | null> {
  const link = await readParentLink(dir);
  if (link === null) return null;
  const path = resolve(dir, link);
  const st = await stat(path).catch(() => null);
  return st?.isDirectory() === true ? path : null;
}

/** The chain of parent directories from `dir`'s parent back to the oldest (loops are cut). */
export async function parentChain(dir: string): Promise<string[]> {
  const out: string[] = [];
  const seen = new Set([resolve(dir)]);
  for (let cur = await parentDir(dir); cur !== null && !seen.has(cur); cur = await parentDir(cur)) {
    out.push(cur);
    seen.add(cur);
  }
  return out;
}
