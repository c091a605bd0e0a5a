/**
 * Entry point of the `criu` command (bin/criu.js runs the compiled form). Runs the command line
 * and sets the exit code; see program.ts for the commands, options and exit codes.
 */

import { deferTerminationSignals, exitOnClosedStdout } from './launch.js';
import { runCli } from './program.js';

exitOnClosedStdout();
const interruptedExitCode = deferTerminationSignals();
const code = await runCli(process.argv.slice(2));
process.exitCode = interruptedExitCode() ?? code;
