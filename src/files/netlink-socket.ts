/**
 * Netlink sockets (fd kind NETLINKSK), as CRIU writes them:
 *
 *   files.img   file_entry {type NETLINKSK, nlsk: netlink_sk_entry {id, ino, protocol, state,
 *               flags, portid, groups (the multicast membership bitmap, 32 groups a word),
 *               dst_portid, dst_group, fown, opts}}
 *
 * Dump: netlink_diag (NETLINK_SOCK_DIAG, sdiag_family AF_NETLINK; see linux/netlink_diag.h)
 * tells the port id, the peer, every group joined, the bytes waiting and whether a multi-part
 * answer is being produced; the socket options are read through criu's duplicate of the fd.
 *
 * The netlink options (NETLINK_PKTINFO, BROADCAST_ERROR, NO_ENOBUFS, LISTEN_ALL_NSID, CAP_ACK,
 * EXT_ACK, GET_STRICT_CHK: iproute2 sets some) have no field in CRIU's image, which loses them.
 * criu-ts keeps them in `flags`, from bit 24 on: no open flag uses those bits, and CRIU's restore
 * only hands `flags` to fcntl(F_SETFL), which ignores them (the image stays CRIU's).
 *
 * Restore, inside the task: socket(AF_NETLINK, SOCK_RAW, protocol); bind to the port id and the
 * first 32 groups (a socket never bound keeps port id 0, and is bound later as the kernel
 * pleases); NETLINK_ADD_MEMBERSHIP for each group above 32; connect to the peer; the options.
 *
 * Refused in one line before the freeze, the task running on:
 *   - messages waiting to be read, or a multi-part answer (a dump) half read: they would be lost;
 *   - a socket filter, classic or eBPF (libudev's uevent sockets have one);
 *   - protocols whose kernel side keeps state that messages made (audit, netfilter queues,
 *     connector...): only NETLINK_ROUTE, SOCK_DIAG, KOBJECT_UEVENT and GENERIC are taken. A
 *     generic netlink family's group ids are this kernel's: a restore on another one may differ.
 *
 * Image kinds: FILES (the nlsk entry).
 */

import type { ImageEntry } from '../images/index.js';
import { AF_NETLINK, SO_DOMAIN, SO_PROTOCOL, SOCK_RAW, SOL_SOCKET } from '../kernel/constants.js';
import { UnsupportedError } from '../errors.js';
import { diagAttrs, sockDiagFind } from './sock-diag.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import {
  callInTask,
  intOpt,
  isOtherNetns,
  readSkOpts,
  restoreSkOpts,
  setSockOptInTask,
  socketFilterOf,
} from './sk-opts.js';
import { FD_TYPES, type FdDumpInput, type FdKindModule } from './types.js';

const SOL_NETLINK = 270;
const NETLINK_ADD_MEMBERSHIP = 1;
/** The boolean netlink options, in the order of their bits in `flags` (from FLAG_SHIFT). */
const NETLINK_OPTIONS = [
  { name: 'NETLINK_PKTINFO', opt: 3 },
  { name: 'NETLINK_BROADCAST_ERROR', opt: 4 },
  { name: 'NETLINK_NO_ENOBUFS', opt: 5 },
  { name: 'NETLINK_LISTEN_ALL_NSID', opt: 8 },
  { name: 'NETLINK_CAP_ACK', opt: 10 },
  { name: 'NETLINK_EXT_ACK', opt: 11 },
  { name: 'NETLINK_GET_STRICT_CHK', opt: 12 },
] as const;
const FLAG_SHIFT = 24;
const OPTION_BITS = ((1 << NETLINK_OPTIONS.length) - 1) << FLAG_SHIFT;

/** The protocols whose sockets carry no kernel-side state beyond what the image holds. */
const PROTOCOLS: ReadonlyMap<number, string> = new Map([
  [0, 'NETLINK_ROUTE'],
  [4, 'NETLINK_SOCK_DIAG'],
  [15, 'NETLINK_KOBJECT_UEVENT'],
  [16, 'NETLINK_GENERIC'],
]);

