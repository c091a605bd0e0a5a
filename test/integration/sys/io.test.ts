/**
 * Raw file I/O, pipes (splice, tee, vmsplice), socket options, and fds passed over a unix socket
 * (sendFd, recvFds) through the addon, on real files and pipes in a test directory.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import {
  bind,
  close,
  fallocate,
  fcntl,
  fsync,
  getsockname,
  getsockopt,
  open,
  pipe2,
  pread,
  preadAsync,
  pwrite,
  pwriteAsync,
  read,
  recvFds,
  sendFd,
  sendto,
  setsockopt,
  socket,
  socketpair,
  shutdown,
  splice,
  spliceAllAsync,
  spliceAsync,
  tee,
  vmsplice,
  write,
  writevAllAsync,
} from '../../../src/sys/native.js';
import {
  AF_INET,
  AF_UNIX,
  F_GETFD,
  F_GETPIPE_SZ,
  F_SETPIPE_SZ,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FD_CLOEXEC,
  O_CLOEXEC,
  O_CREAT,
  O_NONBLOCK,
  O_RDONLY,
  O_RDWR,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_STREAM,
  SOL_TCP,
  SPLICE_F_NONBLOCK,
  TCP_REPAIR,
} from '../../../src/kernel/constants.js';
import { SyscallError } from '../../../src/errors.js';

const MSG_DONTWAIT = 0x40;

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

t.test('open, pwrite, pread, read, write, fsync, close', async (t) => {
  const path = join(t.testdir(), 'f');
  const fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
  t.teardown(() => close(fd));
  t.equal(fcntl(fd, F_GETFD, 0) & FD_CLOEXEC, FD_CLOEXEC);
  t.equal(statSync(path).mode & 0o777, 0o600);

  t.equal(pwrite(fd, Buffer.from('..hello..'), 2, 5, 10n), 5);
  t.equal(await pwriteAsync(fd, Buffer.from('world'), 0, 5, 4096n), 5);
  fsync(fd);
  const file = readFileSync(path);
  t.equal(file.length, 4101);
  t.equal(file.subarray(10, 15).toString(), 'hello');
  t.equal(file.subarray(4096).toString(), 'world');

  const buf = Buffer.alloc(16, 0x2e);
  t.equal(pread(fd, buf, 1, 5, 10n), 5);
  t.equal(buf.subarray(0, 7).toString(), '.hello.');
  t.equal(await preadAsync(fd, buf, 0, 16, 4096n), 5, 'short read at the end of the file');
  t.equal(buf.subarray(0, 5).toString(), 'world');

  t.equal(write(fd, Buffer.from('abc'), 0, 3), 3, 'write at the file position (0)');
  const head = Buffer.alloc(3);
  t.equal(pread(fd, head, 0, 3, 0n), 3);
  t.equal(head.toString(), 'abc');
  t.equal(read(fd, head, 0, 3), 3, 'read continues at the file position');
  t.same([...head], [0, 0, 0]);

  t.throws(() => pread(fd, buf, 10, 10, 0n), RangeError, 'buffer bounds checked');
  t.throws(() => pread(fd, buf, 0, 1, -1n), RangeError);
  await t.rejects(preadAsync(999, buf, 0, 1, 0n), {
    code: 'ESYSCALL',
    errnoCode: 'EBADF',
    syscall: 'pread',
    args: [999, 1, 0n],
  });
});

t.test('open errors name the path', async (t) => {
  const missing = join(t.testdir(), 'missing');
  const e = caught(() => open(missing, O_RDONLY, 0));
  t.ok(e instanceof SyscallError);
  t.match(e, { errno: 2, errnoCode: 'ENOENT', syscall: 'open', args: [missing, O_RDONLY] });
  t.equal((e as Error).message, `open(${missing}, 0): ENOENT`);
  t.match(
    caught(() => close(-1)),
    { errnoCode: 'EBADF', syscall: 'close' },
  );
});

t.test('fallocate punches a hole', async (t) => {
  const path = join(t.testdir(), 'holes');
  writeFileSync(path, Buffer.alloc(3 * 4096, 0x41));
  const fd = open(path, O_RDWR, 0);
  t.teardown(() => close(fd));
  try {
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096n, 4096n);
  } catch (e) {
    if (e instanceof SyscallError && e.errnoCode === 'EOPNOTSUPP') {
      t.pass('FALLOC_FL_PUNCH_HOLE', { skip: 'not supported by this file system' });
      return;
    }
    throw e;
  }
  const data = readFileSync(path);
  t.equal(data.length, 3 * 4096, 'size kept');
  t.ok(
    data.subarray(4096, 8192).every((b) => b === 0),
    'hole reads as zeros',
  );
  t.ok(
    data.subarray(0, 4096).every((b) => b === 0x41),
    'data around the hole kept',
  );
});

t.test('vmsplice, tee and splice move bytes through pipes', async (t) => {
  const [r1, w1] = pipe2(O_CLOEXEC);
  const [r2, w2] = pipe2(O_CLOEXEC | O_NONBLOCK);
  t.teardown(() => [r1, w1, r2, w2].forEach((fd) => close(fd)));
  t.ok(fcntl(r1, F_GETPIPE_SZ, 0) >= 4096);
  t.equal(fcntl(w1, F_SETPIPE_SZ, 65536), 65536);

  const page = Buffer.alloc(4096, 0x61);
  const tail = Buffer.from('the end');
  t.equal(vmsplice(w1, [page, tail], 0), 4096 + tail.length);
  t.equal(tee(r1, w2, 1 << 20, 0), 4096 + tail.length, 'tee copies without consuming');

  const path = join(t.testdir(), 'spliced');
  const fd = open(path, O_RDWR | O_CREAT, 0o600);
  t.teardown(() => close(fd));
  t.equal(splice(r1, null, fd, 100n, 4096, 0), 4096);
  t.equal(await spliceAsync(r1, null, fd, 4196n, 100, 0), tail.length);
  const file = readFileSync(path);
  t.equal(file.length, 4196 + tail.length);
  t.ok(file.subarray(100, 4196).every((b) => b === 0x61));
  t.equal(file.subarray(4196).toString(), 'the end');

  // The tee'd copy is still in the second pipe.
  const out = Buffer.alloc(8192);
  t.equal(read(r2, out, 0, out.length), 4096 + tail.length);
  t.equal(out.subarray(4096, 4096 + tail.length).toString(), 'the end');
  t.match(
    caught(() => read(r2, out, 0, 1)),
    { errnoCode: 'EAGAIN', syscall: 'read' },
  );

  // From a file back into a pipe at an offset.
  t.equal(splice(fd, 4196n, w2, null, 3, 0), 3);
  t.equal(read(r2, out, 0, 10), 3);
  t.equal(out.subarray(0, 3).toString(), 'the');
  t.match(
    caught(() => splice(r1, null, fd, null, 1, SPLICE_F_NONBLOCK)),
    { errnoCode: 'EAGAIN', syscall: 'splice', args: [r1, fd, 1] },
    'empty pipe, SPLICE_F_NONBLOCK',
  );
});

t.test('spliceAllAsync: a stream lands whole in a file at an offset', async (t) => {
  const SHUT_WR = 1;
  /** `len` bytes through spliceAllAsync into a new file at `at`, the sender writing `pieces`. */
  async function run(opts: { pipeBytes: number; chunk: number; at: number; pieces: Buffer[]; len: number }) {
    const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    const [pr, pw] = pipe2(O_CLOEXEC);
    const path = join(t.testdir(), `spliced-all-${opts.pipeBytes}-${opts.chunk}`);
    const fd = open(path, O_RDWR | O_CREAT, 0o600);
    try {
      t.equal(fcntl(pw, F_SETPIPE_SZ, opts.pipeBytes), opts.pipeBytes);
      const moving = spliceAllAsync(b, pr, pw, fd, BigInt(opts.at), opts.len, opts.chunk);
      for (const piece of opts.pieces) {
        await writevAllAsync(a, [piece]);
        await new Promise((r) => setImmediate(r)); // the receiver sees the stream arrive in pieces
      }
      shutdown(a, SHUT_WR);
      const moved = await moving;
      return { moved, file: readFileSync(path) };
    } finally {
      [a, b, pr, pw, fd].forEach((x) => close(x));
    }
  }
  const pattern = (n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + (i >> 9)) & 0xff));
  const data = pattern(300_000);
  const pieces = (size: number): Buffer[] =>
    Array.from({ length: Math.ceil(data.length / size) }, (_, i) => data.subarray(i * size, (i + 1) * size));

  // Odd-sized pieces, an offset that is no multiple of the chunk: every byte in its place.
  let r = await run({ pipeBytes: 1 << 20, chunk: 64 << 10, at: 5000, pieces: pieces(7001), len: data.length });
  t.equal(r.moved, data.length);
  t.equal(r.file.length, 5000 + data.length);
  t.ok(r.file.subarray(5000).equals(data), 'the data follows the offset byte for byte');
  t.ok(
    r.file.subarray(0, 5000).every((x) => x === 0),
    'nothing written before the offset',
  );

  // A one-page pipe fills long before a 1 MiB chunk: what it holds is written out, and the rest
  // follows (waiting for a chunk that cannot fit would hang here for good).
  r = await run({ pipeBytes: 4096, chunk: 1 << 20, at: 123, pieces: pieces(50_000), len: data.length });
  t.equal(r.moved, data.length);
  t.ok(r.file.subarray(123).equals(data), 'through a one-page pipe too');

  // The sender hangs up early: the result is short, and what came is stored.
  r = await run({ pipeBytes: 1 << 20, chunk: 64 << 10, at: 0, pieces: [data.subarray(0, 10_000)], len: data.length });
  t.equal(r.moved, 10_000, 'short at end of stream');
  t.ok(r.file.equals(data.subarray(0, 10_000)));
});

