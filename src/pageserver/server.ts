/**
 * The receiving page server (`criu page-server`, the standalone `page-server`): accepts one
 * connection, as CRIU does (one client per server run), and turns the page records it receives into
 * `pagemap-<id>.img` / `pagemap-shmem-<id>.img` (PAGEMAP: pagemap_head{pages_id} + pagemap_entry
 * list) and `pages-<n>.img` (PAGES, raw) in its images directory.
 *
 * Data path: the stream is read in chunks of up to RECV_BYTES into one pooled native Buffer (recv
 * without MSG_WAITALL: whatever has arrived), every complete header in the chunk is decoded in JS,
 * and the data of the chunk's records goes to the pages files with one pwritev per file and chunk
 * (a pages file is written append-only in pagemap order, so the data of consecutive records is
 * contiguous in it even though headers separate it in the stream), running while the next chunk
 * is received into the free rest of the buffer. Live migration sends thousands of scattered
 * 1-page records: they cost a few thread-pool trips per 4 MiB instead of two per record (about
 * 400 µs each on a loaded machine). The buffer comes from a pool, faulted in at listen(). A record of SPLICE_MIN_BYTES or more whose data has not all arrived yet takes the bulk
 * path: what is in the buffer is written, the rest goes socket -> pipe -> pages file by splice(2)
 * in one native call (native/net.cc spliceAllAsync) without entering user space.
 *
 * All or nothing: every file is written under a temporary name (mode 0600) and only renamed into
 * place once CLOSE has arrived and all data is on disk (fsync), and only then is CLOSE answered
 * with status 0. A dropped connection, garbage, a record that does not fit, a full disk: one
 * CriuError (ProtocolError for the peer's faults, ImageError for the file system's), every
 * temporary file removed, nothing renamed.
 *
 * With a parent (--prev-images-dir, relative to the images dir as in CRIU) the server makes the
 * `parent` link and answers OPEN2/PARENT with whether the parent holds that pagemap; pages sent as
 * "in the parent" must be covered by the parent's pagemap.
 */

import { timingSafeEqual } from 'node:crypto';
import { statSync } from 'node:fs';
import { rename, stat, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ImageError, ProtocolError, SyscallError, describeError } from '../errors.js';
import { dedupChain } from '../mem/dedup.js';
import {
  PAGE_SIZE,
  PE_PARENT,
  imageFileName,
  pagemapEntry,
  readPagemap,
  writeParentLink,
  type PagemapRun,
} from '../images/index.js';
import { prepareImageKinds, writeImagesSync } from '../images/image-writer.js';
import { F_SETPIPE_SZ, O_CLOEXEC, O_CREAT, O_EXCL, O_WRONLY } from '../kernel/constants.js';
import { log } from '../log.js';
import * as sys from '../sys/native.js';
import {
  AUTH_ACCEPTED,
  AUTH_MAGIC,
  AUTH_REFUSED,
  AUTH_SIZE,
  PS_IOV_SIZE,
  decodeAuth,
  decodeDstId,
  decodeIov,
  encodeI32Reply,
  encodeOpen2Reply,
  payloadBytes,
  recordFlags,
  tokenDigest,
  type Dst,
  type PsIov,
} from './protocol.js';
import { BufferPool } from '../mem/buffer-pool.js';
import { Connection, DEFAULT_ADDRESS, Listener, SHUT_RDWR, type Transport } from './socket.js';
import { tlsAccept, type TlsCredentials } from './tls.js';

/** Pipe size for socket -> file splices (root may exceed /proc/sys/fs/pipe-max-size). */
const PIPE_BYTES = 1 << 20;
/**
 * Spliced page data reaches the pages file in writes that end on multiples of this (the pipe
 * fills until then): a whole 2 MiB folio per write, which a file system with huge pages (tmpfs
 * huge=) would otherwise zero in full before a partial write. The pipe's slots each hold a socket
 * buffer fragment (up to 32 KiB), so 1 MiB of pipe holds this much.
 */
const SPLICE_WRITE_BYTES = 2 << 20;
/** The receive buffer: the most read from the socket in one call. */
const RECV_BYTES = 4 << 20;
/**
 * Records with at least this much data not yet received are spliced (socket -> pipe -> file):
 * cheaper than recv + pwrite for bulk data. Smaller ones are gathered in the receive buffer.
 * Must stay below RECV_BYTES (a smaller record is always completed in the buffer).
 */
