/**
 * The operations of a live migration that run inside the agent process itself, through
 * criu-ts's library (src/index.ts) rather than a `criu` child process: whatever must outlive one
 * request or costs downtime when started afresh.
 *   source side:  pre-dump (the dirty tracker stays with the agent between iterations), the final
 *                 dump that leaves the task frozen and traced here, and its end: killed once the
 *                 destination runs it, or resumed untouched when the migration fails;
 *   destination:  page servers (listening before the freeze, no start-up in the downtime), the
 *                 pre-copy skeleton (the task, or its tree, with its PIDs, memory read in as
 *                 pre-dumps arrive), and the final restore into it.
 * Paths are absolute here (agent-ops.ts resolves and checks the agent-relative ones).
 */

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CriuError, TaskError, UsageError } from '../src/errors.js';
import {
  Skeleton,
  connectPageServerSink,
  endTracking,
  dump,
  killTree,
  preDump,
  removeSysvShm,
  resumeTree,
  reapWhenDone,
  restore,
  stopTree,
  PageServer,
  IMAGE_KINDS,
  prepareImageKinds,
  type FrozenProcess,
  type ProcessLayout,
  type PageServerSummary,
  type TlsCredentials,
  namespaceCloneFlags,
  addAddress,
  announceAddress,
  removeAddress,
  type HostAddress,
} from '../src/index.js';
import { addressFromWire } from './addresses.js';
import { log } from '../src/log.js';
import type { ProcessWire } from './protocol.js';

/**
 * How long the data connection of a migration (SRC's dump -> DST's page server) may move nothing
 * before either end gives up: a path that goes silent (a dead link, a lost route, a middlebox
 * that drops the flow) resets nothing, and TCP alone would only fail the sender after
 * tcp_retries2 (about 15 minutes) and never the receiver. Far above any pause of a live session
 * (between connect and the first pagemap the dump only freezes and scans the task; these page
 * servers answer CLOSE without an fsync).
 */
export const DATA_TIMEOUT_MS = 60_000;

export interface PagesTarget {
  address: string;
  port: number;
}

export interface PreDumpResult {
  frozenUs: number;
  copyUs: number;
  pagesWritten: number;
  pagesSkipped: number;
  /** The processes pre-dumped, parents first: the skeleton's shape and memory. */
  processes: ProcessWire[];
  /** The namespace kinds the tree has of its own ("uts,ipc"; empty for none): the skeleton's too. */
  namespaces: string;
}

export interface FinalDumpResult {
  frozenUs: number;
  /** From the freeze until now (the task is still frozen): SRC's share of the downtime. */
  sinceFreezeUs: number;
  pagesWritten: number;
  pagesSkipped: number;
  /** The dump's images but the pages (those went to the page server), to carry to DST. */
  images: { name: string; data: Uint8Array }[];
}

/** How a dump treats what it may refuse (the controller's options). */
export interface DumpHow {
  isTcpEstablished?: boolean;
  isTcpClose?: boolean;
  isSkipInFlight?: boolean;
}

/** A skeleton's key: its migration (the images dir's first segment) and the source's pid. */
const skeletonKey = (migration: string, pid: number): string => `${migration}:${pid}`;

export class EngineOps {
  /** The frozen sources by root pid: the tree, parents first. */
  private readonly frozen = new Map<
    number,
    {
      tree: FrozenProcess[];
      endTracking: () => Promise<void>;
      sysvShmIds: number[];
      endConnections: (how: 'resumed' | 'killed') => void;
    }
  >();
  /**
   * By skeletonKey: the migration and the source's pid (two sources may have the same pids; a
   * tree in a PID namespace of its own needs none free here).
   */
  private readonly skeletons = new Map<string, Skeleton>();
  /** Skeletons being made (Skeleton.create waits), and those aborted meanwhile. */
  private readonly creating = new Set<string>();
  private readonly abortedWhileCreating = new Set<string>();
  private isClosed = false;
  private readonly servers = new Map<number, { server: PageServer; done: Promise<PageServerSummary> }>();
  private nextServerId = 1;
  private readonly warming: Promise<void> | null;
  private readonly tls: TlsCredentials | undefined;

