/**
 * Serving one RPC connection, as `criu swrk FD` does (and each connection of `criu service`): read
 * a criu_req, run it, answer with a criu_resp, until the client closes or a request without
 * keep_open has been answered. What CRIU does, and criu-ts with it:
 *
 *   VERSION, FEATURE_CHECK, CHECK, CPUINFO_DUMP/CHECK   answered at once
 *   DUMP                       answered once the dump is done (not when the client dumped itself
 *                              and is gone: there is no one left to answer)
 *   PRE_DUMP                   answered after each pre-dump, then the next request must be
 *                              another PRE_DUMP or the final DUMP (CRIU's pre-dump loop: how
 *                              p.haul-style tools iterate)
 *   SINGLE_PRE_DUMP            one pre-dump, answered
 *   RESTORE                    always detached; answered with the restored root's pid
 *   PAGE_SERVER(_CHLD)         starts a page server, answered with its pid and port
 *   WAIT_PID                   waits for a child of this process (a restored task, a page server)
 *   keep_open                  only for PAGE_SERVER(_CHLD), CPUINFO_*, FEATURE_CHECK, VERSION
 *
 * Unlike CRIU, which forks a process per dump and per pre-dump, criu-ts runs them in this one
 * process: a pre-dump loop pays node's start and the compiling of its code once, not per
 * iteration. Failures answer success=false with cr_errno (ESRCH for a missing task, EBADRQC for
 * refused options, the failed system call's errno, ...) and cr_errmsg, the one-line error the
 * command line would print; the details are in the request's log.
 *
 * Who may ask: a client running as root or as this process's user. Anyone may connect to a
 * service's socket (CRIU makes it 0666), but only those get anything but VERSION and
 * FEATURE_CHECK answered.
 */

