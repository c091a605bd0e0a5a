/**
 * Files of this installation found from the running module: this module sits in src/ (under tsx),
 * dist/src/ (after tsc) or is bundled into dist/bundle/, so the package root is a few directories
 * up, whichever it is.
 */

import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** `rel` (e.g. "bin/criu.js") in the nearest directory above this module that has it, or null. */
export function findPackageFile(rel: string): string | null {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 7; i++) {
    const candidate = path.join(dir, rel);
    if (existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  return null;
}