const SPLICE_MIN_BYTES = 256 << 10;
/**
 * fill() receives into the free end of rx while the data before it is written; with less room
 * than this left it waits for the writes and starts again at the front. Room for any record that
 * is completed in rx (less than SPLICE_MIN_BYTES of data) and its header.
 */
const RECV_MIN_ROOM = 2 * SPLICE_MIN_BYTES;
/** Receive buffers, faulted in when a server starts listening (buffer-pool.ts says why). */
const RECV_POOL = new BufferPool(RECV_BYTES, 2);
/** How long to wait for the client to hang up after CLOSE was answered. */
const LINGER_MS = 5000;

export interface PageServerOptions {
  /** Where the images go (must exist). */
  imagesDir: string;
  /** Address to listen on; default 127.0.0.1 (loopback only). "0.0.0.0" or "::" for all. */
  address?: string;
  /** TCP port; 0 picks a free one (read it from `port`). */
  port: number;
  /** Pre-shared token the client must present first (protocol.ts, "Token step"). */
  token?: string;
  /**
   * TLS as CRIU's --tls (tls.ts): the session runs inside it, after the handshake. The client's
   * certificate must name `address` when one is given (unless tls.isNoCnVerify), as in CRIU.
   */
  tls?: TlsCredentials;
  /**
   * fsync what a session stores before answering CLOSE (default true). A live migration's DST
   * skips it: the pages are read into the task at once, and until the task runs there the
   * source holds the process (see WriteSyncOptions.isDurable).
   */
  isDurable?: boolean;
  /** The parent images directory, relative to imagesDir (as CRIU's --prev-images-dir) or absolute. */
  prevImagesDir?: string;
  /**
   * --auto-dedup, as CRIU's page server: once a session's images are in place, the pages of the
   * parent chain they supersede are punched out of the parents' pages files (src/mem/dedup.ts).
   */
  autoDedup?: boolean;
  /** Fail a connection that sends nothing for this long (SO_RCVTIMEO); default: wait forever. */
  idleTimeoutMs?: number;
}

/** What a finished session stored. */
export interface PageServerSummary {
  peer: string;
  /** File names written (pagemaps and pages), in the order committed. */
  files: string[];
  /** Pages received with data (PE_PRESENT). */
  nrPagesReceived: number;
  /** Pages recorded as in the parent or lazy (no data). */
  nrPagesRecorded: number;
  /** Bytes read from the socket, headers included. */
  bytesReceived: number;
  /** Of those, page data spliced socket -> pipe -> file (never copied through user space). */
  bytesSpliced: number;
}

/** One pagemap being received: its runs so far and its pages file (temporary until CLOSE). */
interface PagemapTarget {
  dst: Dst;
  pagemapName: string;
  pagesName: string;
  pagesId: number;
  pagesTmp: string;
  pagesFd: number;
  pagesBytes: number;
  /** Our own objects: the last one grows while consecutive records continue it. */
  runs: { vaddr: bigint; nrPages: number; flags: number }[];
  /** End of the last run (records must come in address order). */
  endAddr: bigint;
  /** The parent's runs for this pagemap, or null when the parent has none. */
  parentRuns: PagemapRun[] | null;
  /** Index of the first parent run that may cover the next record (records come in order). */
  parentCursor: number;
}

/** Data of consecutive records waiting in the receive buffer to be written at `pos` of a pages file. */
interface PendingWrite {
  t: PagemapTarget;
  pos: number;
  len: number;
  bufs: Buffer[];
}

let tmpSeq = 0;

export class PageServer {
  private constructor(
    /** Where the one client comes from: a listening socket, or a socket connected already. */
    private readonly source: Listener | Connection,
    private readonly opts: PageServerOptions,
  ) {}

  /** Bind and listen (so a client may connect as soon as this resolves). */
  static async listen(opts: PageServerOptions): Promise<PageServer> {
    await PageServer.prepare(opts);
    const listener = Listener.open(opts.address ?? DEFAULT_ADDRESS, opts.port);
    log().info(`page-server: listening on ${listener.address}:${listener.port}`);
    return new PageServer(listener, opts);
  }