  /** The page servers' credentials: the client's name is not checked (see `tls` below). */
  private readonly serverTls: TlsCredentials | undefined;

  constructor(
    private readonly token: string | undefined,
    opts: {
      isWarmedUp?: boolean;
      /**
       * This host's TLS credentials: its page servers and its dumps' connections run inside
       * TLS. A page server checks the client's chain only: CRIU's check of the client's name
       * against the server's own address means nothing between two hosts.
       */
      tls?: TlsCredentials;
    } = {},
  ) {
    this.tls = opts.tls;
    this.serverTls = opts.tls === undefined ? undefined : { ...opts.tls, isNoCnVerify: true };
    // The image message types and their codecs are made on first use (a few ms for a whole
    // restore's images): done now, while idle, rather than during a migration's downtime.
    setImmediate(() => {
      try {
        prepareImageKinds(IMAGE_KINDS.map((k) => k.name));
      } catch (err) {
        log().warn(`agent: cannot prepare the image coders: ${String(err)}`);
      }
    });
    // Operations on tasks wait for it: it uses the same tracer thread and must not race them.
    this.warming =
      opts.isWarmedUp === true ? new Promise((done) => setImmediate(() => void warmUp().finally(done))) : null;
  }

  async preDump(
    pid: number,
    dir: string,
    to: PagesTarget | undefined,
    prevDir?: string,
    how: DumpHow = {},
  ): Promise<PreDumpResult> {
    await this.warming;
    const sink = to === undefined ? undefined : await this.sinkTo(to);
    const s = await preDump({
      pid,
      imagesDir: dir,
      tracker: 'auto',
      fileOptions: {
        isTcpEstablished: how.isTcpEstablished === true,
        isTcpClose: how.isTcpClose === true,
        isSkipInFlight: how.isSkipInFlight === true,
      },
      ...(prevDir === undefined ? {} : { prevImagesDir: prevDir }),
      ...(sink === undefined ? {} : { sink }),
    });
    return {
      frozenUs: s.frozenTimeUs,
      copyUs: s.memdumpTimeUs,
      pagesWritten: s.pagesWritten,
      pagesSkipped: s.pagesSkippedParent,
      processes: s.processes.map((p) => ({
        pid: p.pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        anonVmas: p.anonVmas.flatMap((v) => [Number(v.start), Number(v.end)]),
        fileVmas: p.fileVmas.map((v) => ({ ...v, start: Number(v.start), end: Number(v.end), pgoff: Number(v.pgoff) })),
      })),
      namespaces: s.namespaces.join(','),
    };
  }

  /** The final dump: the task stays frozen (traced by this process) until sourceEnd. */
  async finalDump(
    pid: number,
    dir: string,
    to: PagesTarget | undefined,
    prevDir?: string,
    how: DumpHow = {},
  ): Promise<FinalDumpResult> {
    await this.warming;
    if (this.frozen.has(pid)) throw new UsageError(`Task ${pid} is already dumped and frozen here`);
    const sink = to === undefined ? undefined : await this.sinkTo(to);
    const s = await dump({
      pid,
      imagesDir: dir,
      end: 'keep-frozen',
      trackMem: true,
      isDurable: false, // carried to DST at once (see WriteSyncOptions.isDurable)
      fileOptions: {
        isTcpEstablished: how.isTcpEstablished === true,
        isTcpClose: how.isTcpClose === true,
        isSkipInFlight: how.isSkipInFlight === true,
      },
      ...(prevDir === undefined ? {} : { prevImagesDir: prevDir }),
      ...(sink === undefined ? {} : { sink }),
    });
    if (s.frozen !== undefined)
      this.frozen.set(pid, {
        tree: s.frozen,
        endTracking: s.endTracking ?? (() => Promise.resolve()),
        sysvShmIds: s.sysvShmIds ?? [],
        endConnections: s.endConnections ?? (() => undefined),
      });
    const images = readImageFiles(dir);
    const nowUs = Number(process.hrtime.bigint() / 1000n); // dump()'s clock
    return {
      frozenUs: s.frozenTimeUs,
      sinceFreezeUs: s.frozenAtUs === undefined ? s.frozenTimeUs : nowUs - s.frozenAtUs,
      pagesWritten: s.pagesWritten,
      pagesSkipped: s.pagesSkippedParent,
      images,
    };
  }

