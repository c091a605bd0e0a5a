/**
 * How `criu` prints an error that reaches the top: one line, `Error (criu): <message>: <cause>...`,
 * after CRIU's own `Error (criu/<file>.c:<line>): ...` lines. Shared by the CLI and `check`.
 */

export const ERROR_PREFIX = 'Error (criu):';
