/**
 * What an agent does, in-process: the operations of the control protocol (protocol.ts) on this
 * host. The WebSocket agent (agent.ts) serves them to a remote controller; LocalAgent
 * (local-agent.ts) calls them directly for `local`. Neither knows the other: both just call
 * `handle(op, params)`.
 *
 * Page servers and restores run as child processes: our own `criu` (bin/criu.js), as a user
 * would run it, so the agent never loads the dump/restore engines itself and a crash there cannot
 * take the agent down. Touches: /proc/PID/stat (check-running), kill(2), statfs(2), and files
 * under the images root only.
 *
 * Layout of the images root (mode 0700 throughout):
 *
 *   ROOT/MIGRATION-ID/.agent-owned   marks a migration dir this agent created (cleanup needs it)
 *   ROOT/MIGRATION-ID/SUB...          images dirs: page server output, put-file targets, restore input
 *   ROOT/.run/                        pidfiles of page servers and restores
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rm, statfs, unlink } from 'node:fs/promises';
import { hostname, release, constants as osConstants } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { CriuError, ImageError, TaskError, UsageError, describeError } from '../src/errors.js';
import { TRACKER_KINDS, kerndat, trackerUnavailableReason } from '../src/kerndat/index.js';
import { log } from '../src/log.js';
import { tlsArgs, type TlsCredentials, type TlsOptions } from '../src/index.js';
import { moveAddresses } from './addresses.js';
import { AgentClient } from './agent-client.js';
import { EngineOps } from './engine-ops.js';
import {
  MAX_FILE_BYTES,
  PROTOCOL_VERSION,
  checkDir,
  checkFileName,
  type CheckRunningResult,
  type FileEntry,
  type HelloResult,
  type OpName,
  type PageServerStartParams,
  type PageServerStartResult,
  type PageServerWaitResult,
  type ParamsOf,
  type RestoreParams,
  type RestoreResult,
  type ResultOf,
} from './protocol.js';

export const DEFAULT_IMAGES_ROOT = '/var/lib/criu-ts/agent';
const OWNED_MARK = '.agent-owned';
const RUN_DIR = '.run';

/** How long a page server may take to listen, and a restore to finish. */
const PAGE_SERVER_START_TIMEOUT_MS = 30_000;
const RESTORE_TIMEOUT_MS = 120_000;

/** Extra `criu restore` options a controller may ask for. */
const RESTORE_EXTRA_ARGS = /^(-v[0-4]?|-vv{1,3}|--tcp-established|--shell-job|--file-locks|--ext-unix-sk|--log-pid)$/;

export interface AgentOpsOptions {
  /** Absolute images root; created (0700) if missing. */
  imagesRoot: string;
  /** Default address of page servers (the agent's listen address). */
  pageServerAddress?: string;
  /** Token file handed to page servers (--token-file), so SRC's dump must show the same token. */
  tokenFile?: string;
  /** The criu command: argv before the subcommand. Default: this node, the repo's bin/criu.js. */
  criuCommand?: readonly string[];
  /** The page-server token (the token file's contents) for in-process page servers and dumps. */
  token?: string;
  /** Warm the dump and restore code up once while idle (the agent; see engine-ops.ts warmUp). */
  isWarmedUp?: boolean;
  /**
   * TLS (criu-migrate --tls): the files, handed to `criu page-server` as --tls options, and the
   * credentials read from them, for in-process page servers and dumps.
   */
  tls?: { files: TlsOptions; creds: TlsCredentials };
}

/** A source frozen by a final dump whose controller went away (AgentOps.resolveOrphan). */
export interface OrphanedSource {
  pid: number;
  /** The migration (the first segment of the final dump's dir). */
  id: string;
  /** DST's agent, "HOST:PORT". */
  dstAgent: string;
  keepSource: boolean;
  /** The addresses released after the final dump ("ADDR/PREFIX@DEV"). */
  addresses: string[];
}

/** The migration a dir belongs to: its first segment ("MIGRATION-ID/SUBDIR"). */
export function migrationOf(dir: string): string {
  return dir.split('/')[0] ?? dir;
}