  /**
   * End the source: 'kill' once it runs elsewhere ('stop': left stopped, --keep-source);
   * 'resume' when the migration failed: a frozen
   * task runs on untouched, and the memory tracking pre-dumps left is ended either way.
   */
  async sourceEnd(pid: number, action: 'kill' | 'resume' | 'stop'): Promise<boolean> {
    const f = this.frozen.get(pid);
    this.frozen.delete(pid);
    if (f !== undefined) {
      // Killed first, then the tracking ended (cheap once the memory is gone); otherwise ended
      // first, so that the task runs on untracked.
      if (action === 'kill') {
        // Its System V segments go with it, as in a dump that kills (dump/sysv-shm.ts).
        for (const line of removeSysvShm(f.sysvShmIds)) log().warn(`agent: ${line}`);
        killTree(f.tree);
        f.endConnections('killed');
      }
      await f
        .endTracking()
        .catch((err: unknown) => log().warn(`agent: cannot end the tracking of ${pid}: ${String(err)}`));
      if (action === 'stop') stopTree(f.tree);
      else if (action === 'resume') {
        f.endConnections('resumed');
        resumeTree(f.tree);
      }
      log().info(`agent: source task ${pid}: ${action}`);
    }
    if (action === 'resume') await endTracking(pid);
    return f !== undefined;
  }

  /** A page server in this process, listening when this returns; one session into `dir`. */
  async receivePages(
    dir: string,
    address: string,
    port: number,
    prevDir?: string,
  ): Promise<{ serverId: number; port: number }> {
    const server = await PageServer.listen({
      imagesDir: dir,
      address,
      port,
      idleTimeoutMs: DATA_TIMEOUT_MS,
      isDurable: false, // read into the task at once; the source holds it until then
      ...(this.token === undefined ? {} : { token: this.token }),
      ...(this.serverTls === undefined ? {} : { tls: this.serverTls }),
      ...(prevDir === undefined ? {} : { prevImagesDir: prevDir }),
    });
    const serverId = this.nextServerId++;
    const done = server.serve();
    done.catch(() => undefined); // awaited by receiveWait
    this.servers.set(serverId, { server, done });
    return { serverId, port: server.port };
  }

