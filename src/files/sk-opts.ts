/**
 * Socket options common to every socket kind (sk_opts_entry of proto/sk-opts.proto, as CRIU
 * writes it): read on dump from criu's own duplicate of the socket, set on restore by setsockopt
 * injected into the task. Also the helpers the socket modules share to run calls in the task.
 */

import { fstatSync, statSync } from 'node:fs';
import { ImageError, SyscallError, isErrno } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import {
  IPPROTO_TCP,
  MSG_DONTWAIT,
  MSG_PEEK,
  SO_BINDTODEVICE,
  SO_BROADCAST,
  SO_BUF_LOCK,
  SO_DONTROUTE,
  SO_GET_FILTER,
  SO_KEEPALIVE,
  SO_LINGER,
  SO_MARK,
  SO_NO_CHECK,
  SO_OOBINLINE,
  SO_PASSCRED,
  SO_PASSSEC,
  SO_PRIORITY,
  SO_RCVBUF,
  SO_RCVBUFFORCE,
  SO_RCVLOWAT,
  SO_RCVTIMEO,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SO_SNDBUF,
  SO_SNDBUFFORCE,
  SO_SNDTIMEO,
  SOCK_RCVBUF_LOCK,
  SOCK_SNDBUF_LOCK,
  SOL_SOCKET,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
  TCP_KEEPINTVL,
} from '../kernel/constants.js';
import { errnoName } from '../kernel/errno.js';
import { SYSCALLS_X86_64 } from '../kernel/syscalls.js';
import * as sys from '../sys/native.js';

/**
 * The kind's sub-message of a socket's file entry (`isk`, `usk`), or an ImageError naming the
 * file: a files.img entry without it is corrupt.
 */
export function socketEntryOf(entry: ImageEntry, field: 'isk' | 'usk'): ImageEntry {
  const sub = entry[field];
  if (typeof sub !== 'object' || sub === null || Array.isArray(sub) || sub instanceof Uint8Array)
    throw new ImageError(
      'files.img',
      `file ${String(entry['id'])} of type ${field === 'isk' ? 'INETSK' : 'UNIXSK'} has no ${field}`,
    );
  return sub as ImageEntry;
}

/** An int socket option of criu's duplicate `fd`. */
export function intOpt(fd: number, level: number, name: number): number {
  return sys.getsockopt(fd, level, name, 4).readInt32LE(0);
}

/**
 * The filter attached to criu's duplicate `fd`, in words for a refusal, or undefined for none: a
 * classic one (SO_ATTACH_FILTER: SO_GET_FILTER reports its instructions) or an eBPF one
 * (SO_ATTACH_BPF: SO_GET_FILTER answers EACCES, having no classic program to give back).
 */
export function socketFilterOf(fd: number): string | undefined {
  try {
    // SO_GET_FILTER counts in instructions, not bytes: the length it reports is their number.
    const n = sys.getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, 8 * 4096).length;
    return n > 0 ? 'a socket filter (SO_ATTACH_FILTER)' : undefined;
  } catch (err) {
    if (isErrno(err, 'EACCES')) return 'an eBPF socket filter (SO_ATTACH_BPF)';
    throw err;
  }
}

/**
 * Whether criu's duplicate `fd` is a socket of another network namespace than criu's (one passed
 * over a unix socket from there, say): the diags see only criu's, and a restore would make it in
 * criu's. SIOCGSKNS names the socket's namespace.
 */
export function isOtherNetns(fd: number): boolean {
  const ns = sys.socketNetns(fd);
  try {
    return fstatSync(ns).ino !== statSync('/proc/thread-self/ns/net').ino;
  } finally {
    sys.close(ns);
  }
}

/** Set an int socket option of criu's duplicate `fd` (the socket the task holds). */
export function setIntOpt(fd: number, level: number, name: number, v: number): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  sys.setsockopt(fd, level, name, b);
}

/**
 * recvmsg(MSG_PEEK | MSG_DONTWAIT) of at most `size` bytes on criu's duplicate `fd`: what waits
 * in the socket, left where it is; null when nothing does. Fds that came with it (SCM_RIGHTS) are
 * closed here: the caller learns their number.
 */
export function peekSocket(fd: number, size: number): { data: Buffer; nrFds: number; isTruncated: boolean } | null {
  let got: ReturnType<typeof sys.recvFds>;
  try {
    got = sys.recvFds(fd, size, MSG_PEEK | MSG_DONTWAIT);
  } catch (err) {
    if (err instanceof SyscallError && err.errnoCode === 'EAGAIN') return null;
    throw err;
  }
  for (const received of got.fds) sys.close(received);
  return { data: got.data, nrFds: got.fds.length, isTruncated: got.isTruncated };
}

