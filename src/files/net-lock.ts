/**
 * The network lock of `--tcp-established`: while a connection is dumped and not yet restored,
 * its peer's packets are dropped, so that the kernel does not answer them with a reset (there is
 * no socket to take them); the peer retransmits once the connection is back. As CRIU's nftables
 * lock: a table of its own, `inet criu-ts-<PID>`, with a rule per connection, made with nft(8)
 * on dump and deleted on restore (or when the dump fails or leaves the task running). Packets
 * marked NETWORK_LOCK_EXEMPT pass: the segments a restore sends as the peer (tcp-peer-segment.ts).
 */

import { spawnSync } from 'node:child_process';
import { UnsupportedError } from '../errors.js';
import { NETWORK_LOCK_EXEMPT } from './tcp-peer-segment.js';

export interface LockedConnection {
  /** 4 or 6. */
  family: number;
  local: string;
  localPort: number;
  remote: string;
  remotePort: number;
}

const tableOf = (pid: number): string => `criu-ts-${pid}`;

function nft(args: readonly string[], input?: string): { status: number | null; stderr: string } {
  const r = spawnSync('nft', args, { input, encoding: 'utf8' });
  if (r.error !== undefined) {
    const code = (r.error as NodeJS.ErrnoException).code;
    throw new UnsupportedError(
      'network-lock',
      code === 'ENOENT'
        ? 'TCP connections need the network lock, made with nft (nftables), which is not installed'
        : `Cannot run nft for the network lock: ${r.error.message}`,
    );
  }
  return { status: r.status, stderr: r.stderr.trim() };
}

/** Drop the peer's packets of `c` until unlock(pid): in the table of task `pid` (made if need be). */
export function lockConnection(pid: number, conn: LockedConnection): void {
  const c = onTheWire(conn);
  const ip = c.family === 6 ? 'ip6' : 'ip';
  const table = tableOf(pid);
  const rule = (chain: string, saddr: string, sport: number, daddr: string, dport: number): string =>
    `add rule inet ${table} ${chain} meta mark != ${NETWORK_LOCK_EXEMPT} ` +
    `${ip} saddr ${saddr} tcp sport ${sport} ${ip} daddr ${daddr} tcp dport ${dport} drop`;
  const script = [
    `add table inet ${table}`,
    `add chain inet ${table} input { type filter hook input priority -150 ; policy accept ; }`,
    `add chain inet ${table} output { type filter hook output priority -150 ; policy accept ; }`,
    rule('input', c.remote, c.remotePort, c.local, c.localPort),
    rule('output', c.local, c.localPort, c.remote, c.remotePort),
  ].join('\n');
  const r = nft(['-f', '-'], `${script}\n`);
  if (r.status !== 0) throw new UnsupportedError('network-lock', `Cannot lock the network with nft: ${r.stderr}`);
}

/**
 * The connection as its packets carry it: an IPv6 socket talking to an IPv4 peer (a dual-stack
 * listener's connection, ::ffff:a.b.c.d on both ends) sends IPv4 packets.
 */
function onTheWire(c: LockedConnection): LockedConnection {
  const v4 = (a: string): string | undefined => /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a)?.[1];
  const local = v4(c.local);
  const remote = v4(c.remote);
  if (c.family !== 6 || local === undefined || remote === undefined) return c;
  return { ...c, family: 4, local, remote };
}

/** Lift the lock of task `pid` (nothing when there is none). */
export function unlock(pid: number): void {
  const r = nft(['delete', 'table', 'inet', tableOf(pid)]);
  if (r.status !== 0 && !/No such file or directory/.test(r.stderr))
    throw new UnsupportedError('network-lock', `Cannot lift the network lock with nft: ${r.stderr}`);
}