import { type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import type { ActionHook } from '../actions.js';
import { ActionError, SyscallError, TaskError, UnsupportedError, UsageError, describeError } from '../errors.js';
import { WNOHANG, __WALL } from '../kernel/constants.js';
import { createLogger, log, resolveLogFile, setLogger, type Logger } from '../log.js';
import * as sys from '../sys/native.js';
import type { CliIo } from '../cli/commands.js';
import type { CommandName, Options } from '../cli/options.js';
import { criuVersion } from '../cli/program.js';
import { decodeReq, encodeResp, REQ_TYPE_NAMES, ReqType, type CriuReq, type CriuResp } from './messages.js';
import { optionsFromRequest, type RpcContext } from './options.js';
import type { RpcSocket } from './socket.js';

/** The CRIU release whose images, page-server and RPC protocols criu-ts speaks (VERSION). */
export const CRIU_COMPAT_VERSION = { major: 4, minor: 2 };

const E = osConstants.errno;
/** Not in node's table: "invalid request code", what CRIU answers a refused request with. */
const EBADRQC = 56;
const ERRNO = E as Record<string, number | undefined>;

/** Request types that may keep the connection open (CRIU's list). */
const KEEP_OPEN_OK: ReadonlySet<number> = new Set([
  ReqType.PAGE_SERVER,
  ReqType.PAGE_SERVER_CHLD,
  ReqType.CPUINFO_DUMP,
  ReqType.CPUINFO_CHECK,
  ReqType.FEATURE_CHECK,
  ReqType.VERSION,
]);

/** The errno CRIU would report for `err` (cr_errno), when there is one. */
export function errnoOf(err: unknown): number | undefined {
  if (err instanceof UsageError) return EBADRQC;
  if (err instanceof UnsupportedError) return E.EOPNOTSUPP;
  for (let cur: unknown = err, depth = 0; cur instanceof Error && depth < 8; cur = cur.cause, depth++) {
    if (cur instanceof SyscallError) return ERRNO[cur.errnoCode];
    if (cur instanceof TaskError && /no such process|exited/i.test(cur.message)) return E.ESRCH;
    if (cur instanceof TaskError && /PID \d+ is in use/.test(cur.message)) return E.EEXIST; // restore
  }
  return undefined;
}

/** What running one command gave. */
interface Outcome {
  isOk: boolean;
  errno?: number;
  errmsg?: string;
}

/** Children this process started for clients (page servers), for WAIT_PID. */
const children = new Map<number, ChildProcess>();

export interface WorkerOptions {
  socket: RpcSocket;
  /** `criu swrk` (the client's own child) rather than a connection of `criu service`. */
  isSwrk: boolean;
}

/** Serve the connection until it is done. Returns the exit code for `criu swrk`. */
export async function serveConnection(w: WorkerOptions): Promise<number> {
  const { socket } = w;
  const peer = socket.peer();
  const ctx: RpcContext = { peerPid: peer.pid, isSwrk: w.isSwrk };
  const euid = process.geteuid?.() ?? 0;
  const isTrusted = peer.uid === 0 || peer.uid === euid;
  log().info(`RPC: serving pid ${peer.pid} (uid ${peer.uid})${w.isSwrk ? ' as swrk' : ''}`);
  for (let first = true; ; first = false) {
    const bytes = await socket.receive();
    if (bytes === null) {
      if (first) log().info('RPC: the client closed the connection before any request');
      return first ? 1 : 0;
    }
    let req: CriuReq;
    try {
      req = decodeReq(bytes);
    } catch (err) {
      await answerError(socket, ReqType.EMPTY, err);
      return 1;
    }
    log().info(`RPC: request ${REQ_TYPE_NAMES[req.type] ?? req.type}${req.keep_open === true ? ' (keep_open)' : ''}`);
    if (req.keep_open === true && !KEEP_OPEN_OK.has(req.type)) {
      const what = REQ_TYPE_NAMES[req.type] ?? String(req.type);
      await answerError(socket, req.type, new UsageError(`keep_open is not allowed for ${what} requests`));
      return 1;
    }
    if (!isTrusted && req.type !== ReqType.VERSION && req.type !== ReqType.FEATURE_CHECK) {
      await answer(socket, {
        type: req.type,
        success: false,
        cr_errno: E.EACCES,
        cr_errmsg: `Not allowed: the client runs as uid ${peer.uid}, this criu as uid ${euid} (only root or the same user may ask)`,
      });
      return 1;
    }
    const isOk = await handle(socket, req, ctx);
    if (!isOk) return 1;
    if (req.keep_open !== true) return 0;
  }
}

async function answer(socket: RpcSocket, resp: CriuResp): Promise<void> {
  await socket.send(encodeResp(resp));
}

async function answerError(socket: RpcSocket, type: number, err: unknown): Promise<void> {
  const errno = errnoOf(err);
  await answer(socket, {
    type,
    success: false,
    cr_errmsg: describeError(err),
    ...(errno === undefined ? {} : { cr_errno: errno }),
  });
}

function withOutcome(resp: CriuResp, o: Outcome): CriuResp {
  if (o.errno !== undefined) resp.cr_errno = o.errno;
  if (o.errmsg !== undefined) resp.cr_errmsg = o.errmsg;
  return resp;
}

/** Handle one request (and, for PRE_DUMP, the loop it starts). Returns whether it succeeded. */
async function handle(socket: RpcSocket, req: CriuReq, ctx: RpcContext): Promise<boolean> {
  switch (req.type) {
    case ReqType.VERSION:
      await answer(socket, {
        type: req.type,
        success: true,
        version: {
          major_number: CRIU_COMPAT_VERSION.major,
          minor_number: CRIU_COMPAT_VERSION.minor,
          name: `criu-ts ${criuVersion()}`,
        },
      });
      return true;
    case ReqType.FEATURE_CHECK:
      return featureCheck(socket, req);
    case ReqType.CHECK:
      return simple(socket, req, 'check', ctx);
    case ReqType.CPUINFO_DUMP:
      return simple(socket, req, 'cpuinfo dump', ctx);
    case ReqType.CPUINFO_CHECK:
      return simple(socket, req, 'cpuinfo check', ctx);
    case ReqType.DUMP:
      return dumpReq(socket, req, ctx);
    case ReqType.SINGLE_PRE_DUMP:
      return simple(socket, req, 'pre-dump', ctx);
    case ReqType.PRE_DUMP:
      return preDumpLoop(socket, req, ctx);
    case ReqType.RESTORE:
      return restoreReq(socket, req, ctx);
    case ReqType.PAGE_SERVER:
    case ReqType.PAGE_SERVER_CHLD:
      return pageServerReq(socket, req, ctx);
    case ReqType.WAIT_PID:
      return waitPidReq(socket, req);
    default:
      await answerError(socket, ReqType.EMPTY, new UsageError(`Invalid request type ${req.type}`));
      return false;
  }
}

/** A request answered with success or failure only. */
async function simple(socket: RpcSocket, req: CriuReq, command: CommandName, ctx: RpcContext): Promise<boolean> {
  const o = await runCommand(socket, command, req, ctx);
  // As CRIU: an incompatible CPU is ENOTSUP.
  if (command === 'cpuinfo check' && !o.isOk && o.errno === undefined) o.errno = E.ENOTSUP;
  await answer(socket, withOutcome({ type: req.type, success: o.isOk }, o));
  return o.isOk;
}

async function dumpReq(socket: RpcSocket, req: CriuReq, ctx: RpcContext): Promise<boolean> {
  const isSelfDump = typeof req.opts?.['pid'] !== 'number';
  const o = await runCommand(socket, 'dump', req, ctx);
  // A client that dumped itself without leave_running is gone: no one to answer.
  if (o.isOk && isSelfDump && req.opts?.['leave_running'] !== true) return true;
  await answer(socket, withOutcome({ type: ReqType.DUMP, success: o.isOk, dump: { restored: false } }, o));
  return o.isOk;
}

async function preDumpLoop(socket: RpcSocket, first: CriuReq, ctx: RpcContext): Promise<boolean> {
  let req = first;
  for (;;) {
    const o = await runCommand(socket, 'pre-dump', req, ctx);
    await answer(socket, withOutcome({ type: ReqType.PRE_DUMP, success: o.isOk }, o));
    if (!o.isOk) return false;
    const bytes = await socket.receive();
    if (bytes === null) {
      log().info('RPC: the client ended the pre-dump loop without a final dump');
      return true;
    }
    try {
      req = decodeReq(bytes);
    } catch (err) {
      await answerError(socket, ReqType.EMPTY, err);
      return false;
    }
    if (req.type === ReqType.DUMP) return dumpReq(socket, req, ctx);
    if (req.type !== ReqType.PRE_DUMP) {
      await answerError(
        socket,
        ReqType.EMPTY,
        new UsageError('Bad request sequence: PRE_DUMP must be followed by PRE_DUMP or DUMP'),
      );
      return false;
    }
  }
}

async function restoreReq(socket: RpcSocket, req: CriuReq, ctx: RpcContext): Promise<boolean> {
  let pid = -1;
  const o = await runCommand(socket, 'restore', req, ctx, async (opts) => {
    const { restore } = await import('../restore/index.js');
    const { restoreOptions } = await import('../cli/restore.js');
    pid = (await restore(restoreOptions(opts))).pid;
    return 0;
  });
  await answer(socket, withOutcome({ type: ReqType.RESTORE, success: o.isOk, restore: { pid } }, o));
  return o.isOk;
}

async function featureCheck(socket: RpcSocket, req: CriuReq): Promise<boolean> {
  const asked = req.features ?? {};
  const { chooseTracker, kerndat } = await import('../kerndat/index.js');
  const memTrack = asked.mem_track === true && chooseTracker('auto') !== 'none';
  // pidfd_store_sk needs pidfd_open and pidfd_getfd. lazy_pages (CRIU's lazy-pages daemon) is not
  // in criu-ts.
  const pidfdStore = asked.pidfd_store === true && kerndat().hasPidfd;
  await answer(socket, {
    type: req.type,
    success: true,
    features: { mem_track: memTrack, lazy_pages: false, pidfd_store: pidfdStore },
  });
  return true;
}

async function pageServerReq(socket: RpcSocket, req: CriuReq, ctx: RpcContext): Promise<boolean> {
  let started: { pid: number; port: number } | null = null;
  const o = await runCommand(socket, 'page-server', req, ctx, async (opts) => {
    if (opts.port === undefined) throw new UsageError('RPC option ps.port is needed for a page server (0 picks one)');
    // The server runs in a process of its own, which the client's socket does not reach.
    if (opts.psSocket !== undefined) throw new UsageError('RPC option ps.fd is not taken by PAGE_SERVER here');
    const { pageServerRun, startPageServerProcess } = await import('../cli/page-server-cmd.js');
    const r = await startPageServerProcess({ ...pageServerRun(opts), isDaemon: true });
    children.set(r.child.pid as number, r.child);
    started = { pid: r.child.pid as number, port: r.port };
    return 0;
  });
  const s = started as { pid: number; port: number } | null;
  await answer(
    socket,
    withOutcome(
      { type: ReqType.PAGE_SERVER, success: o.isOk, ...(s === null ? {} : { ps: { pid: s.pid, port: s.port } }) },
      o,
    ),
  );
  return o.isOk;
}

async function waitPidReq(socket: RpcSocket, req: CriuReq): Promise<boolean> {
  const pid = req.pid ?? 0;
  const fail = async (errno: number | undefined, msg: string): Promise<boolean> => {
    await answer(socket, {
      type: ReqType.WAIT_PID,
      success: false,
      cr_errmsg: msg,
      ...(errno === undefined ? {} : { cr_errno: errno }),
    });
    return false;
  };
  if (pid <= 0) return fail(EBADRQC, 'WAIT_PID needs a pid');
  const child = children.get(pid);
  let status: number;
  if (child !== undefined) {
    // Started through node: node reaps it, so its exit is taken from node (referenced again:
    // nothing else may keep this process up meanwhile).
    child.ref();
    status = await new Promise<number>((done) => {
      if (child.exitCode !== null) done((child.exitCode & 0xff) << 8);
      else if (child.signalCode !== null) done(osConstants.signals[child.signalCode] ?? 0);
      else
        child.once('exit', (code, signal) =>
          done(signal !== null ? (osConstants.signals[signal] ?? 0) : ((code ?? 0) & 0xff) << 8),
        );
    });
    children.delete(pid);
  } else {
    // A restored task: a child of this process that node does not know.
    for (;;) {
      let r: ReturnType<typeof sys.waitpid>;
      try {
        r = sys.waitpid(pid, WNOHANG | __WALL, 0);
      } catch (err) {
        return fail(errnoOf(err), `Cannot wait for ${pid}: ${describeError(err)}`);
      }
      if (r !== null && r.pid === pid && (r.status & 0xff) !== 0x7f) {
        status = r.status;
        break;
      }
      await new Promise((t) => setTimeout(t, 20));
    }
  }
  await answer(socket, { type: ReqType.WAIT_PID, success: true, status });
  return true;
}

/**
 * The action hook of a request with notify_scripts: each action is a NOTIFY response naming it
 * (with the task's pid for post-restore, as CRIU), answered by the client with a NOTIFY request
 * whose notify_success says whether to go on.
 */
function notifier(socket: RpcSocket): ActionHook {
  return async (action, pid) => {
    log().debug(`RPC: notifying the client of ${action}`);
    await answer(socket, {
      type: ReqType.NOTIFY,
      success: true,
      notify: { script: action, ...(action === 'post-restore' && pid !== undefined ? { pid } : {}) },
    });
    const bytes = await socket.receive();
    if (bytes === null) throw new ActionError(action, `The RPC client went away at ${action}`, 255);
    const ack = decodeReq(bytes);
    if (ack.type !== ReqType.NOTIFY || ack.notify_success !== true)
      throw new ActionError(action, `The RPC client reported a ${action} script error`, 255);
  };
}

/**
 * Run `command` for `req` as the command line would (its handler, or `run`), with the request's
 * log, and say how it went.
 */
async function runCommand(
  socket: RpcSocket,
  command: CommandName,
  req: CriuReq,
  ctx: RpcContext,
  run?: (opts: Options) => Promise<number>,
): Promise<Outcome> {
  // Only the command's one-line error is of use (cr_errmsg): what it prints on stdout has no
  // place in a response, as in CRIU.
  const errs: string[] = [];
  const io: CliIo = { stdout: () => undefined, stderr: (s) => void errs.push(s) };
  let logger: Logger | null = null;
  let previous: Logger | null = null;
  try {
    const opts = optionsFromRequest(command, req.opts, ctx);
    if (req.opts?.['notify_scripts'] === true) opts.onAction = notifier(socket);
    const file = resolveLogFile(command, opts.logFile, opts.workDir);
    // Check needs no directory: it logs only when asked for a file by name, as CRIU.
    const isLogged = command !== 'check' || typeof req.opts?.['log_file'] === 'string';
    logger = createLogger({
      level: opts.logLevel,
      file: isLogged ? file : null,
      isPerPid: false,
      stderrWrite: io.stderr,
    });
    previous = setLogger(logger);
    logger.info(
      `criu-ts ${criuVersion()}: ${command} (RPC ${REQ_TYPE_NAMES[req.type] ?? req.type} from pid ${ctx.peerPid})`,
    );
    const { COMMAND_HANDLERS } = await import('../cli/commands.js');
    const code = await (run ?? ((o) => COMMAND_HANDLERS[command](o, io)))(opts);
    if (code === 0) return { isOk: true };
    const first = errs
      .join('')
      .split('\n')
      .find((l) => l.trim() !== '');
    return { isOk: false, errmsg: first?.replace(/^Error \(criu\): /, '') ?? `${command} failed` };
  } catch (err) {
    const errno = errnoOf(err);
    const message = describeError(err);
    (logger ?? log()).msg(`Error (criu): ${message}`);
    return { isOk: false, errmsg: message, ...(errno === undefined ? {} : { errno }) };
  } finally {
    if (logger !== null) {
      setLogger(previous);
      logger.close();
    }
  }
}