  async receiveWait(serverId: number, timeoutMs?: number): Promise<{ pagesReceived: number; bytes: number }> {
    const rec = this.servers.get(serverId);
    if (rec === undefined) throw new UsageError(`No page server ${serverId} here`);
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout =
        timeoutMs === undefined
          ? null
          : new Promise<never>((_, reject) => {
              timer = setTimeout(() => {
                rec.server.close();
                reject(new CriuError('EPROTOCOL', `The page server got no complete session in ${timeoutMs} ms`));
              }, timeoutMs);
            });
      const s = await (timeout === null ? rec.done : Promise.race([rec.done, timeout]));
      return { pagesReceived: s.nrPagesReceived, bytes: s.bytesReceived };
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      this.servers.delete(serverId);
    }
  }

  /**
   * Read a pre-dump that arrived in `dir` into the skeleton of `pid`'s tree: made on first use, and
   * made again when the tree is no longer the skeleton's (a process forked, exited or changed its
   * session or group since): the new one reads every pre-copied page from the chain.
   */
  async skeletonApply(
    pid: number,
    dir: string,
    processes: readonly ProcessWire[],
    namespaces = '',
    migration = '',
  ): Promise<{ pagesFilled: number }> {
    const key = skeletonKey(migration, pid);
    await this.warming;
    const layouts: ProcessLayout[] = processes.map((p) => {
      const anonVmas: { start: bigint; end: bigint }[] = [];
      for (let i = 0; i + 1 < p.anonVmas.length; i += 2)
        anonVmas.push({ start: BigInt(p.anonVmas[i] as number), end: BigInt(p.anonVmas[i + 1] as number) });
      const fileVmas = p.fileVmas.map((v) => ({
        ...v,
        start: BigInt(v.start),
        end: BigInt(v.end),
        pgoff: BigInt(v.pgoff),
      }));
      return { pid: p.pid, ppid: p.ppid, pgid: p.pgid, sid: p.sid, anonVmas, fileVmas };
    });
    const kinds = namespaces.split(',').filter((k) => k !== '');
    const cloneFlags = namespaceCloneFlags(kinds);
    // A tree in a PID namespace of its own has its pids there in its layouts: its root is 1.
    if (layouts[0]?.pid !== (kinds.includes('pid') ? 1 : pid))
      throw new UsageError(`The pre-dumped tree is not ${pid}'s`);
    let sk = this.skeletons.get(key);
    if (sk !== undefined && (!sk.fits(layouts) || sk.cloneFlags !== cloneFlags)) {
      log().info(`agent: the tree of ${pid} changed since the last pre-dump: its skeleton is made again`);
      this.skeletonAbort(pid, migration);
      sk = undefined;
    }
    if (sk === undefined) {
      // The agent is the restored task's parent and reaps it (restoreFinal); were the task a
      // sibling instead, its parent would be whoever started the agent, which may never reap it.
      // Made asynchronously (it may wait for its PIDs): an abort or close meanwhile is seen after.
      this.creating.add(key);
      try {
        sk = await Skeleton.create(layouts, { cloneFlags });
      } finally {
        this.creating.delete(key);
      }
      if (this.isClosed || this.abortedWhileCreating.delete(key)) {
        sk.abort();
        throw new TaskError(pid, `The skeleton of ${pid} was aborted while it was being made`);
      }
      this.skeletons.set(key, sk);
    }
    try {
      return { pagesFilled: (await sk.apply(dir, layouts)).pagesFilled };
    } catch (err) {
      this.skeletonAbort(pid, migration);
      throw err;
    }
  }

  /**
   * Restore the final dump in `dir` into the skeleton of `pid` (or from scratch without one):
   * first the end of page server `serverId`'s session (the final pages) and the `images` the
   * controller carried from SRC, written into `dir`.
   */
  async restoreFinal(
    dir: string,
    pid: number,
    images: readonly { name: string; data: Uint8Array }[] = [],
    serverId?: number,
    addresses: readonly string[] = [],
    isTcpClose = false,
    migration = '',
  ): Promise<{ pid: number; restoreUs: number; pagesReceived: number; bytes: number }> {
    await this.warming;
    const t0 = process.hrtime.bigint();
    const sk = this.skeletons.get(skeletonKey(migration, pid));
    this.skeletons.delete(skeletonKey(migration, pid));
    const taken: HostAddress[] = [];
    // A failed restore gives the addresses back before it lifts its connections' locks: a
    // client's packet meanwhile must not meet this host holding the address without the socket.
    const giveBack = (): void => {
      for (const a of taken.splice(0).reverse()) {
        try {
          removeAddress(a);
        } catch (e) {
          log().error(`agent: cannot give back ${a.address}: ${String(e)}`);
        }
      }
    };
    try {
      const received =
        serverId === undefined ? { pagesReceived: 0, bytes: 0 } : await this.receiveWait(serverId, 60_000);
      writeImageFiles(dir, images);
      // The moved addresses come once the tree's connections are locked (restore() does that
      // before its pre-restore action): a peer's packet that comes before its socket is dropped,
      // not answered with a reset.
      const onAction = async (action: string): Promise<void> => {
        if (action !== 'pre-restore') return;
        for (const a of addresses.map(addressFromWire)) {
          addAddress(a);
          taken.push(a);
        }
      };
      // A skeleton whose tree is not the dump's is dropped by restore(), which then starts afresh.
      const r = await restore({
        imagesDir: dir,
        isDetached: true,
        isTcpClose,
        onAction,
        onFailure: giveBack,
        ...(sk === undefined ? {} : { skeleton: sk }),
      });
      reapWhenDone(r.pid);
      // Announced again now that the connections are there to answer.
      for (const a of taken) announceAddress(a);
      return { pid: r.pid, restoreUs: Number((process.hrtime.bigint() - t0) / 1000n), ...received };
    } catch (err) {
      sk?.abort();
      giveBack();
      throw err;
    }
  }

  /** Kill the skeleton of `pid` of `migration` (without one: those of `pid` of any migration). */
  skeletonAbort(pid: number, migration?: string): boolean {
    const keys =
      migration === undefined
        ? [...this.skeletons.keys(), ...this.creating].filter((k) => k.endsWith(`:${pid}`))
        : [skeletonKey(migration, pid)];
    let isDone = false;
    for (const key of keys) {
      if (this.creating.has(key)) this.abortedWhileCreating.add(key);
      const sk = this.skeletons.get(key);
      if (sk === undefined) continue;
      this.skeletons.delete(key);
      sk.abort();
      isDone = true;
    }
    return isDone;
  }

  /** Stop everything: servers closed, skeletons killed, frozen sources resumed (never left frozen). */
  close(): void {
    this.isClosed = true;
    for (const { server } of this.servers.values()) server.close();
    this.servers.clear();
    for (const [key, sk] of [...this.skeletons]) {
      this.skeletons.delete(key);
      sk.abort();
    }
    for (const key of this.creating) this.abortedWhileCreating.add(key);
    for (const [pid, f] of this.frozen) {
      try {
        void f.endTracking().catch(() => undefined);
        f.endConnections('resumed');
        resumeTree(f.tree);
      } catch (err) {
        log().error(`agent: cannot resume source task ${pid}: ${String(err)}`);
      }
    }
    this.frozen.clear();
  }

  private async sinkTo(to: PagesTarget): Promise<Awaited<ReturnType<typeof connectPageServerSink>>> {
    try {
      return await connectPageServerSink({
        address: to.address,
        port: to.port,
        timeoutMs: DATA_TIMEOUT_MS,
        ...(this.token === undefined ? {} : { token: this.token }),
        ...(this.tls === undefined ? {} : { tls: this.tls }),
      });
    } catch (err) {
      throw new TaskError(0, `Cannot reach the page server at ${to.address}:${to.port}`, { cause: err });
    }
  }
}

