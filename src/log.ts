/**
 * Logging, the CRIU way: one log per run, written to a file in the work directory, with the
 * levels of criu(8):
 *
 *   0  messages only          (-v0)
 *   1  + errors               (-v1, -v)
 *   2  + warnings (default)   (-v2, -vv)
 *   3  + info, and timestamps (-v3, -vvv)
 *   4  + debug                (-v4, -vvvv)
 *
 * Errors and warnings (when the level lets them through) are also written to stderr, one line
 * each, so a user sees them without opening the log. A file line at level 3 and above starts with
 * the time since the logger was opened, as CRIU does: `(00.001234) message`.
 *
 * There is one module-level logger, the one `setLogger` installs (the CLI does it once at start).
 * Until then `log()` is a quiet logger that prints errors and warnings to stderr only, so library
 * code and tests can log without any set-up. Touches no kernel interface: plain files.
 */

import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** Log levels of criu(8). */
export type LogLevel = 0 | 1 | 2 | 3 | 4;

export const LOG_LEVELS = [0, 1, 2, 3, 4] as const;
export const DEFAULT_LOG_LEVEL: LogLevel = 2;

/** Where the log goes. `null` file: no log file (stderr gets errors and warnings only). */
export interface LogConfig {
  level: LogLevel;
  /** Absolute path of the log file, `'-'` for stderr, or null for none. */
  file: string | null;
  /** With --log-pid: `forPid(pid)` writes to `<file>.<pid>` instead of the main file. */
  isPerPid: boolean;
  /** Copy errors and warnings to stderr (default true). */
  hasStderrEcho?: boolean;
  /** For tests: where stderr lines go instead of process.stderr. */
  stderrWrite?: (line: string) => void;
}

/** The logger every module uses: `log().info(...)`. */
export interface Logger {
  readonly level: LogLevel;
  /** Absolute path of the log file, `'-'` for stderr, or null for none. */
  readonly file: string | null;
  /** Always written (level 0 and up): what CRIU prints with pr_msg. */
  msg(text: string): void;
  error(text: string): void;
  warn(text: string): void;
  info(text: string): void;
  debug(text: string): void;
  /** True when a message of `level` would be written anywhere. */
  isEnabled(level: LogLevel): boolean;
  /**
   * The logger for one task: with --log-pid its own file `<file>.<pid>`, otherwise this logger
   * with the pid in front of each line.
   */
  forPid(pid: number): Logger;
  /** Flush and close the files this logger opened. Idempotent. */
  close(): void;
}

const LEVEL_TAG = ['', 'Error', 'Warn', '', ''] as const;

/** Parse a level given as a number or string ("0".."4"); null when it is not one. */
export function parseLogLevel(value: string | number): LogLevel | null {
  const n = typeof value === 'number' ? value : /^\d+$/.test(value) ? Number(value) : NaN;
  return (LOG_LEVELS as readonly number[]).includes(n) ? (n as LogLevel) : null;
}

/** A sink: one file descriptor, opened lazily on the first line, so an empty run leaves no file. */
class FileSink {
  private fd: number | null = null;
  private isClosed = false;
  constructor(private readonly path: string) {}

  write(line: string): void {
    if (this.isClosed) return;
    if (this.fd === null) {
      mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
      this.fd = openSync(this.path, 'a', 0o600);
    }
    writeSync(this.fd, line);
  }

  /** Create the file now (empty if nothing is logged), so `-o name` always leaves a file. */
  touch(): void {
    if (this.fd === null && !this.isClosed) {
      mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
      this.fd = openSync(this.path, 'a', 0o600);
    }
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
    this.isClosed = true;
  }
}

class CriuLogger implements Logger {
  private readonly startNs: bigint;
  private readonly sink: FileSink | 'stderr' | null;
  private readonly children = new Map<number, CriuLogger>();
  private readonly stderrWrite: (line: string) => void;
  private readonly hasStderrEcho: boolean;

  constructor(
    private readonly config: LogConfig,
    private readonly prefix = '',
    startNs?: bigint,
    sharedSink?: FileSink | 'stderr' | null,
  ) {
    this.startNs = startNs ?? process.hrtime.bigint();
    this.stderrWrite = config.stderrWrite ?? ((line) => void process.stderr.write(line));
    this.hasStderrEcho = config.hasStderrEcho ?? true;
    if (sharedSink !== undefined) this.sink = sharedSink;
    else if (config.file === null) this.sink = null;
    else if (config.file === '-') this.sink = 'stderr';
    else {
      this.sink = new FileSink(config.file);
      this.sink.touch();
    }
  }