/** An int socket option, or undefined where this kernel has it not for this family. */
function optionalInt(fd: number, level: number, name: number): number | undefined {
  try {
    return intOpt(fd, level, name);
  } catch (err) {
    if (err instanceof SyscallError && (err.errnoCode === 'EOPNOTSUPP' || err.errnoCode === 'ENOPROTOOPT'))
      return undefined;
    throw err;
  }
}

/** The sk_opts_entry of the socket behind `fd` (CRIU's field names). */
export function readSkOpts(fd: number, isTcp: boolean): ImageEntry {
  const int = (name: number): number => intOpt(fd, SOL_SOCKET, name);
  const timeval = (name: number): [bigint, bigint] => {
    const b = sys.getsockopt(fd, SOL_SOCKET, name, 16);
    return [b.readBigInt64LE(0), b.readBigInt64LE(8)];
  };
  const [sndSec, sndUsec] = timeval(SO_SNDTIMEO);
  const [rcvSec, rcvUsec] = timeval(SO_RCVTIMEO);
  const linger = sys.getsockopt(fd, SOL_SOCKET, SO_LINGER, 8);
  const dev = sys.getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, 16).toString('latin1').replace(/\0.*$/s, '');
  const opts: ImageEntry = {
    so_sndbuf: int(SO_SNDBUF),
    so_rcvbuf: int(SO_RCVBUF),
    so_snd_tmo_sec: sndSec,
    so_snd_tmo_usec: sndUsec,
    so_rcv_tmo_sec: rcvSec,
    so_rcv_tmo_usec: rcvUsec,
    reuseaddr: int(SO_REUSEADDR) !== 0,
    so_priority: int(SO_PRIORITY),
    so_rcvlowat: int(SO_RCVLOWAT),
    so_mark: int(SO_MARK),
    so_dontroute: int(SO_DONTROUTE) !== 0,
    so_no_check: int(SO_NO_CHECK) !== 0,
    so_reuseport: int(SO_REUSEPORT) !== 0,
    so_broadcast: int(SO_BROADCAST) !== 0,
    so_keepalive: int(SO_KEEPALIVE) !== 0,
    so_oobinline: int(SO_OOBINLINE),
    so_buf_lock: int(SO_BUF_LOCK),
  };
  if (dev !== '') opts['so_bound_dev'] = dev;
  // Since 6.x these two belong to unix and netlink sockets only: an inet socket answers EOPNOTSUPP.
  for (const [k, name] of [
    ['so_passcred', SO_PASSCRED],
    ['so_passsec', SO_PASSSEC],
  ] as const) {
    const v = optionalInt(fd, SOL_SOCKET, name);
    if (v !== undefined) opts[k] = v !== 0;
  }
  if (linger.readInt32LE(0) !== 0) opts['so_linger'] = linger.readInt32LE(4);
  if (isTcp) {
    opts['tcp_keepcnt'] = intOpt(fd, IPPROTO_TCP, TCP_KEEPCNT);
    opts['tcp_keepidle'] = intOpt(fd, IPPROTO_TCP, TCP_KEEPIDLE);
    opts['tcp_keepintvl'] = intOpt(fd, IPPROTO_TCP, TCP_KEEPINTVL);
  }
  return opts;
}

function int32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

/** Run a call inside the task; a failure names the socket (its address) it was for. */
export function callInTask(
  injector: Injector,
  where: string,
  name: 'bind' | 'listen' | 'connect' | 'shutdown',
  args: bigint[],
): void {
  const ret = injector.syscall(SYSCALLS_X86_64[name], args);
  if (ret < 0n && ret >= -4095n) {
    const errno = Number(-ret);
    throw new SyscallError(name, errno, errnoName(errno), [`task ${injector.pid}`, where]);
  }
}

/**
 * setsockopt(fd, level, name, value) on the socket fd `fd` of the task holds (an int value as a
 * 4-byte int). Set from criu on a duplicate of the fd (pidfd_getfd): an option belongs to the
 * socket, not to who sets it, and no call is injected (a restored server's connections set some
 * twenty options each: an injected call costs ~70 us, this ~10).
 */
