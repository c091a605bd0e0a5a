/**
 * sock_diag dumps (NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY with NLM_F_DUMP): every socket of a
 * family the kernel lists in criu's network namespace, for the families whose diag does not look
 * one up by inode (netlink_diag, packet_diag). The caller lays out the family's request
 * (`*_diag_req`, starting with sdiag_family) and parses each answer's body (`*_diag_msg` and its
 * attributes).
 */

import { UnsupportedError } from '../errors.js';
import { AF_NETLINK, SOCK_CLOEXEC, SOCK_RAW } from '../kernel/constants.js';
import { errnoName } from '../kernel/errno.js';
import * as sys from '../sys/native.js';

const NETLINK_SOCK_DIAG = 4;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;

let seq = 0;

/** The bodies of every answer to the dump request `req`, in order. */
function sockDiagDump(req: Buffer): Buffer[] {
  const nl = sys.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  try {
    const msg = Buffer.alloc(16 + req.length);
    msg.writeUInt32LE(msg.length, 0);
    msg.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
    msg.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
    msg.writeUInt32LE(++seq, 8);
    req.copy(msg, 16);
    sys.write(nl, msg, 0, msg.length);
    const out: Buffer[] = [];
    const buf = Buffer.alloc(64 << 10);
    for (;;) {
      const n = sys.read(nl, buf, 0, buf.length);
      if (n <= 0) return out;
      for (let off = 0; off + 16 <= n;) {
        const len = buf.readUInt32LE(off);
        const type = buf.readUInt16LE(off + 4);
        if (type === NLMSG_DONE) return out;
        if (type === NLMSG_ERROR)
          throw new UnsupportedError(
            'sock-diag',
            `sock_diag of family ${req[0]}: ${errnoName(-buf.readInt32LE(off + 16))}`,
          );
        if (len < 16) return out;
        out.push(Buffer.from(buf.subarray(off + 16, off + len)));
        off += (len + 3) & ~3;
      }
    }
  } finally {
    sys.close(nl);
  }
}

/**
 * The answer about the socket with inode `ino`, of a family whose request is laid out as
 * netlink_diag_req and packet_diag_req are (family, protocol, pad, ino, show, cookie[2]): the
 * kernel lists every socket of the family, and the answer's inode is at `inoAt` in its body.
 */
export function sockDiagFind(
  family: number,
  protocol: number,
  show: number,
  ino: number,
  inoAt: number,
): Buffer | null {
  const req = Buffer.alloc(20);
  req.writeUInt8(family, 0);
  req.writeUInt8(protocol, 1);
  req.writeUInt32LE(ino, 4);
  req.writeUInt32LE(show, 8);
  req.writeUInt32LE(0xffffffff, 12); // no cookie
  req.writeUInt32LE(0xffffffff, 16);
  return sockDiagDump(req).find((body) => body.readUInt32LE(inoAt) === ino) ?? null;
}

/** The rtattrs of a diag answer from `offset` on: type and data of each. */
export function diagAttrs(body: Buffer, offset: number): { type: number; data: Buffer }[] {
  const out: { type: number; data: Buffer }[] = [];
  for (let off = offset; off + 4 <= body.length;) {
    const alen = body.readUInt16LE(off);
    if (alen < 4) break;
    out.push({ type: body.readUInt16LE(off + 2), data: body.subarray(off + 4, off + alen) });
    off += (alen + 3) & ~3;
  }
  return out;
}
