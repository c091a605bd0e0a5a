/**
 * Cross-process calls on real processes: process_vm_readv/writev, reads of /proc/PID/mem
 * (memReadv), pidfd_open/pidfd_getfd/
 * pidfd_send_signal, prlimit, get_robust_list, kcmp, kill, and clone3Exec with set_tid.
 */
import { fstatSync, readFileSync, statSync } from 'node:fs';
import t from 'tap';
import {
  clone3Exec,
  close,
  memReadv,
  memReadvAsync,
  open,
  getRobustList,
  kcmp,
  pidfdGetfd,
  pidfdOpen,
  pidfdSendSignal,
  processVmReadv,
  processVmReadvAsync,
  processVmWritev,
  processVmWritevAsync,
  prlimit,
  ptraceDetach,
  ptraceInterrupt,
  ptraceSeize,
  waitpid,
} from '../../../src/sys/native.js';
import {
  __WALL,
  KCMP_FILE,
  KCMP_VM,
  O_CLOEXEC,
  RLIMIT_NOFILE,
  SIGCHLD,
  SIGKILL,
} from '../../../src/kernel/constants.js';
import { decodeWaitStatus } from '../../../src/sys/wait.js';
import { SyscallError } from '../../../src/errors.js';
import { argvRange, freePid, killAndReap, spawnDetached, waitGone } from './procs.js';

t.setTimeout(60000);

function remote(...pairs: [bigint, bigint][]): BigUint64Array {
  return new BigUint64Array(pairs.flat());
}

t.test("memReadv: /proc/PID/mem read range by range, with process_vm_readv's result", async (t) => {
  const pid = spawnDetached(t, 'sleep 1000.25');
  const argv = argvRange(pid);
  const len = Number(argv.end - argv.start);
  const cmdline = readFileSync(`/proc/${pid}/cmdline`);
  const fd = open(`/proc/${pid}/mem`, O_CLOEXEC, 0);
  t.teardown(() => close(fd));
  const dst = Buffer.alloc(len + 8, 0xee);
  t.equal(memReadv(fd, dst, 4, remote([argv.start, BigInt(len)])), len);
  t.same(dst.subarray(4, 4 + len), cmdline);
  t.equal(dst[0], 0xee, 'bytes before dstOffset untouched');
  t.equal(dst[len + 4], 0xee, 'bytes after the read untouched');
  const two = Buffer.alloc(len);
  t.equal(await memReadvAsync(fd, two, 0, remote([argv.start + 6n, BigInt(len - 7)], [argv.start, 6n])), len - 1);
  t.equal(two.subarray(0, len - 1).toString('latin1'), '1000.25sleep\u0000', 'ranges gathered in order');
  // A range that cannot be read: short after what was read; an error (EIO) when nothing was.
  t.equal(memReadv(fd, dst, 0, remote([argv.start, 5n], [8n, 8n], [argv.start, 5n])), 5, 'short at the unmapped range');
  let unmapped: unknown = null;
  try {
    memReadv(fd, dst, 0, remote([8n, 8n]));
  } catch (err) {
    unmapped = err;
  }
  t.match(unmapped, { code: 'ESYSCALL', errnoCode: 'EIO', syscall: 'pread(/proc/PID/mem)' }, 'nothing readable: EIO');
  t.throws(() => memReadv(fd, Buffer.alloc(4), 0, remote([argv.start, 8n])), RangeError, 'local range checked');
  killAndReap(pid);
  // Not our child (the shell's): killAndReap cannot wait for it, and it may still be exiting.
  t.ok(await waitGone(pid, 5000), 'the task is gone');
  t.equal(memReadv(fd, dst, 0, remote([argv.start, 8n])), 0, 'a task gone: nothing read, no error (end of file)');
});

