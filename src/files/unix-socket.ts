/**
 * Unix sockets (fd kind UNIXSK): file_entry { type: UNIXSK, id, usk: unix_sk_entry { id, ino,
 * type, state, flags, uflags, backlog, peer, fown, opts, name, shutdown, file_perms, deleted } },
 * and the bytes waiting in a stream socket in sk-queues.img (sk_packet_entry { id_for, length }
 * then the data), as CRIU writes them.
 *
 * What can be dumped:
 * - a socket pair both of whose ends the task holds (socketpair(2); asyncio's self-pipe, say),
 *   or another process of the dumped tree (FileOptions.treePids), or whose other end is closed; stream, datagram or seqpacket; with what waits in it (peeked
 *   from criu's duplicate, MSG_PEEK: nothing is consumed): the bytes of a stream socket, the
 *   messages of the others, one sk-queues.img entry each, bounds kept; and its shutdown state;
 * - a socket bound to a name (an absolute path, or abstract), listening (with its backlog) or not;
 * - a connection made through a listener (connect to its name, accept), both ends in the task:
 *   made again that way, so that each end sees the names it saw (connectionInTask);
 * - a new socket, neither bound nor connected;
 * - with --ext-unix-sk, as CRIU: a datagram socket connected to a named one outside the task. The
 *   peer gets a file entry of its own (uflags USK_EXTERN, its name; no fd refers to it), and
 *   restore connects to that name again.
 * Refused, in one line, the task left as it was: other sockets connected outside the task (stream
 * ones even with --ext-unix-sk, as in CRIU), a connection whose ends both have names, a datagram
 * socket connected to a named one in the task, an accepted connection whose other end was closed
 * (not yet), a listener with connections waiting to be accepted, bytes or messages
 * waiting from a sender outside the task, empty messages, file descriptors in flight (SCM_RIGHTS),
 * a name relative to a directory.
 *
 * The peer, the name, the state and the queue lengths come from sock_diag (unix-diag.ts); the
 * options from criu's duplicate (sk-opts.ts).
 *
 * Restore, injected into the task: a pair is made with socketpair(2) when its first end is
 * restored, the other end kept for the second (in a tree, another process takes it from there,
 * by pidfd_getfd); each end's waiting bytes are written into it by
 * the other end, then the shutdown bits are applied. A closed peer: its end is closed once the
 * bytes are in. A bound name: a socket file left at the path is unlinked first (only a socket),
 * then bind, the file's mode and owner as dumped, listen(backlog); a name whose file was deleted
 * or replaced since is bound and unlinked again (`deleted`).
 */

import { chmodSync, chownSync, lstatSync, statSync, unlinkSync } from 'node:fs';
import { UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import {
  AF_UNIX,
  SO_BUF_LOCK,
  SO_DOMAIN,
  SO_RCVBUF,
  SO_SNDBUF,
  SO_SNDBUFFORCE,
  SO_TYPE,
  SOCK_DGRAM,
  SOCK_SEQPACKET,
  SOCK_STREAM,
  SOL_SOCKET,
  TCP_ESTABLISHED,
  TCP_LISTEN,
  MSG_DONTWAIT,
  SO_PEEK_OFF,
} from '../kernel/constants.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import {
  callInTask,
  intOpt,
  peekSocket,
  socketEntryOf,
  readSkOpts,
  restoreSkOpts,
  setIntOpt,
  setSockOptInTask,
} from './sk-opts.js';
import { fdLink, listFds } from './collect.js';
import { closeInTask, feedInTask } from './task-io.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import { FD_TYPES, type FdDumpInput, type FdKindModule, type FileOptions, type FileRestoreContext } from './types.js';
import { unixDiag, type UnixDiag } from './unix-diag.js';

/** unix_sk_entry.uflags: a socket outside the task, dumped only for its name (CRIU's USK_EXTERN). */
const USK_EXTERN = 1;
/** The largest message dumped from a datagram or seqpacket queue (a unix datagram fits in its sender's buffer). */
const MAX_MESSAGE_BYTES = 4 << 20;
const SOCKET_KINDS: Record<number, string> = {
  [SOCK_STREAM]: 'stream',
  [SOCK_DGRAM]: 'datagram',
  [SOCK_SEQPACKET]: 'seqpacket',
};

