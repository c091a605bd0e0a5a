/**
 * The receiving page server (`criu page-server`, the standalone `page-server`): accepts one
 * connection, as CRIU does (one client per server run), and turns the page records it receives into
 * `pagemap-<id>.img` / `pagemap-shmem-<id>.img` (PAGEMAP: pagemap_head{pages_id} + pagemap_entry
 * list) and `pages-<n>.img` (PAGES, raw) in its images directory.
 *
 * Data path: page data goes socket -> pipe -> pages file by splice(2) in one native call per
 * record on the thread pool (native/net.cc spliceAllAsync); it never enters user space. Headers are
 * read 24 bytes at a time.
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
import { rename, stat, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ImageError, ProtocolError, SyscallError } from '../errors.js';
import {
  ImageWriter,
  PAGE_SIZE,
  PE_PARENT,
  imageFileName,
  pagemapEntry,
  readPagemap,
  writeParentLink,
  type PagemapRun,
} from '../images/index.js';
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
import { DEFAULT_ADDRESS, Listener, SHUT_RDWR, type Connection } from './socket.js';

/** Pipe size for socket -> file splices (root may exceed /proc/sys/fs/pipe-max-size). */
const PIPE_BYTES = 1 << 20;
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
  /** The parent images directory, relative to imagesDir (as CRIU's --prev-images-dir) or absolute. */
  prevImagesDir?: string;
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
  runs: PagemapRun[];
  /** End of the last run (records must come in address order). */
  endAddr: bigint;
  /** The parent's runs for this pagemap, or null when the parent has none. */
  parentRuns: PagemapRun[] | null;
}

let tmpSeq = 0;

export class PageServer {
  private constructor(
    private readonly listener: Listener,
    private readonly opts: PageServerOptions,
  ) {}

  /** Bind and listen (so a client may connect as soon as this resolves). */
  static async listen(opts: PageServerOptions): Promise<PageServer> {
    const st = await stat(opts.imagesDir).catch(() => null);
    if (st?.isDirectory() !== true)
      throw new ImageError(opts.imagesDir, 'the images directory does not exist', undefined, { isWrite: true });
    const listener = Listener.open(opts.address ?? DEFAULT_ADDRESS, opts.port);
    log().info(`page-server: listening on ${listener.address}:${listener.port}`);
    return new PageServer(listener, opts);
  }

  get address(): string {
    return this.listener.address;
  }

  get port(): number {
    return this.listener.port;
  }

  /** Stop waiting for a client (serve() then rejects). */
  close(): void {
    this.listener.close();
  }

  /**
   * Accept one client and receive its session until CLOSE. Resolves once every image is in place
   * and CLOSE has been answered; rejects with a CriuError, leaving no temporary file behind.
   */
  async serve(): Promise<PageServerSummary> {
    let conn: Connection;
    try {
      conn = await this.listener.accept();
    } finally {
      this.listener.close(); // one client per run, as CRIU
    }
    log().info(`page-server: connection from ${conn.peer}`);
    const session = new Session(conn, this.opts);
    try {
      return await session.run();
    } finally {
      await session.cleanup();
      conn.close();
    }
  }
}

class Session {
  private readonly targets = new Map<bigint, PagemapTarget>();
  private readonly committed: string[] = [];
  private nextPagesId = 1;
  private pipe: [number, number] | null = null;
  private nrPagesReceived = 0;
  private nrPagesRecorded = 0;
  private readonly imagesDir: string;
  private readonly parentDir: string | null;
  private hasParentLink = false;

  constructor(
    private readonly conn: Connection,
    private readonly opts: PageServerOptions,
  ) {
    this.imagesDir = resolve(opts.imagesDir);
    this.parentDir = opts.prevImagesDir === undefined ? null : resolve(this.imagesDir, opts.prevImagesDir);
  }

