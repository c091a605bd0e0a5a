/**
 * The sending side of the page server (`criu dump|pre-dump --page-server`): connects to a page
 * server (ours or CRIU's), opens a pagemap per task, sends its page records, and ends with CLOSE.
 *
 * Data path: pages are read from the target (its /proc/PID/mem, task-memory.ts) into two pooled native Buffers
 * (CHUNK_BYTES each) on the thread pool, and each batch goes out with a single writev of its
 * headers and data, also on the thread pool, while the next batch is being read. A batch holds
 * up to MAX_PIECES records (1024 of them with data): thousands of scattered 1-page records cost a
 * few thread-pool trips, and nothing is awaited per record. Memory use is
 * 2 × CHUNK_BYTES whatever the size of the target; no page byte is touched by JavaScript.
 *
 * Kernel interfaces: /proc/PID/mem (src/mem/task-memory.ts), socket/connect/writev/recv (native/net.cc).
 *
 * Not for concurrent use: one call at a time (await each), as the protocol is a single stream.
 */

import { ProtocolError, TaskError } from '../errors.js';
import { PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT } from '../images/index.js';
import {
  AUTH_ACCEPTED,
  PS_IOV_SIZE,
  addIov,
  closeIov,
  controlIov,
  decodeI32Reply,
  decodeOpen2Reply,
  encodeAuth,
  encodeDstId,
  encodeIov,
  type Dst,
} from './protocol.js';
import { BufferPool } from '../mem/buffer-pool.js';
import { remoteIov } from '../mem/runs.js';
import { Connection, DEFAULT_ADDRESS, type Transport } from './socket.js';
import { tlsConnect, type TlsCredentials } from './tls.js';
import { TaskMemory } from '../mem/task-memory.js';

/** Bytes read from the target per batch (and size of each of the two pooled buffers). */
export const CHUNK_BYTES = 4 << 20;
/** Pieces with data per batch at most (IOV_MAX: one writev carries their data). */
const MAX_DATA_PIECES = 1024;
/**
 * Pieces per batch at most, with and without data. Scattered dirty pages (live migration) come
 * as thousands of 1-page records between records without data: a batch holds many of them so
 * that they cost a few thread-pool trips, not two per record. (writevAllAsync goes past IOV_MAX
 * by itself.)
 */
const MAX_PIECES = 4096;
/** Pages per ADD_F record at most (1 GiB): the server merges consecutive records anyway. */
const MAX_RECORD_PAGES = 1 << 18;
/** Read buffers, faulted in when a client connects (buffer-pool.ts says why); one client's pair kept. */
const CHUNK_POOL = new BufferPool(CHUNK_BYTES, 2);

/** A run of pages: [vaddr, vaddr + nrPages × 4096). Same shape as src/mem's PageRun. */
export interface PageRunLike {
  readonly vaddr: bigint;
  readonly nrPages: number;
}

/** One pagemap record to send: PE_PRESENT (data read from the task), PE_PARENT or PE_LAZY. */
export interface PageRecord extends PageRunLike {
  readonly flags: number;
}

export interface SendProgress {
  /** Called after each batch with the page bytes sent so far by this call. */
  onProgress?: ((bytesDone: number) => void) | undefined;
  /** Stops between two batches (the session is then unusable: abort() it). */
  signal?: AbortSignal | undefined;
}

/**
 * Where a dump's pages go, as an interface the dump code can hold instead of local files. The
 * contract: open() a pagemap, then give its records in increasing address order (present runs,
 * parent runs, lazy runs, any mix, never overlapping), then open() the next one; close() once at
 * the end commits everything. Until close() resolves nothing counts as stored; after any
 * rejection the transport is broken: call abort().
 */
export interface PageTransport {
  /** Start the pagemap of `dst` (a task: its id in the images; shmem: the shmid). */
  open(dst: Dst): Promise<{ hasParent: boolean }>;
  /**
   * A whole pagemap (or the next part of it) in address order: PE_PRESENT records with data read
   * straight from process `pid` (the real pid), PE_PARENT / PE_LAZY records without data.
   */
  sendPagemap(
    pid: number,
    runs: readonly PageRecord[],
    progress?: SendProgress & { isRunning?: boolean | undefined },
  ): Promise<{ nrPagesSent: number; nrPagesGone: number }>;
  /** Present pages of process `pid` only (sendPagemap with PE_PRESENT runs). */
  addPresentRuns(pid: number, runs: readonly PageRunLike[], progress?: SendProgress): Promise<void>;
  /** Present pages whose bytes are at hand (a pages image on disk, a test). */
  addPresentBytes(vaddr: bigint, data: Buffer): Promise<void>;
  /** Pages unchanged since the parent image (PE_PARENT): a record, no data. */
  addParent(vaddr: bigint, nrPages: number): Promise<void>;
  /** Pages to be restored lazily (PE_LAZY), without data. */
  addLazy(vaddr: bigint, nrPages: number): Promise<void>;
  /** Commit: resolves once the other side has stored everything. */
  close(): Promise<void>;
  /** Give up without committing (nothing is stored on the other side). Idempotent. */
  abort(): void;
}

