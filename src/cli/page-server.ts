/**
 * Entry point of `page-server` (bin/page-server.js): a stand-alone page server that receives the
 * pages of a dump or pre-dump over TCP and writes them into an images directory, as
 * `criu page-server` does (the engine is src/cli/page-server-cmd.ts; the protocol
 * src/pageserver/).
 *
 *   page-server --port N [--address A] -D DIR [-d] [--pidfile F] [--token T | --token-file F]
 *   page-server --ps-socket FD -D DIR [the same options but -d]
 *               [--tls [--tls-cacert F] [--tls-cacrl F] [--tls-cert F] [--tls-key F]
 *               [--tls-no-cn-verify]] [--prev-images-dir D] [--auto-dedup] [--status-fd FD]
 *               [-o LOG] [-v N]
 *
 * Exit 0 once a client's session CLOSEd and every image is in place; 1 on any error.
 * --daemon-child (hidden) is how -d starts the background copy: it reports over the IPC channel.
 */

import { statSync } from 'node:fs';

import { Command, Option } from 'commander';

import { ImageError, UsageError, describeError } from '../errors.js';
import { createLogger, parseLogLevel, resolveLogFile, setLogger, DEFAULT_LOG_LEVEL } from '../log.js';
import type { CliIo } from './commands.js';
import { exitOnClosedStdout, isMainModule } from './launch.js';
import { TOKEN_ENV, readToken, runPageServer, type PageServerRun } from './page-server-cmd.js';
import { criuVersion, PROCESS_IO } from './program.js';
import { configureSmallProgram, runSmallProgram } from './small-program.js';
import { tlsOptionsOf, type TlsFlags } from './tls-options.js';

interface RawOpts extends TlsFlags {
  port?: string;
  psSocket?: string;
  address?: string;
  imagesDir: string;
  daemon?: boolean;
  daemonChild?: boolean;
  pidfile?: string;
  token?: string;
  tokenFile?: string;
  prevImagesDir?: string;
  autoDedup?: boolean;
  statusFd?: string;
  logFile?: string;
  verbosity?: string | boolean;
}

function parseFd(text: string, option: string): number {
  if (!/^\d+$/.test(text) || Number(text) > 0x7fffffff)
    throw new UsageError(`Invalid value for ${option}: "${text}" is not a file descriptor number`);
  return Number(text);
}

/** --port, needed unless --ps-socket hands over a connection. */
function portOf(raw: RawOpts): number {
  if (raw.port !== undefined) return parsePort(raw.port);
  if (raw.psSocket !== undefined) return 0;
  throw new UsageError('page-server needs --port N (0 picks a free one), or --ps-socket FD');
}

function parsePort(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) > 65535)
    throw new UsageError(`Invalid value for --port: "${text}" is not a port number 0..65535`);
  return Number(text);
}

export function buildPageServerProgram(io: CliIo, onDone: (code: number) => void = () => undefined): Command {
  return configureSmallProgram(new Command('page-server'), io)
    .description('receive dumped pages over TCP and write them into an images directory')
    .usage('--port N [--address A] -D DIR [options] | --ps-socket FD -D DIR [options]')
    .version(`Version: ${criuVersion()}`, '-V, --version', 'print program version')
    .option('--port <number>', 'port to listen on (0: any free port, printed)')
    .option('--ps-socket <fd>', 'serve the client at the other end of this connected socket instead')
    .option('--address <address>', 'address to listen on (default: 127.0.0.1)')
    .requiredOption('-D, --images-dir <path>', 'directory the images are written to')
    .option('-d, --daemon', 'run in the background once listening')
    .option('--pidfile <file>', "write the page server's pid into file")
    .option('--status-fd <fd>', 'write a NUL byte to fd and close it once listening')
    .option('--token <token>', 'pre-shared token the client must present')
    .option('--token-file <file>', 'read the token from the first line of file')
    .option('--tls', "use TLS, as CRIU's --tls (client and server certificates)")
    .option('--tls-cacert <file>', 'trust only certificates signed by this CA')
    .option('--tls-cacrl <file>', "the CA's certificate revocation list")
    .option('--tls-cert <file>', "this server's certificate")
    .option('--tls-key <file>', "this server's private key")
    .option('--tls-no-cn-verify', "do not check that the client's certificate names --address")
    .option('--prev-images-dir <dir>', 'parent images, relative to the images directory')
    .option('--auto-dedup', "punch the parent images' pages the received ones supersede")
    .option('-o, --log-file <file>', 'log file in the images directory (default page-server.log)')
    .option('-v, --verbosity [num]', 'log level 0..4 (default 2)')
    .addOption(new Option('--daemon-child').hideHelp())
    .action(async (raw: RawOpts) => {
      onDone(await runStandalone(raw, io));
    });
}