t.test('process_vm_readv/writev on the argv of another process', async (t) => {
  const pid = spawnDetached(t, 'sleep 1000.5');
  const argv = argvRange(pid);
  const len = Number(argv.end - argv.start);
  const cmdline = readFileSync(`/proc/${pid}/cmdline`);
  t.equal(cmdline.toString(), 'sleep\u00001000.5\u0000');

  const dst = Buffer.alloc(len + 8, 0xee);
  t.equal(processVmReadv(pid, dst, 4, remote([argv.start, BigInt(len)])), len);
  t.same(dst.subarray(4, 4 + len), cmdline);
  t.equal(dst[0], 0xee, 'bytes before dstOffset untouched');
  t.equal(dst[len + 4], 0xee, 'bytes after the copy untouched');

  // Two remote ranges gather into one local range, in order.
  const two = Buffer.alloc(len);
  t.equal(processVmReadv(pid, two, 0, remote([argv.start + 6n, BigInt(len - 6)], [argv.start, 6n])), len);
  t.equal(two.toString('latin1'), '1000.5\u0000sleep\u0000');

  const viaAsync = Buffer.alloc(len);
  t.equal(await processVmReadvAsync(pid, viaAsync, 0, remote([argv.start, BigInt(len)])), len);
  t.same(viaAsync, cmdline);

  t.equal(processVmWritev(pid, Buffer.from('xxSLEEP'), 2, remote([argv.start, 5n])), 5);
  t.equal(readFileSync(`/proc/${pid}/cmdline`).subarray(0, 5).toString(), 'SLEEP');
  t.equal(await processVmWritevAsync(pid, Buffer.from('nap'), 0, remote([argv.start, 3n])), 3);
  t.equal(readFileSync(`/proc/${pid}/cmdline`).subarray(0, 5).toString(), 'napEP');

  // Unmapped memory: EFAULT, with the pid in the error.
  await t.rejects(processVmReadvAsync(pid, Buffer.alloc(8), 0, remote([8n, 8n])), {
    code: 'ESYSCALL',
    errnoCode: 'EFAULT',
    syscall: 'process_vm_readv',
    args: [pid],
  });
  t.throws(() => processVmReadv(pid, Buffer.alloc(4), 0, remote([argv.start, 8n])), RangeError, 'local range checked');
  t.throws(
    () => processVmReadv(pid, Buffer.alloc(8), 0, new BigUint64Array([argv.start])),
    RangeError,
    'pairs checked',
  );
});

t.test('pidfd_open and pidfd_getfd duplicate a file of another process', async (t) => {
  const pid = spawnDetached(t, 'sleep 1000', 'exec 7</etc/hostname');
  const pidfd = pidfdOpen(pid, 0);
  t.teardown(() => close(pidfd));
  const fd = pidfdGetfd(pidfd, 7, 0);
  t.teardown(() => close(fd));
  t.equal(fstatSync(fd).ino, statSync('/etc/hostname').ino, 'the same file');
  // kcmp: the duplicate is the same open file description as the target's fd 7, but not fd 0.
  t.equal(kcmp(pid, process.pid, KCMP_FILE, 7n, BigInt(fd)), 0);
  t.not(kcmp(pid, process.pid, KCMP_FILE, 0n, BigInt(fd)), 0);
  t.not(kcmp(pid, process.pid, KCMP_VM, 0n, 0n), 0, 'different mm');
  t.equal(kcmp(pid, pid, KCMP_VM, 0n, 0n), 0, 'same mm');

  let err: unknown;
  try {
    pidfdGetfd(pidfd, 99, 0);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof SyscallError);
  t.match(err, { errnoCode: 'EBADF', syscall: 'pidfd_getfd', args: [pidfd, 99] });

  pidfdSendSignal(pidfd, SIGKILL, 0);
  t.ok(await waitGone(pid, 5000), 'pidfd_send_signal killed it');
});