export interface PageServerClientOptions {
  /** Default 127.0.0.1. */
  address?: string;
  port: number;
  /** A socket connected to the server already, used instead of address:port and closed after. */
  fd?: number;
  /** The page server's pre-shared token (protocol.ts, "Token step"); omit for a plain CRIU server. */
  token?: string;
  /** Fail when the server accepts nothing or answers nothing for this long (default: wait). */
  timeoutMs?: number;
  /**
   * TLS as CRIU's --tls (tls.ts): the server's certificate must name `address` (default
   * 127.0.0.1, also with `fd`) unless tls.isNoCnVerify.
   */
  tls?: TlsCredentials;
}

export class PageServerClient implements PageTransport {
  private dst: Dst | null = null;
  private buffers: [Buffer, Buffer] | null = null;
  private isDone = false;
  /** A sendPagemap is running: its native calls may still use the buffers. */
  private isSending = false;
  /** Page bytes sent (data only). */
  bytesSent = 0;

  private constructor(private readonly conn: Transport) {}

  /** Connect (and present the token, if one is given). */
  static async connect(opts: PageServerClientOptions): Promise<PageServerClient> {
    const plain =
      opts.fd !== undefined
        ? Connection.adopt(opts.fd)
        : await Connection.connect(opts.address ?? DEFAULT_ADDRESS, opts.port, opts.timeoutMs);
    const conn =
      opts.tls === undefined
        ? plain
        : await tlsConnect(plain, opts.tls, opts.address ?? DEFAULT_ADDRESS, opts.timeoutMs);
    const client = new PageServerClient(conn);
    CHUNK_POOL.reserve(2); // page faults now, not while the pages of a frozen task go out
    try {
      if (opts.timeoutMs !== undefined && opts.timeoutMs > 0) conn.setTimeouts(opts.timeoutMs);
      if (opts.token !== undefined) {
        await conn.writeAll([encodeAuth(opts.token)], 'the token step');
        const reply = Buffer.alloc(4);
        const hungUp = (cause?: unknown): ProtocolError =>
          new ProtocolError(
            conn.peer,
            'the page server hung up on the token (it expects none, or speaks another protocol)',
            'the token step',
            { cause },
          );
        const got = await conn.readFully(reply, 0, 4, 'the token step').catch((err: unknown) => {
          throw hungUp(err);
        });
        if (got < 4) throw hungUp();
        if (decodeI32Reply(reply) !== AUTH_ACCEPTED)
          throw new ProtocolError(conn.peer, 'the page server refused the token');
      }
    } catch (err) {
      client.abort();
      throw err;
    }
    return client;
  }

  /** "address:port" of the server. */
  get peer(): string {
    return this.conn.peer;
  }

  /** OPEN2: start the pagemap of `dst`; the server says whether it holds a parent image for it. */
  async open(dst: Dst): Promise<{ hasParent: boolean }> {
    this.assertLive();
    await this.conn.writeAll([encodeIov(controlIov('OPEN2', dst))], 'OPEN2');
    const reply = await this.conn.readExact(1, "OPEN2's answer", 'OPEN2').catch((err: unknown) => {
      // The first answer of a session: a server that hangs up here most likely wants a token.
      throw new ProtocolError(
        this.conn.peer,
        'the page server hung up instead of answering OPEN2 (does it require a token?)',
        'OPEN2',
        // A socket error says more; "closed" would only repeat this message.
        { cause: err instanceof ProtocolError && err.cause === undefined ? undefined : err },
      );
    });
    this.dst = dst;
    return { hasParent: decodeOpen2Reply(reply) };
  }

  /** PARENT: does the server hold a parent image for `dst`? (No pagemap is opened.) */
  async hasParent(dst: Dst): Promise<boolean> {
    this.assertLive();
    await this.conn.writeAll([encodeIov(controlIov('PARENT', dst))], 'PARENT');
    return decodeI32Reply(await this.conn.readExact(4, "PARENT's answer", 'PARENT')) !== 0;
  }

  /** One run of present pages read from process `pid`. */
  async addPresent(pid: number, vaddr: bigint, nrPages: number): Promise<void> {
    await this.addPresentRuns(pid, [{ vaddr, nrPages }]);
  }

