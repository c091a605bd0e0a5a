/**
 * A service address that moves with a migrated process (criu-migrate --move-address): found on
 * the source host, removed there once the process is frozen, added on the destination before the
 * process's connections are restored, and announced there, so that the peers' packets follow it.
 *
 * Addresses are read and changed with ip(8) (iproute2), as the network lock uses nft(8). The
 * announcement is what a host sends when an address comes to it: for IPv4 a gratuitous ARP
 * request (sender and target both the address) broadcast on the device; for IPv6 an unsolicited
 * neighbour advertisement with the override flag to all nodes. A neighbour that knew the address
 * at the source's link-layer address takes the new one at once instead of after its entry goes
 * stale (tens of seconds, while the connections' retransmissions are lost).
 */

import { spawnSync } from 'node:child_process';
import { isIP } from 'node:net';
import { UnsupportedError, UsageError } from '../errors.js';
import { ipBytes, ipWords } from '../images/ip-address.js';
import {
  AF_INET6,
  AF_PACKET,
  ARPHRD_ETHER,
  ARPOP_REQUEST,
  ETH_P_ARP,
  ETH_P_IP,
  IPPROTO_ICMPV6,
  IPV6_MULTICAST_HOPS,
  IPV6_MULTICAST_IF,
  ND_NA_FLAG_OVERRIDE,
  ND_NEIGHBOR_ADVERT,
  ND_OPT_TARGET_LINKADDR,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_RAW,
  SOL_IPV6,
} from '../kernel/constants.js';
import { setIntOpt } from '../files/sk-opts.js';
import { log } from '../log.js';
import * as sys from '../sys/native.js';

/** An address as a host holds it. */
export interface HostAddress {
  /** The address itself, as text ("198.18.0.200", "fd00::1"). */
  address: string;
  prefix: number;
  /** The device that holds it. */
  dev: string;
}

