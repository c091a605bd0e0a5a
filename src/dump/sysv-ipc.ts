/**
 * The System V semaphore sets and message queues of an IPC namespace of the tree's own
 * (namespaces.ts), as CRIU dumps them: every one the namespace holds, used by the tree or not (no
 * fd or mapping ties one to a process).
 *
 *   ipcns-sem-<id>.img   ipc_sem_entry {desc, nsems}, then the values (a u16 each, padded to 8)
 *   ipcns-msg-<id>.img   ipc_msg_entry {desc, qbytes, qnum}, then each message: the length of
 *                        its ipc_msg {mtype, msize}, the ipc_msg, the text padded to 8
 *
 * Read from inside the namespace (the caller runs this there): /proc/sysvipc/sem and msg for the
 * objects, semctl(GETALL) for the values, msgctl(IPC_STAT) for qbytes, and msgrcv(MSG_COPY), which
 * copies the n-th message without taking it off the queue. The queues are read while the tree is
 * frozen; a process outside it could still change them meanwhile (none should be in the namespace).
 *
 * Not kept, as in CRIU: the semaphores' undo lists (SEM_UNDO adjustments of each process) and
 * the times (otime, ctime, stime, rtime) and pids (lspid, lrpid) of the last operations.
 *
 * Image kinds: IPCNS_SEM, IPCNS_MSG.
 */

import { encodeIpcMessages, type ImageEntry, type IpcMessage } from '../images/index.js';
import { readSysvObjects, type SysvObject } from '../proc/sysvipc.js';
import * as sys from '../sys/native.js';
import { GETALL, IPC_NOWAIT, IPC_STAT, MSG_COPY, MSQID_DS_BYTES, MSQID_DS_QBYTES } from '../kernel/constants.js';

function desc(o: SysvObject): ImageEntry {
  return { key: o.key, uid: o.uid, gid: o.gid, cuid: o.cuid, cgid: o.cgid, mode: o.mode, id: o.id };
}

/** The IPCNS_SEM records of this thread's IPC namespace. */
export function dumpSemSets(): { entry: ImageEntry; extra: Buffer }[] {
  return [...readSysvObjects('sem').values()]
    .sort((a, b) => a.id - b.id)
    .map((o) => {
      const values = Buffer.alloc(Math.ceil((o.count * 2) / 8) * 8);
      sys.semctl(o.id, 0, GETALL, values);
      return { entry: { desc: desc(o), nsems: o.count }, extra: values };
    });
}

/** The IPCNS_MSG records of this thread's IPC namespace, each queue's messages copied in order. */
export function dumpMsgQueues(): { entry: ImageEntry; extra: Buffer }[] {
  return [...readSysvObjects('msg').values()]
    .sort((a, b) => a.id - b.id)
    .map((o) => {
      const ds = Buffer.alloc(MSQID_DS_BYTES);
      sys.msgctl(o.id, IPC_STAT, ds);
      // No message is longer than all the queue holds.
      const buf = Buffer.alloc(8 + o.bytes);
      const msgs: IpcMessage[] = [];
      for (let i = 0; i < o.count; i++) {
        const n = sys.msgrcv(o.id, buf, o.bytes, i, IPC_NOWAIT | MSG_COPY);
        msgs.push({ mtype: buf.readBigInt64LE(0), text: Buffer.from(buf.subarray(8, 8 + n)) });
      }
      return {
        entry: { desc: desc(o), qbytes: Number(ds.readBigUInt64LE(MSQID_DS_QBYTES)), qnum: o.count },
        extra: encodeIpcMessages(msgs),
      };
    });
}
