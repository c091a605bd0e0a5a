import t from 'tap';
import { formatSyscallResult, parseExecArgs, parseStrtol } from '../../../src/cli/exec.js';
import { UsageError } from '../../../src/errors.js';

t.test('numbers follow strtol base-0 rules', async (t) => {
  t.equal(parseStrtol('42'), 42n);
  t.equal(parseStrtol('0x1F'), 31n);
  t.equal(parseStrtol('0X10'), 16n);
  t.equal(parseStrtol('010'), 8n, 'leading 0 is octal');
  t.equal(parseStrtol('0'), 0n);
  t.equal(parseStrtol('+7'), 7n);
  t.equal(parseStrtol('  5'), 5n, 'leading white space');
  t.equal(parseStrtol('-1'), 0xffff_ffff_ffff_ffffn, "negatives are two's complement");
  t.equal(parseStrtol('-0x10'), BigInt.asUintN(64, -16n));
  t.equal(parseStrtol('0xffffffffffffffff'), 0xffff_ffff_ffff_ffffn);
  t.equal(parseStrtol('0x10000000000000000'), null, 'out of range');
  t.equal(parseStrtol('09'), null, '9 is no octal digit');
  t.equal(parseStrtol('12abc'), null, 'trailing garbage');
  t.equal(parseStrtol(''), null);
});

t.test('arguments: &strings become NUL-terminated data, others numbers', async (t) => {
  const p = parseExecArgs(['open', '&/foo/bar', '2']);
  t.equal(p.nr, 2);
  t.same(p.args, [Buffer.from('/foo/bar\0'), 2n]);
  t.equal(parseExecArgs(['getpid']).args.length, 0);
  t.equal(parseExecArgs(['close', '1']).nr, 3);
});

t.test('bad exec command lines are usage errors', async (t) => {
  t.throws(() => parseExecArgs([]), UsageError);
  t.throws(() => parseExecArgs(['no_such_call']), /unknown syscall "no_such_call"/);
  t.throws(() => parseExecArgs(['close', 'x1']), /argument 1 "x1" is neither a number nor &string/);
  t.throws(() => parseExecArgs(['mmap', '1', '2', '3', '4', '5', '6', '7']), /at most 6 arguments/);
});

t.test('results print as numbers, errors as -ERRNO (NAME)', async (t) => {
  t.equal(formatSyscallResult(3n), '3');
  t.equal(formatSyscallResult(BigInt.asUintN(64, -9n)), '-9 (EBADF)');
  t.equal(formatSyscallResult(-2n), '-2 (ENOENT)');
  t.equal(formatSyscallResult(0x7f00_0000_0000n), String(0x7f00_0000_0000n));
});