  /**
   * A server for the client at the other end of stream socket `fd`, connected already
   * (--ps-socket, as CRIU's: a tool carried the connection itself). serve() takes it over and
   * closes it; as in CRIU it does not wait for the client to hang up after CLOSE.
   */
  static async onSocket(opts: Omit<PageServerOptions, 'port' | 'address'>, fd: number): Promise<PageServer> {
    await PageServer.prepare(opts);
    const conn = Connection.adopt(fd);
    log().info(`page-server: serving the socket ${fd} (${conn.peer})`);
    return new PageServer(conn, { ...opts, port: 0 });
  }

  private static async prepare(opts: Pick<PageServerOptions, 'imagesDir'>): Promise<void> {
    const st = await stat(opts.imagesDir).catch(() => null);
    if (st?.isDirectory() !== true)
      throw new ImageError(opts.imagesDir, 'the images directory does not exist', undefined, { isWrite: true });
    // Load the schema and build the pagemap encoder now, not at the first CLOSE (tens of ms that
    // a final dump would spend with the task frozen).
    prepareImageKinds(['PAGEMAP']);
    RECV_POOL.reserve(1);
  }

  /** The listening address ('' for a socket connected already). */
  get address(): string {
    return this.source instanceof Listener ? this.source.address : '';
  }

  /** The listening port (0 for a socket connected already). */
  get port(): number {
    return this.source instanceof Listener ? this.source.port : 0;
  }

  /** Stop waiting for a client (serve() then rejects). */
  close(): void {
    this.source.close();
  }

  /**
   * Accept one client and receive its session until CLOSE. Resolves once every image is in place
   * and CLOSE has been answered; rejects with a CriuError, leaving no temporary file behind.
   */
  async serve(): Promise<PageServerSummary> {
    let plain: Connection;
    if (this.source instanceof Listener) {
      try {
        plain = await this.source.accept();
      } finally {
        this.source.close(); // one client per run, as CRIU
      }
      log().info(`page-server: connection from ${plain.peer}`);
    } else {
      plain = this.source;
    }
    let conn: Transport = plain;
    if (this.opts.tls !== undefined) {
      conn = await tlsAccept(plain, this.opts.tls, this.opts.address ?? null, this.opts.idleTimeoutMs);
      log().info(`page-server: TLS handshake completed with ${conn.peer}`);
    }
    const session = new Session(conn, this.opts, this.source instanceof Listener);
    let summary: PageServerSummary;
    try {
      summary = await session.run();
    } catch (err) {
      await session.cleanup();
      conn.close();
      throw err;
    }
    await session.cleanup();
    await conn.end(); // inside TLS: our close_notify reaches a client that waits for it (CRIU's)
    return summary;
  }
}

class Session {
  private readonly targets = new Map<bigint, PagemapTarget>();
  private readonly committed: string[] = [];
  private nextPagesId = 1;
  private pipe: [number, number] | null = null;
  private nrPagesReceived = 0;
  private nrPagesRecorded = 0;
  private bytesSpliced = 0;
  private readonly imagesDir: string;
  private readonly parentDir: string | null;
  private hasParentLink = false;
  /** Bytes [rxStart, rxEnd) of rx are received and not yet parsed. */
  private readonly rx = RECV_POOL.take();
  private isRxTaken = true;
  private rxStart = 0;
  private rxEnd = 0;
  /** Page data in rx not yet written (startWriting() starts it; rx must not be reused before). */
  private pending: PendingWrite[] = [];
  /** The writes started by startWriting(), in order, or null when none is running. */
  private writing: Promise<void> | null = null;

  constructor(
    private readonly conn: Transport,
    private readonly opts: PageServerOptions,
    /** Wait for the client to hang up after CLOSE (not on a socket handed over: CRIU does not). */
    private readonly isHangUpAwaited: boolean,
  ) {
    this.imagesDir = resolve(opts.imagesDir);
    this.parentDir = opts.prevImagesDir === undefined ? null : resolve(this.imagesDir, opts.prevImagesDir);
  }

