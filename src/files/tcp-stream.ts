/**
 * Established TCP connections (`--tcp-established`), as CRIU does them: TCP repair mode
 * (TCP_REPAIR, linux/tcp.h) and tcp-stream-<ino>.img (tcp_stream_entry, then the bytes of the
 * receive queue and of the send queue). Half-closed ones too (STREAM_STATES): a side that has
 * shut down sends a FIN after its bytes, a side whose peer has has a FIN after the bytes it
 * receives; the sequence numbers of the image count those FINs, as the kernel (and CRIU) do.
 *
 * Dump, on criu's own duplicate of the socket (the same socket the task holds): repair mode on;
 * for each queue its sequence number (TCP_QUEUE_SEQ) and its bytes (MSG_PEEK: nothing consumed);
 * the options negotiated with the peer (TCP_INFO, TCP_MAXSEG), the window (TCP_REPAIR_WINDOW), the
 * timestamp clock (TCP_TIMESTAMP), TCP_NODELAY and TCP_CORK. The socket stays in repair mode: when
 * the killed task's socket is closed, nothing goes to the peer (no FIN, no RST). Meanwhile the
 * network lock (net-lock.ts) drops the peer's packets, so that no RST answers them: the peer
 * retransmits once the connection is back. A dump that fails, or leaves the task running, turns
 * repair mode off again and lifts the lock (releaseTcpRepair).
 *
 * Restore, injected into the task: repair mode on, both queues' sequence numbers, bind and connect
 * (in repair mode connect sends nothing and the socket is ESTABLISHED at once), the options, the
 * queues' bytes (sent in repair mode they land in the queues, not on the wire), the window, the
 * timestamp; it leaves repair mode once every process of the tree has its files
 * (endTcpRepairInTask), and the restore lifts the locks once the tree is whole. The bytes the
 * connection had not sent yet go in outside repair mode (they have never been on the wire). A
 * half-closed connection is made ESTABLISHED first, then: our FIN by shutdown(SHUT_WR) (in repair
 * mode, as sent when the peer had acknowledged it), the peer's FIN, and its ACK of ours, by
 * segments sent as the peer (tcp-peer-segment.ts).
 */

import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import {
  MSG_DONTWAIT,
  SO_BUF_LOCK,
  SO_RCVBUFFORCE,
  SO_SNDBUFFORCE,
  SOL_SOCKET,
  SOL_TCP,
  TCP_CLOSE_WAIT,
  TCP_ESTABLISHED,
  TCP_FIN_WAIT1,
  TCP_FIN_WAIT2,
  TCP_LAST_ACK,
  TCP_NODELAY,
  TCP_QUEUE_SEQ,
  TCP_REPAIR,
  TCP_REPAIR_OPTIONS,
  TCP_REPAIR_QUEUE,
  TCP_REPAIR_WINDOW,
  TCP_INFO,
} from '../kernel/constants.js';
import { SYSCALLS_X86_64 } from '../kernel/syscalls.js';
import { log } from '../log.js';
import * as sys from '../sys/native.js';
import { intOpt, peekSocket, setIntOpt, setSockOptInTask } from './sk-opts.js';
import { NETWORK_LOCK_EXEMPT, sendPeerSegment, TH_ACK, TH_FIN, type SegmentEnds } from './tcp-peer-segment.js';
import { UnsupportedError } from '../errors.js';
import { sleepMs } from '../sys/wait.js';
import { feedInTask } from './task-io.js';

/**
 * The connection states dumped and restored: ESTABLISHED and the half-closed ones a server meets
 * (CLOSING, both FINs crossing, is refused: see inet-socket.ts).
 */
export const STREAM_STATES: ReadonlySet<number> = new Set([
  TCP_ESTABLISHED,
  TCP_FIN_WAIT1,
  TCP_FIN_WAIT2,
  TCP_CLOSE_WAIT,
  TCP_LAST_ACK,
]);
/** States whose send queue ends with our FIN; those whose receive side ended with the peer's. */
const OUR_FIN = new Set([TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK]);
const PEER_FIN = new Set([TCP_CLOSE_WAIT, TCP_LAST_ACK]);
const SHUT_WR = 1;
const EAGAIN = 11;
const ENOMEM = 12;

