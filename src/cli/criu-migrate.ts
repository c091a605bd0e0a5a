/**
 * Entry point of `criu-migrate` (bin/criu-migrate.js): live migration of a process tree from this
 * host to another, driving pre-dumps, a page server and a restore on the other side through an
 * agent. The agent runs (migrate/agent.ts); the migration itself says "not implemented yet" and
 * exits 2.
 *
 *   criu-migrate [options] SRC DST PID
 *   criu-migrate agent --listen ADDR:PORT --token-file F
 */

import { Command } from 'commander';

import { runAgent } from '../../migrate/agent.js';
import { NotImplementedError, UsageError } from '../errors.js';
import { parseLogLevel } from '../log.js';
import type { CliIo } from './commands.js';
import { exitOnClosedStdout, isMainModule } from './launch.js';
import { criuVersion, PROCESS_IO } from './program.js';
import { configureSmallProgram, runSmallProgram } from './small-program.js';

export function buildMigrateProgram(io: CliIo): Command {
  const program = configureSmallProgram(new Command('criu-migrate'), io)
    .description('live-migrate process tree PID from host SRC to host DST (each reached through its agent)')
    .usage('[options] SRC DST PID | agent --listen ADDR:PORT --token-file F')
    .version(`Version: ${criuVersion()}`, '-V, --version', 'print program version')
    .enablePositionalOptions()
    .argument('<SRC>', 'the source agent, ADDR:PORT')
    .argument('<DST>', 'the destination agent, ADDR:PORT')
    .argument('<PID>', 'the root pid of the tree to migrate, on SRC')
    .option('--token-file <file>', 'pre-shared token of the agents (first line of file)')
    .option('--tracker <kind>', 'dirty-memory tracker: auto (default), uffd, soft-dirty, none')
    .option('-v, --verbosity [num]', 'log level 0..4 (default 2)')
    .action(() => {
      throw new NotImplementedError('migrate');
    });
  program
    .command('agent')
    .description('run the agent that criu-migrate drives on a host')
    .requiredOption('--listen <ADDR:PORT>', 'address and port to listen on')
    .requiredOption('--token-file <file>', 'pre-shared token (first line of file)')
    .option('-D, --images-dir <path>', 'directory for images the agent receives (default /var/lib/criu-ts/agent)')
    .option('-v, --verbosity [num]', 'log level 0..4 (default 2), to stderr')
    .action(async (o: { listen: string; tokenFile: string; imagesDir?: string; verbosity?: string | true }) => {
      const level = o.verbosity === undefined ? undefined : parseLogLevel(o.verbosity === true ? 1 : o.verbosity);
      if (level === null) throw new UsageError(`Invalid -v level "${String(o.verbosity)}"`);
      await runAgent({
        listen: o.listen,
        tokenFile: o.tokenFile,
        out: (text) => io.stdout(text),
        ...(o.imagesDir === undefined ? {} : { imagesDir: o.imagesDir }),
        ...(level === undefined ? {} : { logLevel: level }),
      });
    });
  return program;
}

export function runMigrateCli(argv: readonly string[], io: CliIo = PROCESS_IO): Promise<number> {
  return runSmallProgram('criu-migrate', buildMigrateProgram(io), argv, io);
}

/** Run as the `criu-migrate` executable: parse process.argv and set the exit code. */
export async function main(): Promise<void> {
  exitOnClosedStdout();
  process.exitCode = await runMigrateCli(process.argv.slice(2));
}

if (isMainModule(import.meta.url)) await main();