  async run(): Promise<PageServerSummary> {
    if (this.opts.idleTimeoutMs !== undefined && this.opts.idleTimeoutMs > 0)
      this.conn.setTimeouts(this.opts.idleTimeoutMs);
    if (this.opts.token !== undefined) await this.authenticate(this.opts.token);
    const isDebug = log().isEnabled(4);
    let isFirst = true;
    for (;;) {
      const got = this.rxEnd - this.rxStart >= PS_IOV_SIZE ? PS_IOV_SIZE : await this.fill(PS_IOV_SIZE);
      if (got === 0)
        throw new ProtocolError(
          this.conn.peer,
          'the connection closed before CLOSE: nothing was stored' +
            // A client that refuses the server's certificate closes right after the handshake.
            (isFirst && this.conn.spliceFd === null
              ? " (inside TLS: the client may have refused this server's certificate; its log says why)"
              : ''),
        );
      if (got < PS_IOV_SIZE)
        throw new ProtocolError(this.conn.peer, `the connection closed in the middle of a header (${got} bytes)`);
      if (isFirst && looksLikeTls(this.rx, this.rxStart))
        throw new ProtocolError(this.conn.peer, 'the client speaks TLS: start the page server with --tls');
      isFirst = false;
      const iov = decodeIov(this.rx, this.conn.peer, this.rxStart);
      this.rxStart += PS_IOV_SIZE;
      if (isDebug)
        log().debug(
          `page-server: ${iov.command} flags ${iov.flags} ${iov.nrPages} pages at 0x${iov.vaddr.toString(16)} dst 0x${iov.dstId.toString(16)}`,
        );
      switch (iov.command) {
        case 'OPEN':
          await this.target(iov);
          break;
        case 'OPEN2': {
          const t = await this.target(iov);
          await this.conn.writeAll([encodeOpen2Reply(t.parentRuns !== null)], 'OPEN2');
          break;
        }
        case 'PARENT': {
          const dst = this.dst(iov);
          const runs = await this.parentRuns(dst, iov.command);
          await this.conn.writeAll([encodeI32Reply(runs === null ? 0 : 1)], 'PARENT');
          break;
        }
        case 'ADD':
        case 'HOLE':
        case 'ADD_F': {
          // Most records are done without I/O (data already in rx): no Promise for those.
          const t = this.targets.get(iov.dstId);
          const waiting = t === undefined ? this.recordAfterOpen(iov) : this.record(t, iov);
          if (waiting !== null) await waiting;
          break;
        }
        case 'GET':
          throw new ProtocolError(this.conn.peer, 'GET asks for lazy pages: this page server only receives', 'GET');
        case 'CLOSE':
        case 'FORCE_CLOSE':
          return await this.finish(iov.command);
      }
    }
  }

  /** The token step: refuse (and say so with a non-zero i32) unless the token matches. */
  private async authenticate(token: string): Promise<void> {
    // The magic first, alone: a client that sends no token (a plain CRIU sends a 24-byte OPEN2
    // and waits for its answer) must be refused at once, not left waiting for 40 bytes.
    const msg = Buffer.alloc(AUTH_SIZE);
    let got = await this.conn.readFully(msg, 0, AUTH_MAGIC.length);
    if (got === AUTH_MAGIC.length && msg.subarray(0, got).equals(AUTH_MAGIC))
      got += await this.conn.readFully(msg, got, AUTH_SIZE - got);
    const digest = got === AUTH_SIZE ? decodeAuth(msg) : null;
    // timingSafeEqual: the time taken says nothing about how much of the digest matched.
    const isOk = digest !== null && timingSafeEqual(digest, tokenDigest(token));
    // A client that presented no token message gets no answer (a plain CRIU would read the
    // refusal as OPEN2's has-parent byte): the connection just closes.
    if (digest !== null)
      await this.conn.writeAll([encodeI32Reply(isOk ? AUTH_ACCEPTED : AUTH_REFUSED)]).catch(() => undefined);
    if (!isOk) {
      this.conn.shutdown(SHUT_RDWR);
      throw new ProtocolError(
        this.conn.peer,
        digest === null
          ? 'the client did not present a token (refused)'
          : 'the client presented a wrong token (refused)',
      );
    }
  }

  private dst(iov: PsIov): Dst {
    const dst = decodeDstId(iov.dstId);
    if (dst === null)
      throw new ProtocolError(this.conn.peer, `unknown destination 0x${iov.dstId.toString(16)}`, iov.command);
    return dst;
  }

