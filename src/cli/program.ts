/**
 * The `criu` command line: commander set up with every command and option of criu(8), plus the
 * few criu-ts adds (check --all, page-server --token/--token-file, --tracker) and CRIU's later
 * check --feature.
 *
 * As in CRIU, options may come before or after the command (`criu -D d dump -t 1` and
 * `criu dump -D d -t 1`): the same option set is declared on the program and on every command,
 * the program stops at the command (positional options), and the two halves are merged, the
 * values after the command winning and repeatable options adding up.
 *
 * `runCli` parses, builds the Options, sets up the log, runs the command's handler and returns the
 * exit code; it never calls process.exit and never lets a stack reach the terminal.
 *
 * Exit codes: 0 success; 1 failure (an error, a usage error, `check` finding a required feature
 * missing); 2 a command that is accepted but not implemented yet.
 */

import { closeSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, Help, Option } from 'commander';

import { ActionError, CriuError, describeError } from '../errors.js';
import { createLogger, log, resolveLogFile, setLogger, type Logger } from '../log.js';
import { COMMAND_HANDLERS, type CliIo } from './commands.js';
import { ERROR_PREFIX } from './errors-output.js';
import { COMMAND_NAMES, toOptions, type CommandName, type Options, type RawOptions } from './options.js';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_NOT_IMPLEMENTED = 2;

export { ERROR_PREFIX };

let version: string | null = null;

/** The version in the project's package.json (found upward from this module: src/ or dist/src/). */
export function criuVersion(): string {
  if (version !== null) return version;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'criu-ts' && typeof pkg.version === 'string') return (version = pkg.version);
    } catch {
      // No package.json here: keep going up.
    }
    const up = dirname(dir);
    if (up === dir) return (version = 'unknown');
    dir = up;
  }
}

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

interface OptionSpec {
  flags: string;
  description: string;
  isRepeatable?: boolean;
  /** Accepted but left out of --help (a second spelling of another option). */
  hidden?: boolean;
}

