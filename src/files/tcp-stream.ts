/**
 * Established TCP connections (`--tcp-established`), as CRIU does them: TCP repair mode
 * (TCP_REPAIR, linux/tcp.h) and tcp-stream-<ino>.img (tcp_stream_entry, then the bytes of the
 * receive queue and of the send queue).
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
 * timestamp, repair mode off; the lock is lifted once every file is restored.
 */

import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import {
  SOL_TCP,
  TCP_NODELAY,
  TCP_QUEUE_SEQ,
  TCP_REPAIR,
  TCP_REPAIR_OPTIONS,
  TCP_REPAIR_QUEUE,
  TCP_REPAIR_WINDOW,
  TCP_INFO,
} from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { intOpt, peekSocket, setIntOpt, setSockOptInTask } from './sk-opts.js';

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
    unsq_len: 0,
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

/** Before bind and connect: repair mode on and the queues' first sequence numbers. */
export function restoreTcpStreamBefore(injector: Injector, fd: number, entry: ImageEntry): void {
  const set = (name: number, v: number): void => setSockOptInTask(injector, fd, SOL_TCP, name, v);
  set(TCP_REPAIR, 1);
  // The bytes are put back by sends, which move the sequence numbers on: start before them.
  set(TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
  set(TCP_QUEUE_SEQ, (Number(entry['inq_seq']) - Number(entry['inq_len'])) | 0);
  set(TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
  set(TCP_QUEUE_SEQ, (Number(entry['outq_seq']) - Number(entry['outq_len'])) | 0);
  set(TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
}

/** Once connected (in repair mode): options, queues, window, timestamp; then repair mode off. */
export function restoreTcpStreamAfter(injector: Injector, fd: number, entry: ImageEntry, queues: Uint8Array): void {
  const set = (name: number, v: number | Buffer): void => setSockOptInTask(injector, fd, SOL_TCP, name, v);
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
  const sendQueue = (q: number, data: Buffer): void => {
    if (data.length === 0) return;
    set(TCP_REPAIR_QUEUE, q);
    const addr = injector.pushData(data);
    for (let off = 0; off < data.length;) {
      const n = Number(
        injector.syscallOrThrow('sendto', [BigInt(fd), addr + BigInt(off), BigInt(data.length - off), 0n, 0n, 0n]),
      );
      if (n <= 0) throw new Error(`Cannot refill a TCP queue: sendto returned ${n}`);
      off += n;
    }
  };
  sendQueue(TCP_RECV_QUEUE, all.subarray(0, inqLen));
  sendQueue(TCP_SEND_QUEUE, all.subarray(inqLen));
  set(TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
  if (entry['snd_wl1'] !== undefined) {
    const win = Buffer.alloc(20);
    ['snd_wl1', 'snd_wnd', 'max_window', 'rcv_wnd', 'rcv_wup'].forEach((k, i) =>
      win.writeUInt32LE(Number(entry[k]) >>> 0, i * 4),
    );
    set(TCP_REPAIR_WINDOW, win);
  }
  if (entry['timestamp'] !== undefined) set(TCP_TIMESTAMP, Number(entry['timestamp']) | 0);
  set(TCP_REPAIR, 0);
  if (entry['nodelay'] === true) set(TCP_NODELAY, 1);
  if (entry['cork'] === true) set(TCP_CORK, 1);
}