  /** The pagemap `iov` names, opened (temporary pages file created) on first use. */
  private async target(iov: PsIov): Promise<PagemapTarget> {
    const existing = this.targets.get(iov.dstId);
    if (existing !== undefined) return existing;
    const dst = this.dst(iov);
    for (const t of this.targets.values()) if (t.dst.type === dst.type && t.dst.id === dst.id) return t; // a legacy dst_id number for a pagemap already open
    if (this.parentDir !== null && !this.hasParentLink) {
      // CRIU makes the link when it opens the images directory for a dump.
      await writeParentLink(this.imagesDir, this.opts.prevImagesDir as string);
      this.hasParentLink = true;
    }
    let pagesId = this.nextPagesId;
    while (pathExists(join(this.imagesDir, imageFileName('PAGES', pagesId)))) pagesId++;
    this.nextPagesId = pagesId + 1;
    const pagesName = imageFileName('PAGES', pagesId);
    const pagesTmp = join(this.imagesDir, `.${pagesName}.tmp-${process.pid}.${tmpSeq++}`);
    let pagesFd: number;
    try {
      pagesFd = sys.open(pagesTmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600);
    } catch (err) {
      throw new ImageError(join(this.imagesDir, pagesName), 'cannot create the temporary file', undefined, {
        cause: err,
        isWrite: true,
      });
    }
    const t: PagemapTarget = {
      dst,
      pagemapName: pagemapFileName(dst),
      pagesName,
      pagesId,
      pagesTmp,
      pagesFd,
      pagesBytes: 0,
      runs: [],
      endAddr: 0n,
      parentRuns: null,
      parentCursor: 0,
    };
    this.targets.set(iov.dstId, t);
    t.parentRuns = await this.parentRuns(dst, iov.command);
    log().info(
      `page-server: receiving ${t.pagemapName} (${pagesName}), parent: ${t.parentRuns !== null ? 'yes' : 'no'}`,
    );
    return t;
  }

  /** The parent's pagemap runs for `dst`, or null when there is no parent image for it. */
  private async parentRuns(dst: Dst, command: string): Promise<PagemapRun[] | null> {
    if (this.parentDir === null) return null;
    const path = join(this.parentDir, pagemapFileName(dst));
    if (!pathExists(path)) return null;
    try {
      return (await readPagemap(path)).runs;
    } catch (err) {
      throw new ProtocolError(this.conn.peer, `the parent pagemap ${path} cannot be used`, command, { cause: err });
    }
  }

  /** A record for a pagemap not opened yet: CRIU also takes those (old clients). */
  private async recordAfterOpen(iov: PsIov): Promise<void> {
    const t = await this.target(iov);
    const waiting = this.record(t, iov);
    if (waiting !== null) await waiting;
  }

  /**
   * ADD, HOLE, ADD_F: one pagemap record, and its data when present. Returns null when the record
   * is done (its data, if any, was in rx and is queued for writing), or a Promise when it needs
   * to read more first.
   */
  private record(t: PagemapTarget, iov: PsIov): Promise<void> | null {
    const flags = recordFlags(iov);
    if (iov.vaddr < t.endAddr)
      throw new ProtocolError(
        this.conn.peer,
        `${recordName(t, iov)} overlaps or precedes the previous one (ending at 0x${t.endAddr.toString(16)})`,
        iov.command,
      );
    const end = iov.vaddr + BigInt(iov.nrPages * PAGE_SIZE);
    if ((flags & PE_PARENT) !== 0) {
      if (t.parentRuns === null)
        throw new ProtocolError(
          this.conn.peer,
          `${recordName(t, iov)}: pages are said to be in the parent, but there is no parent image`,
          iov.command,
        );
      // Records come in address order: parent runs that end before this one never matter again.
      const runs = t.parentRuns;
      while (t.parentCursor < runs.length && runEnd(runs[t.parentCursor] as PagemapRun) <= iov.vaddr) t.parentCursor++;
      if (!covers(runs, t.parentCursor, iov.vaddr, end))
        throw new ProtocolError(
          this.conn.peer,
          `${recordName(t, iov)}: the parent image does not hold these pages`,
          iov.command,
        );
    }
    const len = payloadBytes(iov);
    if (len === 0) {
      this.nrPagesRecorded += iov.nrPages;
    } else if (this.rxEnd - this.rxStart >= len) {
      this.queueWrite(t, this.rx.subarray(this.rxStart, this.rxStart + len));
      this.rxStart += len;
      this.nrPagesReceived += iov.nrPages;
    } else {
      return this.recordData(t, iov, flags, len, end);
    }
    addRun(t, iov.vaddr, iov.nrPages, flags);
    t.endAddr = end;
    return null;
  }