/** The inodes of the unix sockets fd table of task `pid` holds ("socket:[INO]" links). */
function socketInodesOf(pid: number, ctxShared?: Map<string, unknown>): Set<number> {
  const key = `unix-socket-inodes:${pid}`;
  const known = ctxShared?.get(key) as Set<number> | undefined;
  if (known !== undefined) return known;
  const inodes = new Set<number>();
  for (const fd of listFds(pid)) {
    const m = /^socket:\[(\d+)\]$/.exec(fdLink(pid, fd) ?? '');
    if (m !== null) inodes.add(Number(m[1]));
  }
  ctxShared?.set(key, inodes);
  return inodes;
}

/** The file-system path of a bound name (bind's length may have counted the path's final NUL). */
function pathOf(name: Uint8Array): string {
  let end = name.length;
  while (end > 0 && name[end - 1] === 0) end--;
  return Buffer.from(name.subarray(0, end)).toString('latin1');
}

/** "the unix stream socket @name" / "... /run/x.sock" / "... (unnamed)", for messages. */
function described(type: number, name: Buffer): string {
  const kind = SOCKET_KINDS[type] ?? `type ${type}`;
  if (name.length === 0) return `the unix ${kind} socket`;
  const text = name[0] === 0 ? `@${name.subarray(1).toString('latin1')}` : pathOf(name);
  return `the unix ${kind} socket ${text}`;
}

/**
 * The other end of a connected socket: what the kernel reports of it (null: closed), and whether
 * the dump holds it (the task, or another process of the dumped tree).
 */
interface Peer {
  diag: UnixDiag | null;
  isHere: boolean;
}

/**
 * The peer of socket `d` of task `pid` (one of `options.treePids`, if given), asked once for the
 * refusal and the dump; null: none.
 */
function peerOf(pid: number, d: UnixDiag, options: FileOptions, shared?: Map<string, unknown>): Peer | null {
  if (d.peer === 0) return null;
  const pids = options.treePids ?? [pid];
  return { diag: unixDiag(d.peer), isHere: pids.some((p) => socketInodesOf(p, shared).has(d.peer)) };
}

/**
 * The peer of a datagram socket that --ext-unix-sk lets through: alive, outside the task, a
 * datagram socket with a name to connect to again. Null for any other socket.
 */
function externalPeerOf(d: UnixDiag, peer: Peer | null, options: FileOptions): UnixDiag | null {
  if (peer === null || peer.isHere || d.type !== SOCK_DGRAM || options.isExtUnixSk !== true) return null;
  const p = peer.diag;
  return p !== null && p.type === SOCK_DGRAM && p.name.length > 0 ? p : null;
}

/** The file entry of an external peer: its name and kind, no fd, no options of its own. */
function externalPeerEntry(id: number, peer: UnixDiag): ImageEntry {
  const usk: ImageEntry = {
    id,
    ino: peer.ino,
    type: peer.type,
    state: peer.state,
    flags: 0,
    uflags: USK_EXTERN,
    backlog: 0,
    peer: 0,
    fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 },
    opts: { so_sndbuf: 0, so_rcvbuf: 0, so_snd_tmo_sec: 0, so_snd_tmo_usec: 0, so_rcv_tmo_sec: 0, so_rcv_tmo_usec: 0 },
    name: new Uint8Array(peer.name),
  };
  return { type: FD_TYPES.UNIXSK, id, usk };
}

/** Why this socket cannot be dumped, or undefined. */
function refusalOf(
  input: FdDumpInput,
  d: UnixDiag | null,
  options: FileOptions,
  shared?: Map<string, unknown>,
): string | undefined {
  return d === null ? noDiag(input) : refusalWith(input, d, peerOf(input.pid, d, options, shared), options);
}

function noDiag(input: FdDumpInput): string {
  return `Cannot dump fd ${input.fd} of task ${input.pid}: the kernel reports no unix socket ${input.stat.ino} (another network namespace?)`;
}