/** The regular files of a dump directory but logs, as carried to DST (a few KiB). */
function readImageFiles(dir: string): { name: string; data: Uint8Array }[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile() && !e.name.endsWith('.log') && !e.name.startsWith('.'))
    .map((e) => ({ name: e.name, data: readFileSync(path.join(dir, e.name)) }));
}

/** Write carried images into `dir` (atomically each, 0600; not fsync'ed: read at once). */
function writeImageFiles(dir: string, images: readonly { name: string; data: Uint8Array }[]): void {
  for (const img of images) {
    if (img.name.includes('/') || img.name.startsWith('.')) throw new UsageError(`Bad image name "${img.name}"`);
    const tmp = path.join(dir, `.${img.name}.tmp-${process.pid}`);
    writeFileSync(tmp, img.data, { mode: 0o600 });
    renameSync(tmp, path.join(dir, img.name));
  }
}

/**
 * Run the dump and restore code once while idle, on a `sleep` of our own: the first time a
 * process runs that code, V8 parses and compiles it and its allocations fault in fresh heap pages,
 * which cost a fresh agent's first final restore 30-60 ms of downtime (1 GiB at 10 MB/s: 109-160 ms
 * without, 73-90 ms with). A failure only costs that.
 */
async function warmUp(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'criu-ts-warm-'));
  try {
    const child = spawn('sleep', ['600'], { stdio: 'ignore' });
    await once(child, 'spawn');
    const pid = child.pid as number;
    // dump() kills it and, tracing our own child, reaps it. The kernel may still hold the PID a
    // moment after (about a second here): restore() waits for it, the JS thread free meanwhile.
    await dump({ pid, imagesDir: dir, end: 'kill', isDurable: false });
    const r = await restore({ imagesDir: dir, isDetached: true });
    process.kill(r.pid, 'SIGKILL');
    reapWhenDone(r.pid);
    log().info('agent: warmed up (dump and restore of a sleep of its own)');
  } catch (err) {
    log().info(`agent: warm-up skipped: ${String(err)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
