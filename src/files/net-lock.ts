/**
 * The network lock of `--tcp-established`: while a connection is dumped and not yet restored,
 * its peer's packets are dropped, so that the kernel does not answer them with a reset (there is
 * no socket to take them); the peer retransmits once the connection is back. As CRIU's nftables
 * lock: a table of its own, `inet criu-ts-<PID>`, with a rule pair per connection, made with
 * nft(8) on dump and deleted on restore (or when the dump fails or leaves the task running). The
 * restore locks the connections again in a table of its own (LockOwner). Packets marked
 * NETWORK_LOCK_EXEMPT pass: the segments a restore sends as the peer (tcp-peer-segment.ts).
 */

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
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

/**
 * Whose lock: the dump's (`criu-ts-<PID>`: until the connection is restored, on this host or
 * another) or a restore's own (`criu-ts-restore-<PID>`: until the connection is back or the
 * restore failed; a failed restore lifts only its own, so a dump's lock stays for the next try).
 */
export type LockOwner = 'dump' | 'restore';

/**
 * What names a process's table: its pid, or for a tree with a PID namespace of its own (whose
 * pids other such trees have too) nsLockId of the run and its pid there.
 */
export type LockId = number | string;

const tableOf = (id: LockId, owner: LockOwner): string =>
  owner === 'dump' ? `criu-ts-${id}` : `criu-ts-restore-${id}`;

/**
 * The LockId of process `vpid` of a tree with a PID namespace of its own, locked by the run
 * `runId` (a dump's: the inventory's dump_criu_run_id, which the restore reads back; a restore's
 * own): a short digest of the run, then the pid.
 */
export function nsLockId(runId: string, vpid: number): string {
  return `${createHash('sha256').update(runId).digest('hex').slice(0, 12)}-${vpid}`;
}

function nft(args: readonly string[], input?: string): { status: number | null; stdout: string; stderr: string } {
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
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
}

/**
 * Drop the peers' packets of `conns` (and ours to them) until unlock(pid, owner): in the table of
 * task `pid` (made if need be).
 */
export function lockConnections(id: LockId, conns: readonly LockedConnection[], owner: LockOwner = 'dump'): void {
  lockTables(new Map([[id, conns]]), owner);
}

/** lockConnections of several tasks' connections, with one nft run for all. */
export function lockTables(byId: ReadonlyMap<LockId, readonly LockedConnection[]>, owner: LockOwner): void {
  const script: string[] = [];
  for (const [id, conns] of byId) {
    if (conns.length === 0) continue;
    const table = tableOf(id, owner);
    script.push(
      `add table inet ${table}`,
      `add chain inet ${table} input { type filter hook input priority -150 ; policy accept ; }`,
      `add chain inet ${table} output { type filter hook output priority -150 ; policy accept ; }`,
    );
    for (const conn of conns) {
      const c = onTheWire(conn);
      const ip = c.family === 6 ? 'ip6' : 'ip';
      const rule = (chain: string, saddr: string, sport: number, daddr: string, dport: number): string =>
        `add rule inet ${table} ${chain} meta mark != ${NETWORK_LOCK_EXEMPT} ` +
        `${ip} saddr ${saddr} tcp sport ${sport} ${ip} daddr ${daddr} tcp dport ${dport} drop`;
      script.push(rule('input', c.remote, c.remotePort, c.local, c.localPort));
      script.push(rule('output', c.local, c.localPort, c.remote, c.remotePort));
    }
  }
  if (script.length === 0) return;
  const r = nft(['-f', '-'], `${script.join('\n')}\n`);
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

/** Lift the lock of task `pid` made by `owner` (nothing when there is none). */
export function unlock(id: LockId, owner: LockOwner = 'dump'): void {
  const r = nft(['delete', 'table', 'inet', tableOf(id, owner)]);
  if (r.status !== 0 && !/No such file or directory/.test(r.stderr))
    throw new UnsupportedError('network-lock', `Cannot lift the network lock with nft: ${r.stderr}`);
}

/**
 * Lift the locks of several tasks, of each owner in `owners` (those there are): two nft runs for
 * all (which tables exist, then their deletion in one transaction). Should that fail (a table
 * gone meanwhile fails the whole transaction), each table on its own; the first error is thrown
 * once all were tried.
 */
export function unlockTables(ids: Iterable<LockId>, owners: readonly LockOwner[]): void {
  const wanted = [...ids].flatMap((id) => owners.map((owner) => ({ id, owner, table: tableOf(id, owner) })));
  const eachAlone = (): void => {
    let first: unknown;
    for (const w of wanted) {
      try {
        unlock(w.id, w.owner);
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  };
  if (wanted.length <= 1) return eachAlone();
  const listed = nft(['list', 'tables', 'inet']);
  if (listed.status !== 0) return eachAlone();
  const present = new Set([...listed.stdout.matchAll(/^table inet (\S+)$/gm)].map((m) => m[1]));
  const script = wanted.filter((w) => present.has(w.table)).map((w) => `delete table inet ${w.table}`);
  if (script.length === 0) return;
  if (nft(['-f', '-'], `${script.join('\n')}\n`).status !== 0) eachAlone();
}