/** Why socket `d`, whose peer is `peer`, cannot be dumped, or undefined. */
function refusalWith(input: FdDumpInput, d: UnixDiag, peer: Peer | null, options: FileOptions): string | undefined {
  const what = `fd ${input.fd} of task ${input.pid}: ${described(d.type, d.name)}`;
  if (d.name.length > 0 && d.name[0] !== 0 && d.name[0] !== 0x2f)
    return `Cannot dump ${what}: it was bound to a relative path, not supported`;
  if (d.state === TCP_LISTEN) {
    if (d.icons.length > 0 || d.rqueue > 0)
      return (
        `Cannot dump ${what}: ${Math.max(d.icons.length, d.rqueue)} connection(s) wait in its accept queue and ` +
        'would be lost (dump again once they are accepted)'
      );
    return undefined;
  }
  if (peer !== null && externalPeerOf(d, peer, options) === null) {
    const p = peer.diag;
    if (p !== null && !peer.isHere)
      return (
        `Cannot dump ${what}: it is connected to ${described(p.type, p.name)} outside the task ` +
        (d.type === SOCK_DGRAM && p.name.length > 0
          ? '(with --ext-unix-sk it is connected to that name again on restore)'
          : '(of external unix sockets, as in CRIU, only datagram ones connected to a name can be dumped, with --ext-unix-sk)')
      );
    // A connection made through a listener: the accepted end carries the listener's name, the
    // other none (restore connects again, see connectionInTask). Both named: bound by hand too.
    if (d.name.length > 0 && p !== null && p.name.length > 0)
      return `Cannot dump ${what}: both ends of its connection have names, not supported`;
    if ((d.name.length > 0 || (p !== null && p.name.length > 0)) && d.type === SOCK_DGRAM)
      return `Cannot dump ${what}: a datagram socket connected to a named one in the task, not supported yet`;
    if (p === null && d.name.length > 0)
      return `Cannot dump ${what}: an accepted connection whose other end was closed, not supported yet`;
  }
  // Waiting bytes are put back through the other end of a pair: a socket with no such end cannot
  // get them back (a bound socket that others sent to, a socket connected outside).
  const isPair = peer !== null ? peer.isHere || peer.diag === null : d.state === TCP_ESTABLISHED;
  if (d.rqueue > 0 && !isPair)
    return `Cannot dump ${what}: ${d.type === SOCK_STREAM ? 'bytes wait' : 'messages wait'} in its queue from a sender outside the task`;
  return undefined;
}

/** The socket file's mode and owner, and whether the path still leads to this socket. */
function fileOfName(d: UnixDiag): { perms: ImageEntry; isDeleted: boolean } | null {
  if (d.name.length === 0 || d.name[0] === 0) return null;
  const path = pathOf(d.name);
  try {
    const st = statSync(path);
    const isSame = d.vfs !== null && st.ino === d.vfs.ino && st.isSocket();
    return { perms: { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }, isDeleted: !isSame };
  } catch {
    return { perms: { mode: 0o777, uid: 0, gid: 0 }, isDeleted: true };
  }
}

/** sk_shutdown bit: no more reads (include/net/sock.h). */
const RCV_SHUTDOWN = 1;

/**
 * What waits in the socket's queue, peeked (not consumed) from criu's duplicate: the bytes of a
 * stream socket (one piece), the messages of a datagram or seqpacket socket (one piece each). For
 * messages SO_PEEK_OFF walks the queue (each peek moves it past the message read); it is put back
 * as it was, while the task is still frozen.
 */
function peekQueue(input: FdDumpInput, d: UnixDiag): Buffer[] {
  const what = `fd ${input.fd} of task ${input.pid}: ${described(d.type, d.name)}`;
  const refuse = (why: string): never => {
    throw new UnsupportedError('fd-kind-unix-socket', `Cannot dump ${what}: ${why}`);
  };
  const peek = (size: number): Buffer | null => {
    const got = peekSocket(input.localFd, size);
    if (got === null) return null;
    if (got.nrFds > 0) refuse('file descriptors wait in its queue (SCM_RIGHTS)');
    if (got.isTruncated) refuse(`a message of more than ${size} bytes waits in its queue`);
    return got.data;
  };
  if (d.type === SOCK_STREAM) {
    const data = peek(d.rqueue) ?? Buffer.alloc(0);
    if (data.length !== d.rqueue)
      refuse(
        `${d.rqueue} bytes wait in its queue and only ${data.length} could be read in one go ` +
          '(messages of several writers, SO_PASSCRED)',
      );
    return [data];
  }
  const before = intOpt(input.localFd, SOL_SOCKET, SO_PEEK_OFF);
  const messages: Buffer[] = [];
  setIntOpt(input.localFd, SOL_SOCKET, SO_PEEK_OFF, 0);
  try {
    // The queue holds at most its receive buffer's worth: more means the walk goes round.
    const limit = 2 * intOpt(input.localFd, SOL_SOCKET, SO_RCVBUF) + MAX_MESSAGE_BYTES;
    let total = 0;
    for (let m = peek(MAX_MESSAGE_BYTES); m !== null; m = peek(MAX_MESSAGE_BYTES)) {
      // A seqpacket socket whose other end is gone reads end of stream after its last message:
      // an empty read once every byte the kernel counts (rqueue, all messages) was read.
      if (m.length === 0 && d.type === SOCK_SEQPACKET && d.shutdown & RCV_SHUTDOWN && total === d.rqueue) break;
      if (m.length === 0) refuse('an empty message waits in its queue');
      total += m.length;
      if (total > limit) refuse('its queue could not be walked message by message (SO_PEEK_OFF)');
      messages.push(m);
    }
  } finally {
    setIntOpt(input.localFd, SOL_SOCKET, SO_PEEK_OFF, before);
  }
  return messages;
}