interface PageServerRecord {
  child: ChildProcess;
  exited: Promise<{ exitCode: number | null; signal: string | null }>;
  stderr: () => string;
}

/** The repo's bin/criu.js, found upward from this module (migrate/ or dist/migrate/). */
export function defaultCriuCommand(): string[] {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'bin', 'criu.js');
    if (existsSync(candidate) && existsSync(join(dir, 'package.json'))) return [process.execPath, candidate];
    const up = dirname(dir);
    if (up === dir) throw new Error('Cannot find bin/criu.js above the migrate module');
    dir = up;
  }
}

/** The last line of a command's stderr that names an error, or its last line. */
export function errorLine(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  return [...lines].reverse().find((l) => /error|not implemented/i.test(l)) ?? lines.at(-1) ?? '';
}

export class AgentOps {
  readonly imagesRoot: string;
  private readonly opts: AgentOpsOptions;
  private readonly criuCommand: readonly string[];
  private readonly pageServers = new Map<number, PageServerRecord>();
  private readonly children = new Set<ChildProcess>();
  private nextServerId = 1;
  private nextRunId = 1;
  private isClosed = false;
  private readonly engine: EngineOps;
  /** DST: the migrations whose final restore runs here now. */
  private readonly restoring = new Set<string>();
  /** This agent among others (hello): random, one per AgentOps. */
  private readonly instance = randomBytes(8).toString('hex');
  /** SRC: the tasks resolveOrphan is asking DST about. */
  private readonly resolving = new Set<number>();

  constructor(opts: AgentOpsOptions) {
    this.opts = opts;
    this.engine = new EngineOps(opts.token, {
      isWarmedUp: opts.isWarmedUp === true,
      ...(opts.tls === undefined ? {} : { tls: opts.tls.creds }),
    });
    this.imagesRoot = resolve(opts.imagesRoot);
    this.criuCommand = opts.criuCommand ?? defaultCriuCommand();
  }

  /** Create the images root (0700). */
  async init(): Promise<void> {
    await mkdir(join(this.imagesRoot, RUN_DIR), { recursive: true, mode: 0o700 });
  }