  async run(): Promise<PageServerSummary> {
    if (this.opts.idleTimeoutMs !== undefined && this.opts.idleTimeoutMs > 0)
      this.conn.setTimeouts(this.opts.idleTimeoutMs);
    if (this.opts.token !== undefined) await this.authenticate(this.opts.token);
    const head = Buffer.alloc(PS_IOV_SIZE);
    for (;;) {
      const got = await this.conn.readFully(head, 0, PS_IOV_SIZE);
      if (got === 0) throw new ProtocolError(this.conn.peer, 'the connection closed before CLOSE: nothing was stored');
      if (got < PS_IOV_SIZE)
        throw new ProtocolError(this.conn.peer, `the connection closed in the middle of a header (${got} bytes)`);
      const iov = decodeIov(head, this.conn.peer);
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
        case 'ADD_F':
          await this.record(iov);
          break;
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
    while (await exists(join(this.imagesDir, imageFileName('PAGES', pagesId)))) pagesId++;
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
    if (!(await exists(path))) return null;
    try {
      return (await readPagemap(path)).runs;
    } catch (err) {
      throw new ProtocolError(this.conn.peer, `the parent pagemap ${path} cannot be used`, command, { cause: err });
    }
  }

  /** ADD, HOLE, ADD_F: one pagemap record, and its data when present. */
  private async record(iov: PsIov): Promise<void> {
    const t = await this.target(iov); // CRIU also takes records without an open (old clients)
    const flags = recordFlags(iov);
    const what = `${t.pagemapName} record at 0x${iov.vaddr.toString(16)}`;
    if (iov.vaddr < t.endAddr)
      throw new ProtocolError(
        this.conn.peer,
        `${what} overlaps or precedes the previous one (ending at 0x${t.endAddr.toString(16)})`,
        iov.command,
      );
    const end = iov.vaddr + BigInt(iov.nrPages) * BigInt(PAGE_SIZE);
    if ((flags & PE_PARENT) !== 0) {
      if (t.parentRuns === null)
        throw new ProtocolError(
          this.conn.peer,
          `${what}: pages are said to be in the parent, but there is no parent image`,
          iov.command,
        );
      if (!covers(t.parentRuns, iov.vaddr, end))
        throw new ProtocolError(this.conn.peer, `${what}: the parent image does not hold these pages`, iov.command);
    }
    const len = payloadBytes(iov);
    if (len > 0) {
      const moved = await this.receiveData(t, len, iov.command);
      if (moved < len)
        throw new ProtocolError(
          this.conn.peer,
          `the connection closed after ${moved} of the ${len} bytes of the ${what} (${iov.nrPages} pages)`,
          iov.command,
        );
      this.nrPagesReceived += iov.nrPages;
    } else {
      this.nrPagesRecorded += iov.nrPages;
    }
    addRun(t.runs, { vaddr: iov.vaddr, nrPages: iov.nrPages, flags });
    t.endAddr = end;
  }

  /** splice `len` bytes from the socket to the end of the target's pages file. */
  private async receiveData(t: PagemapTarget, len: number, command: string): Promise<number> {
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
      moved = await sys.spliceAllAsync(this.conn.fd, pr, pw, t.pagesFd, BigInt(t.pagesBytes), len, PIPE_BYTES);
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
    // As CRIU: the client closes first (so TIME_WAIT stays on its side); anything else is odd.
    // The images are in place already: a client that lingers gets a few seconds, not forever.
    this.conn.setTimeouts(LINGER_MS);
    const extra = Buffer.alloc(1);
    const got = await this.conn.readFully(extra, 0, 1).catch(() => 0);
    if (got !== 0) log().warn(`page-server: ${this.conn.peer} sent data after ${command}; ignored`);
    log().info(
      `page-server: session closed: ${this.nrPagesReceived} pages received, ${this.nrPagesRecorded} recorded without data`,
    );
    return {
      peer: this.conn.peer,
      files: [...this.committed],
      nrPagesReceived: this.nrPagesReceived,
      nrPagesRecorded: this.nrPagesRecorded,
      bytesReceived: this.conn.bytesIn,
    };
  }

  /** fsync + rename every pages file, then write and commit every pagemap. */
  private async commit(): Promise<void> {
    for (const t of this.targets.values()) {
      const final = join(this.imagesDir, t.pagesName);
      try {
        sys.fsync(t.pagesFd);
        sys.close(t.pagesFd);
        t.pagesFd = -1;
        await rename(t.pagesTmp, final);
      } catch (err) {
        throw new ImageError(final, 'the file system refused it', undefined, { cause: err, isWrite: true });
      }
      this.committed.push(t.pagesName);
    }
    for (const t of this.targets.values()) {
      const w = await ImageWriter.create(join(this.imagesDir, t.pagemapName), 'PAGEMAP');
      await w.append({ pages_id: t.pagesId });
      for (const run of t.runs) await w.append(pagemapEntry(run));
      await w.commit();
      this.committed.push(t.pagemapName);
    }
    this.targets.clear();
  }

  /** Close fds and remove whatever temporary file is left (all of them after a failure). */
  async cleanup(): Promise<void> {
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

function pagemapFileName(dst: Dst): string {
  return dst.type === 'task' ? `pagemap-${dst.id}.img` : `pagemap-shmem-${dst.id}.img`;
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null)) !== null;
}

/** Append a run, merging it into the previous one when it continues it with the same flags. */
function addRun(runs: PagemapRun[], run: PagemapRun): void {
  const last = runs[runs.length - 1];
  if (
    last !== undefined &&
    last.flags === run.flags &&
    last.vaddr + BigInt(last.nrPages) * BigInt(PAGE_SIZE) === run.vaddr
  ) {
    runs[runs.length - 1] = { ...last, nrPages: last.nrPages + run.nrPages };
    return;
  }
  runs.push(run);
}

/** True when the union of `runs` (address-ordered) covers [start, end). */
function covers(runs: readonly PagemapRun[], start: bigint, end: bigint): boolean {
  let at = start;
  for (const r of runs) {
    const rEnd = r.vaddr + BigInt(r.nrPages) * BigInt(PAGE_SIZE);
    if (rEnd <= at) continue;
    if (r.vaddr > at) return false;
    at = rEnd;
    if (at >= end) return true;
  }
  return at >= end;
}