/** What the restore of a pair's first end leaves for its second. */
interface PairEnd {
  /** The second end, open in the task. */
  fd: number;
  /** The first end's file id (its fd in the task, once placed) and its shutdown bits. */
  firstId: number;
  firstShutdown: number;
}

const pairKey = (ino: number): string => `unix-pair:${ino}`;

/** socketpair(AF_UNIX, type, 0) inside the task. */
function socketpairInTask(injector: Injector, type: number): [number, number] {
  const [r] = injector.runCalls([
    { name: 'socketpair', args: (out) => [BigInt(AF_UNIX), BigInt(type), 0n, out], outBytes: 8 },
  ]);
  if (r === undefined || r.ret < 0n)
    throw new UnsupportedError('unix-socket', `socketpair in the task failed (${r?.ret})`);
  return [r.out.readInt32LE(0), r.out.readInt32LE(4)];
}

/**
 * The two ends of a connection inside the task, this entry's first. A pair with no name is made
 * by socketpair(2). A connection made through a listener (the accepted end carries the listener's
 * name) is made again that way, so that both ends see the names they saw: a new socket connects
 * to the name, and the listener accepts it. The listener is the task's if it is back already;
 * otherwise a short-lived one bound to the name, which the real one replaces when its turn comes.
 */
async function connectionInTask(ctx: FileRestoreContext, usk: ImageEntry): Promise<[number, number]> {
  const { injector } = ctx;
  const type = Number(usk['type']);
  const own = (usk['name'] ?? new Uint8Array(0)) as Uint8Array;
  const peer = Number(usk['peer'] ?? 0);
  const files = (await ctx.entriesOf('FILES')).map((r) => r.entry);
  const uskOf = (e: ImageEntry): ImageEntry | undefined => e['usk'] as ImageEntry | undefined;
  const peerName = (files.map(uskOf).find((u) => u !== undefined && Number(u['ino']) === peer)?.['name'] ??
    new Uint8Array(0)) as Uint8Array;
  const name = own.length > 0 ? own : peerName;
  if (name.length === 0) return socketpairInTask(injector, type);
  const listenerEntry = files.find((e) => {
    const u = uskOf(e);
    return (
      u !== undefined &&
      Number(u['state']) === TCP_LISTEN &&
      Buffer.from(u['name'] as Uint8Array).equals(Buffer.from(name))
    );
  });
  const placed = listenerEntry === undefined ? undefined : ctx.fdOfFileId(Number(listenerEntry['id']));
  let listener = placed ?? -1;
  if (placed === undefined) {
    listener = Number(injector.syscallOrThrow('socket', [BigInt(AF_UNIX), BigInt(type), 0n]));
    bindInTask(injector, listener, { type, name }, name);
    callInTask(injector, described(type, Buffer.from(name)), 'listen', [BigInt(listener), 1n]);
  }
  const client = Number(injector.syscallOrThrow('socket', [BigInt(AF_UNIX), BigInt(type), 0n]));
  const sa = sockaddrUn(name);
  callInTask(injector, described(type, Buffer.from(name)), 'connect', [
    BigInt(client),
    injector.pushData(sa),
    BigInt(sa.length),
  ]);
  const accepted = Number(injector.syscallOrThrow('accept4', [BigInt(listener), 0n, 0n, 0n]));
  if (placed === undefined) {
    closeInTask(injector, listener);
    if (name[0] !== 0) unlinkSync(pathOf(name)); // the real listener binds it again
  }
  injector.resetScratch();
  return own.length > 0 ? [accepted, client] : [client, accepted];
}

