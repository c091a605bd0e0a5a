/**
 * The TCP connection both ends of the page server use: a blocking socket fd driven from the
 * thread pool through the native net calls (native/net.cc), so that page data moves between
 * socket, pipe and file in native code and never through the JS heap.
 *
 * Why not node:net: its sockets are non-blocking fds owned by libuv's event loop; splice(2) and
 * writev(2) on them from another thread would race libuv and fail with EAGAIN. A plain blocking fd
 * lets one native call move megabytes. Kernel interfaces: socket/bind/listen/accept4/connect,
 * recv (MSG_WAITALL or not), writev, splice, setsockopt (SO_REUSEADDR, TCP_NODELAY, SO_RCVTIMEO,
 * SO_SNDTIMEO, TCP_USER_TIMEOUT).
 */

import { ProtocolError, SyscallError, UsageError } from '../errors.js';
import {
  AF_INET,
  AF_INET6,
  SO_RCVTIMEO,
  SO_REUSEADDR,
  SO_SNDTIMEO,
  SO_TYPE,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  SOL_SOCKET,
  SOL_TCP,
  TCP_NODELAY,
  TCP_USER_TIMEOUT,
  MSG_WAITALL,
} from '../kernel/constants.js';
import * as sys from '../sys/native.js';

/** socket(7), tcp(7), recv(2), shutdown(2) numbers not in src/kernel/constants.ts. */
export const SHUT_RD = 0;
export const SHUT_WR = 1;
export const SHUT_RDWR = 2;

/** The loopback address a page server listens on unless told otherwise. */
export const DEFAULT_ADDRESS = '127.0.0.1';

function familyOf(address: string): number {
  return address.includes(':') ? AF_INET6 : AF_INET;
}

function setInt(fd: number, level: number, name: number, value: number): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value, 0);
  sys.setsockopt(fd, level, name, b);
}

function setTimeout(fd: number, name: number, timeoutMs: number): void {
  const tv = Buffer.alloc(16);
  tv.writeBigInt64LE(BigInt(Math.floor(timeoutMs / 1000)), 0);
  tv.writeBigInt64LE(BigInt((timeoutMs % 1000) * 1000), 8);
  sys.setsockopt(fd, SOL_SOCKET, name, tv);
}

/** A listening socket. */
export class Listener {
  private isClosed = false;

  private constructor(
    readonly fd: number,
    readonly address: string,
    readonly port: number,
  ) {}

  /** socket + SO_REUSEADDR + bind + listen(1). Port 0 picks a free one (see `.port`). */
  static open(address: string, port: number): Listener {
    const fd = sys.socket(familyOf(address), SOCK_STREAM | SOCK_CLOEXEC, 0);
    try {
      setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
      sys.bind(fd, address, port);
      sys.listen(fd, 1);
      const name = sys.getsockname(fd);
      return new Listener(fd, name.address, name.port);
    } catch (err) {
      sys.close(fd);
      throw err;
    }
  }

  /** Wait for one client. Rejects (EINVAL) when close() is called meanwhile. */
  async accept(): Promise<Connection> {
    const fd = await sys.accept4Async(this.fd, SOCK_CLOEXEC);
    const peer = sys.getpeername(fd);
    return new Connection(fd, peer.family === 6 ? `[${peer.address}]:${peer.port}` : `${peer.address}:${peer.port}`);
  }

  /** Stop listening; a pending accept() wakes up with an error. Idempotent. */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    try {
      sys.shutdown(this.fd, SHUT_RDWR); // wakes a blocked accept4 on another thread
    } catch {
      // not connected: nothing to wake
    }
    sys.close(this.fd);
  }
}

const errnoOf = (err: unknown): string => (err instanceof SyscallError ? err.errnoCode : String(err));

/**
 * A connected page-server stream, plain TCP (Connection) or inside TLS (tls.ts TlsConnection).
 * Calls must not overlap: one reader and one writer at a time, each call awaited.
 */