async function runStandalone(raw: RawOpts, io: CliIo): Promise<number> {
  const isChild = raw.daemonChild === true;
  const report = (msg: object): void => {
    if (isChild && process.send !== undefined) process.send(msg);
  };
  const level =
    raw.verbosity === undefined || raw.verbosity === false
      ? DEFAULT_LOG_LEVEL
      : raw.verbosity === true
        ? 1
        : parseLogLevel(raw.verbosity);
  if (level === null) throw new UsageError(`Invalid value for -v: "${String(raw.verbosity)}" is not a level 0..4`);
  // Before the logger: it would create the directory for its file.
  if (!statSync(raw.imagesDir, { throwIfNoEntry: false })?.isDirectory())
    throw new ImageError(raw.imagesDir, 'the images directory does not exist', undefined, { isWrite: true });
  const logger = createLogger({
    level,
    file: resolveLogFile('page-server', raw.logFile, raw.imagesDir),
    isPerPid: false,
    stderrWrite: io.stderr,
  });
  setLogger(logger);
  try {
    const token = isChild ? process.env[TOKEN_ENV] : await readToken(raw.token, raw.tokenFile);
    const run: PageServerRun = {
      imagesDir: raw.imagesDir,
      port: portOf(raw),
      isDaemon: raw.daemon === true && !isChild,
      logFile: logger.file,
      logLevel: level,
    };
    if (raw.address !== undefined) run.address = raw.address;
    if (token !== undefined && token !== '') run.token = token;
    const tls = tlsOptionsOf(raw);
    if (tls !== undefined) run.tls = tls;
    if (raw.prevImagesDir !== undefined) run.prevImagesDir = raw.prevImagesDir;
    if (raw.autoDedup === true) run.autoDedup = true;
    if (raw.statusFd !== undefined && !isChild) run.statusFd = parseFd(raw.statusFd, '--status-fd');
    if (raw.psSocket !== undefined) run.psSocket = parseFd(raw.psSocket, '--ps-socket');
    if (raw.pidfile !== undefined && !isChild) run.pidfile = raw.pidfile;
    return await runPageServer(run, io, (port) => {
      report({ port });
      if (isChild) process.disconnect();
    });
  } catch (err) {
    report({ error: describeError(err) });
    // Into the log file only (the caller prints the one line on stderr).
    if (logger.file !== null && logger.file !== '-') logger.msg(`Error (page-server): ${describeError(err)}`);
    throw err;
  } finally {
    setLogger(null);
    logger.close();
  }
}

export async function runPageServerCli(argv: readonly string[], io: CliIo = PROCESS_IO): Promise<number> {
  let code = 0;
  const failed = await runSmallProgram(
    'page-server',
    buildPageServerProgram(io, (c) => (code = c)),
    argv,
    io,
  );
  return failed !== 0 ? failed : code;
}

/** Run as the `page-server` executable: parse process.argv and set the exit code. */
export async function main(): Promise<void> {
  exitOnClosedStdout();
  process.exitCode = await runPageServerCli(process.argv.slice(2));
}

if (isMainModule(import.meta.url)) await main();
