/**
 * `criu exec -t PID SYSCALL ARGS...`: run one system call inside a running task.
 *
 * Arguments follow CRIU's manual: one starting with `&` is copied into the task's memory (the rest
 * of it, NUL-terminated) and passed as a pointer; any other is a number read with strtol(3) rules
 * in base 0 (0x.. hex, 0.. octal, decimal, optional sign; negatives are two's complement). The
 * result is printed on stdout: the value, or `-ERRNO (NAME)` for an error return.
 */

import { UsageError } from '../errors.js';
import { errnoName } from '../kernel/errno.js';
import { syscallNumber } from '../kernel/syscalls.js';
import { injectSyscall } from '../inject/injector.js';
import type { Options } from './options.js';
import type { CliIo } from './commands.js';

/** Parse a number the way strtol(s, &end, 0) does, but refuse trailing garbage. */
export function parseStrtol(text: string): bigint | null {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (m === null) return null;
  const [, sign, digits] = m as unknown as [string, string, string];
  let value: bigint;
  if (/^0[xX]/.test(digits)) value = BigInt(digits);
  else if (digits.length > 1 && digits.startsWith('0')) value = BigInt(`0o${digits.slice(1)}`);
  else value = BigInt(digits);
  if (sign === '-') value = -value;
  if (value < -(1n << 63n) || value >= 1n << 64n) return null;
  return BigInt.asUintN(64, value);
}

export interface ParsedExec {
  nr: number;
  name: string;
  args: (bigint | Buffer)[];
}

export function parseExecArgs(argv: readonly string[]): ParsedExec {
  const [name, ...rest] = argv;
  if (name === undefined) throw new UsageError('exec: a syscall name is required: criu exec -t PID SYSCALL [ARGS...]');
  const nr = syscallNumber(name);
  if (nr === undefined) throw new UsageError(`exec: unknown syscall "${name}" (names as in the kernel's x86_64 table)`);
  if (rest.length > 6) throw new UsageError(`exec: a syscall takes at most 6 arguments, got ${rest.length}`);
  const args = rest.map((arg, i) => {
    if (arg.startsWith('&')) return Buffer.from(`${arg.slice(1)}\0`, 'utf8');
    const value = parseStrtol(arg);
    if (value === null) throw new UsageError(`exec: argument ${i + 1} "${arg}" is neither a number nor &string`);
    return value;
  });
  return { nr, name, args };
}

/** Format a raw syscall return value as criu exec prints it. */
export function formatSyscallResult(raw: bigint): string {
  const signed = BigInt.asIntN(64, raw);
  if (signed < 0n && signed >= -4095n) return `${signed} (${errnoName(Number(-signed))})`;
  return signed.toString();
}

/** `criu exec -t PID SYSCALL ARGS...`: returns the process exit code. */
export async function runExec(opts: Options, io: CliIo): Promise<number> {
  const parsed = parseExecArgs(opts.operands);
  if (opts.tree === undefined) throw new UsageError('exec needs the target task: -t/--tree PID');
  // The injection is synchronous, so a SIGINT or SIGTERM arriving meanwhile is only acted on once
  // the task has been released (the CLI's handlers run on the event loop).
  const ret = injectSyscall(opts.tree, parsed.nr, parsed.args);
  io.stdout(`${formatSyscallResult(ret)}\n`);
  return 0;
}
