/**
 * Large native Buffers kept for reuse, already faulted in: the page copies of dumps and restores,
 * page-server sessions (the server's receive buffer, the client's two read buffers).
 *
 * Why: a fresh 4 MiB Buffer costs one page fault per 4 KiB page the first time it is written
 * (recv, a read of the task's memory), ~1000 of them, and page faults are slow in virtual machines (~15 µs
 * each measured on the 2-core development VM: 15 ms per buffer). A scattered transfer of a few
 * thousand pages touched three such buffers while the task was frozen: more time than the
 * transfer itself. The pool pays it once per process, when a server starts listening or a client
 * connects, and a process that runs many sessions (the migration agent: pre-dumps, then the final
 * dump) never pays it again.
 *
 * Contract: take() hands out a Buffer nobody else holds; give() it back only once no native call
 * uses it any more (every Promise over it has settled). Not shared across worker threads.
 */

import * as sys from '../sys/native.js';

export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(
    /** Size of every Buffer of the pool. */
    readonly sizeBytes: number,
    /** Buffers kept at most; more given back are dropped (left to the garbage collector). */
    readonly maxKept: number,
  ) {}

  /** A Buffer of sizeBytes, from the pool or new (and faulted in). Its contents are garbage. */
  take(): Buffer {
    return this.free.pop() ?? faultedIn(this.sizeBytes);
  }

  /** A Buffer of the pool if one is free (already faulted in), else null. */
  takeFree(): Buffer | null {
    return this.free.pop() ?? null;
  }

  /** Return a Buffer take() gave. */
  give(buf: Buffer): void {
    if (buf.length !== this.sizeBytes) throw new Error('BufferPool: not a Buffer of this pool');
    if (this.free.length < this.maxKept && !this.free.includes(buf)) this.free.push(buf);
  }

  /** Have `n` Buffers ready in the pool (allocated and faulted in now rather than when used). */
  reserve(n: number): void {
    while (this.free.length < Math.min(n, this.maxKept)) this.free.push(faultedIn(this.sizeBytes));
  }

  /**
   * reserve(), with the faulting done on the thread pool (a read of /dev/zero into each Buffer)
   * while this thread goes on: a dump starts it first and awaits it just before the freeze.
   */
  async reserveAsync(n: number): Promise<void> {
    const want = Math.min(n, this.maxKept) - this.free.length;
    if (want <= 0) return;
    const fd = sys.open('/dev/zero', O_RDONLY_CLOEXEC, 0);
    try {
      const bufs = Array.from({ length: want }, () => Buffer.allocUnsafeSlow(this.sizeBytes));
      await Promise.all(bufs.map((b) => sys.preadAsync(fd, b, 0, b.length, 0n)));
      for (const b of bufs) if (this.free.length < this.maxKept) this.free.push(b);
    } finally {
      sys.close(fd);
    }
  }
}

const O_RDONLY_CLOEXEC = 0o2000000;

/** A native (off-heap) Buffer with every page touched once. */
function faultedIn(sizeBytes: number): Buffer {
  return Buffer.allocUnsafeSlow(sizeBytes).fill(0);
}

/**
 * Bytes of one page-copy buffer (dump-pages.ts, fill-pages.ts). 8 MiB: each chunk costs a few
 * hand-offs between the thread pool and the main thread; with 2 MiB chunks a dump's copy of 1 GiB
 * took ~100 ms longer (350 instead of 250 ms) and a restore's fill ~70 ms longer, more than the
 * ~30 ms that faulting in the smaller buffers saves.
 */
export const COPY_BUFFER_BYTES = 8 << 20;

/**
 * The page-copy buffers of this process: a dump reserves two before it freezes the task, so that
 * their first touch is not frozen time, and a long-lived process (the migration agent) reuses them
 * for every dump and restore.
 */
export const copyBuffers = new BufferPool(COPY_BUFFER_BYTES, 2);