export interface Transport {
  /** "address:port" of the other end, for messages. */
  readonly peer: string;
  /** The socket fd when page data may be spliced from it (plain TCP); null inside TLS. */
  readonly spliceFd: number | null;
  /** Bytes read and written through this connection (headers and data). */
  bytesIn: number;
  bytesOut: number;
  /** Fail a read or write that waits for the peer longer than timeoutMs. */
  setTimeouts(timeoutMs: number): void;
  /** Read exactly `len` bytes into buf at offset; fewer only when the peer closed first. */
  readFully(buf: Buffer, offset: number, len: number, command?: string): Promise<number>;
  /** Read what has arrived, at most `len` bytes, waiting for the first; 0 = the peer closed. */
  readSome(buf: Buffer, offset: number, len: number, command?: string): Promise<number>;
  /** Read exactly `len` bytes or fail with a ProtocolError that names what was being read. */
  readExact(len: number, what: string, command?: string): Promise<Buffer>;
  /**
   * Write every byte of `bufs`. Inside TLS each buffer goes out in records of its own (CRIU's
   * receiver takes a record's bytes either as a header or as page data, never both).
   */
  writeAll(bufs: Buffer[], command?: string): Promise<void>;
  /** shutdown(how) (SHUT_* of this module), ignoring a peer that is gone already. */
  shutdown(how: number): void;
  /** Close at once (a failure or an abort). Idempotent. */
  close(): void;
  /**
   * Close after a completed session: inside TLS, close_notify, then wait (a few seconds at most)
   * for the peer to close its side; plain, as close(). Resolves once the fd is closed.
   */
  end(): Promise<void>;
  /** A failure of this connection as a ProtocolError naming the peer (the original is its cause). */
  ioError(err: unknown, action: string, command?: string): Error;
}

/** The error of a read that got `got` of the `len` bytes of `what` before the peer closed. */
export function closedEarly(
  peer: string,
  got: number,
  len: number,
  what: string,
  command?: string,
  hint = '',
): ProtocolError {
  return new ProtocolError(
    peer,
    (got === 0
      ? `the connection closed instead of ${what}`
      : `the connection closed after ${got} of the ${len} bytes of ${what}`) + hint,
    command,
  );
}

/** One connected stream socket: a blocking fd driven from the thread pool. */
export class Connection implements Transport {
  private isClosed = false;
  bytesIn = 0;
  bytesOut = 0;

  constructor(
    readonly fd: number,
    /** "address:port" of the other end, for messages. */
    readonly peer: string,
  ) {}

  /**
   * Connect to address:port (blocking connect on the thread pool). With timeoutMs, a peer that
   * does not answer fails the connect after that long (SO_SNDTIMEO bounds a blocking connect,
   * which then fails with EINPROGRESS) instead of after the kernel's SYN retries (about 2 minutes).
   */
  static async connect(address: string, port: number, timeoutMs?: number): Promise<Connection> {
    const fd = sys.socket(familyOf(address), SOCK_STREAM | SOCK_CLOEXEC, 0);
    const peer = address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
    try {
      if (timeoutMs !== undefined && timeoutMs > 0) setTimeout(fd, SO_SNDTIMEO, timeoutMs);
      await sys.connectAsync(fd, address, port);
      setInt(fd, SOL_TCP, TCP_NODELAY, 1); // replies must not wait for Nagle (CRIU does the same)
    } catch (err) {
      sys.close(fd);
      if (err instanceof SyscallError && err.errnoCode === 'EINPROGRESS')
        throw new ProtocolError(peer, `cannot connect: no answer within ${timeoutMs} ms`, undefined, { cause: err });
      throw err;
    }
    return new Connection(fd, peer);
  }

  /**
   * A stream socket connected already by someone else (RPC's ps.fd: a tool that carries the
   * page-server stream through its own channel), taken over: close() closes it.
   * Anything else (not a socket, not a stream, not connected) is refused with one line.
   */
  static adopt(fd: number): Connection {
    let type: number;
    try {
      type = sys.getsockopt(fd, SOL_SOCKET, SO_TYPE, 4).readInt32LE(0);
    } catch (err) {
      throw new UsageError(`fd ${fd} is not a socket (${errnoOf(err)})`);
    }
    if (type !== SOCK_STREAM) throw new UsageError(`fd ${fd} is not a stream socket`);
    let peer: string;
    try {
      const p = sys.getpeername(fd);
      peer = p.family === 6 ? `[${p.address}]:${p.port}` : p.family === 4 ? `${p.address}:${p.port}` : `fd ${fd}`;
      if (p.family !== 0) setInt(fd, SOL_TCP, TCP_NODELAY, 1); // as connect() does
    } catch (err) {
      throw new UsageError(`fd ${fd} is not a connected socket (${errnoOf(err)})`);
    }
    return new Connection(fd, peer);
  }

