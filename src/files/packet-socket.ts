/**
 * Packet sockets (fd kind PACKETSK, AF_PACKET: tcpdump's, a DHCP client's), as CRIU writes them:
 *
 *   files.img   file_entry {type PACKETSK, psk: packet_sock_entry {id, type, protocol, flags,
 *               ifindex, fown, opts, version, reserve, aux_data, orig_dev, vnet_hdr, loss,
 *               timestamp, copy_thresh, mclist}}
 *
 * Dump: packet_diag (NETLINK_SOCK_DIAG, sdiag_family AF_PACKET; see linux/packet_diag.h) tells the
 * interface it is bound to, its protocol, the PACKET_* options and the memberships
 * (PACKET_ADD_MEMBERSHIP: promiscuous, all-multicast, multicast addresses, each as many times as
 * it was added).
 *
 * Restore, inside the task: socket(AF_PACKET, type, protocol); the options; bind to the interface
 * (by index: the same interface on this host, lo being 1 everywhere) when it was bound to one;
 * each membership again; the socket options and flags.
 *
 * Lost, as for UDP (and in CRIU): the packets waiting in its receive queue. Refused in one line,
 * the task running on: mapped rings (PACKET_RX_RING, PACKET_TX_RING), a fanout group, a socket
 * filter, classic (tcpdump's expression) or eBPF, as criu-ts cannot make them again yet; a socket
 * bound to a device since removed; a membership address over 8 bytes. Not kept either (no field
 * in the image): PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING.
 *
 * Image kinds: FILES (the psk entry).
 */

import { UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { AF_PACKET, SO_DOMAIN, SO_TYPE, SOL_SOCKET } from '../kernel/constants.js';
import { log } from '../log.js';
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
import { diagAttrs, sockDiagFind } from './sock-diag.js';
import { FD_TYPES, type FdDumpInput, type FdKindModule } from './types.js';

const SOL_PACKET = 263;
const PACKET_ADD_MEMBERSHIP = 1;
const PACKET_COPY_THRESH = 7;
const PACKET_AUXDATA = 8;
const PACKET_ORIGDEV = 9;
const PACKET_VERSION = 10;
const PACKET_RESERVE = 12;
const PACKET_LOSS = 14;
const PACKET_VNET_HDR = 15;
const PACKET_TIMESTAMP = 17;

const PACKET_SHOW_INFO = 0x1;
const PACKET_SHOW_MCLIST = 0x2;
const PACKET_SHOW_RING_CFG = 0x4;
const PACKET_SHOW_FANOUT = 0x8;
const PACKET_SHOW_MEMINFO = 0x10;
const PACKET_DIAG_INFO = 0;
const PACKET_DIAG_MCLIST = 1;
const PACKET_DIAG_RX_RING = 2;
const PACKET_DIAG_TX_RING = 3;
const PACKET_DIAG_FANOUT = 4;
const PACKET_DIAG_MEMINFO = 6;
const PDI_AUXDATA = 0x2;
const PDI_ORIGDEV = 0x4;
const PDI_VNETHDR = 0x8;
const PDI_LOSS = 0x10;

export interface PacketDiag {
  ino: number;
  type: number;
  /** The protocol (an ETH_P_*), in host order as packet_diag tells it; 0: none. */
  protocol: number;
  ifindex: number;
  version: number;
  reserve: number;
  copyThresh: number;
  timestamp: number;
  flags: number;
  /** Each membership as many times as it was added. */
  mclist: { index: number; type: number; addr: Buffer }[];
  hasRing: boolean;
  hasFanout: boolean;
  /** Bytes of packets waiting to be read. */
  rmem: number;
}

/** The packet_diag of the socket with inode `ino` in criu's network namespace, or null. */
export function packetDiag(ino: number): PacketDiag | null {
  const show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT | PACKET_SHOW_MEMINFO;
  const body = sockDiagFind(AF_PACKET, 0, show, ino, 4);
  return body === null ? null : parseDiag(body);
}

function parseDiag(body: Buffer): PacketDiag {
  const diag: PacketDiag = {
    type: body.readUInt8(1),
    protocol: body.readUInt16LE(2),
    ino: body.readUInt32LE(4),
    ifindex: 0,
    version: 0,
    reserve: 0,
    copyThresh: 0,
    timestamp: 0,
    flags: 0,
    mclist: [],
    hasRing: false,
    hasFanout: false,
    rmem: 0,
  };
  for (const { type, data } of diagAttrs(body, 16)) {
    if (type === PACKET_DIAG_INFO && data.length >= 24) {
      diag.ifindex = data.readInt32LE(0);
      diag.version = data.readUInt32LE(4);
      diag.reserve = data.readUInt32LE(8);
      diag.copyThresh = data.readUInt32LE(12);
      diag.timestamp = data.readUInt32LE(16);
      diag.flags = data.readUInt32LE(20);
    } else if (type === PACKET_DIAG_MCLIST) {
      for (let off = 0; off + 44 <= data.length; off += 44) {
        const count = data.readUInt32LE(off + 4);
        const alen = Math.min(data.readUInt16LE(off + 10), 32);
        for (let i = 0; i < count; i++)
          diag.mclist.push({
            index: data.readUInt32LE(off),
            type: data.readUInt16LE(off + 8),
            addr: Buffer.from(data.subarray(off + 12, off + 12 + alen)),
          });
      }
    } else if (type === PACKET_DIAG_RX_RING || type === PACKET_DIAG_TX_RING) diag.hasRing = true;
    else if (type === PACKET_DIAG_FANOUT) diag.hasFanout = true;
    else if (type === PACKET_DIAG_MEMINFO && data.length >= 4) diag.rmem = data.readUInt32LE(0);
  }
  return diag;
}

const swap16 = (v: number): number => ((v & 0xff) << 8) | ((v >> 8) & 0xff);

function refusalOf(input: FdDumpInput, diag: PacketDiag | null): string | undefined {
  const what = `fd ${input.fd} of task ${input.pid}`;
  if (isOtherNetns(input.localFd)) return `Cannot dump ${what}: a packet socket of another network namespace`;
  if (diag === null) return `Cannot dump ${what}: the kernel does not list the packet socket`;
  // packet_diag shows only a classic filter, and only to CAP_NET_ADMIN: asked of the socket.
  const why = diag.hasRing
    ? 'mapped rings (PACKET_RX_RING, PACKET_TX_RING)'
    : diag.hasFanout
      ? 'a fanout group (PACKET_FANOUT)'
      : (socketFilterOf(input.localFd) ??
        (diag.ifindex === -1
          ? 'an interface that is gone (bound to a device since removed)'
          : diag.mclist.some((m) => m.addr.length > 8)
            ? 'a membership address longer than 8 bytes'
            : undefined));
  return why === undefined ? undefined : `Cannot dump ${what}: a packet socket with ${why}, not supported yet`;
}

export const packetSocketFile: FdKindModule = {
  type: FD_TYPES.PACKETSK,
  name: 'packet socket',
  restoreOrder: 10,

  matches(input) {
    return input.link.startsWith('socket:[') && intOpt(input.localFd, SOL_SOCKET, SO_DOMAIN) === AF_PACKET;
  },

  refusal(input) {
    return refusalOf(input, packetDiag(Number(input.stat.ino)));
  },

  async dump(input, id, ctx) {
    const diag = packetDiag(Number(input.stat.ino));
    const refusal = refusalOf(input, diag);
    if (refusal !== undefined || diag === null) throw new UnsupportedError('packet', refusal ?? '');
    if (diag.rmem > 0)
      log().warn(
        `${diag.rmem} bytes of packets waiting in packet socket fd ${input.fd} of task ${input.pid} are not dumped`,
      );
    const psk: ImageEntry = {
      id,
      type: intOpt(input.localFd, SOL_SOCKET, SO_TYPE),
      // In network order, as socket(2) takes it and CRIU writes it.
      protocol: swap16(diag.protocol),
      flags: descriptionFlags(input.fdinfo.flags),
      ifindex: diag.ifindex,
      fown: dumpFown(input, ctx),
      opts: readSkOpts(input.localFd, false),
      version: diag.version,
      reserve: diag.reserve,
      aux_data: (diag.flags & PDI_AUXDATA) !== 0,
      orig_dev: (diag.flags & PDI_ORIGDEV) !== 0,
      vnet_hdr: (diag.flags & PDI_VNETHDR) !== 0,
      loss: (diag.flags & PDI_LOSS) !== 0,
      timestamp: diag.timestamp,
      copy_thresh: diag.copyThresh,
      mclist: diag.mclist.map((m) => ({ index: m.index, type: m.type, addr: m.addr })),
    };
    return { type: FD_TYPES.PACKETSK, id, psk };
  },

  async restore(entry, ctx) {
    const psk = entry['psk'] as ImageEntry;
    const { injector } = ctx;
    const where = `packet socket ${String(psk['id'])}`;
    // What CRIU's images may hold and criu-ts cannot make yet.
    const fanout = psk['fanout'] === undefined ? 0xffffffff : Number(psk['fanout']);
    if (fanout !== 0xffffffff || psk['rx_ring'] !== undefined || psk['tx_ring'] !== undefined)
      throw new UnsupportedError(
        'packet',
        `Cannot restore ${where}: its ${fanout !== 0xffffffff ? 'fanout group' : 'rings'}, not supported yet`,
      );
    // In network order in the image, as socket(2) and bind(2) take it.
    const netProtocol = Number(psk['protocol'] ?? 0) & 0xffff;
    const fd = Number(
      injector.syscallOrThrow('socket', [BigInt(AF_PACKET), BigInt(Number(psk['type'])), BigInt(netProtocol)]),
    );
    const setInt = (name: number, v: number): void => setSockOptInTask(injector, fd, SOL_PACKET, name, v);
    // The version and reserve first: they may not change once a ring exists (none here).
    if (Number(psk['version'] ?? 0) !== 0) setInt(PACKET_VERSION, Number(psk['version']));
    if (Number(psk['reserve'] ?? 0) !== 0) setInt(PACKET_RESERVE, Number(psk['reserve']));
    if (psk['aux_data'] === true) setInt(PACKET_AUXDATA, 1);
    if (psk['orig_dev'] === true) setInt(PACKET_ORIGDEV, 1);
    if (psk['vnet_hdr'] === true) setInt(PACKET_VNET_HDR, 1);
    if (psk['loss'] === true) setInt(PACKET_LOSS, 1);
    if (Number(psk['timestamp'] ?? 0) !== 0) setInt(PACKET_TIMESTAMP, Number(psk['timestamp']));
    if (Number(psk['copy_thresh'] ?? 0) !== 0) setInt(PACKET_COPY_THRESH, Number(psk['copy_thresh']));
    const ifindex = Number(psk['ifindex'] ?? 0);
    if (ifindex !== 0) {
      // struct sockaddr_ll: family, protocol (network order), ifindex, then unused fields.
      const ll = Buffer.alloc(20);
      ll.writeUInt16LE(AF_PACKET, 0);
      ll.writeUInt16LE(netProtocol, 2);
      ll.writeInt32LE(ifindex, 4);
      callInTask(injector, where, 'bind', [BigInt(fd), injector.pushData(ll), 20n]);
    }
    for (const m of (psk['mclist'] as ImageEntry[] | undefined) ?? []) {
      // struct packet_mreq: ifindex, type, address length, address (8 bytes).
      const addr = Buffer.from((m['addr'] as Uint8Array | undefined) ?? new Uint8Array(0)).subarray(0, 8);
      const mreq = Buffer.alloc(16);
      mreq.writeInt32LE(Number(m['index']), 0);
      mreq.writeUInt16LE(Number(m['type']), 4);
      mreq.writeUInt16LE(addr.length, 6);
      addr.copy(mreq, 8);
      setSockOptInTask(injector, fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq);
    }
    restoreSkOpts(injector, fd, (psk['opts'] as ImageEntry | undefined) ?? {}, false);
    setStatusFlagsInTask(injector, fd, Number(psk['flags'] ?? 0));
    restoreFown(injector, fd, psk['fown'] as ImageEntry | undefined);
    injector.resetScratch();
    return fd;
  },
};