t.test('socket options: TCP_REPAIR', async (t) => {
  const fd = socket(AF_INET, SOCK_STREAM, 0);
  t.teardown(() => close(fd));
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  try {
    setsockopt(fd, SOL_TCP, TCP_REPAIR, one);
  } catch (e) {
    if (e instanceof SyscallError && e.errnoCode === 'EPERM') {
      t.pass('TCP_REPAIR', { skip: 'needs CAP_NET_ADMIN' });
      return;
    }
    throw e;
  }
  t.equal(getsockopt(fd, SOL_TCP, TCP_REPAIR, 4).readInt32LE(0), 1);
  t.match(
    caught(() => getsockopt(fd, 999, 1, 4)),
    { syscall: 'getsockopt', args: [fd, 999, 1] },
  );
});

t.test('sendto: a datagram to a sockaddr given as bytes', async (t) => {
  const rx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  const tx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  t.teardown(() => {
    close(rx);
    close(tx);
  });
  bind(rx, '127.0.0.1', 0);
  const { port } = getsockname(rx);
  const to = Buffer.alloc(16); // struct sockaddr_in
  to.writeUInt16LE(AF_INET, 0);
  to.writeUInt16BE(port, 2);
  Buffer.from([127, 0, 0, 1]).copy(to, 4);
  t.equal(sendto(tx, Buffer.from('announce'), 0, to), 8);
  const buf = Buffer.alloc(16);
  t.equal(read(rx, buf, 0, 16), 8);
  t.equal(buf.subarray(0, 8).toString(), 'announce');
  t.match(
    caught(() => sendto(tx, Buffer.from('x'), 0, Buffer.alloc(2))),
    { errnoCode: 'EINVAL', syscall: 'sendto' },
    'a sockaddr too short: EINVAL',
  );
});