  /** Run one operation. Failures are CriuErrors with a stable code. */
  async handle<K extends Exclude<OpName, 'auth'>>(op: K, params: ParamsOf<K>): Promise<ResultOf<K>> {
    if (this.isClosed) throw new CriuError('EPROTOCOL', 'The agent is shutting down');
    // One switch over the op: each arm casts back to its own params/result pair.
    type R = ResultOf<K>;
    switch (op) {
      case 'hello':
        return (await this.hello()) as R;
      case 'page-server-start':
        return (await this.pageServerStart(params as ParamsOf<'page-server-start'>)) as R;
      case 'page-server-wait': {
        const p = params as ParamsOf<'page-server-wait'>;
        return (await this.pageServerWait(p.serverId, p.timeoutMs)) as R;
      }
      case 'restore':
        return (await this.restore(params as RestoreParams)) as R;
      case 'check-running':
        return checkRunning((params as ParamsOf<'check-running'>).pid) as R;
      case 'kill': {
        const p = params as ParamsOf<'kill'>;
        return { isSent: killTask(p.pid, p.signal ?? 'SIGKILL') } as R;
      }
      case 'cleanup':
        return { isRemoved: await this.cleanup((params as ParamsOf<'cleanup'>).dir) } as R;
      case 'put-file': {
        const p = params as ParamsOf<'put-file'>;
        return { sizeBytes: await this.putFile(p.dir, p.name, p.data, p.mode ?? 0o600) } as R;
      }
      case 'get-file': {
        const p = params as ParamsOf<'get-file'>;
        return { data: await this.getFile(p.dir, p.name) } as R;
      }
      case 'list-dir':
        return { entries: await this.listDir((params as ParamsOf<'list-dir'>).dir) } as R;
      case 'pre-dump':
      case 'final-dump': {
        const p = params as ParamsOf<'pre-dump'>;
        const dir = await this.dirPath(p.dir, true);
        const prev = p.prevDir === undefined ? undefined : await this.dirPath(p.prevDir, false);
        const to = p.psPort === undefined ? undefined : { address: p.psAddress ?? '127.0.0.1', port: p.psPort };
        const prevRel = prev === undefined ? undefined : relative(dir, prev);
        const how = {
          isTcpEstablished: p.tcpEstablished === true,
          isTcpClose: p.tcpClose === true,
          isSkipInFlight: p.skipInFlight === true,
        };
        return (
          op === 'pre-dump'
            ? await this.engine.preDump(p.pid, dir, to, prevRel, how)
            : await this.engine.finalDump(p.pid, dir, to, prevRel, how)
        ) as R;
      }
      case 'source-end': {
        const p = params as ParamsOf<'source-end'>;
        if (p.action !== 'kill' && p.action !== 'resume' && p.action !== 'stop')
          throw new UsageError(`source-end: action must be kill, stop or resume, not "${p.action}"`);
        return { isDone: await this.engine.sourceEnd(p.pid, p.action) } as R;
      }
      case 'receive-pages': {
        const p = params as ParamsOf<'receive-pages'>;
        const dir = await this.dirPath(p.dir, true);
        const address = p.address ?? this.opts.pageServerAddress;
        if (address === undefined) throw new UsageError('receive-pages needs an address: this agent has no default');
        const prev = p.prevDir === undefined ? undefined : relative(dir, await this.dirPath(p.prevDir, false));
        const r = await this.engine.receivePages(dir, address, p.port, prev);
        return { ...r, address } as R;
      }
      case 'receive-wait': {
        const p = params as ParamsOf<'receive-wait'>;
        return (await this.engine.receiveWait(p.serverId, p.timeoutMs)) as R;
      }
      case 'skeleton-apply': {
        const p = params as ParamsOf<'skeleton-apply'>;
        return (await this.engine.skeletonApply(
          p.pid,
          await this.dirPath(p.dir, false),
          p.processes,
          p.namespaces,
          migrationOf(p.dir),
        )) as R;
      }
      case 'skeleton-abort': {
        const p = params as ParamsOf<'skeleton-abort'>;
        return { isDone: this.engine.skeletonAbort(p.pid, p.id) } as R;
      }
      case 'restore-final': {
        const p = params as ParamsOf<'restore-final'>;
        const dir = await this.dirPath(p.dir, false);
        const id = migrationOf(p.dir);
        if (this.endOf(id)?.state === 'given-up')
          throw new CriuError(
            'ETASK',
            `Migration ${id} was given up: its source asked how it ended, and runs on there`,
          );
        this.restoring.add(id);
        try {
          const r = await this.engine.restoreFinal(
            dir,
            p.pid,
            p.images,
            p.serverId,
            p.addresses,
            p.tcpClose === true,
            id,
          );
          this.setEnd(id, { state: 'running', pid: r.pid });
          return r as R;
        } finally {
          this.restoring.delete(id);
        }
      }
      case 'migration-state':
        return { state: this.migrationState((params as ParamsOf<'migration-state'>).id) } as R;
      case 'addresses': {
        const p = params as ParamsOf<'addresses'>;
        return { addresses: moveAddresses(p.action, p.addresses) } as R;
      }
      default:
        throw new UsageError(`Unknown agent operation "${String(op)}"`);
    }
  }

  /**
   * DST: how migration `id` ended, for its source (migration-state): 'running' (its final
   * restore succeeded and the task still runs), 'restoring', or 'none' (never asked, failed, or
   * the task is gone since), after which its restore is refused.
   */
  private migrationState(id: string): string {
    checkDir(id);
    const end = this.endOf(id);
    let state: string;
    if (this.restoring.has(id)) state = 'restoring';
    else if (end?.state === 'running' && end.pid !== undefined && checkRunning(end.pid).isRunning) state = 'running';
    else {
      state = 'none';
      this.setEnd(id, { state: 'given-up' });
    }
    log().info(`agent: the source of migration ${id} asks how it ended: ${state}`);
    return state;
  }

  /**
   * DST: how migration `id` ended here ('running': restored, `pid`; 'given-up': its source
   * resumed), kept in a file under the images root so that a restarted agent still knows.
   */
  private endOf(id: string): { state: string; pid?: number } | undefined {
    try {
      return JSON.parse(readFileSync(this.endFile(id), 'utf8')) as { state: string; pid?: number };
    } catch {
      return undefined;
    }
  }