t.test('prlimit and get_robust_list of another process', async (t) => {
  const pid = spawnDetached(t, 'sleep 1000');
  const limits = readFileSync(`/proc/${pid}/limits`, 'utf8');
  const line = limits.split('\n').find((l) => l.startsWith('Max open files'));
  const [soft = '', hard = ''] = line?.replace('Max open files', '').trim().split(/\s+/) ?? [];
  const nofile = prlimit(pid, RLIMIT_NOFILE, null);
  t.same(nofile, { cur: BigInt(soft), max: BigInt(hard) });
  // Lowering the soft limit needs no CAP_SYS_RESOURCE.
  const old = prlimit(pid, RLIMIT_NOFILE, { cur: 64n, max: nofile.max });
  t.same(old, nofile);
  t.equal(prlimit(pid, RLIMIT_NOFILE, null).cur, 64n);

  // glibc registers each thread's robust list head at start: struct robust_list_head is 24 bytes.
  const robust = getRobustList(pid);
  t.equal(robust.len, 24n);
  t.not(robust.head, 0n);
  t.match(
    (() => {
      try {
        return getRobustList(0x3ffffff);
      } catch (e) {
        return e;
      }
    })(),
    { errnoCode: 'ESRCH', syscall: 'get_robust_list' },
  );
});

t.test('clone3Exec with set_tid starts a program at a chosen pid', async (t) => {
  const want = freePid();
  const pid = clone3Exec({
    flags: 0n,
    exitSignal: SIGCHLD,
    setTid: [want],
    path: '/bin/sh',
    argv: ['sh', '-c', 'exit 7'],
    envp: [],
  });
  t.teardown(() => killAndReap(pid));
  t.equal(pid, want, 'got the pid asked for');
  const r = waitpid(pid, __WALL, 5000);
  t.ok(r);
  if (r) t.same(decodeWaitStatus(r.status), { kind: 'exited', exitCode: 7 });

  // The child starts with default signal dispositions and an empty mask, despite Node ignoring
  // SIGPIPE and the tracer thread blocking everything.
  const shown = clone3Exec({
    flags: 0n,
    exitSignal: SIGCHLD,
    setTid: [],
    path: '/bin/sh',
    argv: ['sh', '-c', 'grep -E "^(SigBlk|SigIgn)" /proc/self/status > "$OUT"'],
    envp: [`OUT=${t.testdir()}/status`],
  });
  t.ok(waitpid(shown, __WALL, 5000));
  t.same(readFileSync(`${t.testdirName}/status`, 'utf8').split('\n').filter(Boolean), [
    'SigBlk:\t0000000000000000',
    'SigIgn:\t0000000000000000',
  ]);

  // A failed execve: exit status 127.
  const bad = clone3Exec({ flags: 0n, exitSignal: SIGCHLD, setTid: [], path: '/nonexistent', argv: ['x'], envp: [] });
  const br = waitpid(bad, __WALL, 5000);
  t.same(br && decodeWaitStatus(br.status), { kind: 'exited', exitCode: 127 });

  // A pid in use: EEXIST.
  let err: unknown;
  try {
    clone3Exec({ flags: 0n, exitSignal: SIGCHLD, setTid: [process.pid], path: '/bin/true', argv: ['true'], envp: [] });
  } catch (e) {
    err = e;
  }
  t.match(err, { errnoCode: 'EEXIST', syscall: 'clone3' });
  t.throws(
    () => clone3Exec({ flags: 0x100n, exitSignal: SIGCHLD, setTid: [], path: '/bin/true', argv: [], envp: [] }),
    RangeError,
  );
});

t.test('a clone3Exec child can be seized from the tracer thread', async (t) => {
  const pid = clone3Exec({
    flags: 0n,
    exitSignal: SIGCHLD,
    setTid: [],
    path: '/bin/sleep',
    argv: ['sleep', '1000'],
    envp: [],
  });
  t.teardown(() => killAndReap(pid));
  // Wait for the exec to have happened before seizing.
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'sleep') {
    await new Promise((r) => setTimeout(r, 5));
  }
  ptraceSeize(pid, 0);
  ptraceInterrupt(pid);
  const r = waitpid(pid, __WALL, 5000);
  t.equal(r && decodeWaitStatus(r.status).kind, 'stopped');
  ptraceDetach(pid, 0);
});