  async addPresentRuns(pid: number, runs: readonly PageRunLike[], progress: SendProgress = {}): Promise<void> {
    await this.sendPagemap(
      pid,
      runs.map((r) => ({ vaddr: r.vaddr, nrPages: r.nrPages, flags: PE_PRESENT })),
      progress,
    );
  }

  /**
   * A whole pagemap in address order: PE_PRESENT runs with their data read from process `pid`,
   * the others (PE_PARENT, PE_LAZY) as records without data, in one pipelined stream. With
   * `isRunning` (pre-dump: the task runs) pages that vanish during the copy are sent as zeros
   * (as the local writer does) instead of failing. Resolves with the pages sent with data and
   * how many of them were gone.
   */
  async sendPagemap(
    pid: number,
    runs: readonly PageRecord[],
    progress: SendProgress & { isRunning?: boolean | undefined } = {},
  ): Promise<{ nrPagesSent: number; nrPagesGone: number }> {
    const dstId = encodeDstId(this.currentDst());
    this.buffers ??= [CHUNK_POOL.take(), CHUNK_POOL.take()];
    const buffers = this.buffers;
    this.isSending = true;
    let sending: Promise<void> = Promise.resolve();
    let turn = 0;
    let done = 0;
    let gone = 0;
    let mem: TaskMemory | null = null;
    try {
      for (const batch of batches(runs)) {
        if (progress.signal?.aborted === true)
          throw new TaskError(pid, 'Page transfer interrupted', { cause: progress.signal.reason });
        const buf = buffers[turn++ % 2] as Buffer;
        const data = batch.filter((p) => (p.flags & PE_PRESENT) !== 0);
        const bytes = data.reduce((n, p) => n + p.nrPages * PAGE_SIZE, 0);
        // This buffer was last sent two turns ago; that send finished before the last one began.
        if (bytes > 0) {
          mem ??= TaskMemory.open(pid);
          gone += await readPieces(mem, buf, data, bytes, progress.isRunning === true);
        }
        // A run longer than a batch goes out as one record: its header with the first piece, the
        // rest of its data in the following batches (the server then splices it in one go).
        // Headers with no data between them (a record without data, then the next record's
        // header) are adjacent in `heads` and go out as one iovec.
        const heads = Buffer.allocUnsafe(batch.length * PS_IOV_SIZE);
        const iov: Buffer[] = [];
        let headsFrom = 0;
        let headsTo = 0;
        let off = 0;
        for (const piece of batch) {
          if (piece.runPages > 0) {
            const head = {
              command: 'ADD_F',
              flags: piece.flags,
              nrPages: piece.runPages,
              vaddr: piece.vaddr,
              dstId,
            } as const;
            encodeIov(head, heads, headsTo);
            headsTo += PS_IOV_SIZE;
          }
          if ((piece.flags & PE_PRESENT) === 0) continue;
          if (headsTo > headsFrom) iov.push(heads.subarray(headsFrom, headsTo));
          headsFrom = headsTo;
          iov.push(buf.subarray(off, off + piece.nrPages * PAGE_SIZE));
          off += piece.nrPages * PAGE_SIZE;
        }
        if (headsTo > headsFrom) iov.push(heads.subarray(headsFrom, headsTo));
        await sending;
        sending = this.conn.writeAll(iov, 'ADD_F');
        sending.catch(() => undefined); // awaited at the next turn or below
        done += bytes;
        this.bytesSent += bytes;
        progress.onProgress?.(done);
      }
      await sending;
    } catch (err) {
      await sending.catch(() => undefined); // the buffers must be free before anyone reuses them
      throw err;
    } finally {
      mem?.close();
      this.isSending = false;
      if (this.isDone) this.releaseBuffers(); // aborted meanwhile
    }
    return { nrPagesSent: done / PAGE_SIZE, nrPagesGone: gone };
  }

  async addPresentBytes(vaddr: bigint, data: Buffer): Promise<void> {
    const dst = this.currentDst();
    if (data.length === 0 || data.length % PAGE_SIZE !== 0)
      throw new RangeError(`Page data must be a positive multiple of ${PAGE_SIZE} bytes, got ${data.length}`);
    await this.conn.writeAll([encodeIov(addIov(dst, vaddr, data.length / PAGE_SIZE, PE_PRESENT)), data], 'ADD_F');
    this.bytesSent += data.length;
  }

  async addParent(vaddr: bigint, nrPages: number): Promise<void> {
    await this.conn.writeAll([encodeIov(addIov(this.currentDst(), vaddr, nrPages, PE_PARENT))], 'ADD_F');
  }

  async addLazy(vaddr: bigint, nrPages: number): Promise<void> {
    await this.conn.writeAll([encodeIov(addIov(this.currentDst(), vaddr, nrPages, PE_LAZY))], 'ADD_F');
  }

