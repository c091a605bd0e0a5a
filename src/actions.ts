/**
 * Action scripts: points of a dump and a restore where the caller gets a say, as in CRIU. The
 * dump and restore take a hook; the command line makes it run the --action-script programs, the
 * RPC worker makes it notify the client (notify_scripts) and wait for its answer.
 *
 *   dump     pre-dump     before anything is done to the task (failure: the dump does not start)
 *            post-dump    the images complete, the task still frozen (failure: the task is
 *                         resumed instead of killed, the images stay; criu exits with the
 *                         script's status)
 *   restore  pre-restore  before anything is created (failure: no restore)
 *            post-restore the task rebuilt, not yet running (failure: it is killed)
 *            pre-resume   just before it runs; post-resume once it runs (failures only logged)
 *
 * CRIU's other actions (network-lock/unlock, setup-namespaces, ...) belong to features criu-ts
 * does not have (network restore, and the network, mount and PID namespaces) and never happen here. A pre-dump command runs
 * no action, as CRIU's.
 *
 * A script runs as `SCRIPT` with no arguments, criu's stdio, and in its environment
 * CRTOOLS_SCRIPT_ACTION (the action), CRTOOLS_IMAGE_DIR (the images directory) and, once the task
 * exists, CRTOOLS_INIT_PID. Scripts run in the reverse order of the command line (CRIU adds each
 * at the head of its list); all run even when one fails.
 */

import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { ActionError } from './errors.js';
import { log } from './log.js';

export type DumpAction = 'pre-dump' | 'post-dump';
export type RestoreAction = 'pre-restore' | 'post-restore' | 'pre-resume' | 'post-resume';
export type ActionName = DumpAction | RestoreAction;

/** Called at each action point with the task's pid (when it exists); throws ActionError to fail. */
export type ActionHook = (action: ActionName, pid: number | undefined) => Promise<void>;

/** Run one script; resolves with its exit status (128 + signal when killed, 127 when it cannot start). */
function runScript(script: string, env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(script, [], { stdio: 'inherit', env });
    child.on('error', (err) => {
      log().error(`Cannot run action script ${script}: ${err.message}`);
      resolve(127);
    });
    child.on('exit', (code, signal) => resolve(code ?? 128 + (signal === null ? 0 : osConstants.signals[signal])));
  });
}

/** The hook that runs `scripts` (--action-script), or undefined when there are none. */
export function scriptsHook(scripts: readonly string[], imagesDir: string): ActionHook | undefined {
  if (scripts.length === 0) return undefined;
  const ordered = [...scripts].reverse();
  return async (action, pid) => {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CRTOOLS_SCRIPT_ACTION: action,
      CRTOOLS_IMAGE_DIR: path.resolve(imagesDir),
    };
    if (pid !== undefined) env['CRTOOLS_INIT_PID'] = String(pid);
    log().debug(`Running ${action} scripts`);
    let status = 0;
    const failed: string[] = [];
    for (const script of ordered) {
      const code = await runScript(script, env);
      if (code !== 0) {
        log().info(`Script ${script} exited with ${code}`);
        failed.push(script);
      }
      status |= code;
    }
    if (failed.length === 0) return;
    const more = failed.length > 1 ? ` and ${failed.length - 1} more` : '';
    // Only a post-dump script's status becomes criu's exit code (CRIU's); any other failure is 1.
    throw new ActionError(
      action,
      `The ${action} action script ${failed[0] as string}${more} failed (exit status ${status})`,
      action === 'post-dump' ? status : 1,
    );
  };
}

/** The action hook of a command: the caller's (RPC notify_scripts), else the --action-script programs. */
export function actionOption(opts: { onAction?: ActionHook; actionScripts: readonly string[]; imagesDir: string }): {
  onAction?: ActionHook;
} {
  const hook = opts.onAction ?? scriptsHook(opts.actionScripts, opts.imagesDir);
  return hook === undefined ? {} : { onAction: hook };
}

/** Run `hook` for an action whose failure is only logged (pre-resume, post-resume). */
export async function runLoggedAction(hook: ActionHook | undefined, action: ActionName, pid: number): Promise<void> {
  if (hook === undefined) return;
  try {
    await hook(action, pid);
  } catch (err) {
    log().error(`${action}: ${(err as Error).message}`);
  }
}