  /** The rest of record(): data that is not all in rx yet. */
  private async recordData(t: PagemapTarget, iov: PsIov, flags: number, len: number, end: bigint): Promise<void> {
    const moved = await this.receiveData(t, len, iov.command);
    if (moved < len)
      throw new ProtocolError(
        this.conn.peer,
        `the connection closed after ${moved} of the ${len} bytes of the ${recordName(t, iov)} (${iov.nrPages} pages)`,
        iov.command,
      );
    this.nrPagesReceived += iov.nrPages;
    addRun(t, iov.vaddr, iov.nrPages, flags);
    t.endAddr = end;
  }

  /**
   * Make at least `n` bytes (n <= SPLICE_MIN_BYTES) available in rx from rxStart and return how
   * many there are (fewer than `n` only when the peer closed the connection). The pending data
   * starts being written meanwhile: recv goes on into the free end of rx, which no write reads;
   * only when that end is too small are the writes awaited and the unparsed rest moved to the
   * front.
   */
  private async fill(n: number, command?: string): Promise<number> {
    this.startWriting();
    if (RECV_BYTES - this.rxEnd < RECV_MIN_ROOM) {
      await this.written();
      const rest = this.rxEnd - this.rxStart;
      if (rest > 0 && this.rxStart > 0) this.rx.copy(this.rx, 0, this.rxStart, this.rxEnd);
      this.rxStart = 0;
      this.rxEnd = rest;
    }
    while (this.rxEnd - this.rxStart < n) {
      const got = await this.conn.readSome(this.rx, this.rxEnd, RECV_BYTES - this.rxEnd, command);
      if (got === 0) break;
      this.rxEnd += got;
    }
    return this.rxEnd - this.rxStart;
  }

  /**
   * Take the `len` bytes of data that follow a header into the end of the target's pages file:
   * from the receive buffer (written later, with its neighbours), or for a large record not yet
   * received, what is in the buffer and then the rest spliced straight from the socket. Returns
   * the bytes taken: fewer than `len` only when the peer closed the connection.
   */
  private async receiveData(t: PagemapTarget, len: number, command: string): Promise<number> {
    let avail = this.rxEnd - this.rxStart;
    if (avail < len && len < SPLICE_MIN_BYTES) avail = await this.fill(len, command);
    const inBuf = Math.min(avail, len);
    if (inBuf > 0) {
      this.queueWrite(t, this.rx.subarray(this.rxStart, this.rxStart + inBuf));
      this.rxStart += inBuf;
    }
    if (inBuf === len || len < SPLICE_MIN_BYTES) return inBuf;
    const fd = this.conn.spliceFd;
    if (fd === null) return inBuf + (await this.receiveInBuffer(t, len - inBuf, command));
    this.startWriting();
    await this.written(); // rx is empty now: start again at its beginning after the splice
    this.rxStart = 0;
    this.rxEnd = 0;
    return inBuf + (await this.splice(fd, t, len - inBuf, command));
  }

  /**
   * The data of a large record through rx, a chunk at a time (inside TLS, where nothing can be
   * spliced): each chunk is queued for writing while the next is received.
   */
  private async receiveInBuffer(t: PagemapTarget, len: number, command: string): Promise<number> {
    let moved = 0;
    while (moved < len) {
      const avail = this.rxEnd > this.rxStart ? this.rxEnd - this.rxStart : await this.fill(1, command);
      if (avail === 0) break;
      const n = Math.min(avail, len - moved);
      this.queueWrite(t, this.rx.subarray(this.rxStart, this.rxStart + n));
      this.rxStart += n;
      moved += n;
    }
    return moved;
  }

  /** Note data in rx for the end of t's pages file (merged with the previous piece when it continues it). */
  private queueWrite(t: PagemapTarget, data: Buffer): void {
    const last = this.pending[this.pending.length - 1];
    if (last !== undefined && last.t === t && last.pos + last.len === t.pagesBytes) {
      last.bufs.push(data);
      last.len += data.length;
    } else {
      this.pending.push({ t, pos: t.pagesBytes, len: data.length, bufs: [data] });
    }
    t.pagesBytes += data.length;
  }