  /** CLOSE, then the server's i32 status: 0 means every image is stored. */
  async close(): Promise<void> {
    this.assertLive();
    try {
      await this.conn.writeAll([encodeIov(closeIov())], 'CLOSE');
      const status = decodeI32Reply(await this.conn.readExact(4, "CLOSE's answer", 'CLOSE'));
      if (status !== 0)
        throw new ProtocolError(
          this.conn.peer,
          `the page server could not store the pages (status ${status})`,
          'CLOSE',
        );
    } catch (err) {
      this.abort();
      throw err;
    }
    // Stored. Hang up as the server expects; inside TLS that waits for its close_notify, which a
    // CRIU page server sends and would otherwise meet a closed socket (criu exits right after).
    this.isDone = true;
    if (!this.isSending) this.releaseBuffers();
    await this.conn.end();
  }

  abort(): void {
    if (this.isDone) return;
    this.isDone = true;
    this.conn.close();
    if (!this.isSending) this.releaseBuffers();
  }

  /** Back to the pool, once no native call can be using them. */
  private releaseBuffers(): void {
    if (this.buffers === null) return;
    for (const b of this.buffers) CHUNK_POOL.give(b);
    this.buffers = null;
  }

  private currentDst(): Dst {
    this.assertLive();
    if (this.dst === null) throw new Error('PageServerClient: open() a pagemap before sending pages');
    return this.dst;
  }

  private assertLive(): void {
    if (this.isDone) throw new Error('PageServerClient: the session is closed');
  }
}

/** Runs cut to at most MAX_RECORD_PAGES (nr_pages is a u32 on the wire). */
function* records(runs: readonly PageRecord[]): Generator<PageRecord> {
  for (const run of runs) {
    for (let done = 0; done < run.nrPages; done += MAX_RECORD_PAGES)
      yield {
        vaddr: run.vaddr + BigInt(done * PAGE_SIZE),
        nrPages: Math.min(MAX_RECORD_PAGES, run.nrPages - done),
        flags: run.flags,
      };
  }
}

/** A piece of a record read in one batch; `runPages` > 0 on a record's first piece (its header goes first). */
interface Piece extends PageRecord {
  runPages: number;
}

/**
 * Split records into batches of at most CHUNK_BYTES of data, MAX_DATA_PIECES pieces with data and
 * MAX_PIECES pieces in all (long present runs are cut; records without data take no room but a
 * piece).
 */
function* batches(runs: readonly PageRecord[]): Generator<Piece[]> {
  let batch: Piece[] = [];
  let bytes = 0;
  let nrDataPieces = 0;
  for (const record of records(runs)) {
    let { vaddr, nrPages } = record;
    const { flags } = record;
    const hasData = (flags & PE_PRESENT) !== 0;
    let runPages = nrPages;
    while (nrPages > 0) {
      const take = hasData ? Math.min(Math.floor((CHUNK_BYTES - bytes) / PAGE_SIZE), nrPages) : nrPages;
      batch.push({ vaddr, nrPages: take, flags, runPages });
      runPages = 0;
      if (hasData) {
        bytes += take * PAGE_SIZE;
        nrDataPieces++;
      }
      vaddr += BigInt(take * PAGE_SIZE);
      nrPages -= take;
      if (bytes >= CHUNK_BYTES || nrDataPieces >= MAX_DATA_PIECES || batch.length >= MAX_PIECES) {
        yield batch;
        batch = [];
        bytes = 0;
        nrDataPieces = 0;
      }
    }
  }
  if (batch.length > 0) yield batch;
}

/**
 * The pieces read into buf. A short read fails, unless the task runs (pre-dump): then each piece
 * is read alone and what cannot be read (unmapped meanwhile) becomes zeros. Returns the pages
 * that were gone.
 */
async function readPieces(
  mem: TaskMemory,
  buf: Buffer,
  pieces: readonly Piece[],
  bytes: number,
  isRunning: boolean,
): Promise<number> {
  const got = await mem.readAsync(buf, 0, remoteIov(pieces));
  if (got === bytes) return 0;
  const { pid } = mem;
  if (!isRunning) throw new TaskError(pid, `Cannot read the memory of task ${pid}: got ${got} of ${bytes} bytes`);
  let gone = 0;
  let off = 0;
  for (const p of pieces) {
    const len = p.nrPages * PAGE_SIZE;
    for (let at = 0; at < len; at += PAGE_SIZE) {
      // Page by page: one unmapped page must not take its neighbours with it.
      const n = await mem.readAsync(buf, off + at, new BigUint64Array([p.vaddr + BigInt(at), BigInt(PAGE_SIZE)]));
      if (n < PAGE_SIZE) {
        buf.fill(0, off + at, off + at + PAGE_SIZE);
        gone++;
      }
    }
    off += len;
  }
  return gone;
}
