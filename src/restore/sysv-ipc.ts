/**
 * The System V semaphore sets and message queues of an IPC namespace of the tree's own
 * (src/dump/sysv-ipc.ts), made again inside the new namespace (the caller runs this there, with
 * the namespace's IPC sysctls set: a queue's qbytes above msgmnb would need CAP_SYS_RESOURCE):
 *   - a semaphore set: kernel/sem_next_id = its id, semget(key, nsems, IPC_CREAT | IPC_EXCL |
 *     mode), semctl(SETALL) with its values, then IPC_SET for owner, group and mode;
 *   - a queue: kernel/msg_next_id = its id, msgget, IPC_SET for owner, group, mode and qbytes,
 *     then msgsnd of each message in order.
 * The creator (cuid, cgid) becomes criu's, as for shared memory segments.
 */

import { writeFileSync } from 'node:fs';
import { ImageError, UnsupportedError } from '../errors.js';
import { decodeIpcMessages, type ImageEntry } from '../images/index.js';
import {
  IPC_CREAT,
  IPC_EXCL,
  IPC_NOWAIT,
  IPC_PERM_GID,
  IPC_PERM_MODE,
  IPC_PERM_UID,
  IPC_SET,
  IPC_STAT,
  MSQID_DS_BYTES,
  MSQID_DS_QBYTES,
  SEMID_DS_BYTES,
  SETALL,
} from '../kernel/constants.js';
import * as sys from '../sys/native.js';

export interface SysvRecord {
  entry: ImageEntry;
  extra?: Uint8Array;
}

function descOf(r: SysvRecord, what: string): { key: number; id: number; uid: number; gid: number; mode: number } {
  const d = r.entry['desc'] as ImageEntry | undefined;
  if (d === undefined) throw new ImageError(`ipcns-${what}`, 'an entry has no desc');
  return {
    key: Number(d['key']) >>> 0,
    id: Number(d['id']),
    uid: Number(d['uid']),
    gid: Number(d['gid']),
    mode: Number(d['mode']),
  };
}

/** Make `create` take id `id`: the namespace's next id for that kind, then check what it got. */
function withId(kind: 'sem' | 'msg', id: number, what: string, create: () => number): number {
  writeFileSync(`/proc/sys/kernel/${kind}_next_id`, `${id}\n`);
  let got: number;
  try {
    got = create();
  } catch (err) {
    throw new UnsupportedError('sysv-ipc', `Cannot restore ${what}: ${String(err)}`, { cause: err });
  }
  if (got !== id) throw new UnsupportedError('sysv-ipc', `Cannot restore ${what}: the kernel gave it id ${got}`);
  return got;
}

/** Owner, group and mode into a shmid_ds, semid_ds or msqid_ds read by IPC_STAT, for IPC_SET. */
export function setIpcPerm(ds: Buffer, d: { uid: number; gid: number; mode: number }): void {
  ds.writeUInt32LE(d.uid, IPC_PERM_UID);
  ds.writeUInt32LE(d.gid, IPC_PERM_GID);
  ds.writeUInt16LE(d.mode & 0o777, IPC_PERM_MODE);
}

export function makeSemSets(records: readonly SysvRecord[]): void {
  for (const r of records) {
    const d = descOf(r, 'sem');
    const nsems = Number(r.entry['nsems']);
    const what = `System V semaphore set ${d.id} (key 0x${d.key.toString(16)}, ${nsems} semaphores)`;
    const values = Buffer.from(r.extra ?? new Uint8Array(0));
    if (!Number.isInteger(nsems) || nsems <= 0 || values.length < nsems * 2)
      throw new ImageError('ipcns-sem', `${what}: its values are missing`);
    withId('sem', d.id, what, () => sys.semget(d.key | 0, nsems, (d.mode & 0o777) | IPC_CREAT | IPC_EXCL));
    sys.semctl(d.id, 0, SETALL, values);
    const ds = Buffer.alloc(SEMID_DS_BYTES);
    sys.semctl(d.id, 0, IPC_STAT, ds);
    setIpcPerm(ds, d);
    sys.semctl(d.id, 0, IPC_SET, ds);
  }
}

export function makeMsgQueues(records: readonly SysvRecord[]): void {
  for (const r of records) {
    const d = descOf(r, 'msg');
    const what = `System V message queue ${d.id} (key 0x${d.key.toString(16)})`;
    withId('msg', d.id, what, () => sys.msgget(d.key | 0, (d.mode & 0o777) | IPC_CREAT | IPC_EXCL));
    const msgs = decodeIpcMessages(Buffer.from(r.extra ?? new Uint8Array(0)));
    if (msgs.length !== Number(r.entry['qnum']))
      throw new ImageError('ipcns-msg', `${what}: ${msgs.length} messages, the entry says ${String(r.entry['qnum'])}`);
    const ds = Buffer.alloc(MSQID_DS_BYTES);
    sys.msgctl(d.id, IPC_STAT, ds);
    setIpcPerm(ds, d);
    /** Its size limit: the dumped one, raised for a moment if it was lowered under what it holds. */
    const setLimit = (qbytes: number): void => {
      ds.writeBigUInt64LE(BigInt(qbytes), MSQID_DS_QBYTES);
      try {
        sys.msgctl(d.id, IPC_SET, ds);
      } catch (err) {
        throw new UnsupportedError('sysv-ipc', `Cannot restore ${what}: its size limit ${qbytes}: ${String(err)}`, {
          cause: err,
        });
      }
    };
    const qbytes = Number(r.entry['qbytes']);
    const held = msgs.reduce((n, m) => n + m.text.length, 0);
    setLimit(Math.max(qbytes, held));
    for (const m of msgs) {
      const buf = Buffer.alloc(8 + m.text.length);
      buf.writeBigInt64LE(m.mtype, 0);
      m.text.copy(buf, 8);
      sys.msgsnd(d.id, buf, m.text.length, IPC_NOWAIT);
    }
    if (held > qbytes) setLimit(qbytes);
  }
}