const TCP_NO_QUEUE = 0;
const TCP_RECV_QUEUE = 1;
const TCP_SEND_QUEUE = 2;
const TCP_MAXSEG = 2;
const TCP_CORK = 3;
const TCP_TIMESTAMP = 24;
/** tcp_info.tcpi_options bits. */
const TCPI_OPT_TIMESTAMPS = 1;
const TCPI_OPT_SACK = 2;
const TCPI_OPT_WSCALE = 4;
/** TCP_REPAIR_OPTIONS codes. */
const TCPOPT_MSS = 2;
const TCPOPT_WINDOW = 3;
const TCPOPT_SACK_PERM = 4;
const TCPOPT_TIMESTAMP = 8;

function setInt(fd: number, name: number, v: number): void {
  setIntOpt(fd, SOL_TCP, name, v);
}

/**
 * The bytes of the selected queue, peeked; none when it is empty. A peek that fills its buffer may
 * have left bytes behind: it is repeated with twice the room until it does not.
 */
function peekQueue(fd: number, size: number): Buffer {
  for (let room = Math.max(size, 1 << 16); ; room *= 2) {
    const data = peekSocket(fd, room)?.data ?? Buffer.alloc(0);
    if (data.length < room) return data;
  }
}

/**
 * Put criu's duplicate `fd` of an established connection in repair mode and read its state: the
 * tcp_stream_entry and its queues' bytes (receive queue first). The socket is left in repair mode.
 */
