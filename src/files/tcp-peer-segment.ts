/**
 * A TCP segment as if the peer of a restored connection had sent it: how a restore puts back what
 * TCP repair mode has no option for, the peer's FIN (a half-closed connection whose peer had shut
 * its side) and the peer's ACK of our FIN. CRIU does the same (libsoccr's send_fin).
 *
 * The segment is built whole (IP header included: IP_HDRINCL, or IPPROTO_RAW for IPv6) with the
 * peer's address as source, and sent from criu's own raw socket to the connection's local address;
 * it comes in through loopback like any packet. It carries SO_MARK NETWORK_LOCK_EXEMPT, which the
 * network lock (net-lock.ts) lets through while it drops the real peer's packets.
 */

import { AF_INET, AF_INET6, SOCK_CLOEXEC, SOCK_RAW, SOL_SOCKET, SO_MARK } from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { setIntOpt } from './sk-opts.js';

/** The mark of criu's own segments (CRIU's SOCCR_MARK): the network lock lets them through. */
export const NETWORK_LOCK_EXEMPT = 0xc114;

const IPPROTO_TCP = 6;
const IPPROTO_RAW = 255;
export const TH_FIN = 0x01;
export const TH_ACK = 0x10;

export interface SegmentEnds {
  /** The connection's own end: the segment's destination. Network-order address bytes (4 or 16). */
  local: Buffer;
  localPort: number;
  /** The peer: the segment's source. */
  remote: Buffer;
  remotePort: number;
}

/** Send `flags` (TH_FIN | TH_ACK, or TH_ACK) from the peer of `ends` with these numbers. */
export function sendPeerSegment(ends: SegmentEnds, seq: number, ack: number, flags: number, window: number): void {
  const isV6 = ends.local.length === 16;
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(ends.remotePort, 0);
  tcp.writeUInt16BE(ends.localPort, 2);
  tcp.writeUInt32BE(seq >>> 0, 4);
  tcp.writeUInt32BE(ack >>> 0, 8);
  tcp.writeUInt8(5 << 4, 12); // 20 bytes, no options
  tcp.writeUInt8(flags, 13);
  tcp.writeUInt16BE(Math.min(window, 0xffff), 14);
  tcp.writeUInt16BE(checksum(pseudoHeader(ends, tcp.length), tcp), 16);
  let packet: Buffer;
  let to: Buffer;
  if (isV6) {
    const ip = Buffer.alloc(40);
    ip.writeUInt32BE(6 << 28, 0);
    ip.writeUInt16BE(tcp.length, 4);
    ip.writeUInt8(IPPROTO_TCP, 6);
    ip.writeUInt8(64, 7);
    ends.remote.copy(ip, 8);
    ends.local.copy(ip, 24);
    packet = Buffer.concat([ip, tcp]);
    to = Buffer.alloc(28); // sockaddr_in6, port 0: the header is ours
    to.writeUInt16LE(AF_INET6, 0);
    ends.local.copy(to, 8);
  } else {
    // IP_HDRINCL: the kernel fills in the total length, the id and the header checksum.
    const ip = Buffer.alloc(20);
    ip.writeUInt8(0x45, 0);
    ip.writeUInt16BE(0x4000, 6); // don't fragment
    ip.writeUInt8(64, 8);
    ip.writeUInt8(IPPROTO_TCP, 9);
    ends.remote.copy(ip, 12);
    ends.local.copy(ip, 16);
    packet = Buffer.concat([ip, tcp]);
    to = Buffer.alloc(16);
    to.writeUInt16LE(AF_INET, 0);
    ends.local.copy(to, 4);
  }
  const fd = sys.socket(isV6 ? AF_INET6 : AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  try {
    setIntOpt(fd, SOL_SOCKET, SO_MARK, NETWORK_LOCK_EXEMPT);
    sys.sendto(fd, packet, 0, to);
  } finally {
    sys.close(fd);
  }
}

function pseudoHeader(ends: SegmentEnds, length: number): Buffer {
  if (ends.local.length === 16) {
    const p = Buffer.alloc(40);
    ends.remote.copy(p, 0);
    ends.local.copy(p, 16);
    p.writeUInt32BE(length, 32);
    p.writeUInt8(IPPROTO_TCP, 39);
    return p;
  }
  const p = Buffer.alloc(12);
  ends.remote.copy(p, 0);
  ends.local.copy(p, 4);
  p.writeUInt8(IPPROTO_TCP, 9);
  p.writeUInt16BE(length, 10);
  return p;
}

/** The Internet checksum (RFC 1071) of the concatenation of `parts` (each of even length). */
function checksum(...parts: Buffer[]): number {
  let sum = 0;
  for (const b of parts) for (let i = 0; i < b.length; i += 2) sum += b.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}
