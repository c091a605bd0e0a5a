/**
 * `criu page-server -D DIR --port N [--address A] [-d] [--pidfile F] [--prev-images-dir D] [--auto-dedup]
 * [--token T | --token-file F] [--tls [--tls-cacert F] [--tls-cacrl F] [--tls-cert F]
 * [--tls-key F] [--tls-no-cn-verify]]`, and the engine the standalone `page-server` shares: listen, serve
 * one client until CLOSE (src/pageserver/server.ts), exit 0 once every image is in place.
 *
 * -d/--daemon: the command returns only once the server listens (a script may connect as soon as
 * it returns): it starts a detached copy of the standalone `page-server` that listens, reports
 * ready over an IPC channel, and serves on alone; the command then writes --pidfile with that
 * copy's pid and exits 0. The token reaches the copy through its environment, not its argv.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { TaskError, UsageError } from '../errors.js';
import { log, resolveLogFile, type LogLevel } from '../log.js';
import { PageServer } from '../pageserver/server.js';
import { loadTlsCredentials, type TlsOptions } from '../pageserver/tls.js';
import type { CliIo } from './commands.js';
import type { Options } from './options.js';
import { tlsArgs, tlsOptionsOf } from './tls-options.js';

/** The environment variable a daemon copy receives its token in. */
export const TOKEN_ENV = 'CRIU_TS_PAGE_SERVER_TOKEN';

/** Everything a page-server run needs, whichever command line it came from. */
export interface PageServerRun {
  imagesDir: string;
  address?: string;
  port: number;
  token?: string;
  /** --tls and its files (read by whichever process serves). */
  tls?: TlsOptions;
  prevImagesDir?: string;
  /** --auto-dedup: punch the parent chain's superseded pages after the session. */
  autoDedup?: boolean;
  isDaemon: boolean;
  pidfile?: string;
  /** --ps-socket: serve the client at the other end of this connected socket (no listening). */
  psSocket?: number;
  /** --status-fd: one NUL byte written there, and the fd closed, once the server listens. */
  statusFd?: number;
  /** Absolute log path, '-' for stderr, null for none: handed to a daemon copy. */
  logFile: string | null;
  logLevel: LogLevel;
}

/** --token, or the first line of --token-file. */
export async function readToken(token: string | undefined, tokenFile: string | undefined): Promise<string | undefined> {
  if (token !== undefined && tokenFile !== undefined)
    throw new UsageError('Options --token and --token-file exclude each other');
  if (tokenFile === undefined) {
    if (token === '') throw new UsageError('Invalid value for --token: the token is empty');
    return token;
  }
  const text = await readFile(tokenFile, 'utf8').catch((err: unknown) => {
    throw new UsageError(`Cannot read --token-file "${tokenFile}": ${(err as Error).message}`);
  });
  const line = text.split('\n')[0]?.replace(/\r$/, '') ?? '';
  if (line === '') throw new UsageError(`Invalid --token-file "${tokenFile}": its first line is empty`);
  return line;
}

/** The Options of criu(8) mapped to a run (without the token: see readToken). */
export function pageServerRun(opts: Options): PageServerRun {
  if (opts.port === undefined && opts.psSocket === undefined)
    throw new UsageError('page-server needs a port: --port N (0 picks a free one), or --ps-socket FD');
  const run: PageServerRun = {
    imagesDir: opts.imagesDir,
    port: opts.port ?? 0,
    isDaemon: opts.daemon,
    logFile: resolveLogFile('page-server', opts.logFile, opts.workDir),
    logLevel: opts.logLevel,
  };
  if (opts.address !== undefined) run.address = opts.address;
  const tls = tlsOptionsOf(opts, opts.workDir);
  if (tls !== undefined) run.tls = tls;
  if (opts.prevImagesDir !== undefined) run.prevImagesDir = opts.prevImagesDir;
  if (opts.autoDedup) run.autoDedup = true;
  if (opts.statusFd !== undefined) run.statusFd = opts.statusFd;
  if (opts.psSocket !== undefined) run.psSocket = opts.psSocket;
  if (opts.pidfile !== undefined) run.pidfile = resolve(opts.workDir, opts.pidfile);
  return run;
}

/** `criu page-server`. */
export async function runPageServerCmd(opts: Options, io: CliIo): Promise<number> {
  const run = pageServerRun(opts);
  const token = await readToken(opts.token, opts.tokenFile);
  if (token !== undefined) run.token = token;
  return runPageServer(run, io);
}

