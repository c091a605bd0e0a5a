/**
 * `criu dedup` and --auto-dedup: give back the disk space of pages no longer needed.
 *
 * For the chain that ends at DIR: every page DIR's pagemaps need is found (in DIR or further
 * back, src/mem/page-chain.ts); every other page of an ancestor's pages files is punched out
 * (FALLOC_FL_PUNCH_HOLE, the file keeps its size, so every offset in every pagemap stays valid
 * and the images still decode with crit). That covers what CRIU's dedup frees (pages a child
 * image supersedes) and also pages of ranges the task has since unmapped.
 *
 * On restore, --auto-dedup punches each page once it is in place: the images are spent.
 */

import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { parentChain } from '../images/index.js';
import { log } from '../log.js';
import { PageChain, filePagesOf, punchPages, unreferenced, type PageSource } from './page-chain.js';
import { normalize } from './runs.js';

const PAGE_SIZE = 4096;
const PAGEMAP_RE = /^pagemap-(shmem-)?\d+\.img$/;
const PAGES_RE = /^pages-\d+\.img$/;

/** Punch the pages of DIR's ancestors that DIR no longer needs. Returns the bytes punched. */
export async function dedupChain(dir: string): Promise<number> {
  const ancestors = await parentChain(dir);
  if (ancestors.length === 0) return 0;
  const sources: PageSource[] = [];
  for (const name of readdirSync(dir).filter((n) => PAGEMAP_RE.test(n)))
    sources.push(...(await (await PageChain.open(dir, name)).sources()));
  const referenced = filePagesOf(sources);
  let punched = 0;
  for (const anc of ancestors) {
    for (const name of readdirSync(anc).filter((n) => PAGES_RE.test(n))) {
      const file = path.join(anc, name);
      const nrPages = Math.floor(statSync(file).size / PAGE_SIZE);
      const holes = unreferenced(nrPages, referenced.get(file) ?? []);
      punched += punchPages(file, holes);
    }
  }
  log().info(`dedup: ${punched} bytes of ${ancestors.length} parent image(s) punched`);
  return punched;
}

/** Punch restored pages out of their images (restore --auto-dedup). Returns the bytes punched. */
export function punchRestored(sources: readonly PageSource[]): number {
  let punched = 0;
  for (const [file, runs] of filePagesOf(sources)) punched += punchPages(file, normalize(runs));
  return punched;
}