  private setEnd(id: string, end: { state: string; pid?: number }): void {
    try {
      writeFileSync(this.endFile(id), JSON.stringify(end), { mode: 0o600 });
    } catch (err) {
      log().error(`agent: cannot record how migration ${id} ended: ${describeError(err)}`);
    }
  }

  private endFile(id: string): string {
    return join(this.imagesRoot, RUN_DIR, `migration-${id}`);
  }

  /**
   * SRC: the controller of the final dump `o` went away, leaving the task frozen here. Ask DST's
   * agent how the migration ended, again every second until it says (or this agent stops): the
   * task runs there, so the source ends as the controller would have ended it; or it never will
   * (DST now refuses its restore), so the source gets its addresses back and runs on. Until DST
   * answers, the source stays frozen: resuming it could run the task twice.
   */
  async resolveOrphan(o: OrphanedSource): Promise<void> {
    if (this.resolving.has(o.pid)) return;
    this.resolving.add(o.pid);
    try {
      await this.askDst(o);
    } finally {
      this.resolving.delete(o.pid);
    }
  }

  private async askDst(o: OrphanedSource): Promise<void> {
    const token = this.opts.token;
    log().warn(
      `agent: the controller went away with task ${o.pid} frozen for migration ${o.id}; asking DST's agent ` +
        `${o.dstAgent} how it ended`,
    );
    for (let attempt = 0; !this.isClosed; attempt++) {
      let state = 'unknown';
      try {
        if (token === undefined) throw new UsageError('this agent has no token to reach DST with');
        const c = await AgentClient.connect(o.dstAgent, token, {
          connectTimeoutMs: 5000,
          requestTimeoutMs: 10_000,
          ...(this.opts.tls === undefined ? {} : { tls: this.opts.tls.creds }),
        });
        try {
          // The controller's address of DST may lead back here (a controller on DST that used
          // localhost): this agent cannot say how the migration ended on DST.
          if ((await c.hello()).instance === this.instance)
            throw new UsageError(`${o.dstAgent} (DST's agent as the controller reached it) is this agent`);
          state = (await c.call('migration-state', { id: o.id })).state;
        } finally {
          c.close();
        }
      } catch (err) {
        // Once, then once a minute.
        if (attempt % 60 === 0)
          log().warn(
            `agent: cannot ask DST about migration ${o.id} (${describeError(err)}); task ${o.pid} stays frozen`,
          );
      }
      if (this.isClosed) return;
      if (state === 'running') {
        log().warn(`agent: migration ${o.id} ended on DST: task ${o.pid} runs there, the source is ended`);
        await this.engine.sourceEnd(o.pid, o.keepSource ? 'stop' : 'kill');
        return;
      }
      if (state === 'none') {
        log().warn(`agent: migration ${o.id} never restored on DST: task ${o.pid} runs on here`);
        if (o.addresses.length > 0) {
          try {
            moveAddresses('take', o.addresses);
          } catch (err) {
            log().error(`agent: cannot take the addresses of task ${o.pid} back: ${describeError(err)}`);
          }
        }
        await this.engine.sourceEnd(o.pid, 'resume');
        return;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  /** Stop every page server and restore still running (SIGTERM, then SIGKILL after 2 s). */
  async close(): Promise<void> {
    this.isClosed = true;
    // A source whose migration's end DST never told: stopped, not resumed (it may run on DST).
    for (const pid of this.resolving) {
      log().warn(
        `agent: task ${pid} is left stopped (SIGSTOP): DST never said how its migration ended. ` +
          `If it does not run on DST, resume it with kill -CONT ${pid}`,
      );
      await this.engine.sourceEnd(pid, 'stop');
    }
    this.engine.close();
    const all = [...this.children];
    for (const c of all) c.kill('SIGTERM');
    await Promise.all(
      all.map(
        (c) =>
          new Promise<void>((done) => {
            if (c.exitCode !== null || c.signalCode !== null) return done();
            const timer = setTimeout(() => c.kill('SIGKILL'), 2000);
            c.once('exit', () => {
              clearTimeout(timer);
              done();
            });
          }),
      ),
    );
  }

  // --- operations ----------------------------------------------------------------------------

  async hello(): Promise<HelloResult> {
    const fs = await statfs(this.imagesRoot);
    return {
      protocol: PROTOCOL_VERSION,
      version: packageVersion(),
      kernel: release(),
      hostname: hostname(),
      imagesRoot: this.imagesRoot,
      freeBytes: fs.bavail * fs.bsize,
      trackers: usableTrackers(),
      pid: process.pid,
      instance: this.instance,
    };
  }

  async pageServerStart(p: PageServerStartParams): Promise<PageServerStartResult> {
    const dir = await this.dirPath(p.dir, true);
    const address = p.address ?? this.opts.pageServerAddress;
    if (address === undefined) throw new UsageError('page-server-start needs an address: this agent has no default');
    if (!Number.isInteger(p.port) || p.port < 0 || p.port > 65535)
      throw new UsageError(`Invalid page server port ${p.port}`);
    const serverId = this.nextServerId++;
    const pidfile = join(this.imagesRoot, RUN_DIR, `page-server-${serverId}.pid`);
    await rm(pidfile, { force: true });
    const args = ['page-server', '-D', dir, '--address', address, '--port', String(p.port), '--pidfile', pidfile];
    if (p.prevDir !== undefined) {
      const prev = await this.dirPath(p.prevDir, false);
      // As in CRIU, --prev-images-dir is relative to the images dir.
      args.push('--prev-images-dir', relative(dir, prev));
    }
    if (this.opts.tokenFile !== undefined) args.push('--token-file', this.opts.tokenFile);
    // The client's name is not checked against the server's address (see EngineOps); its chain is.
    if (this.opts.tls !== undefined) args.push(...tlsArgs({ ...this.opts.tls.files, isNoCnVerify: true }));

    const run = this.spawnCriu(args, dir);
    const started = Date.now();
    let port = p.port;
    for (;;) {
      const ended = run.exitState();
      if (ended !== null)
        throw new CriuError(
          // criu's exit code 2: a command it has but does not implement yet.
          ended.exitCode === 2 ? 'ENOTIMPL' : 'EPROTOCOL',
          `Cannot start the page server: criu page-server exited (${ended.exitCode ?? ended.signal}): ${errorLine(run.stderr())}`,
        );
      if (port === 0) {
        const m = /listening on \S*:(\d+)/.exec(run.stdout());
        if (m !== null) port = Number(m[1]);
      }
      // The pidfile is written once the socket listens (criu page-server's contract).
      if (port !== 0 && isComplete(pidfile)) break;
      if (Date.now() - started > PAGE_SERVER_START_TIMEOUT_MS) {
        run.child.kill('SIGKILL');
        throw new CriuError(
          'EPROTOCOL',
          `Cannot start the page server: not listening after ${PAGE_SERVER_START_TIMEOUT_MS} ms`,
        );
      }
      await sleep(10);
    }
    this.pageServers.set(serverId, { child: run.child, exited: run.exited, stderr: run.stderr });
    log().info(`agent: page server ${serverId} (pid ${run.child.pid}) listens on ${address}:${port} for ${dir}`);
    return { serverId, pid: run.child.pid ?? -1, address, port };
  }

  async pageServerWait(serverId: number, timeoutMs?: number): Promise<PageServerWaitResult> {
    const rec = this.pageServers.get(serverId);
    if (rec === undefined) throw new UsageError(`No page server ${serverId} on this agent`);
    const timeout =
      timeoutMs === undefined
        ? null
        : new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), Math.max(0, timeoutMs)).unref());
    const ended = await (timeout === null ? rec.exited : Promise.race([rec.exited, timeout]));
    if (ended === 'timeout') return { state: 'running' };
    const isOk = ended.exitCode === 0;
    return { state: 'exited', ...ended, error: isOk ? null : errorLine(rec.stderr()) };
  }

