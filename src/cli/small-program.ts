/**
 * The shared run loop of the small executables (criu-migrate, page-server): commander with the
 * conventions of `criu` (one-line errors, exit 1 on usage errors, 2 for not implemented yet,
 * never a stack on the terminal).
 */

import { type Command, CommanderError } from 'commander';

import { CriuError, describeError } from '../errors.js';
import type { CliIo } from './commands.js';
import { PROCESS_IO } from './program.js';

/** Configure `program` for runSmallProgram: output through io, errors left to the caller. */
export function configureSmallProgram(program: Command, io: CliIo): Command {
  return program
    .exitOverride()
    .helpCommand(false)
    .configureOutput({ writeOut: (s) => io.stdout(s), writeErr: () => undefined, outputError: () => undefined });
}

/** Parse argv with `program` (whose actions may throw or return an exit code); return the exit code. */
export async function runSmallProgram(
  name: string,
  program: Command,
  argv: readonly string[],
  io: CliIo = PROCESS_IO,
): Promise<number> {
  let code = 0;
  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) return 0;
      const text =
        err.code === 'commander.help'
          ? 'a command or operands are missing'
          : err.message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ');
      io.stderr(`Error (${name}): ${text} (try '${name} --help')\n`);
      return 1;
    }
    if (err instanceof CriuError && err.code === 'ENOTIMPL') {
      io.stderr(`${name}: ${err.message}\n`);
      return 2;
    }
    io.stderr(`Error (${name}): ${describeError(err)}\n`);
    code = 1;
  }
  return code;
}