interface IpLink {
  ifindex: number;
  ifname: string;
  address?: string;
  link_type?: string;
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

function ip(args: readonly string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.error !== undefined) {
    const code = (r.error as NodeJS.ErrnoException).code;
    throw new UnsupportedError(
      'move-address',
      code === 'ENOENT'
        ? 'Moving an address needs ip (iproute2), which is not installed'
        : `Cannot run ip: ${r.error.message}`,
    );
  }
  if (r.status !== 0) throw new UnsupportedError('move-address', `ip ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

function links(): IpLink[] {
  return JSON.parse(ip(['-j', 'addr', 'show'])) as IpLink[];
}

/**
 * "ADDR" as given on a command line, checked: an IPv4 or IPv6 address without prefix, and not
 * link-local (its zone is one host's: it cannot move).
 */
export function parseAddress(text: string): string {
  if (isIP(text) === 0 || text.includes('%'))
    throw new UsageError(`Invalid address "${text}": an IPv4 or IPv6 address, without prefix or zone`);
  if (isIP(text) === 6 && (bytesOf(text).readUInt16BE(0) & 0xffc0) === 0xfe80)
    throw new UsageError(`Invalid address "${text}": a link-local address cannot move to another host`);
  return text;
}

const bytesOf = (text: string): Buffer => ipBytes(ipWords(text));
const sameAddress = (a: string, b: string): boolean => isIP(a) === isIP(b) && bytesOf(a).equals(bytesOf(b));

/** Where this host holds `address`, or undefined. */
export function heldAddress(address: string): HostAddress | undefined {
  for (const l of links())
    for (const a of l.addr_info ?? [])
      if ((a.family === 'inet' || a.family === 'inet6') && sameAddress(a.local, address))
        return { address, prefix: a.prefixlen, dev: l.ifname };
  return undefined;
}

/**
 * Why this host could not take `a` (it holds it already, or has no device of that name), or
 * undefined.
 */
export function cannotTake(a: HostAddress): string | undefined {
  const all = links();
  const holder = all.find((l) => (l.addr_info ?? []).some((i) => sameAddress(i.local, a.address)));
  if (holder !== undefined) return `${a.address} is already on its device ${holder.ifname}`;
  if (!all.some((l) => l.ifname === a.dev)) return `it has no device ${a.dev} for ${a.address}`;
  return undefined;
}

/** Remove `a` from this host. */
export function removeAddress(a: HostAddress): void {
  ip(['addr', 'del', `${a.address}/${a.prefix}`, 'dev', a.dev]);
  log().info(`net: ${a.address}/${a.prefix} removed from ${a.dev}`);
}

/** Add `a` on this host (IPv6: usable at once, without duplicate address detection), and announce it. */
export function addAddress(a: HostAddress): void {
  const isV6 = isIP(a.address) === 6;
  ip(['addr', 'add', `${a.address}/${a.prefix}`, 'dev', a.dev, ...(isV6 ? ['nodad'] : [])]);
  log().info(`net: ${a.address}/${a.prefix} added on ${a.dev}`);
  announceAddress(a);
}

/**
 * Tell the neighbours on `a.dev` that `a.address` is here now. Devices without a link-layer
 * address (loopback, tunnels) have no neighbours to tell. A failure is logged: the address works
 * anyway, the peers only learn of it later.
 */
export function announceAddress(a: HostAddress): void {
  const link = links().find((l) => l.ifname === a.dev);
  const mac = link?.address === undefined ? null : Buffer.from(link.address.split(':').map((h) => parseInt(h, 16)));
  if (link === undefined || mac === null || mac.length !== 6 || mac.every((b) => b === 0)) return;
  try {
    if (isIP(a.address) === 4) sendGratuitousArp(link.ifindex, mac, bytesOf(a.address));
    else sendUnsolicitedAdvert(link.ifindex, mac, a.address);
    log().debug(`net: ${a.address} announced on ${a.dev}`);
  } catch (err) {
    log().warn(`net: cannot announce ${a.address} on ${a.dev}: ${String(err)}`);
  }
}

function sendGratuitousArp(ifindex: number, mac: Buffer, addr: Buffer): void {
  // struct sockaddr_ll to the broadcast address.
  const to = Buffer.alloc(20);
  to.writeUInt16LE(AF_PACKET, 0);
  to.writeUInt16BE(ETH_P_ARP, 2);
  to.writeInt32LE(ifindex, 4);
  to.writeUInt8(6, 11); // sll_halen
  Buffer.alloc(6, 0xff).copy(to, 12);
  // The ARP request: who has ADDR, tell ADDR (at MAC).
  const arp = Buffer.alloc(28);
  arp.writeUInt16BE(ARPHRD_ETHER, 0);
  arp.writeUInt16BE(ETH_P_IP, 2);
  arp.writeUInt8(6, 4);
  arp.writeUInt8(4, 5);
  arp.writeUInt16BE(ARPOP_REQUEST, 6);
  mac.copy(arp, 8);
  addr.copy(arp, 14);
  addr.copy(arp, 24);
  const fd = sys.socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  try {
    sys.sendto(fd, arp, 0, to);
  } finally {
    sys.close(fd);
  }
}

function sendUnsolicitedAdvert(ifindex: number, mac: Buffer, address: string): void {
  const addr = bytesOf(address);
  // struct sockaddr_in6 to ff02::1 on the device.
  const to = Buffer.alloc(28);
  to.writeUInt16LE(AF_INET6, 0);
  bytesOf('ff02::1').copy(to, 8);
  to.writeUInt32LE(ifindex, 24);
  // Type, code, checksum (the kernel's), flags, target, then the target's link-layer address.
  const na = Buffer.alloc(32);
  na.writeUInt8(ND_NEIGHBOR_ADVERT, 0);
  na.writeUInt32BE(ND_NA_FLAG_OVERRIDE, 4);
  addr.copy(na, 8);
  na.writeUInt8(ND_OPT_TARGET_LINKADDR, 24);
  na.writeUInt8(1, 25);
  mac.copy(na, 26);
  const fd = sys.socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMPV6);
  try {
    // Neighbour discovery is only taken with a hop limit of 255 (RFC 4861).
    setIntOpt(fd, SOL_IPV6, IPV6_MULTICAST_HOPS, 255);
    setIntOpt(fd, SOL_IPV6, IPV6_MULTICAST_IF, ifindex);
    sys.bind(fd, address, 0);
    sys.sendto(fd, na, 0, to);
  } finally {
    sys.close(fd);
  }
}