const NDIAG_PROTO_ALL = 255;
const NDIAG_SHOW_MEMINFO = 1;
const NDIAG_SHOW_GROUPS = 2;
const NDIAG_SHOW_FLAGS = 8;
const NETLINK_DIAG_MEMINFO = 0;
const NETLINK_DIAG_GROUPS = 1;
const NETLINK_DIAG_FLAGS = 4;
const NDIAG_FLAG_CB_RUNNING = 1;

export interface NetlinkDiag {
  ino: number;
  protocol: number;
  /** NETLINK_CONNECTED 1, else 0. */
  state: number;
  portid: number;
  dstPortid: number;
  dstGroup: number;
  /** The groups joined: a bitmap, 32 groups a word. */
  groups: number[];
  /** Bytes of messages waiting to be read (sk_rmem_alloc). */
  rmem: number;
  /** A multi-part answer is being produced. */
  isDumping: boolean;
}

/**
 * The netlink_diag of the socket with inode `ino` in criu's network namespace, or null when the
 * kernel lists none: netlink_diag lists the bound sockets and those that joined a group (port id
 * 0 until bound), so one it does not list has no port id, no group, no peer and nothing to read.
 */
export function netlinkDiag(ino: number): NetlinkDiag | null {
  const body = sockDiagFind(
    AF_NETLINK,
    NDIAG_PROTO_ALL,
    NDIAG_SHOW_MEMINFO | NDIAG_SHOW_GROUPS | NDIAG_SHOW_FLAGS,
    ino,
    16,
  );
  return body === null ? null : parseDiag(body);
}

function parseDiag(body: Buffer): NetlinkDiag {
  const diag: NetlinkDiag = {
    protocol: body.readUInt8(2),
    state: body.readUInt8(3),
    portid: body.readUInt32LE(4),
    dstPortid: body.readUInt32LE(8),
    dstGroup: body.readUInt32LE(12),
    ino: body.readUInt32LE(16),
    groups: [],
    rmem: 0,
    isDumping: false,
  };
  for (const { type, data } of diagAttrs(body, 28)) {
    if (type === NETLINK_DIAG_MEMINFO && data.length >= 4) diag.rmem = data.readUInt32LE(0);
    else if (type === NETLINK_DIAG_GROUPS)
      diag.groups = Array.from({ length: Math.floor(data.length / 4) }, (_, i) => data.readUInt32LE(i * 4));
    else if (type === NETLINK_DIAG_FLAGS && data.length >= 4)
      diag.isDumping = (data.readUInt32LE(0) & NDIAG_FLAG_CB_RUNNING) !== 0;
  }
  // Trailing empty words say nothing.
  while (diag.groups.length > 0 && diag.groups[diag.groups.length - 1] === 0) diag.groups.pop();
  return diag;
}

function what(input: FdDumpInput): string {
  return `fd ${input.fd} of task ${input.pid}`;
}

/** What netlink_diag tells of `input`'s socket; an unbound one (not listed) as such. */
function diagOf(input: FdDumpInput): NetlinkDiag {
  const ino = Number(input.stat.ino);
  return (
    netlinkDiag(ino) ?? {
      ino,
      protocol: intOpt(input.localFd, SOL_SOCKET, SO_PROTOCOL),
      state: 0,
      portid: 0,
      dstPortid: 0,
      dstGroup: 0,
      groups: [],
      rmem: 0,
      isDumping: false,
    }
  );
}

function refusalOf(input: FdDumpInput, diag: NetlinkDiag): string | undefined {
  if (isOtherNetns(input.localFd)) return `Cannot dump ${what(input)}: a netlink socket of another network namespace`;
  const filter = socketFilterOf(input.localFd);
  if (filter !== undefined) return `Cannot dump ${what(input)}: the netlink socket has ${filter}, not supported yet`;
  const name = PROTOCOLS.get(diag.protocol);
  if (name === undefined)
    return `Cannot dump ${what(input)}: a netlink socket of protocol ${diag.protocol}, whose kernel side (registrations made by messages) criu-ts cannot carry`;
  if (diag.rmem > 0)
    return `Cannot dump ${what(input)}: ${diag.rmem} bytes of ${name} messages wait to be read in it and would be lost; dump again once it is read`;
  if (diag.isDumping)
    return `Cannot dump ${what(input)}: the ${name} socket is in the middle of a multi-part answer, whose rest would be lost`;
  return undefined;
}

