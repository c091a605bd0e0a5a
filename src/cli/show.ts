/**
 * `criu show`: decode image files to text on stdout. The decoding is the image layer's
 * (src/images: showImage for one file, showDir for a whole images directory); this module only
 * picks which of the two the command line asked for.
 *
 *   criu show -f FILE [-c]     one image (FILE as given, relative to the current directory)
 *   criu show FILE             the same
 *   criu show -D DIR           every image in DIR
 */

import { formatShow, showDir, showImage } from '../images/index.js';
import type { CliIo } from './commands.js';
import type { Options } from './options.js';

/** What show should decode: one file, or the whole images directory. */
export function showTarget(opts: Options): { kind: 'file'; path: string } | { kind: 'dir'; path: string } {
  const file = opts.file ?? opts.operands[0];
  return file === undefined ? { kind: 'dir', path: opts.imagesDir } : { kind: 'file', path: file };
}

export async function runShow(opts: Options, io: CliIo): Promise<number> {
  const target = showTarget(opts);
  const showOpts = { pages: opts.showPagesHex };
  // The one place `show` reaches the image layer.
  const doc = target.kind === 'file' ? await showImage(target.path, showOpts) : await showDir(target.path, showOpts);
  io.stdout(`${formatShow(doc)}\n`);
  return 0;
}