  async restore(p: RestoreParams): Promise<RestoreResult> {
    const dir = await this.dirPath(p.dir, false);
    for (const a of p.extraArgs ?? [])
      if (!RESTORE_EXTRA_ARGS.test(a)) throw new UsageError(`Restore option "${a}" is not allowed through the agent`);
    const pidfile = join(this.imagesRoot, RUN_DIR, `restore-${this.nextRunId++}.pid`);
    await rm(pidfile, { force: true });
    const run = this.spawnCriu(['restore', '-D', dir, '-d', '--pidfile', pidfile, ...(p.extraArgs ?? [])], dir);
    const timer = setTimeout(() => run.child.kill('SIGKILL'), RESTORE_TIMEOUT_MS);
    const ended = await run.exited;
    clearTimeout(timer);
    try {
      if (ended.exitCode === 0 && isComplete(pidfile)) {
        const pid = Number(readFileSync(pidfile, 'utf8').trim());
        log().info(`agent: restored ${dir} as pid ${pid}`);
        return { state: 'restored', pid };
      }
      const error =
        errorLine(run.stderr()) || `criu restore exited (${ended.exitCode ?? ended.signal}) without a pidfile`;
      log().warn(`agent: restore of ${dir} failed: ${error}`);
      return { state: 'failed', exitCode: ended.exitCode, error };
    } finally {
      await rm(pidfile, { force: true });
    }
  }

