/**
 * Entry point of `page-server` (bin/page-server.js): a stand-alone page server that receives the
 * pages of a dump or pre-dump over TCP and writes them into an images directory, as
 * `criu page-server` does. Only the command line exists yet: it says "not implemented yet" and
 * exits 2.
 *
 *   page-server --port N [--address A] -D DIR
 */

import { Command } from 'commander';

import { NotImplementedError } from '../errors.js';
import type { CliIo } from './commands.js';
import { exitOnClosedStdout, isMainModule } from './launch.js';
import { criuVersion, PROCESS_IO } from './program.js';
import { configureSmallProgram, runSmallProgram } from './small-program.js';

export function buildPageServerProgram(io: CliIo): Command {
  return configureSmallProgram(new Command('page-server'), io)
    .description('receive dumped pages over TCP and write them into an images directory')
    .usage('--port N [--address A] -D DIR [options]')
    .version(`Version: ${criuVersion()}`, '-V, --version', 'print program version')
    .requiredOption('--port <number>', 'port to listen on')
    .option('--address <address>', 'address to listen on (default: all)')
    .requiredOption('-D, --images-dir <path>', 'directory the images are written to')
    .option('-d, --daemon', 'run in the background')
    .option('--token <token>', 'pre-shared token the client must present')
    .option('--token-file <file>', 'read the token from the first line of file')
    .option('-o, --log-file <file>', 'log file in the images directory (default page-server.log)')
    .option('-v, --verbosity [num]', 'log level 0..4 (default 2)')
    .action(() => {
      throw new NotImplementedError('page-server');
    });
}

export function runPageServerCli(argv: readonly string[], io: CliIo = PROCESS_IO): Promise<number> {
  return runSmallProgram('page-server', buildPageServerProgram(io), argv, io);
}

/** Run as the `page-server` executable: parse process.argv and set the exit code. */
export async function main(): Promise<void> {
  exitOnClosedStdout();
  process.exitCode = await runPageServerCli(process.argv.slice(2));
}

if (isMainModule(import.meta.url)) await main();
