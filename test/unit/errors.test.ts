import t from 'tap';
import { SyscallError, ImageError, describeError, CriuError } from '../../src/errors.js';

t.test('SyscallError message names the call, its arguments and errno', async (t) => {
  const e = new SyscallError('ptrace(PTRACE_SEIZE)', 1, 'EPERM', [1234]);
  t.equal(e.message, 'ptrace(PTRACE_SEIZE, 1234): EPERM');
  t.equal(e.code, 'ESYSCALL');
  t.equal(e.errno, 1);
  t.equal(e.name, 'SyscallError');
  t.ok(e instanceof CriuError);
  const plain = new SyscallError('open', 2, 'ENOENT', ['/x', 0]);
  t.equal(plain.message, 'open(/x, 0): ENOENT');
});

t.test('describeError joins the cause chain', async (t) => {
  const inner = new ImageError('pagemap-1.img', 'entry 12 is truncated', 40);
  const outer = new CriuError('EIMAGE', 'Cannot restore', { cause: inner });
  t.equal(
    describeError(outer),
    'Cannot restore: Cannot read image "pagemap-1.img" at offset 40: entry 12 is truncated',
  );
});
