/**
 * The System V semaphore and message queue wrappers (native/ipc.cc) on real objects of this IPC
 * namespace (IPC_PRIVATE, removed at the end): SETALL/GETALL round trip, msgsnd then msgrcv with
 * MSG_COPY (the message stays queued) and without, and a bad id as a typed error.
 */
import t from 'tap';
import { SyscallError } from '../../../src/errors.js';
import {
  GETALL,
  IPC_CREAT,
  IPC_NOWAIT,
  IPC_RMID,
  IPC_STAT,
  MSG_COPY,
  MSQID_DS_BYTES,
  SETALL,
} from '../../../src/kernel/constants.js';
import { msgctl, msgget, msgrcv, msgsnd, semctl, semget } from '../../../src/sys/native.js';

t.test('semaphores: SETALL then GETALL', async (t) => {
  const id = semget(0, 3, IPC_CREAT | 0o600);
  t.teardown(() => semctl(id, 0, IPC_RMID, null));
  const values = Buffer.from(new Uint16Array([4, 0, 32767]).buffer);
  semctl(id, 0, SETALL, values);
  const back = Buffer.alloc(8);
  semctl(id, 0, GETALL, back);
  t.same([...new Uint16Array(back.buffer, back.byteOffset, 3)], [4, 0, 32767]);
});

t.test('messages: MSG_COPY leaves them queued', async (t) => {
  const id = msgget(0, IPC_CREAT | 0o600);
  t.teardown(() => msgctl(id, IPC_RMID, null));
  for (const [type, text] of [
    [3n, 'one'],
    [9n, 'second'],
  ] as const) {
    const m = Buffer.alloc(8 + text.length);
    m.writeBigInt64LE(type, 0);
    m.write(text, 8);
    msgsnd(id, m, text.length, IPC_NOWAIT);
  }
  const buf = Buffer.alloc(8 + 64);
  const n = msgrcv(id, buf, 64, 1, IPC_NOWAIT | MSG_COPY);
  t.same([buf.readBigInt64LE(0), buf.toString('utf8', 8, 8 + n)], [9n, 'second'], 'the second message, copied');
  const ds = Buffer.alloc(MSQID_DS_BYTES);
  msgctl(id, IPC_STAT, ds);
  t.equal(ds.readBigUInt64LE(80), 2n, 'both still queued (msg_qnum)');
  const first = msgrcv(id, buf, 64, 0, IPC_NOWAIT);
  t.equal(buf.toString('utf8', 8, 8 + first), 'one', 'taken in order');
});

t.test('a bad id: a typed error', async (t) => {
  let err: unknown = null;
  try {
    msgrcv(-1, Buffer.alloc(16), 8, 0, IPC_NOWAIT);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof SyscallError);
  t.match(err, { errnoCode: 'EINVAL', syscall: 'msgrcv' });
});
