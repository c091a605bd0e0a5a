/**
 * Errors of criu-ts: one base class with a stable public `code`, `cause` chaining, and a few
 * kinds. The codes are part of the public interface and are listed in README.md ("Error codes").
 *
 * Messages follow the house style: sentence case, the action that failed, a colon, the details.
 * Expected outcomes (a task that exited, no parent image) are return values, not errors.
 */

/** Every public error code. Adding one means documenting it in README.md. */
export type ErrorCode =
  | 'ESYSCALL' // a system call failed; see SyscallError
  | 'EIMAGE' // an image file is missing, corrupt, truncated or of the wrong kind
  | 'EPROTOCOL' // a peer broke the page-server, RPC or migration protocol
  | 'EUNSUPPORTED' // a kernel feature, fd kind or option that criu-ts cannot handle
  | 'EUSAGE' // a command line or option error
  | 'ETASK' // the target task is gone, or in a state we cannot work with
  | 'ENOTIMPL' // a command or option that is accepted but not built yet
  | 'EACTION'; // an action script (or an RPC client's answer to a notification) failed

export class CriuError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/**
 * A failed system call. The native addon throws this class itself (it is handed the constructor at
 * load time), so `errno`, `syscall` and `args` come straight from the C++ side.
 */
export class SyscallError extends CriuError {
  /** Positive errno value, for example 1 for EPERM. */
  readonly errno: number;
  /** Symbolic errno, for example "EPERM". */
  readonly errnoCode: string;
  /** The call as the kernel names it, with its request where it has one: "ptrace(PTRACE_SEIZE)". */
  readonly syscall: string;
  /** The main arguments, as printed in the message. */
  readonly args: readonly (number | bigint | string)[];

  constructor(
    syscall: string,
    errno: number,
    errnoCode: string,
    args: readonly (number | bigint | string)[] = [],
    options?: { cause?: unknown },
  ) {
    const shown = args.map((a) => (typeof a === 'string' ? a : String(a))).join(', ');
    const name = syscall.includes('(') ? syscall.replace(/\)$/, shown ? `, ${shown})` : ')') : `${syscall}(${shown})`;
    super('ESYSCALL', `${name}: ${errnoCode}`, options);
    this.errno = errno;
    this.errnoCode = errnoCode;
    this.syscall = syscall;
    this.args = args;
  }
}

/** A problem with an image file: names the file and the byte offset where it was found. */
export class ImageError extends CriuError {
  readonly file: string;
  readonly offset: number | undefined;

  constructor(file: string, reason: string, offset?: number, options?: { cause?: unknown; isWrite?: boolean }) {
    const where = offset === undefined ? '' : ` at offset ${offset}`;
    const verb = options?.isWrite === true ? 'write' : 'read';
    super(
      'EIMAGE',
      `Cannot ${verb} image "${file}"${where}: ${reason}`,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.file = file;
    this.offset = offset;
  }
}

/** A peer that broke a protocol: names the peer and the command being handled. */
export class ProtocolError extends CriuError {
  readonly peer: string;
  readonly command: string | undefined;

  constructor(peer: string, reason: string, command?: string, options?: { cause?: unknown }) {
    const what = command === undefined ? '' : ` during ${command}`;
    super('EPROTOCOL', `Protocol error with ${peer}${what}: ${reason}`, options);
    this.peer = peer;
    this.command = command;
  }
}

/** A missing kernel feature, an fd kind or an option we cannot handle. */
export class UnsupportedError extends CriuError {
  readonly feature: string;

  constructor(feature: string, message: string, options?: { cause?: unknown }) {
    super('EUNSUPPORTED', message, options);
    this.feature = feature;
  }
}

/** The target task went away or is in a state we cannot handle. */
export class TaskError extends CriuError {
  readonly pid: number;

  constructor(pid: number, message: string, options?: { cause?: unknown }) {
    super('ETASK', message, options);
    this.pid = pid;
  }
}

export class UsageError extends CriuError {
  constructor(message: string) {
    super('EUSAGE', message);
  }
}

/**
 * An action script failed (--action-script), or an RPC client answered a notification with
 * failure. `exitCode` is what criu exits with when that ends the command (a failed post-dump
 * script's own exit status, as CRIU).
 */
export class ActionError extends CriuError {
  readonly action: string;
  readonly exitCode: number;

  constructor(action: string, message: string, exitCode: number) {
    super('EACTION', message);
    this.action = action;
    this.exitCode = exitCode;
  }
}

export class NotImplementedError extends CriuError {
  constructor(what: string) {
    super('ENOTIMPL', `${what} is not implemented yet`);
  }
}

/** The message of an error and of each error in its cause chain, joined by ": ". */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; cur !== undefined && cur !== null && depth < 8; depth++) {
    if (cur instanceof Error) {
      if (!parts.some((p) => p.includes(cur instanceof Error ? cur.message : ''))) parts.push(cur.message);
      cur = cur.cause;
    } else {
      parts.push(String(cur));
      break;
    }
  }
  return parts.join(': ');
}

/** True when err is a SyscallError with one of the given errno codes. */
export function isErrno(err: unknown, ...codes: string[]): err is SyscallError {
  return err instanceof SyscallError && codes.includes(err.errnoCode);
}
