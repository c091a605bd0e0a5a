/**
 * `criu dump|pre-dump --page-server`: the task's pages go to a page server (ours or CRIU's) over
 * its TCP protocol (src/pageserver/client.ts) instead of into pages-1.img; the other images stay
 * local, as in CRIU. The server writes pagemap-<pid>.img and pages-<n>.img into its own
 * directory and keeps the parent chain (its --prev-images-dir); OPEN2 tells whether it has one.
 */

import { log } from '../log.js';
import { PageServerClient } from '../pageserver/client.js';
import type { TlsCredentials } from '../pageserver/tls.js';
import { pageServerDest } from './memory.js';
import type { PageSink } from './page-sink.js';

export interface PageServerTarget {
  address: string;
  port: number;
  /** A socket connected to the page server already (RPC's ps.fd): used instead of address:port. */
  fd?: number;
  token?: string;
  timeoutMs?: number;
  /** TLS as CRIU's --tls (src/pageserver/tls.ts). */
  tls?: TlsCredentials;
}

export async function connectPageServerSink(target: PageServerTarget): Promise<PageSink> {
  const client = await PageServerClient.connect(target);
  log().info(
    `Sending pages to the page server at ${client.peer}${target.tls === undefined ? '' : ' (TLS handshake completed)'}`,
  );
  // One session carries every pagemap in turn (a task's, then a shmem object's...): each step
  // waits for the one before, so that a shmem object stored while a task's pages are still being
  // sent (the dump collects the files meanwhile) does not cut into them.
  let last: Promise<unknown> = Promise.resolve();
  const inTurn = <T>(step: () => Promise<T>): Promise<T> => {
    const next = last.catch(() => undefined).then(step);
    last = next;
    return next;
  };
  return {
    isLocal: false,
    open: (pid) => inTurn(async () => (await client.open({ type: 'task', id: pid })).hasParent),
    writePages: (pid, plan, opts) =>
      inTurn(async () => {
        const res = await client.sendPagemap(pid, plan.entries, {
          isRunning: opts.running,
          ...(opts.signal === undefined ? {} : { signal: opts.signal }),
          ...(opts.onProgress === undefined ? {} : { onProgress: opts.onProgress }),
        });
        if (res.nrPagesGone > 0) log().info(`${res.nrPagesGone} pages were unmapped during the copy (zeros sent)`);
        return { pagesWritten: res.nrPagesSent };
      }),
    writeShmem: (shmid, runs) =>
      inTurn(async () => {
        await client.open({ type: 'shmem', id: Number(shmid) });
        for (const run of runs) await client.addPresentBytes(BigInt(run.pageIndex) * PAGE_BYTES, run.data);
      }),
    commit: () => inTurn(() => client.close()),
    abort: () => {
      client.abort();
      return Promise.resolve();
    },
    destination: () => pageServerDest(target.address, target.port),
  };
}

const PAGE_BYTES = 4096n;