  async cleanup(dirParam: string): Promise<boolean> {
    const dir = this.checkedPath(dirParam);
    const top = join(this.imagesRoot, dirParam.split('/')[0] ?? '');
    if (!existsSync(dir)) return false;
    if (!existsSync(join(top, OWNED_MARK)))
      throw new UsageError(`Cannot clean up "${dirParam}": this agent did not create it`);
    await rm(dir, { recursive: true, force: true });
    // The whole migration: how it ended goes too (its controller is done with it).
    if (!dirParam.includes('/')) await rm(this.endFile(dirParam), { force: true });
    log().info(`agent: removed ${dir}`);
    return true;
  }

  async putFile(dirParam: string, name: string, data: Uint8Array, mode: number): Promise<number> {
    const bad = checkFileName(name);
    if (bad !== null) throw new UsageError(`Cannot put a file: ${bad}`);
    if (data.length > MAX_FILE_BYTES)
      throw new UsageError(`Cannot put "${name}": ${data.length} bytes is over the limit`);
    const dir = await this.dirPath(dirParam, true);
    const file = join(dir, name);
    const tmp = join(dir, `.${name}.put-${process.pid}-${this.nextRunId++}`);
    try {
      const fh = await open(
        tmp,
        fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
        mode & 0o777,
      );
      try {
        await fh.writeFile(data);
        await fh.chmod(mode & 0o777);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, file);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw new ImageError(file, describeError(err), undefined, { cause: err, isWrite: true });
    }
    return data.length;
  }

  async getFile(dirParam: string, name: string): Promise<Uint8Array> {
    const bad = checkFileName(name);
    if (bad !== null) throw new UsageError(`Cannot get a file: ${bad}`);
    const file = join(await this.dirPath(dirParam, false), name);
    try {
      // O_NOFOLLOW: a symlink in an images dir (the "parent" link) must not lead out of the root.
      const fh = await open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
      try {
        const st = await fh.stat();
        if (!st.isFile()) throw new Error('not a regular file');
        if (st.size > MAX_FILE_BYTES) throw new Error(`${st.size} bytes is over the limit of the control channel`);
        return await fh.readFile();
      } finally {
        await fh.close();
      }
    } catch (err) {
      throw new ImageError(file, describeError(err), undefined, { cause: err });
    }
  }

  async listDir(dirParam: string): Promise<FileEntry[]> {
    const dir = await this.dirPath(dirParam, false);
    const out: FileEntry[] = [];
    for (const name of (await readdir(dir)).sort()) {
      const st = await lstat(join(dir, name));
      out.push({ name, sizeBytes: st.size, isDir: st.isDirectory() });
    }
    return out;
  }

  // --- helpers -------------------------------------------------------------------------------

  private checkedPath(dirParam: string): string {
    const bad = checkDir(dirParam);
    if (bad !== null) throw new UsageError(`Invalid images dir: ${bad}`);
    if (dirParam.split('/')[0] === RUN_DIR) throw new UsageError(`Invalid images dir: "${RUN_DIR}" is the agent's own`);
    return join(this.imagesRoot, dirParam);
  }