  /**
   * Start writing the pending data, after whatever is being written already: one pwritev per run
   * of consecutive records of a pages file. written() waits for it (and reports its failure).
   */
  private startWriting(): void {
    const pending = this.pending;
    if (pending.length === 0) return;
    this.pending = [];
    const before = this.writing;
    const writing = (async () => {
      if (before !== null) await before;
      for (const w of pending) {
        try {
          await sys.pwritevAllAsync(w.t.pagesFd, w.bufs, BigInt(w.pos));
        } catch (err) {
          throw new ImageError(join(this.imagesDir, w.t.pagesName), 'the file system refused it', w.pos, {
            cause: err,
            isWrite: true,
          });
        }
      }
    })();
    writing.catch(() => undefined); // reported by written(), or dropped by cleanup() after another error
    this.writing = writing;
  }

  /** Wait until everything started by startWriting() is written; its failure is thrown here. */
  private async written(): Promise<void> {
    const writing = this.writing;
    if (writing === null) return;
    try {
      await writing;
    } finally {
      if (this.writing === writing) this.writing = null;
    }
  }

  /** splice `len` bytes from the socket `fd` to the end of the target's pages file. */
  private async splice(fd: number, t: PagemapTarget, len: number, command: string): Promise<number> {
    if (this.pipe === null) {
      this.pipe = sys.pipe2(O_CLOEXEC);
      try {
        sys.fcntl(this.pipe[1], F_SETPIPE_SZ, PIPE_BYTES);
      } catch {
        // a smaller pipe only means more splices
      }
    }
    const [pr, pw] = this.pipe;
    let moved: number;
    try {
      moved = await sys.spliceAllAsync(fd, pr, pw, t.pagesFd, BigInt(t.pagesBytes), len, SPLICE_WRITE_BYTES);
    } catch (err) {
      // Which side failed: a socket error names the peer, a file error the pages image.
      if (err instanceof SyscallError && ['ECONNRESET', 'EAGAIN', 'ETIMEDOUT', 'ENOTCONN'].includes(err.errnoCode))
        throw this.conn.ioError(err, 'cannot receive page data', command);
      throw new ImageError(join(this.imagesDir, t.pagesName), 'the file system refused it', t.pagesBytes, {
        cause: err,
        isWrite: true,
      });
    }
    t.pagesBytes += moved;
    this.conn.bytesIn += moved;
    this.bytesSpliced += moved;
    return moved;
  }

  /** CLOSE: put every image in place, answer 0, wait for the client to hang up. */
  private async finish(command: 'CLOSE' | 'FORCE_CLOSE'): Promise<PageServerSummary> {
    try {
      await this.commit();
    } catch (err) {
      // All or nothing: what was renamed into place before the failure goes too.
      for (const name of this.committed.splice(0)) await unlink(join(this.imagesDir, name)).catch(() => undefined);
      await this.conn.writeAll([encodeI32Reply(-1)], command).catch(() => undefined);
      throw err;
    }
    await this.conn.writeAll([encodeI32Reply(0)], command);
    if (this.isHangUpAwaited) {
      // As CRIU: the client closes first (so TIME_WAIT stays on its side); anything else is odd.
      // The images are in place already: a client that lingers gets a few seconds, not forever.
      this.conn.setTimeouts(LINGER_MS);
      const extra = Buffer.alloc(1);
      const got = this.rxEnd > this.rxStart ? 1 : await this.conn.readFully(extra, 0, 1).catch(() => 0);
      if (got !== 0) log().warn(`page-server: ${this.conn.peer} sent data after ${command}; ignored`);
    }
    log().info(
      `page-server: session closed: ${this.nrPagesReceived} pages received, ${this.nrPagesRecorded} recorded without data`,
    );
    if (this.opts.autoDedup === true && this.parentDir !== null) await this.dedup();
    return {
      peer: this.conn.peer,
      files: [...this.committed],
      nrPagesReceived: this.nrPagesReceived,
      nrPagesRecorded: this.nrPagesRecorded,
      bytesReceived: this.conn.bytesIn,
      bytesSpliced: this.bytesSpliced,
    };
  }