export const netlinkSocketFile: FdKindModule = {
  type: FD_TYPES.NETLINKSK,
  name: 'netlink socket',
  restoreOrder: 10,

  matches(input) {
    return input.link.startsWith('socket:[') && intOpt(input.localFd, SOL_SOCKET, SO_DOMAIN) === AF_NETLINK;
  },

  refusal(input) {
    return refusalOf(input, diagOf(input));
  },

  async dump(input, id, ctx) {
    const diag = diagOf(input);
    const refusal = refusalOf(input, diag);
    if (refusal !== undefined) throw new UnsupportedError('netlink', refusal);
    let options = 0;
    NETLINK_OPTIONS.forEach((o, i) => {
      if (intOpt(input.localFd, SOL_NETLINK, o.opt) !== 0) options |= 1 << (FLAG_SHIFT + i);
    });
    const nlsk: ImageEntry = {
      id,
      ino: diag.ino,
      protocol: intOpt(input.localFd, SOL_SOCKET, SO_PROTOCOL),
      state: diag.state,
      flags: (descriptionFlags(input.fdinfo.flags) | options) >>> 0,
      portid: diag.portid,
      groups: diag.groups,
      dst_portid: diag.dstPortid,
      dst_group: diag.dstGroup,
      fown: dumpFown(input, ctx),
      opts: readSkOpts(input.localFd, false),
    };
    return { type: FD_TYPES.NETLINKSK, id, nlsk };
  },

  async restore(entry, ctx) {
    const nlsk = entry['nlsk'] as ImageEntry;
    const { injector } = ctx;
    const where = `netlink socket ${String(nlsk['id'])}`;
    const fd = Number(
      injector.syscallOrThrow('socket', [BigInt(AF_NETLINK), BigInt(SOCK_RAW), BigInt(Number(nlsk['protocol']))]),
    );
    const groups = ((nlsk['groups'] as number[] | undefined) ?? []).map(Number);
    const portid = Number(nlsk['portid'] ?? 0);
    const sockaddr = (pid: number, groupsWord: number): Buffer => {
      const a = Buffer.alloc(12);
      a.writeUInt16LE(AF_NETLINK, 0);
      a.writeUInt32LE(pid >>> 0, 4);
      a.writeUInt32LE(groupsWord >>> 0, 8);
      return a;
    };
    if (portid !== 0)
      callInTask(injector, where, 'bind', [BigInt(fd), injector.pushData(sockaddr(portid, groups[0] ?? 0)), 12n]);
    // One membership for each group bind did not take: past the first 32, or all of them for a
    // socket that joined groups without being bound (joining does not bind it).
    groups.forEach((word, w) => {
      if (w === 0 && portid !== 0) return;
      for (let bit = 0; bit < 32; bit++)
        if ((word >>> bit) & 1) setSockOptInTask(injector, fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, w * 32 + bit + 1);
    });
    injector.resetScratch();
    const dstPortid = Number(nlsk['dst_portid'] ?? 0);
    const dstGroup = Number(nlsk['dst_group'] ?? 0);
    if (dstPortid !== 0 || dstGroup !== 0)
      callInTask(injector, where, 'connect', [
        BigInt(fd),
        injector.pushData(sockaddr(dstPortid, dstGroup === 0 ? 0 : 1 << (dstGroup - 1))),
        12n,
      ]);
    const flags = Number(nlsk['flags'] ?? 0);
    NETLINK_OPTIONS.forEach((o, i) => {
      if ((flags >>> (FLAG_SHIFT + i)) & 1) setSockOptInTask(injector, fd, SOL_NETLINK, o.opt, 1);
    });
    restoreSkOpts(injector, fd, (nlsk['opts'] as ImageEntry | undefined) ?? {}, false);
    setStatusFlagsInTask(injector, fd, flags & ~OPTION_BITS);
    restoreFown(injector, fd, nlsk['fown'] as ImageEntry | undefined);
    injector.resetScratch();
    return fd;
  },
};