/** An int socket option of the task's fd `fd`, read inside the task. */
function getIntOptInTask(injector: Injector, fd: number, name: number): number {
  const buf = Buffer.alloc(8);
  buf.writeInt32LE(4, 4); // optlen
  const addr = injector.pushData(buf);
  injector.syscallOrThrow('getsockopt', [BigInt(fd), BigInt(SOL_SOCKET), BigInt(name), addr, addr + 4n]);
  return injector.readMemory(addr, 4).readInt32LE(0);
}

/**
 * Send `messages` through the task's socket `fd` (its peer receives them), never blocking: each
 * whole (`type` datagram or seqpacket), or a chunk at a time (stream). What can wait is bounded by
 * the sender's buffer: for more than fits, the buffer is raised for the sends and then given back
 * its size and lock as they were.
 */
function sendAllInTask(injector: Injector, fd: number, type: number, messages: readonly Uint8Array[]): void {
  const total = messages.reduce((n, m) => n + m.length, 0);
  if (total === 0) return;
  const need = total * 2 + (64 << 10);
  const size = getIntOptInTask(injector, fd, SO_SNDBUF);
  const lock = getIntOptInTask(injector, fd, SO_BUF_LOCK);
  if (size < need) setSockOptInTask(injector, fd, SOL_SOCKET, SO_SNDBUFFORCE, need / 2);
  for (const data of messages) {
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (buf.length === 0 && type !== SOCK_STREAM) {
      // An empty datagram is a message too.
      injector.syscallOrThrow('sendto', [BigInt(fd), 0n, 0n, BigInt(MSG_DONTWAIT), 0n, 0n]);
      continue;
    }
    feedInTask(
      injector,
      buf,
      'a unix socket (sendto)',
      (addr, len) => injector.syscall(NR.sendto, [BigInt(fd), addr, BigInt(len), BigInt(MSG_DONTWAIT), 0n, 0n]),
      type === SOCK_STREAM ? {} : { chunk: Math.max(buf.length, 1) },
    );
  }
  injector.resetScratch();
  if (size < need) {
    setSockOptInTask(injector, fd, SOL_SOCKET, SO_SNDBUFFORCE, size / 2);
    setSockOptInTask(injector, fd, SOL_SOCKET, SO_BUF_LOCK, lock);
  }
}

/** shutdown(fd, how) for sk_shutdown bits (RCV 1, SEND 2, both 3). */
function shutdownInTask(injector: Injector, fd: number, bits: number): void {
  if (bits === 0) return;
  const how = bits === 1 ? 0 : bits === 2 ? 1 : 2; // SHUT_RD, SHUT_WR, SHUT_RDWR
  callInTask(injector, `unix socket fd ${fd}`, 'shutdown', [BigInt(fd), BigInt(how)]);
}

/** What waited in socket `id` (sk-queues.img): its pieces, in order (one per message). */
async function queueOf(ctx: FileRestoreContext, id: number): Promise<Uint8Array[]> {
  const pieces: Uint8Array[] = [];
  for (const { entry, extra } of await ctx.entriesOf('SK_QUEUES')) {
    if (Number(entry['id_for']) !== id) continue;
    const data = extra ?? new Uint8Array(0);
    if (data.length !== Number(entry['length']))
      throw new UnsupportedError(
        'unix-socket',
        `The queue of socket ${id} in sk-queues.img has ${data.length} bytes, its entry says ${String(entry['length'])}`,
      );
    pieces.push(data);
  }
  return pieces;
}

/** The name of the external socket (USK_EXTERN) with inode `ino` in files.img, or null. */
async function externalPeerName(ctx: FileRestoreContext, ino: number): Promise<Uint8Array | null> {
  for (const { entry } of await ctx.entriesOf('FILES')) {
    const usk = entry['usk'] as ImageEntry | undefined;
    if (usk !== undefined && Number(usk['ino']) === ino && (Number(usk['uflags'] ?? 0) & USK_EXTERN) !== 0)
      return usk['name'] as Uint8Array;
  }
  return null;
}

