/**
 * setns(2) on the JS thread (src/sys/namespaces.ts): inNamespace reads another task's UTS
 * namespace and comes back to criu's own, also when the function throws; setns of a bad fd is a
 * typed error with its errno and arguments.
 */
import { closeSync, readFileSync, readlinkSync } from 'node:fs';
import t from 'tap';
import { SyscallError } from '../../../src/errors.js';
import { CLONE_NEWUTS } from '../../../src/kernel/constants.js';
import { setns } from '../../../src/sys/native.js';
import { inNamespace, openNamespace } from '../../../src/sys/namespaces.js';
import { spawnDetached } from './procs.js';

const skip = process.getuid?.() === 0 ? false : 'needs root (unshare, setns)';
const hostnameHere = (): string => readFileSync('/proc/sys/kernel/hostname', 'utf8').trim();

t.test("inNamespace: another task's UTS namespace, and back", { skip }, async (t) => {
  const pid = spawnDetached(t, "unshare --uts sh -c 'hostname ns-probe-7; exec sleep 1000'");
  // The shell names the host right after unshare: until then its namespace reads another name.
  let name = '';
  for (let i = 0; i < 200 && name !== 'ns-probe-7'; i++) {
    const fd = openNamespace(pid, 'uts');
    try {
      name = inNamespace(fd, 'uts', hostnameHere);
    } finally {
      closeSync(fd);
    }
    if (name !== 'ns-probe-7') await new Promise((r) => setTimeout(r, 10));
  }
  const mine = readlinkSync('/proc/thread-self/ns/uts');
  t.equal(name, 'ns-probe-7', 'the host name in its namespace');
  t.not(hostnameHere(), 'ns-probe-7', 'this thread is back in its own');
  const fd = openNamespace(pid, 'uts');
  t.teardown(() => closeSync(fd));
  t.throws(
    () =>
      inNamespace(fd, 'uts', () => {
        throw new Error('inside');
      }),
    /inside/,
    "the function's error comes out",
  );
  t.equal(readlinkSync('/proc/thread-self/ns/uts'), mine, 'and the thread is back all the same');
});

t.test('setns of a bad fd: a typed error', { skip }, async (t) => {
  const err = (() => {
    try {
      setns(9999, Number(CLONE_NEWUTS));
      return null;
    } catch (e) {
      return e;
    }
  })();
  t.ok(err instanceof SyscallError);
  t.match(err, { errnoCode: 'EBADF', syscall: 'setns', args: [9999, Number(CLONE_NEWUTS)] });
});
