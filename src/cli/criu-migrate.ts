/**
 * Entry point of `criu-migrate` (bin/criu-migrate.js): live migration of a process tree from this
 * host to another, driving pre-dumps, a page server and a restore on the other side through an
 * agent (migrate/agent.ts), or `local` for this machine; the controller is migrate/controller.ts.
 *
 *   criu-migrate [options] SRC DST PID
 *   criu-migrate agent --listen ADDR:PORT --token-file F [--tls ...]
 */

import { Command } from 'commander';

import { runAgent } from '../../migrate/agent.js';
import { tlsOptionsOf, type TlsFlags } from './tls-options.js';
import { UsageError } from '../errors.js';
import { parseAddress } from '../net/addresses.js';
import { createLogger, parseLogLevel, setLogger } from '../log.js';
import type { CliIo } from './commands.js';
import { exitOnClosedStdout, isMainModule } from './launch.js';
import { criuVersion, PROCESS_IO } from './program.js';
import { configureSmallProgram, runSmallProgram } from './small-program.js';

/** The --tls options on `cmd`: `whose` says whose certificate --tls-cert is. */
function addTlsOptions(cmd: Command, whose: string): Command {
  return cmd
    .option('--tls', 'TLS: wss control channels, page data inside TLS (certificates on every end)')
    .option('--tls-cacert <file>', 'TLS: trust only certificates signed by this CA')
    .option('--tls-cacrl <file>', "TLS: the CA's certificate revocation list")
    .option('--tls-cert <file>', `TLS: ${whose} certificate`)
    .option('--tls-key <file>', `TLS: ${whose} private key`)
    .option('--tls-no-cn-verify', 'TLS: do not check that certificates name the addresses connected to');
}

interface MigrateFlags extends TlsFlags {
  tokenFile?: string;
  json?: boolean;
  keepSource?: boolean;
  keepImages?: boolean;
  downtimeTarget?: string;
  maxIterations?: string;
  maxTime?: string;
  statsDir?: string;
  imagesDir?: string;
  verbosity?: string | true;
  tcpEstablished?: boolean;
  tcpClose?: boolean;
  skipInFlight?: boolean;
  moveAddress?: string[];
}

export function buildMigrateProgram(io: CliIo): Command {
  const program = configureSmallProgram(new Command('criu-migrate'), io)
    .description('live-migrate process tree PID from host SRC to host DST (each reached through its agent)')
    .usage('[options] SRC DST PID | agent --listen ADDR:PORT --token-file F')
    .version(`Version: ${criuVersion()}`, '-V, --version', 'print program version')
    .enablePositionalOptions()
    .argument('<SRC>', 'the source host: its agent ADDR:PORT, or local')
    .argument('<DST>', 'the destination host: its agent ADDR:PORT, or local')
    .argument('<PID>', 'the process to migrate, as SRC sees it')
    .option('--token-file <file>', 'pre-shared token of the agents (first line of file)')
    .option('--json', 'print the summary as one JSON object on stdout')
    .option('--keep-source', 'leave the source process stopped instead of killing it')
    .option('--keep-images', 'keep the images on both hosts')
    .option('--downtime-target <ms>', 'freeze once the remaining dirty memory fits this downtime (default 100)')
    .option('--max-iterations <n>', 'pre-copy iterations at most (default 8)')
    .option('--max-time <seconds>', 'pre-copy time at most (default 60)')
    .option('--tcp-established', "take the task's established TCP connections along")
    .option('--tcp-close', 'take its connected TCP sockets without their connections: closed on DST')
    .option('--skip-in-flight', "leave out connections waiting in a listener's accept queue (reset on SRC)")
    .option(
      '--move-address <addr>',
      'an address (IPv4 or IPv6) that goes from SRC to DST with the task, on the device it has on SRC (repeatable)',
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .option('--stats-dir <dir>', 'also write stats-dump and stats-restore (CRIU stats format) there')
    .option('--images-dir <dir>', 'where `local` keeps images (default /var/lib/criu-ts/agent)')
    .option('-v, --verbosity [num]', 'log level 0..4 (default 2), to stderr');
  addTlsOptions(program, "the controller's (and local's)").action(
    async (srcArg: string, dstArg: string, pidArg: string, o: MigrateFlags) => {
      const num = (v: string | undefined, what: string): number | undefined => {
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!Number.isFinite(n) || n <= 0) throw new UsageError(`Invalid ${what} "${v}"`);
        return n;
      };
      const level = o.verbosity === undefined ? undefined : parseLogLevel(o.verbosity === true ? 1 : o.verbosity);
      if (level === null) throw new UsageError(`Invalid -v level "${String(o.verbosity)}"`);
      if (level !== undefined) setLogger(createLogger({ level, file: '-', isPerPid: false }));
      const downtime = num(o.downtimeTarget, '--downtime-target');
      const iterations = num(o.maxIterations, '--max-iterations');
      const seconds = num(o.maxTime, '--max-time');
      const moving = [...new Set((o.moveAddress ?? []).map(parseAddress))];
      const { runMigration } = await import('../../migrate/run.js');
      const tls = tlsOptionsOf(o);
      await runMigration({
        src: srcArg,
        dst: dstArg,
        pid: Number(pidArg),
        isJson: o.json === true,
        keepSource: o.keepSource === true,
        keepImages: o.keepImages === true,
        tcpEstablished: o.tcpEstablished === true,
        tcpClose: o.tcpClose === true,
        skipInFlight: o.skipInFlight === true,
        moveAddresses: moving,
        policy: {
          ...(downtime === undefined ? {} : { downtimeTargetMs: downtime }),
          ...(iterations === undefined ? {} : { maxIterations: Math.floor(iterations) }),
          ...(seconds === undefined ? {} : { maxPreCopyMs: seconds * 1000 }),
        },
        ...(o.tokenFile === undefined ? {} : { tokenFile: o.tokenFile }),
        ...(tls === undefined ? {} : { tls }),
        ...(o.statsDir === undefined ? {} : { statsDir: o.statsDir }),
        ...(o.imagesDir === undefined ? {} : { imagesDir: o.imagesDir }),
        out: (t) => io.stdout(t),
        err: (t) => io.stderr(t),
        // Progress lines: on a terminal, or when asked for with -v 3 or more.
        isTerminal: process.stderr.isTTY || (level ?? 0) >= 3,
      });
    },
  );
  const agent = program
    .command('agent')
    .description('run the agent that criu-migrate drives on a host')
    .requiredOption('--listen <ADDR:PORT>', 'address and port to listen on')
    .requiredOption('--token-file <file>', 'pre-shared token (first line of file)')
    .option('-D, --images-dir <path>', 'directory for images the agent receives (default /var/lib/criu-ts/agent)')
    .option('-v, --verbosity [num]', 'log level 0..4 (default 2), to stderr');
  addTlsOptions(agent, "this agent's").action(
    async (o: TlsFlags & { listen: string; tokenFile: string; imagesDir?: string; verbosity?: string | true }) => {
      const level = o.verbosity === undefined ? undefined : parseLogLevel(o.verbosity === true ? 1 : o.verbosity);
      if (level === null) throw new UsageError(`Invalid -v level "${String(o.verbosity)}"`);
      const tls = tlsOptionsOf(o);
      await runAgent({
        listen: o.listen,
        tokenFile: o.tokenFile,
        ...(tls === undefined ? {} : { tls }),
        out: (text) => io.stdout(text),
        ...(o.imagesDir === undefined ? {} : { imagesDir: o.imagesDir }),
        ...(level === undefined ? {} : { logLevel: level }),
      });
    },
  );
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