export function setSockOptInTask(
  injector: Injector,
  fd: number,
  level: number,
  name: number,
  value: Buffer | number,
): void {
  const pidfd = sys.pidfdOpen(injector.pid, 0);
  let local = -1;
  try {
    local = sys.pidfdGetfd(pidfd, fd, 0);
    sys.setsockopt(local, level, name, typeof value === 'number' ? int32(value) : value);
  } catch (err) {
    // Named as the task's fd, not criu's duplicate.
    if (!(err instanceof SyscallError)) throw err;
    throw new SyscallError(err.syscall, err.errno, err.errnoCode, [`task ${injector.pid}`, fd, level, name], {
      cause: err,
    });
  } finally {
    if (local >= 0) sys.close(local);
    sys.close(pidfd);
  }
}

/**
 * The options of sk_opts_entry, once the socket is bound, listening or connected. SO_REUSEADDR
 * last: a restore turns it on to bind (see inet-socket.ts).
 */
export function restoreSkOpts(injector: Injector, fd: number, opts: ImageEntry, isTcp: boolean): void {
  const set = (level: number, name: number, value: Buffer): void => setSockOptInTask(injector, fd, level, name, value);
  const setInt = (level: number, name: number, v: number): void => setSockOptInTask(injector, fd, level, name, v);
  const num = (k: string): number | undefined => (opts[k] === undefined ? undefined : Number(opts[k]));
  // A new socket has each of these off: only what was on is set.
  const flag = (k: string, name: number): void => {
    if (opts[k] === true) setInt(SOL_SOCKET, name, 1);
  };
  // Sizes only where the program set them: setting one turns its autotuning off. The kernel
  // doubles what it is given, and the image holds the doubled value.
  const locks = num('so_buf_lock') ?? 0;
  if ((locks & SOCK_SNDBUF_LOCK) !== 0) setInt(SOL_SOCKET, SO_SNDBUFFORCE, Math.floor((num('so_sndbuf') ?? 0) / 2));
  if ((locks & SOCK_RCVBUF_LOCK) !== 0) setInt(SOL_SOCKET, SO_RCVBUFFORCE, Math.floor((num('so_rcvbuf') ?? 0) / 2));
  if (opts['so_buf_lock'] !== undefined) setInt(SOL_SOCKET, SO_BUF_LOCK, locks);
  const timeval = (sec: string, usec: string, name: number): void => {
    const s = BigInt((opts[sec] as bigint | number | undefined) ?? 0);
    const us = BigInt((opts[usec] as bigint | number | undefined) ?? 0);
    if (s === 0n && us === 0n) return;
    const b = Buffer.alloc(16);
    b.writeBigInt64LE(s, 0);
    b.writeBigInt64LE(us, 8);
    set(SOL_SOCKET, name, b);
  };
  timeval('so_snd_tmo_sec', 'so_snd_tmo_usec', SO_SNDTIMEO);
  timeval('so_rcv_tmo_sec', 'so_rcv_tmo_usec', SO_RCVTIMEO);
  for (const [k, name] of [
    ['so_priority', SO_PRIORITY],
    ['so_rcvlowat', SO_RCVLOWAT],
    ['so_mark', SO_MARK],
  ] as const) {
    const v = num(k);
    if (v !== undefined && v !== 0 && !(k === 'so_rcvlowat' && v === 1)) setInt(SOL_SOCKET, name, v);
  }
  flag('so_passcred', SO_PASSCRED);
  flag('so_passsec', SO_PASSSEC);
  flag('so_dontroute', SO_DONTROUTE);
  flag('so_no_check', SO_NO_CHECK);
  flag('so_broadcast', SO_BROADCAST);
  flag('so_keepalive', SO_KEEPALIVE);
  if ((num('so_oobinline') ?? 0) !== 0) setInt(SOL_SOCKET, SO_OOBINLINE, 1);
  const linger = num('so_linger');
  if (linger !== undefined) {
    const b = Buffer.alloc(8);
    b.writeInt32LE(1, 0);
    b.writeInt32LE(linger, 4);
    set(SOL_SOCKET, SO_LINGER, b);
  }
  if (isTcp)
    for (const [k, name] of [
      ['tcp_keepcnt', TCP_KEEPCNT],
      ['tcp_keepidle', TCP_KEEPIDLE],
      ['tcp_keepintvl', TCP_KEEPINTVL],
    ] as const) {
      const v = num(k);
      if (v !== undefined && v > 0) setInt(IPPROTO_TCP, name, v);
    }
  // On while binding (see restore): now as dumped.
  setInt(SOL_SOCKET, SO_REUSEADDR, opts['reuseaddr'] === true ? 1 : 0);
}