  /**
   * SO_RCVTIMEO and SO_SNDTIMEO: a blocked read or write fails with EAGAIN after timeoutMs; and
   * TCP_USER_TIMEOUT: data the peer leaves unacknowledged for timeoutMs ends the connection
   * (ETIMEDOUT). Without it a write to a peer gone silent could take twice as long: SO_SNDTIMEO
   * ends a write that moved some bytes with a short count, and the next write waits again.
   */
  setTimeouts(timeoutMs: number): void {
    setTimeout(this.fd, SO_RCVTIMEO, timeoutMs);
    setTimeout(this.fd, SO_SNDTIMEO, timeoutMs);
    setInt(this.fd, SOL_TCP, TCP_USER_TIMEOUT, timeoutMs);
  }

  get spliceFd(): number {
    return this.fd;
  }

  /**
   * Read exactly `len` bytes into `buf` at `offset`. Returns the bytes read: `len`, or fewer when
   * the peer closed the connection first (0 when it closed before the first byte).
   */
  async readFully(buf: Buffer, offset: number, len: number, command?: string): Promise<number> {
    let done = 0;
    while (done < len) {
      let got: number;
      try {
        got = await sys.recvAsync(this.fd, buf, offset + done, len - done, MSG_WAITALL);
      } catch (err) {
        throw this.ioError(err, 'cannot read', command);
      }
      if (got === 0) break;
      done += got;
    }
    this.bytesIn += done;
    return done;
  }

  /**
   * Read what has arrived, at most `len` bytes, into `buf` at `offset`, waiting only for the
   * first byte. Returns the bytes read; 0 = the peer closed the connection.
   */
  async readSome(buf: Buffer, offset: number, len: number, command?: string): Promise<number> {
    let got: number;
    try {
      got = await sys.recvAsync(this.fd, buf, offset, len, 0);
    } catch (err) {
      throw this.ioError(err, 'cannot read', command);
    }
    this.bytesIn += got;
    return got;
  }

  async readExact(len: number, what: string, command?: string): Promise<Buffer> {
    const buf = Buffer.alloc(len);
    const got = await this.readFully(buf, 0, len, command);
    if (got < len) throw closedEarly(this.peer, got, len, what, command);
    return buf;
  }

  /** Write every byte of `bufs` (one writev per call, repeated on short writes). */
  async writeAll(bufs: Buffer[], command?: string): Promise<void> {
    try {
      this.bytesOut += await sys.writevAllAsync(this.fd, bufs);
    } catch (err) {
      throw this.ioError(err, 'cannot send', command);
    }
  }

  /** shutdown(how), ignoring a peer that is already gone. */
  shutdown(how: number): void {
    try {
      sys.shutdown(this.fd, how);
    } catch {
      // ENOTCONN: the peer is gone already
    }
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    sys.close(this.fd);
  }

  end(): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  /** Hand the fd over to a new owner (TLS): this object no longer closes or uses it. */
  release(): number {
    this.isClosed = true;
    return this.fd;
  }

  /** A socket error as a ProtocolError naming the peer (the SyscallError is its cause). */
  ioError(err: unknown, action: string, command?: string): Error {
    if (!(err instanceof SyscallError)) return err as Error;
    const why =
      err.errnoCode === 'EAGAIN'
        ? action === 'cannot send'
          ? 'the peer took nothing within the timeout'
          : 'the peer sent nothing within the timeout'
        : err.errnoCode === 'ECONNRESET' || err.errnoCode === 'EPIPE'
          ? 'the connection was reset'
          : err.errnoCode === 'ETIMEDOUT'
            ? 'the peer acknowledged nothing within the timeout'
            : err.message;
    return new ProtocolError(this.peer, `${action}: ${why}`, command, { cause: err });
  }
}
