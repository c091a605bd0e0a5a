/**
 * The sockets of CRIU's RPC: AF_UNIX SOCK_SEQPACKET, one datagram per protobuf message, no length
 * prefix (../shared/FORMATS.md, "RPC"). A blocking fd driven from the thread pool, as the page
 * server's TCP sockets are (src/pageserver/socket.ts says why not node:net; node has no
 * SOCK_SEQPACKET at all).
 *
 * Kernel interfaces: socket, socketpair, bind, listen, accept4, connect, recv (MSG_PEEK |
 * MSG_TRUNC to learn a datagram's size first), writev, getsockopt(SO_PEERCRED).
 */

import { chmodSync, unlinkSync } from 'node:fs';
import { ProtocolError, UsageError } from '../errors.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_SEQPACKET, SOL_SOCKET, MSG_PEEK, MSG_TRUNC } from '../kernel/constants.js';
import * as sys from '../sys/native.js';

/** socket(7) and recv(2) numbers not in src/kernel/constants.ts. */
const SO_PEERCRED = 17;
const SHUT_RDWR = 2;

/** sun_path's room, less its terminating NUL. */
const MAX_PATH_BYTES = 107;

/** The largest request accepted: CRIU's options with every list long still fit in far less. */
export const MAX_MESSAGE_BYTES = 1 << 20;

/** The process at the other end of a unix socket, as the kernel recorded it at connect time. */
export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** One end of an RPC connection. Owns its fd. */
export class RpcSocket {
  private isClosed = false;
  private readonly probe = Buffer.alloc(1);

  constructor(readonly fd: number) {}

  /** Connect to a service listening at `path`. */
  static async connect(path: string): Promise<RpcSocket> {
    if (Buffer.byteLength(path) > MAX_PATH_BYTES)
      throw new UsageError(
        `The service address ${path} is too long for a unix socket (at most ${MAX_PATH_BYTES} bytes)`,
      );
    const fd = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    try {
      await sys.connectUnixAsync(fd, path);
    } catch (err) {
      sys.close(fd);
      throw err;
    }
    return new RpcSocket(fd);
  }

  /** A connected pair (what libcriu and pycriu make before starting `criu swrk`). */
  static pair(): [RpcSocket, RpcSocket] {
    const [a, b] = sys.socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC);
    return [new RpcSocket(a), new RpcSocket(b)];
  }

  /** The next message whole, or null when the peer has closed its end. */
  async receive(): Promise<Buffer | null> {
    const size = await sys.recvAsync(this.fd, this.probe, 0, 0, MSG_PEEK | MSG_TRUNC);
    if (size === 0) {
      // End of stream, or an empty datagram (which no message encodes to): consume it either way.
      await sys.recvAsync(this.fd, this.probe, 0, 1, 0);
      return null;
    }
    if (size > MAX_MESSAGE_BYTES)
      throw new ProtocolError('the RPC peer', `a message of ${size} bytes is over the limit of ${MAX_MESSAGE_BYTES}`);
    const buf = Buffer.alloc(size);
    const got = await sys.recvAsync(this.fd, buf, 0, size, 0);
    if (got !== size) throw new ProtocolError('the RPC peer', `a message of ${size} bytes arrived as ${got}`);
    return buf;
  }

  /** Send one message (one datagram). */
  async send(message: Uint8Array): Promise<void> {
    await sys.writevAllAsync(this.fd, [Buffer.from(message.buffer, message.byteOffset, message.byteLength)]);
  }

  peer(): PeerCred {
    const b = sys.getsockopt(this.fd, SOL_SOCKET, SO_PEERCRED, 12);
    return { pid: b.readInt32LE(0), uid: b.readUInt32LE(4), gid: b.readUInt32LE(8) };
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    sys.close(this.fd);
  }
}

/** A listening RPC socket at a filesystem path, as `criu service` makes it. */
export class RpcListener {
  private isClosed = false;

  private constructor(
    readonly fd: number,
    readonly path: string,
  ) {}

  /**
   * Bind `path` (an old socket file there is removed first, as CRIU does), let anyone connect
   * (mode 0666: who may do what is the kernel's call, through the peer's own privileges over the
   * images and tasks it names), listen.
   */
  static open(path: string): RpcListener {
    if (Buffer.byteLength(path) > MAX_PATH_BYTES)
      throw new UsageError(
        `The service address ${path} is too long for a unix socket (at most ${MAX_PATH_BYTES} bytes)`,
      );
    const fd = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    try {
      try {
        unlinkSync(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      sys.bindUnix(fd, path);
      chmodSync(path, 0o666);
      sys.listen(fd, 16);
    } catch (err) {
      sys.close(fd);
      throw err;
    }
    return new RpcListener(fd, path);
  }

  /** Wrap a listening fd inherited from the process that bound it. */
  static fromFd(fd: number, path: string): RpcListener {
    return new RpcListener(fd, path);
  }

  /** The next connection (a blocking accept on the thread pool). */
  async accept(): Promise<RpcSocket> {
    return new RpcSocket(await sys.accept4Async(this.fd, SOCK_CLOEXEC));
  }

  /** Close this process's fd only: another process (which inherited the socket) serves it now. */
  handOver(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    sys.close(this.fd);
  }

  /**
   * Stop listening and close; an accept blocked on the thread pool returns (EINVAL), so that the
   * process can exit. Stops every process's listening on this socket.
   */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    try {
      sys.shutdown(this.fd, SHUT_RDWR);
    } catch {
      // not listening: nothing blocks on it
    }
    sys.close(this.fd);
  }
}
