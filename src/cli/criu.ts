/**
 * Entry point of the `criu` command (bin/criu.js runs the compiled form). Runs the command line
 * and sets the exit code; see program.ts for the commands, options and exit codes.
 */

import { deferTerminationSignals, exitOnClosedStdout } from './launch.js';
import { runCli } from './program.js';

exitOnClosedStdout();
const interruptedExitCode = deferTerminationSignals();
// No top-level await: the bundle bin/criu.js runs is CommonJS (bin/bundle.js says why).
void runCli(process.argv.slice(2)).then((code) => {
  process.exitCode = interruptedExitCode() ?? code;
});