/** The options of criu(8), in the manual's order, then criu-ts's own. */
function optionSpecs(command: CommandName | null): OptionSpec[] {
  const isDaemonCommand = command === 'page-server' || command === 'service';
  return [
    { flags: '-c', description: 'show: show the dumped pages content in hex format' },
    {
      flags: '-D, --images-dir <path>',
      description: 'directory where the image files are read and written (default ".")',
    },
    { flags: '--prev-images-dir <path>', description: 'directory of the parent images, for incremental dumps' },
    {
      flags: '-W, --work-dir <dir>',
      description: 'directory for logs, pidfiles and statistics (default: the -D path)',
    },
    {
      flags: '-s, --leave-stopped',
      description: 'leave tasks in stopped state after checkpoint instead of killing them',
    },
    {
      flags: '-R, --leave-running',
      description:
        'leave tasks running after checkpoint instead of killing them (dangerous: they may change what was dumped)',
    },
    {
      flags: '--cpu-cap [cap]',
      description:
        'CPU capabilities restore requires: all (bare --cpu-cap), cpu, fpu (default), ins, none; "^" inverts; comma list',
    },
    { flags: '-f, --file <file>', description: 'show: the image file to show' },
    { flags: '-x, --ext-unix-sk', description: 'dump external unix sockets' },
    { flags: '-t, --tree <pid>', description: 'checkpoint the whole process tree starting from pid' },
    isDaemonCommand
      ? { flags: '-d, --daemon', description: 'run in the background (once listening)' }
      : { flags: '-d, --restore-detached', description: 'detach criu itself once restore is complete' },
    isDaemonCommand
      ? { flags: '--restore-detached', description: 'same as -d', hidden: true }
      : { flags: '--daemon', description: 'page-server, service: run in the background (-d)' },
    {
      flags: '-S, --restore-sibling',
      description: 'restore the root task as a sibling (with --restore-detached only)',
    },
    {
      flags: '-n, --namespaces <ns>',
      description: 'checkpoint namespaces, comma separated: uts, ipc, mnt, pid, net (also user, cgroup, time)',
      isRepeatable: true,
    },
    { flags: '-r, --root <path>', description: 'change the root filesystem (when run in a mount namespace)' },
    { flags: '--evasive-devices', description: 'use any path to a device file if the original one is inaccessible' },
    { flags: '--pidfile <file>', description: "write the root task's, service's or page server's pid into file" },
    {
      flags: '--status-fd <fd>',
      description: 'page-server: write a NUL byte to fd and close it once listening',
    },
    {
      flags: '--veth-pair <IN=OUT>',
      description: 'correspondence between inside (IN) and outside (OUT) names of veth devices',
      isRepeatable: true,
    },
    {
      flags: '-M, --ext-mount-map <KEY:VAL>',
      description:
        'mapping for external mounts (dump: mountpoint to image value; restore: image value to host path), or "auto"',
      isRepeatable: true,
    },
    { flags: '--enable-external-sharing', description: 'resolve external shared mounts automatically (with -M auto)' },
    { flags: '--enable-external-masters', description: 'resolve external slave mounts automatically (with -M auto)' },
    {
      flags: '--action-script <script>',
      description: 'add an external action script (CRTOOLS_SCRIPT_ACTION: network-lock, network-unlock, ...)',
      isRepeatable: true,
    },
    {
      flags: '--link-remap',
      description: 'allow to link unlinked files back when possible (modifies the filesystem until restore)',
    },
    {
      flags: '-o, --log-file <file>',
      description: 'write the log to file in the work dir ("-" for stderr); default <command>.log',
    },
    {
      flags: '-v, --verbosity [num]',
      description:
        'log level, -v[num|v...]: -v1/-v errors, -v2/-vv +warnings (default), -v3/-vvv +info and timestamps, -v4/-vvvv +debug',
    },
    { flags: '--log-pid', description: 'write a separate log file per pid (<log-file>.<pid>)' },
    { flags: '--close <fd>', description: 'close file descriptor fd before anything else', isRepeatable: true },
    { flags: '--tcp-established', description: 'checkpoint/restore established TCP connections' },
    {
      flags: '--skip-in-flight',
      description: 'dump: take a listener with connections waiting in its accept queue, without them',
    },
    {
      flags: '--tcp-close',
      description: "dump: take connected TCP sockets without their connections' state; restore: make them closed",
    },
    {
      flags: '-j, --shell-job',
      description: 'allow to dump and restore shell jobs (the restored task inherits session and pgid)',
    },
    {
      flags: '-l, --file-locks',
      description: 'allow to dump and restore file locks (safe only for a whole container)',
    },
    { flags: '--ms', description: 'check: do not check features not yet merged upstream' },
    { flags: '--track-mem', description: 'turn on the memory changes tracker in the kernel' },
    {
      flags: '--pre-dump-mode <mode>',
      description: "pre-dump: splice or read (accepted; pages are always read, CRIU's read mode)",
    },
    {
      flags: '--auto-dedup',
      description:
        'dump: deduplicate old data in the parent pages images; restore: punch pages from the image once restored',
    },
    { flags: '--page-server', description: 'dump: send pages to a page server (--address, --port)' },
    { flags: '--address <address>', description: 'page server address; service: its socket path' },
    { flags: '--port <number>', description: 'page server port number' },
    {
      flags: '--ps-socket <fd>',
      description: 'page server: a socket connected already, used instead of --address/--port',
    },
    { flags: '-L, --libdir <path>', description: 'path to a plugins directory' },
    { flags: '--force-irmap', description: 'force resolving names for inotify and fsnotify watches' },
    { flags: '--manage-cgroups', description: 'dump or restore the cgroups the process is in' },
    {
      flags: '--cgroup-root <[controller:]/newroot>',
      description: 'change the root cgroup the controller will be installed into (no controller: all others)',
      isRepeatable: true,
    },
    {
      flags: '--inherit-fd <fd[num]:existing>',
      description: 'restore: treat fd num as already opened via the existing one instead of opening it',
      isRepeatable: true,
    },
    { flags: '--all', description: 'check: also report optional kernel features' },
    {
      flags: '--feature <name>',
      description: "check: only whether one feature works here, as CRIU's ('list' names them)",
    },
    { flags: '--token <token>', description: 'page server pre-shared token (both ends must give the same)' },
    { flags: '--token-file <file>', description: 'read the page server token from the first line of file' },
    { flags: '--tls', description: "page server: use TLS, as CRIU's (certificates on both ends)" },
    { flags: '--tls-cacert <file>', description: 'TLS: trust only certificates signed by this CA' },
    { flags: '--tls-cacrl <file>', description: "TLS: the CA's certificate revocation list" },
    { flags: '--tls-cert <file>', description: "TLS: this end's certificate" },
    { flags: '--tls-key <file>', description: "TLS: this end's private key" },
    {
      flags: '--tls-no-cn-verify',
      description: "TLS: do not check that the peer's certificate names --address",
    },
    {
      flags: '--tracker <kind>',
      description: 'dirty-memory tracker for pre-dump: auto (default), uffd, soft-dirty, none',
    },
    { flags: '-V, --version', description: 'print program version' },
  ];
}

