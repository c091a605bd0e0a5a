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
  const exitCode = interruptedExitCode() ?? code;
  process.exitCode = exitCode;
  // The command is done (images written and synced, logs written synchronously): exit now rather
  // than let node tear its environment down (~10 ms here after a 1 GiB dump). Output still queued
  // for a pipe is left to drain first.
  if (process.stdout.writableLength === 0 && process.stderr.writableLength === 0) process.exit(exitCode);
});