export function dumpTcpStream(fd: number, bufBytes: number): { entry: ImageEntry; queues: Buffer } {
  setInt(fd, TCP_REPAIR, 1);
  const queue = (q: number): { seq: number; data: Buffer } => {
    setInt(fd, TCP_REPAIR_QUEUE, q);
    const seq = sys.getsockopt(fd, SOL_TCP, TCP_QUEUE_SEQ, 4).readUInt32LE(0);
    return { seq, data: peekQueue(fd, bufBytes) };
  };
  const inq = queue(TCP_RECV_QUEUE);
  const outq = queue(TCP_SEND_QUEUE);
  setInt(fd, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
  const info = sys.getsockopt(fd, SOL_TCP, TCP_INFO, 8);
  const options = info.readUInt8(5);
  const wscale = info.readUInt8(6);
  const win = sys.getsockopt(fd, SOL_TCP, TCP_REPAIR_WINDOW, 20);
  const entry: ImageEntry = {
    inq_len: inq.data.length,
    inq_seq: inq.seq,
    outq_len: outq.data.length,
    outq_seq: outq.seq,
    opt_mask: options,
    snd_wscale: wscale & 0xf,
    mss_clamp: intOpt(fd, SOL_TCP, TCP_MAXSEG),
    rcv_wscale: wscale >> 4,
    timestamp: sys.getsockopt(fd, SOL_TCP, TCP_TIMESTAMP, 4).readUInt32LE(0),
    cork: intOpt(fd, SOL_TCP, TCP_CORK) !== 0,
    nodelay: intOpt(fd, SOL_TCP, TCP_NODELAY) !== 0,
    // Not sent yet (SIOCOUTQNSD counts an unsent FIN: not a byte).
    unsq_len: Math.max(0, sys.socketUnsentBytes(fd) - (OUR_FIN.has(info.readUInt8(0)) ? 1 : 0)),
    snd_wl1: win.readUInt32LE(0),
    snd_wnd: win.readUInt32LE(4),
    max_window: win.readUInt32LE(8),
    rcv_wnd: win.readUInt32LE(12),
    rcv_wup: win.readUInt32LE(16),
  };
  return { entry, queues: Buffer.concat([inq.data, outq.data]) };
}

/** Turn repair mode off on criu's duplicate `fd` (a dump that failed or leaves the task running). */
export function endTcpRepair(fd: number): void {
  setInt(fd, TCP_REPAIR, 0);
}

/**
 * The sequence numbers that follow the last byte of each queue, FINs not counted: where the
 * restore's sends end (the FINs come after, see restoreTcpStreamAfter).
 */
function bytesEnd(entry: ImageEntry, state: number): { inq: number; outq: number } {
  return {
    inq: (Number(entry['inq_seq']) - (PEER_FIN.has(state) ? 1 : 0)) | 0,
    outq: (Number(entry['outq_seq']) - (OUR_FIN.has(state) ? 1 : 0)) | 0,
  };
}

/** Before bind and connect: repair mode on and the queues' first sequence numbers. */
export function restoreTcpStreamBefore(injector: Injector, fd: number, entry: ImageEntry, state: number): void {
  const set = (name: number, v: number): void => setSockOptInTask(injector, fd, SOL_TCP, name, v);
  const end = bytesEnd(entry, state);
  set(TCP_REPAIR, 1);
  // The bytes are put back by sends, which move the sequence numbers on: start before them.
  set(TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
  set(TCP_QUEUE_SEQ, (end.inq - Number(entry['inq_len'])) | 0);
  set(TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
  set(TCP_QUEUE_SEQ, (end.outq - Number(entry['outq_len'])) | 0);
  set(TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
}

/** How the restore of one connection goes on after its queues (restoreTcpStreamAfter). */
export interface StreamRestore {
  state: number;
  /** The ends, for the segments sent as the peer. */
  ends: SegmentEnds;
  /** SO_BUF_LOCK as dumped: a buffer grown to take the queues back is left to autotuning again. */
  bufLock: number;
}

/**
 * Once connected (in repair mode): options, queues, window, timestamp, the FINs of a half-closed
 * connection. It stays in repair mode (endTcpRepairInTask).
 */
export function restoreTcpStreamAfter(
  injector: Injector,
  fd: number,
  entry: ImageEntry,
  queues: Uint8Array,
  how: StreamRestore,
): void {
  const set = (name: number, v: number | Buffer): void => setSockOptInTask(injector, fd, SOL_TCP, name, v);
  const { state } = how;
  const mask = Number(entry['opt_mask']);
  const opts: [number, number][] = [[TCPOPT_MSS, Number(entry['mss_clamp'])]];
  if ((mask & TCPI_OPT_WSCALE) !== 0)
    opts.push([TCPOPT_WINDOW, Number(entry['snd_wscale']) | (Number(entry['rcv_wscale'] ?? 0) << 16)]);
  if ((mask & TCPI_OPT_SACK) !== 0) opts.push([TCPOPT_SACK_PERM, 0]);
  if ((mask & TCPI_OPT_TIMESTAMPS) !== 0) opts.push([TCPOPT_TIMESTAMP, 0]);
  const raw = Buffer.alloc(opts.length * 8);
  opts.forEach(([code, val], i) => {
    raw.writeUInt32LE(code, i * 8);
    raw.writeUInt32LE(val >>> 0, i * 8 + 4);
  });
  set(TCP_REPAIR_OPTIONS, raw);
  const inqLen = Number(entry['inq_len']);
  const all = Buffer.from(queues.buffer, queues.byteOffset, queues.byteLength);
  const outq = all.subarray(inqLen);
  const unsent = Math.min(Number(entry['unsq_len'] ?? 0), outq.length);
  /** Each buffer is grown once at most (SO_RCVBUF for the receive queue, SO_SNDBUF for the send queue). */
  const grown = new Set<boolean>();
  /** Send `data` without blocking; a buffer too small for it (the dumped one had grown) is grown. */
  const sendAll = (data: Buffer, isReceive: boolean): void =>
    feedInTask(
      injector,
      data,
      `the ${isReceive ? 'receive' : 'send'} queue of a TCP connection (sendto)`,
      (addr, len) =>
        injector.syscall(SYSCALLS_X86_64.sendto, [BigInt(fd), addr, BigInt(len), BigInt(MSG_DONTWAIT), 0n, 0n]),
      {
        onErrno: (errno) => {
          if ((errno !== EAGAIN && errno !== ENOMEM) || grown.has(isReceive)) return false;
          const room = Math.floor((all.length + (1 << 16)) * 1.5);
          setSockOptInTask(injector, fd, SOL_SOCKET, isReceive ? SO_RCVBUFFORCE : SO_SNDBUFFORCE, room);
          log().debug(`tcp: fd ${fd}: ${isReceive ? 'receive' : 'send'} buffer grown to ${room} bytes for its queue`);
          grown.add(isReceive);
          return true;
        },
      },
    );
  set(TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
  sendAll(all.subarray(0, inqLen), true);
  // Sent before the dump: back in repair mode, as sent (acknowledged or not, the peer has them or
  // will get them again).
  set(TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
  sendAll(outq.subarray(0, outq.length - unsent), false);
  set(TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
  if (unsent > 0) {
    // Never sent: sent now, outside repair mode (the network lock holds them until the restore
    // ends, then TCP retransmits them).
    set(TCP_REPAIR, 0);
    sendAll(outq.subarray(outq.length - unsent), false);
    set(TCP_REPAIR, 1);
  }
  if (grown.size > 0) setSockOptInTask(injector, fd, SOL_SOCKET, SO_BUF_LOCK, how.bufLock);
  if (entry['snd_wl1'] !== undefined) {
    const win = Buffer.alloc(20);
    ['snd_wl1', 'snd_wnd', 'max_window', 'rcv_wnd', 'rcv_wup'].forEach((k, i) =>
      win.writeUInt32LE(Number(entry[k]) >>> 0, i * 4),
    );
    if (PEER_FIN.has(state)) {
      // The window as it was before the peer's FIN, which the segment below moves on again.
      win.writeUInt32LE((Number(entry['rcv_wnd']) + 1) >>> 0, 12);
      win.writeUInt32LE((Number(entry['rcv_wup']) - 1) >>> 0, 16);
    }
    set(TCP_REPAIR_WINDOW, win);
  }
  if (entry['timestamp'] !== undefined) set(TCP_TIMESTAMP, Number(entry['timestamp']) | 0);
  restoreFins(injector, fd, entry, how);
}

/**
 * The restored connection on fd `fd` of the task leaves repair mode, and gets TCP_NODELAY and
 * TCP_CORK back: once the whole tree is restored, so that a failed restore's sockets, closed in
 * repair mode, send the peer nothing (as CRIU).
 */
export function endTcpRepairInTask(injector: Injector, fd: number, entry: ImageEntry): void {
  const set = (name: number, v: number): void => setSockOptInTask(injector, fd, SOL_TCP, name, v);
  set(TCP_REPAIR, 0);
  if (entry['nodelay'] === true) set(TCP_NODELAY, 1);
  if (entry['cork'] === true) set(TCP_CORK, 1);
}

/**
 * The FINs of a half-closed connection, now ESTABLISHED with its bytes back: FIN_WAIT1 (our FIN
 * not acknowledged): shutdown; FIN_WAIT2 (acknowledged): shutdown with the FIN restored as sent,
 * then the peer's ACK of it; CLOSE_WAIT: the peer's FIN; LAST_ACK: the peer's FIN, then shutdown.
 */
function restoreFins(injector: Injector, fd: number, entry: ImageEntry, how: StreamRestore): void {
  const { state } = how;
  if (!OUR_FIN.has(state) && !PEER_FIN.has(state)) return;
  const end = bytesEnd(entry, state);
  const sndUna = (end.outq - Number(entry['outq_len'])) | 0;
  // The peer's window in its own units, as its segments carry it.
  const window = Number(entry['snd_wnd'] ?? 0xffff) >>> Number(entry['snd_wscale'] ?? 0);
  const shutdown = (isAcked: boolean): void => {
    if (isAcked) setSockOptInTask(injector, fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
    injector.syscallOrThrow('shutdown', [BigInt(fd), BigInt(SHUT_WR)]);
    if (isAcked) setSockOptInTask(injector, fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
  };
  if (state === TCP_FIN_WAIT1 || state === TCP_FIN_WAIT2) shutdown(state === TCP_FIN_WAIT2);
  if (PEER_FIN.has(state)) {
    sendPeerSegment(how.ends, end.inq, sndUna, TH_FIN | TH_ACK, window);
    // It comes in through loopback: taken once the socket says so (before our own FIN, for
    // LAST_ACK: taken after it, the socket would be CLOSING).
    untilTcpState(injector, fd, TCP_CLOSE_WAIT, "the peer's FIN");
  }
  if (state === TCP_LAST_ACK) shutdown(false);
  if (state === TCP_FIN_WAIT2) {
    sendPeerSegment(how.ends, end.inq, (end.outq + 1) | 0, TH_ACK, window);
    untilTcpState(injector, fd, TCP_FIN_WAIT2, "the peer's ACK of our FIN");
  }
}

/** How long a segment sent as the peer may take to be taken by the socket (it goes through loopback). */
const PEER_SEGMENT_WAIT_MS = 1000;

/** Wait for the task's socket `fd` to be in `state`; a segment that never arrives fails in one line. */
function untilTcpState(injector: Injector, fd: number, want: number, what: string): void {
  const info = Buffer.alloc(8 + 4); // tcp_info's first bytes, then socklen_t
  info.writeUInt32LE(8, 8);
  const until = Date.now() + PEER_SEGMENT_WAIT_MS;
  let state: number;
  for (;;) {
    const addr = injector.pushData(info);
    injector.syscallOrThrow('getsockopt', [BigInt(fd), BigInt(SOL_TCP), BigInt(TCP_INFO), addr, addr + 8n]);
    state = injector.readMemory(addr, 1).readUInt8(0);
    if (state === want) return;
    if (Date.now() > until) break;
    sleepMs(1);
  }
  throw new UnsupportedError(
    'tcp',
    `Cannot restore a half-closed TCP connection: ${what}, sent as the peer, did not arrive ` +
      `(the socket is in state ${state}, expected ${want}; does a firewall drop packets marked 0x${NETWORK_LOCK_EXEMPT.toString(16)}?)`,
  );
}