function addOptions(cmd: Command, command: CommandName | null): Command {
  for (const spec of optionSpecs(command)) {
    // The program carries -V through commander's own .version(); the commands take it as a flag.
    if (command === null && spec.flags.startsWith('-V')) continue;
    const opt = new Option(spec.flags, spec.description);
    if (spec.isRepeatable === true) opt.argParser(collect);
    if (spec.hidden === true) opt.hideHelp();
    cmd.addOption(opt);
  }
  return cmd;
}

/**
 * Rewrite the getopt spellings commander cannot parse: `-v`, `-vv`.., `-vN` become
 * `--verbosity=N`, and a bare `--cpu-cap` becomes `--cpu-cap=all` (an optional value must be
 * attached, as with getopt, or `criu -v dump` would read "dump" as the level).
 */
export function normalizeArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  let isRest = false;
  for (const arg of argv) {
    if (isRest || arg === '--') {
      isRest = true;
      out.push(arg);
      continue;
    }
    const v = /^-v(v*|\d+)$/.exec(arg);
    if (v !== null) {
      const tail = v[1] as string;
      const level = /^\d+$/.test(tail) ? tail : String(Math.min(4, tail.length + 1));
      out.push(`--verbosity=${level}`);
    } else if (arg === '--verbosity') out.push('--verbosity=1');
    else if (arg === '--cpu-cap') out.push('--cpu-cap=all');
    else out.push(arg);
  }
  return out;
}

/** The two halves of a command line: options before the command and after it. */
function mergeRaw(before: RawOptions, after: RawOptions): RawOptions {
  const merged: RawOptions = { ...before };
  for (const [key, value] of Object.entries(after)) {
    const prev = merged[key];
    merged[key] = Array.isArray(prev) && Array.isArray(value) ? [...prev, ...value] : value;
  }
  return merged;
}

interface Parsed {
  command: CommandName;
  raw: RawOptions;
  operands: string[];
}

const DESCRIPTIONS: Record<CommandName, string> = {
  'pre-dump': 'snapshot memory changes since the previous pre-dump (tasks keep running)',
  dump: 'checkpoint a process tree',
  restore: 'restore previously checkpointed processes',
  show: 'decode the binary image files and show their contents in human-readable form',
  check: 'test whether the kernel supports everything criu needs',
  'page-server': 'launch a page server',
  exec: "execute a system call from another task's context: exec -t PID SYSCALL [ARG...]",
  service: 'start the RPC service',
  swrk: 'serve RPC requests on an inherited socket: swrk FD (how libcriu, pycriu and go-criu start criu)',
  dedup: 'deduplicate pagemap data against the parent images',
  'cpuinfo dump': 'write information about the running CPU and its features into an image',
  'cpuinfo check': 'check an image of CPU information against the running CPU',
};

