/**
 * /proc/sysvipc/shm as the kernel prints it: keys signed (a key over 2^31 reads negative), perms
 * in octal with SHM_DEST, a removed segment's key 0. And the live file: a segment made here is
 * in it as made. /proc/sysvipc/sem and /proc/sysvipc/msg, as the kernel prints them.
 */
import t from 'tap';
import { readShmSegments, readSysvObjects, SHM_DEST } from '../../../src/proc/sysvipc.js';
import * as sys from '../../../src/sys/native.js';

const TEXT = `       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
 305441741          2   640                 10000 31010 31010      1   101   104     0     0 1795933753          0 1795933753                     0                     0
-559038737          5  1600                  4096 31010 31010      2     0     0     0     0 1795933753          0 1795933753                  4096                     0
`;

t.test('parses every field it keeps', async (t) => {
  const segs = readShmSegments(TEXT);
  t.same(segs.get(2), {
    key: 305441741,
    id: 2,
    mode: 0o640,
    size: 10000,
    nattch: 1,
    uid: 101,
    gid: 104,
    cuid: 0,
    cgid: 0,
  });
  const removed = segs.get(5);
  t.equal(removed?.key, 0xdeadbeef, 'a key printed negative is the unsigned key');
  t.equal((removed?.mode ?? 0) & SHM_DEST, SHM_DEST, 'SHM_DEST is in the mode');
  t.equal(segs.size, 2);
});

t.test('garbage in the kernel format throws, a short line is skipped', async (t) => {
  t.throws(() => readShmSegments(`header\n 1 2 640 x 1 1 1 0 0 0 0\n`), /cannot parse/);
  t.equal(readShmSegments('header\n1 2 3\n').size, 0);
});

t.test(
  'a segment made here is listed as made',
  { skip: process.getuid?.() === 0 ? false : 'needs root' },
  async (t) => {
    const id = sys.shmget(0, 12345, 0o1000 | 0o600); // IPC_PRIVATE, IPC_CREAT
    t.teardown(() => sys.shmctl(id, 0, null)); // IPC_RMID
    const s = readShmSegments().get(id);
    t.same(s && { key: s.key, size: s.size, mode: s.mode, nattch: s.nattch }, {
      key: 0,
      size: 12345,
      mode: 0o600,
      nattch: 0,
    });
  },
);

t.test('semaphore sets and message queues as the kernel prints them', async (t) => {
  const sem = readSysvObjects(
    'sem',
    `       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime
1868994740          0   640          3   101   102     0     0          0 1795952443
`,
  );
  t.same(sem.get(0), { key: 1868994740, id: 0, mode: 0o640, count: 3, bytes: 0, uid: 101, gid: 102, cuid: 0, cgid: 0 });
  const msg = readSysvObjects(
    'msg',
    `       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime
-1402512649      32768   644          21          2   123     0     7     8     0     0 1795952443          0 1795952443
`,
  );
  t.same(msg.get(32768), {
    key: 0xac675af7,
    id: 32768,
    mode: 0o644,
    count: 2,
    bytes: 21,
    uid: 7,
    gid: 8,
    cuid: 0,
    cgid: 0,
  });
  t.throws(() => readSysvObjects('sem', 'header\n1 x 640 3 0 0 0 0 0 0\n'), /cannot parse/);
});