  /** The absolute path of agent-relative `dirParam`; with isCreate, made (0700, owned mark). */
  private async dirPath(dirParam: string, isCreate: boolean): Promise<string> {
    const dir = this.checkedPath(dirParam);
    if (isCreate) {
      const top = join(this.imagesRoot, dirParam.split('/')[0] ?? '');
      if (!existsSync(top)) {
        await mkdir(top, { mode: 0o700 });
        await (await open(join(top, OWNED_MARK), 'w', 0o600)).close();
      }
      await mkdir(dir, { recursive: true, mode: 0o700 });
    }
    let st;
    try {
      st = await lstat(dir);
    } catch {
      throw new UsageError(`No images dir "${dirParam}" on this agent`);
    }
    if (!st.isDirectory()) throw new UsageError(`Images dir "${dirParam}" is not a directory`);
    return dir;
  }

  private spawnCriu(
    args: readonly string[],
    cwd: string,
  ): {
    child: ChildProcess;
    exited: Promise<{ exitCode: number | null; signal: string | null }>;
    exitState(): { exitCode: number | null; signal: string | null } | null;
    stdout(): string;
    stderr(): string;
  } {
    const [cmd, ...pre] = this.criuCommand;
    if (cmd === undefined) throw new Error('empty criu command');
    log().debug(`agent: running criu ${args.join(' ')}`);
    const child = spawn(cmd, [...pre, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.children.add(child);
    let out = '';
    let err = '';
    // Keep the tail only: a chatty -v4 run must not grow the agent.
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (out = (out + s).slice(-16384)));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (err = (err + s).slice(-16384)));
    let state: { exitCode: number | null; signal: string | null } | null = null;
    const exited = new Promise<{ exitCode: number | null; signal: string | null }>((done) => {
      child.on('error', (e) => {
        err += `\nError: cannot run ${cmd}: ${e.message}\n`;
        state ??= { exitCode: null, signal: null };
        this.children.delete(child);
        done(state);
      });
      child.on('close', (exitCode, signal) => {
        state ??= { exitCode, signal };
        this.children.delete(child);
        done(state);
      });
    });
    return { child, exited, exitState: () => state, stdout: () => out, stderr: () => err };
  }
}

function checkRunning(pid: number): CheckRunningResult {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new UsageError(`Invalid pid ${pid}`);
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return { isRunning: false, state: null };
  }
  const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? null;
  return { isRunning: state !== null && state !== 'Z' && state !== 'X', state };
}

function killTask(pid: number, signal: string): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new UsageError(`Invalid pid ${pid}`);
  if (!(signal in osConstants.signals)) throw new UsageError(`Unknown signal "${signal}"`);
  try {
    process.kill(pid, signal as NodeJS.Signals);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw new TaskError(pid, `Cannot send ${signal} to ${pid}: ${(err as Error).message}`, { cause: err });
  }
}

/** The dirty-memory trackers usable here, in kerndat's order of preference. */
function usableTrackers(): string[] {
  try {
    const kd = kerndat();
    return TRACKER_KINDS.filter(
      (k) => trackerUnavailableReason(k, kd) === null && (k !== 'uffd' || kd.hasUffdWpUnpopulated),
    );
  } catch (err) {
    log().warn(`agent: cannot probe the kernel for trackers: ${describeError(err)}`);
    return ['none'];
  }
}

let cachedVersion: string | undefined;
function packageVersion(): string {
  if (cachedVersion !== undefined) return cachedVersion;
  const [, criuJs] = defaultCriuCommand();
  try {
    const pkg = JSON.parse(readFileSync(join(dirname(criuJs ?? ''), '..', 'package.json'), 'utf8')) as {
      version?: string;
    };
    cachedVersion = pkg.version ?? 'unknown';
  } catch {
    cachedVersion = 'unknown';
  }
  return cachedVersion;
}

/** A pidfile is complete once its line ends (criu writes "PID\n" in one go, but be sure). */
function isComplete(pidfile: string): boolean {
  try {
    const s = readFileSync(pidfile, 'utf8');
    return /^\d+\n$/.test(s);
  } catch {
    return false;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