/** Build a fresh program; `onCommand` receives the parse result of the command that ran. */
export function buildProgram(io: CliIo, onCommand: (parsed: Parsed) => void): Command {
  const program = new Command('criu');
  program
    .description('criu-ts: checkpoint/restore in userspace')
    .usage('[options] <command> [options]')
    .version(`Version: ${criuVersion()}`, '-V, --version', 'print program version')
    .helpOption('-h, --help', 'print inline help')
    .helpCommand(false)
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout(s),
      // Commander writes the help to stderr when a command is missing: runCli prints one line
      // instead. Errors are printed by runCli too, once, on one line.
      writeErr: () => undefined,
      outputError: () => undefined,
    })
    .addHelpText(
      'after',
      '\nOptions may be given before or after the command. Exit codes: 0 success, 1 failure or usage error, 2 not implemented yet.\n' +
        "Run 'criu <command> --help' for a command's options.",
    );
  addOptions(program, null);

  // A command's options are made when it is the one dispatched (commander's preSubcommand hook,
  // before it parses its arguments or prints its help): making every command's ~80 took ~15 ms of
  // each start.
  const optionsToAdd = new Map<Command, CommandName | null>();
  const addWhenDispatched = (_parent: Command, sub: Command): void => {
    const name = optionsToAdd.get(sub);
    if (name === undefined) return;
    optionsToAdd.delete(sub);
    addOptions(sub, name);
  };
  program.hook('preSubcommand', addWhenDispatched);
  // A command listed in a help has "[options]" in its name (commander adds it once they exist).
  const termWithOptions = function (this: Help, cmd: Command): string {
    const term = Help.prototype.subcommandTerm.call(this, cmd);
    return optionsToAdd.has(cmd) ? term.replace(cmd.name(), `${cmd.name()} [options]`) : term;
  };
  program.configureHelp({ subcommandTerm: termWithOptions });
  const attach = (cmd: Command, name: CommandName, operands: string): void => {
    optionsToAdd.set(cmd, name);
    cmd.description(DESCRIPTIONS[name]);
    if (operands !== '') cmd.arguments(operands);
    cmd.action((...args: unknown[]) => {
      const self = args[args.length - 1] as Command;
      const positional = args
        .slice(0, -2)
        .flatMap((a) => (a === undefined ? [] : Array.isArray(a) ? a.map(String) : [String(a)]));
      const before = mergeRaw(program.opts(), self.parent === program ? {} : (self.parent?.opts() ?? {}));
      onCommand({ command: name, raw: mergeRaw(before, self.opts()), operands: positional });
    });
  };

  for (const name of COMMAND_NAMES) {
    if (name.startsWith('cpuinfo ')) continue;
    const cmd = program.command(name);
    if (name === 'exec') {
      // Everything after the system call name is its arguments, negative numbers included.
      cmd.passThroughOptions();
      attach(cmd, name, '<syscall> [args...]');
    } else if (name === 'show') attach(cmd, name, '[file]');
    else if (name === 'swrk') attach(cmd, name, '<fd>');
    else attach(cmd, name, '');
  }
  const cpuinfo = program
    .command('cpuinfo')
    .description('dump or check CPU information: cpuinfo dump | cpuinfo check')
    .helpCommand(false)
    .enablePositionalOptions()
    .hook('preSubcommand', addWhenDispatched)
    .configureHelp({ subcommandTerm: termWithOptions });
  optionsToAdd.set(cpuinfo, null); // its own options: those before "dump" or "check"
  attach(cpuinfo.command('dump'), 'cpuinfo dump', '');
  attach(cpuinfo.command('check'), 'cpuinfo check', '');
  return program;
}

/** Default stdout/stderr writers. */
export const PROCESS_IO: CliIo = {
  stdout: (s) => void process.stdout.write(s),
  stderr: (s) => void process.stderr.write(s),
};

/** Turn commander's message ("error: unknown option '--x'\n(Did you mean --y?)") into one line. */
function commanderLine(err: CommanderError): string {
  const text = err.message
    .replace(/^error: /, '')
    .replace(/\s*\n\s*/g, ' ')
    .trim();
  return text === '(outputHelp)' ? 'a command is required' : text;
}