  /**
   * --auto-dedup, after the session (the client is not kept waiting: a final dump's task is
   * frozen until CLOSE is answered). A failure costs disk space, not data: it is logged.
   */
  private async dedup(): Promise<void> {
    try {
      const punched = await dedupChain(this.imagesDir);
      log().info(`page-server: --auto-dedup punched ${punched} bytes out of the parent images`);
    } catch (err) {
      log().warn(`page-server: --auto-dedup failed, the parent images keep their pages: ${describeError(err)}`);
    }
  }

  /** fsync + rename every pages file, then write and commit every pagemap. */
  private async commit(): Promise<void> {
    this.startWriting();
    await this.written();
    for (const t of this.targets.values()) {
      const final = join(this.imagesDir, t.pagesName);
      try {
        if (this.opts.isDurable !== false) sys.fsync(t.pagesFd);
        sys.close(t.pagesFd);
        t.pagesFd = -1;
        await rename(t.pagesTmp, final);
      } catch (err) {
        throw new ImageError(final, 'the file system refused it', undefined, { cause: err, isWrite: true });
      }
      this.committed.push(t.pagesName);
    }
    for (const t of this.targets.values()) {
      // Thousands of entries after a scattered transfer: encoded at once and written in one go.
      writeImagesSync(
        [
          {
            path: join(this.imagesDir, t.pagemapName),
            kind: 'PAGEMAP',
            entries: [{ pages_id: t.pagesId }, ...t.runs.map(pagemapEntry)],
          },
        ],
        { isDurable: this.opts.isDurable !== false },
      );
      this.committed.push(t.pagemapName);
    }
    this.targets.clear();
  }

  /** Close fds and remove whatever temporary file is left (all of them after a failure). */
  async cleanup(): Promise<void> {
    this.pending = [];
    // Writes still running use rx and the pages fds: let them end first (their failure, if any,
    // comes after the error being reported).
    await this.writing?.catch(() => undefined);
    this.writing = null;
    // No native call uses rx any more: every one was awaited before run() settled.
    if (this.isRxTaken) RECV_POOL.give(this.rx);
    this.isRxTaken = false;
    if (this.pipe !== null) {
      for (const fd of this.pipe) sys.close(fd);
      this.pipe = null;
    }
    for (const t of this.targets.values()) {
      if (t.pagesFd >= 0) sys.close(t.pagesFd);
      t.pagesFd = -1;
      await unlink(t.pagesTmp).catch(() => undefined);
    }
    this.targets.clear();
  }
}

/**
 * A TLS ClientHello where a header should be: a handshake record (type 22) of TLS 1.x (major
 * version 3). No page-server command word starts with these bytes.
 */
function looksLikeTls(buf: Buffer, at: number): boolean {
  return buf[at] === 0x16 && buf[at + 1] === 0x03;
}

function pagemapFileName(dst: Dst): string {
  return dst.type === 'task' ? `pagemap-${dst.id}.img` : `pagemap-shmem-${dst.id}.img`;
}

/**
 * stat(2) on the JS thread: a local file system answers in microseconds, a thread-pool round
 * trip costs far more on a loaded machine, and OPEN2 is answered while the task is frozen.
 */
function pathExists(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false }) !== undefined;
}

/** "pagemap-1.img record at 0x1000", for messages. */
function recordName(t: PagemapTarget, iov: PsIov): string {
  return `${t.pagemapName} record at 0x${iov.vaddr.toString(16)}`;
}

/** Append a run to t's pagemap, merged into the last one when it continues it with the same flags. */
function addRun(t: PagemapTarget, vaddr: bigint, nrPages: number, flags: number): void {
  const last = t.runs[t.runs.length - 1];
  // The last run ends where the last record did (t.endAddr): no arithmetic needed.
  if (last !== undefined && last.flags === flags && t.endAddr === vaddr) last.nrPages += nrPages;
  else t.runs.push({ vaddr, nrPages, flags });
}

function runEnd(r: PagemapRun): bigint {
  return r.vaddr + BigInt(r.nrPages) * BigInt(PAGE_SIZE);
}

/** True when the union of `runs` (address-ordered) from index `from` on covers [start, end). */
function covers(runs: readonly PagemapRun[], from: number, start: bigint, end: bigint): boolean {
  let at = start;
  for (let i = from; i < runs.length; i++) {
    const r = runs[i] as PagemapRun;
    const rEnd = runEnd(r);
    if (rEnd <= at) continue;
    if (r.vaddr > at) return false;
    at = rEnd;
    if (at >= end) return true;
  }
  return at >= end;
}
