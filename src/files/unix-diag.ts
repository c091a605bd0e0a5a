/**
 * What the kernel tells of one unix socket through sock_diag (NETLINK_SOCK_DIAG, UNIX_DIAG; see
 * linux/unix_diag.h): its state, bound name, peer, pending connections, queue lengths and
 * shutdown bits. Nothing else reports a unix socket's peer. The question is asked by inode, in
 * criu's own network namespace (a socket of another one is not found there).
 *
 * Request: nlmsghdr { len, type SOCK_DIAG_BY_FAMILY, flags NLM_F_REQUEST, seq, pid } then
 * unix_diag_req { family AF_UNIX, protocol 0, pad, states ~0, ino, show, cookie {~0, ~0} }.
 * Answer: nlmsghdr then unix_diag_msg { family, type, state, pad, ino, cookie[2] } then rtattrs,
 * or NLMSG_ERROR with -errno (ENOENT: no such socket).
 */

import { UnsupportedError } from '../errors.js';
import { AF_NETLINK, AF_UNIX, SOCK_CLOEXEC, SOCK_RAW } from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { errnoName } from '../kernel/errno.js';

const NETLINK_SOCK_DIAG = 4;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
const UDIAG_SHOW_NAME = 0x1;
const UDIAG_SHOW_VFS = 0x2;
const UDIAG_SHOW_PEER = 0x4;
const UDIAG_SHOW_ICONS = 0x8;
const UDIAG_SHOW_RQLEN = 0x10;
const UNIX_DIAG_NAME = 0;
const UNIX_DIAG_VFS = 1;
const UNIX_DIAG_PEER = 2;
const UNIX_DIAG_ICONS = 3;
const UNIX_DIAG_RQLEN = 4;
const UNIX_DIAG_SHUTDOWN = 6;

export interface UnixDiag {
  ino: number;
  type: number;
  /** TCP_LISTEN 10, TCP_ESTABLISHED 1, TCP_CLOSE 7 (include/net/tcp_states.h). */
  state: number;
  /** The bound name as given to bind(2) (an abstract one starts with a NUL byte); empty: unbound. */
  name: Buffer;
  /** The socket file's inode and device, for a name in the file system. */
  vfs: { ino: number; dev: number } | null;
  /** The peer's inode; 0 for none. */
  peer: number;
  /** Connections waiting to be accepted (a listener), by their inodes. */
  icons: number[];
  /** A listener: connections waiting and the backlog; otherwise bytes queued to read and unsent. */
  rqueue: number;
  wqueue: number;
  /** sk_shutdown: RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2. */
  shutdown: number;
}

let seq = 0;

/** The diag of the unix socket with inode `ino`, or null when the kernel knows none (closed). */
export function unixDiag(ino: number): UnixDiag | null {
  const nl = sys.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  try {
    const req = Buffer.alloc(16 + 24);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
    req.writeUInt16LE(NLM_F_REQUEST, 6);
    req.writeUInt32LE(++seq, 8);
    req.writeUInt8(AF_UNIX, 16);
    req.writeUInt32LE(0xffffffff, 20); // every state
    req.writeUInt32LE(ino, 24);
    req.writeUInt32LE(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN, 28);
    req.writeUInt32LE(0xffffffff, 32); // no cookie
    req.writeUInt32LE(0xffffffff, 36);
    sys.write(nl, req, 0, req.length);
    const buf = Buffer.alloc(64 << 10);
    const n = sys.read(nl, buf, 0, buf.length);
    return parseAnswer(buf.subarray(0, n), ino);
  } finally {
    sys.close(nl);
  }
}

function parseAnswer(msg: Buffer, ino: number): UnixDiag | null {
  if (msg.length < 16) throw new UnsupportedError('unix-diag', `unix_diag: a short answer (${msg.length} bytes)`);
  const len = msg.readUInt32LE(0);
  const type = msg.readUInt16LE(4);
  if (type === NLMSG_ERROR) {
    const errno = -msg.readInt32LE(16);
    if (errno === 2) return null; // ENOENT
    throw new UnsupportedError('unix-diag', `unix_diag of socket ${ino}: ${errnoName(errno)}`);
  }
  const body = msg.subarray(16, Math.min(len, msg.length));
  const diag: UnixDiag = {
    ino: body.readUInt32LE(4),
    type: body.readUInt8(1),
    state: body.readUInt8(2),
    name: Buffer.alloc(0),
    vfs: null,
    peer: 0,
    icons: [],
    rqueue: 0,
    wqueue: 0,
    shutdown: 0,
  };
  for (let off = 16; off + 4 <= body.length;) {
    const alen = body.readUInt16LE(off);
    const atype = body.readUInt16LE(off + 2);
    if (alen < 4) break;
    const data = body.subarray(off + 4, off + alen);
    if (atype === UNIX_DIAG_NAME) diag.name = Buffer.from(data);
    else if (atype === UNIX_DIAG_VFS) diag.vfs = { ino: data.readUInt32LE(0), dev: data.readUInt32LE(4) };
    else if (atype === UNIX_DIAG_PEER) diag.peer = data.readUInt32LE(0);
    else if (atype === UNIX_DIAG_ICONS)
      diag.icons = Array.from({ length: data.length / 4 }, (_, i) => data.readUInt32LE(i * 4));
    else if (atype === UNIX_DIAG_RQLEN) {
      diag.rqueue = data.readUInt32LE(0);
      diag.wqueue = data.readUInt32LE(4);
    } else if (atype === UNIX_DIAG_SHUTDOWN) diag.shutdown = data.readUInt8(0);
    off += (alen + 3) & ~3;
  }
  return diag;
}