/** sockaddr_un of a bound name, and its length as bind(2) takes it. */
function sockaddrUn(name: Uint8Array): Buffer {
  if (name.length > 108) throw new UnsupportedError('unix-socket', `A unix socket name of ${name.length} bytes`);
  const sa = Buffer.alloc(2 + name.length + (name[0] === 0 || name[name.length - 1] === 0 ? 0 : 1));
  sa.writeUInt16LE(AF_UNIX, 0);
  Buffer.from(name).copy(sa, 2);
  return sa;
}

export const unixSocketFile: FdKindModule = {
  type: FD_TYPES.UNIXSK,
  name: 'unix socket',
  // Before epoll (20) and after nothing: a pair's second end needs only the first.
  restoreOrder: 10,

  matches(input) {
    return input.link.startsWith('socket:[') && intOpt(input.localFd, SOL_SOCKET, SO_DOMAIN) === AF_UNIX;
  },

  refusal(input, options) {
    return refusalOf(input, unixDiag(Number(input.stat.ino)), options);
  },

  async dump(input, id, ctx) {
    const d = unixDiag(Number(input.stat.ino));
    if (d === null) throw new UnsupportedError('fd-kind-unix-socket', noDiag(input));
    const peer = peerOf(input.pid, d, ctx.options ?? {}, ctx.shared);
    const refusal = refusalWith(input, d, peer, ctx.options ?? {});
    if (refusal !== undefined) throw new UnsupportedError('fd-kind-unix-socket', refusal);
    const type = intOpt(input.localFd, SOL_SOCKET, SO_TYPE);
    const usk: ImageEntry = {
      id,
      ino: d.ino,
      type,
      state: d.state,
      flags: descriptionFlags(input.fdinfo.flags),
      uflags: 0,
      backlog: d.state === TCP_LISTEN ? d.wqueue : 0,
      peer: d.peer,
      fown: dumpFown(input, ctx),
      opts: readSkOpts(input.localFd, false),
      name: new Uint8Array(d.name),
    };
    if (d.shutdown !== 0) usk['shutdown'] = d.shutdown;
    const file = fileOfName(d);
    if (file !== null) {
      usk['file_perms'] = file.perms;
      if (file.isDeleted) usk['deleted'] = true;
    }
    const external = externalPeerOf(d, peer, ctx.options ?? {});
    if (external !== null && !ctx.shared.has(`unix-external:${external.ino}`)) {
      // As CRIU: the peer gets a file entry of its own (no fd refers to it), marked external.
      ctx.shared.set(`unix-external:${external.ino}`, true);
      await ctx.addEntry('FILES', externalPeerEntry(ctx.allocId(), external));
    }
    if (d.state !== TCP_LISTEN && d.rqueue > 0)
      for (const data of peekQueue(input, d))
        await ctx.addEntry('SK_QUEUES', { id_for: id, length: data.length }, data);
    return { type: FD_TYPES.UNIXSK, id, usk };
  },

  async restore(entry, ctx) {
    const usk = socketEntryOf(entry, 'usk');
    const id = Number(usk['id']);
    const ino = Number(usk['ino']);
    const type = Number(usk['type']);
    const state = Number(usk['state']);
    const peer = Number(usk['peer'] ?? 0);
    const name = (usk['name'] ?? new Uint8Array(0)) as Uint8Array;
    const shutdown = Number(usk['shutdown'] ?? 0);
    const { injector } = ctx;
    let fd: number;
    const second = ctx.shared.get(pairKey(ino)) as PairEnd | undefined;
    // In a tree, the first end may have been made by another process, where the second is parked.
    const secondElsewhere = ctx.tree?.shared.get(pairKey(ino)) as (PairEnd & { pid: number }) | undefined;
    const externalName = peer !== 0 ? await externalPeerName(ctx, peer) : null;
    if (second !== undefined) {
      // The second end of a pair: the first made it. Its bytes come from the first end.
      ctx.shared.delete(pairKey(ino));
      ctx.tree?.shared.delete(pairKey(ino));
      fd = second.fd;
      const firstFd = ctx.fdOfFileId(second.firstId);
      if (firstFd === undefined)
        throw new UnsupportedError('unix-socket', `The other end of unix socket ${ino} was not placed`);
      sendAllInTask(injector, firstFd, type, await queueOf(ctx, id));
      shutdownInTask(injector, firstFd, second.firstShutdown);
      shutdownInTask(injector, fd, shutdown);
    } else if (secondElsewhere !== undefined && ctx.tree !== undefined) {
      // The same, with both ends taken from that process (its parked copy is closed by its own
      // finishRestore, once every process has its files).
      ctx.tree.shared.delete(pairKey(ino));
      const first = ctx.tree.fdOfFileId(secondElsewhere.firstId);
      if (first === undefined)
        throw new UnsupportedError('unix-socket', `The other end of unix socket ${ino} was not placed`);
      fd = ctx.tree.takeFrom(secondElsewhere.pid, secondElsewhere.fd);
      const firstFd = ctx.tree.takeFrom(first.pid, first.fd);
      try {
        sendAllInTask(injector, firstFd, type, await queueOf(ctx, id));
        shutdownInTask(injector, firstFd, secondElsewhere.firstShutdown);
      } finally {
        closeInTask(injector, firstFd);
      }
      shutdownInTask(injector, fd, shutdown);
    } else if (externalName !== null) {
      // --ext-unix-sk: connected by name to the socket outside, as dumped.
      fd = Number(injector.syscallOrThrow('socket', [BigInt(AF_UNIX), BigInt(type), 0n]));
      if (name.length > 0) bindInTask(injector, fd, usk, name);
      const sa = sockaddrUn(externalName);
      callInTask(injector, described(type, Buffer.from(externalName)), 'connect', [
        BigInt(fd),
        injector.pushData(sa),
        BigInt(sa.length),
      ]);
    } else if (peer !== 0 || state === TCP_ESTABLISHED) {
      // The first end of a pair: the other end waits for its own entry, parked above every fd
      // the table will use; or it was closed (the kernel reports no peer then): it is closed at
      // the end, once the files it might be mistaken for are in place.
      const [mine, other] = await connectionInTask(ctx, usk);
      fd = mine;
      sendAllInTask(injector, other, type, await queueOf(ctx, id));
      const key = peer !== 0 ? pairKey(peer) : `${pairKey(0)}:closed:${id}`;
      const parked: PairEnd = { fd: ctx.parkFd(other), firstId: id, firstShutdown: shutdown };
      ctx.shared.set(key, parked);
      ctx.tree?.shared.set(key, { ...parked, pid: ctx.pid });
    } else {
      fd = Number(injector.syscallOrThrow('socket', [BigInt(AF_UNIX), BigInt(type), 0n]));
      if (name.length > 0) bindInTask(injector, fd, usk, name);
      if (state === TCP_LISTEN)
        callInTask(injector, described(type, Buffer.from(name)), 'listen', [
          BigInt(fd),
          BigInt(Number(usk['backlog'])),
        ]);
    }
    restoreSkOpts(injector, fd, (usk['opts'] ?? {}) as ImageEntry, false);
    injector.resetScratch();
    setStatusFlagsInTask(injector, fd, Number(usk['flags'] ?? 0));
    restoreFown(injector, fd, usk['fown'] as ImageEntry | undefined);
    return fd;
  },

  async finishRestore(ctx) {
    // The second ends no entry asked for: their peer was closed when dumped. Closing them now
    // gives the first end the end of stream it had (after the bytes written into it).
    for (const [key, value] of ctx.shared) {
      if (!key.startsWith('unix-pair:')) continue;
      closeInTask(ctx.injector, (value as PairEnd).fd);
      ctx.shared.delete(key);
    }
  },
};

/** bind(2) the name inside the task; a file-system name gets its file's mode and owner back. */
function bindInTask(injector: Injector, fd: number, usk: ImageEntry, name: Uint8Array): void {
  const isPath = name[0] !== 0;
  const path = pathOf(name);
  if (isPath) {
    // A socket file left by the dumped task (or by a restore that failed) would fail the bind.
    try {
      if (lstatSync(path).isSocket()) unlinkSync(path);
    } catch {
      // nothing there
    }
  }
  const sa = sockaddrUn(name);
  callInTask(injector, described(Number(usk['type']), Buffer.from(name)), 'bind', [
    BigInt(fd),
    injector.pushData(sa),
    BigInt(sa.length),
  ]);
  if (!isPath) return;
  const perms = usk['file_perms'] as ImageEntry | undefined;
  if (perms !== undefined) {
    chmodSync(path, Number(perms['mode']) & 0o7777);
    chownSync(path, Number(perms['uid']), Number(perms['gid']));
  }
  if (usk['deleted'] === true) unlinkSync(path);
}