  get level(): LogLevel {
    return this.config.level;
  }

  get file(): string | null {
    return this.config.file;
  }

  isEnabled(level: LogLevel): boolean {
    return level <= this.config.level && (this.sink !== null || (this.hasStderrEcho && level <= 2 && level >= 1));
  }

  msg(text: string): void {
    this.emit(0, text);
  }
  error(text: string): void {
    this.emit(1, text);
  }
  warn(text: string): void {
    this.emit(2, text);
  }
  info(text: string): void {
    this.emit(3, text);
  }
  debug(text: string): void {
    this.emit(4, text);
  }

  forPid(pid: number): Logger {
    let child = this.children.get(pid);
    if (child === undefined) {
      if (this.config.isPerPid && this.config.file !== null && this.config.file !== '-') {
        child = new CriuLogger(
          { ...this.config, file: `${this.config.file}.${pid}`, isPerPid: false },
          '',
          this.startNs,
        );
      } else {
        // Shares the parent's sink rather than opening the same file twice.
        child = new CriuLogger({ ...this.config, isPerPid: false }, `${this.prefix}${pid}: `, this.startNs, this.sink);
      }
      this.children.set(pid, child);
    }
    return child;
  }

  close(): void {
    for (const child of this.children.values()) if (child.sink !== this.sink) child.close();
    if (this.sink instanceof FileSink) this.sink.close();
  }

  private emit(level: LogLevel, text: string): void {
    if (level > this.config.level) return;
    const tag = LEVEL_TAG[level];
    // Multi-line texts (stacks) keep one prefix per line so grep on the log stays useful.
    const body = text.replace(/\n+$/, '');
    const stamp = this.config.level >= 3 ? `(${this.elapsed()}) ` : '';
    const head = `${stamp}${tag ? `${tag} (criu): ` : ''}${this.prefix}`;
    const lines = body
      .split('\n')
      .map((l) => `${head}${l}\n`)
      .join('');
    if (this.sink === 'stderr') this.stderrWrite(lines);
    else if (this.sink !== null) this.sink.write(lines);
    // Errors and warnings reach the user too; only the first line (stacks stay in the file).
    if (this.hasStderrEcho && this.sink !== 'stderr' && (level === 1 || level === 2)) {
      this.stderrWrite(`${tag} (criu): ${this.prefix}${body.split('\n')[0] ?? ''}\n`);
    }
  }

  private elapsed(): string {
    const us = (process.hrtime.bigint() - this.startNs) / 1000n;
    const sec = us / 1_000_000n;
    const frac = us % 1_000_000n;
    return `${sec.toString().padStart(2, '0')}.${frac.toString().padStart(6, '0')}`;
  }
}

/** Make a logger. Opens (creates) the log file at once, so the file exists even for a quiet run. */
export function createLogger(config: LogConfig): Logger {
  return new CriuLogger(config);
}

/**
 * The default log file name of a command, as CRIU names them; null for the commands that print
 * their results to stdout and keep no log unless -o is given (show, check, exec, cpuinfo).
 */
export function defaultLogName(command: string): string | null {
  switch (command) {
    case 'dump':
      return 'dump.log';
    case 'pre-dump':
      return 'pre-dump.log';
    case 'restore':
      return 'restore.log';
    case 'page-server':
      return 'page-server.log';
    case 'service':
      return 'service.log';
    case 'dedup':
      return 'dedup.log';
    default:
      return null;
  }
}

/**
 * Where a command's log goes: `-o -` is stderr; a relative -o name (or the default name) lives in
 * the work directory; an absolute -o path is used as is.
 */
export function resolveLogFile(command: string, logFile: string | undefined, workDir: string): string | null {
  if (logFile === '-') return '-';
  const name = logFile ?? defaultLogName(command);
  return name === null ? null : resolve(workDir, name);
}

let current: Logger | null = null;
let quiet: Logger | null = null;

/** The logger installed by `setLogger`, or a stderr-only one (errors and warnings) before that. */
export function log(): Logger {
  if (current !== null) return current;
  quiet ??= createLogger({ level: DEFAULT_LOG_LEVEL, file: null, isPerPid: false });
  return quiet;
}

/** Install the process's logger (the CLI calls this once). Returns the one it replaces. */
export function setLogger(logger: Logger | null): Logger | null {
  const old = current;
  current = logger;
  return old;
}