t.test('sendFd and recvFds: an fd through a unix datagram socket pair', async (t) => {
  const [a, b] = socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC);
  t.teardown(() => {
    close(a);
    close(b);
  });
  const [pr, pw] = pipe2(O_CLOEXEC);
  t.teardown(() => {
    close(pr);
    close(pw);
  });
  t.equal(sendFd(a, Buffer.from('pid1'), pw, 0), 4);
  const got = recvFds(b, 16, 0);
  t.equal(got.data.toString(), 'pid1');
  t.equal(got.fds.length, 1, 'one fd came with the bytes');
  t.equal(got.isTruncated, false);
  const copy = got.fds[0] as number;
  t.not(copy, pw, 'a new fd');
  t.equal(fcntl(copy, F_GETFD, 0) & FD_CLOEXEC, FD_CLOEXEC, 'received close-on-exec');
  write(copy, Buffer.from('via the copy'), 0, 12);
  close(copy);
  const buf = Buffer.alloc(12);
  t.equal(read(pr, buf, 0, 12), 12);
  t.equal(buf.toString(), 'via the copy', 'it is the same pipe');
  // Cut short: a 4-byte message read into 2 bytes says so.
  sendFd(a, Buffer.from('pid2'), pw, 0);
  const short = recvFds(b, 2, 0);
  t.equal(short.isTruncated, true);
  for (const fd of short.fds) close(fd);
  t.match(
    caught(() => recvFds(b, 4, MSG_DONTWAIT)),
    { errnoCode: 'EAGAIN', syscall: 'recvmsg' },
    'nothing queued: EAGAIN',
  );
});