/** Serve one session (or, with isDaemon, start a copy that does and return once it listens). */
export async function runPageServer(
  run: PageServerRun,
  io: CliIo,
  onListening?: (port: number) => void,
): Promise<number> {
  if (run.isDaemon && run.psSocket !== undefined)
    throw new UsageError("Options --ps-socket and -d exclude each other (the socket is this process's)");
  if (run.isDaemon) return startDaemon(run, io);
  const tls = run.tls === undefined ? undefined : await loadTlsCredentials(run.tls);
  const opts = {
    imagesDir: run.imagesDir,
    ...(run.token === undefined ? {} : { token: run.token }),
    ...(tls === undefined ? {} : { tls }),
    ...(run.prevImagesDir === undefined ? {} : { prevImagesDir: run.prevImagesDir }),
    ...(run.autoDedup === true ? { autoDedup: true } : {}),
  };
  const server =
    run.psSocket !== undefined
      ? await PageServer.onSocket(opts, run.psSocket)
      : await PageServer.listen({
          ...opts,
          port: run.port,
          ...(run.address === undefined ? {} : { address: run.address }),
        });
  if (run.port === 0 && run.psSocket === undefined)
    io.stdout(`Page server listening on ${server.address}:${server.port}\n`);
  if (run.pidfile !== undefined) await writeFile(run.pidfile, `${process.pid}\n`);
  if (run.statusFd !== undefined) reportReady(run.statusFd);
  onListening?.(server.port);
  const summary = await server.serve();
  log().info(
    `page-server: stored ${summary.files.join(', ')} (${summary.nrPagesReceived} pages with data, ` +
      `${summary.nrPagesRecorded} without, ${summary.bytesReceived} bytes)`,
  );
  return 0;
}

/**
 * The standalone page-server's entry module, as a command for node (under tsx when run from src;
 * next to this module in dist/, or in dist/src/cli/ when this runs from the bundle, dist/bundle/).
 */
function daemonCommand(): { execArgv: string[]; script: string } {
  const self = fileURLToPath(import.meta.url);
  const isTs = self.endsWith('.ts');
  const script = /\/dist\/bundle\/[^/]+$/.test(self)
    ? join(dirname(self), '../src/cli/page-server.js')
    : self.replace(/page-server-cmd\.(ts|js)$/, isTs ? 'page-server.ts' : 'page-server.js');
  return { execArgv: isTs ? ['--import', 'tsx'] : [], script };
}

/**
 * Start a detached page server (the standalone `page-server` in a new session) and resolve once
 * it listens, with it and the port it listens on; throws TaskError when it cannot start (it is
 * killed then).
 */
export async function startPageServerProcess(run: PageServerRun): Promise<{ child: ChildProcess; port: number }> {
  const { execArgv, script } = daemonCommand();
  const args = ['-D', resolve(run.imagesDir), '--port', String(run.port), '-v', String(run.logLevel), '--daemon-child'];
  if (run.address !== undefined) args.push('--address', run.address);
  if (run.tls !== undefined) args.push(...tlsArgs(run.tls));
  if (run.prevImagesDir !== undefined) args.push('--prev-images-dir', run.prevImagesDir);
  if (run.autoDedup === true) args.push('--auto-dedup');
  if (run.logFile !== null && run.logFile !== '-') args.push('-o', run.logFile);
  const env = { ...process.env };
  delete env[TOKEN_ENV];
  if (run.token !== undefined) env[TOKEN_ENV] = run.token;
  // The copy's stdout and stderr are /dev/null (it outlives this command's terminal); until it
  // listens it reports over the IPC channel: {port} when ready, {error} when it cannot start.
  const child = spawn(process.execPath, [...execArgv, script, ...args], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    env,
  });
  const ready = await new Promise<{ port: number } | { error: string }>((resolveReady) => {
    child.on('message', (m: unknown) => {
      const msg = m as { port?: unknown; error?: unknown };
      if (typeof msg.port === 'number') resolveReady({ port: msg.port });
      else resolveReady({ error: typeof msg.error === 'string' ? msg.error : 'it sent a bad message' });
    });
    child.on('exit', (code, sig) => resolveReady({ error: `it exited (${sig ?? code ?? '?'}) before listening` }));
    child.on('error', (err) => resolveReady({ error: err.message }));
  });
  if ('error' in ready) {
    child.kill('SIGKILL');
    throw new TaskError(child.pid ?? 0, `The page server did not start: ${ready.error}`);
  }
  // Let the copy live on alone: no channel, no reference keeping this process up.
  child.disconnect();
  child.unref();
  return { child, port: ready.port };
}

/**
 * --status-fd: one NUL byte, then the fd is closed (CRIU's readiness report, which a script
 * reads from a pipe). A bad fd is a usage error.
 */
function reportReady(fd: number): void {
  try {
    writeSync(fd, Buffer.alloc(1));
    closeSync(fd);
  } catch (err) {
    throw new UsageError(`Cannot write to --status-fd ${fd}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/** Start a detached page server, wait until it listens, write the pidfile, return 0. */
async function startDaemon(run: PageServerRun, io: CliIo): Promise<number> {
  let started: { child: ChildProcess; port: number };
  try {
    started = await startPageServerProcess(run);
  } catch (err) {
    io.stderr(`Error (criu): ${(err as Error).message}\n`);
    return 1;
  }
  if (run.pidfile !== undefined) await writeFile(run.pidfile, `${started.child.pid}\n`);
  if (run.statusFd !== undefined) reportReady(run.statusFd);
  if (run.port === 0) io.stdout(`Page server listening on port ${started.port}\n`);
  return 0;
}