/** Install the run's logger from the options (see src/log.ts for where each command logs). */
function setUpLog(opts: Options, io: CliIo): Logger {
  const logger = createLogger({
    level: opts.logLevel,
    file: resolveLogFile(opts.command.replace('cpuinfo ', 'cpuinfo-'), opts.logFile, opts.workDir),
    isPerPid: opts.logPid,
    stderrWrite: io.stderr,
  });
  setLogger(logger);
  return logger;
}

/**
 * Run the `criu` command line `argv` (without node and script) and return the exit code.
 * Output goes through `io`; nothing here exits the process.
 */
export async function runCli(argv: readonly string[], io: CliIo = PROCESS_IO): Promise<number> {
  let parsed: Parsed | null = null;
  const program = buildProgram(io, (p) => {
    parsed = p;
  });
  try {
    await program.parseAsync(normalizeArgv(argv), { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version print through writeOut and end here with exit code 0.
      if (err.exitCode === 0) return EXIT_OK;
      const isCpuinfo = err.code === 'commander.help' && argv.includes('cpuinfo');
      const text = isCpuinfo ? 'cpuinfo needs a command: dump or check' : commanderLine(err);
      io.stderr(`${ERROR_PREFIX} ${text} (try 'criu --help')\n`);
      return EXIT_FAILURE;
    }
    throw err;
  }
  const got = parsed as Parsed | null;
  if (got === null) {
    io.stderr(`${ERROR_PREFIX} a command is required (try 'criu --help')\n`);
    return EXIT_FAILURE;
  }
  if (got.raw['version'] === true) {
    io.stdout(`Version: ${criuVersion()}\n`);
    return EXIT_OK;
  }

  let opts: Options;
  try {
    opts = toOptions(got.command, got.raw, got.operands);
  } catch (err) {
    io.stderr(`${ERROR_PREFIX} ${describeError(err)}\n`);
    return EXIT_FAILURE;
  }

  // --close FD: criu's own fds, closed before anything else (as CRIU does).
  for (const fd of opts.closeFds) {
    try {
      closeSync(fd);
    } catch {
      // not open: nothing to close
    }
  }
  let logger: Logger | null = null;
  try {
    logger = setUpLog(opts, io);
    logger.info(`criu-ts ${criuVersion()}: ${opts.command} (argv: ${argv.join(' ')})`);
    // What node and the loading of criu-ts took before this line (the log's times start here).
    logger.debug(`Process started ${performance.now().toFixed(0)} ms ago`);
    return await COMMAND_HANDLERS[opts.command](opts, io);
  } catch (err) {
    if (err instanceof CriuError && err.code === 'ENOTIMPL') {
      io.stderr(`criu: ${err.message}\n`);
      return EXIT_NOT_IMPLEMENTED;
    }
    reportError(err, io, logger);
    // A failed action script: its exit status, as CRIU returns a post-dump script's.
    if (err instanceof ActionError) return err.exitCode & 0xff || EXIT_FAILURE;
    return EXIT_FAILURE;
  } finally {
    if (logger !== null) {
      setLogger(null);
      logger.close();
    }
  }
}

/** The one line on stderr; the cause chain and stack go to the log only. */
function reportError(err: unknown, io: CliIo, logger: Logger | null): void {
  io.stderr(`${ERROR_PREFIX} ${describeError(err)}\n`);
  const target = logger ?? log();
  if (target.file !== null && target.file !== '-') {
    const chain: string[] = [];
    let cur: unknown = err;
    for (let depth = 0; cur instanceof Error && depth < 8; depth++, cur = cur.cause)
      chain.push(cur.stack ?? cur.message);
    // Written as a message so it reaches the file whatever -v says, and not echoed to stderr.
    target.msg(`${ERROR_PREFIX} ${describeError(err)}\n${chain.join('\nCaused by: ')}`);
  } else if (target.file === '-') {
    target.debug(err instanceof Error ? (err.stack ?? err.message) : String(err));
  }
}
