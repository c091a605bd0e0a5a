/**
 * The migration controller: `criu-migrate SRC DST PID` moves a running process from SRC to DST,
 * each a host reached through its agent (or `local`, this machine), while it runs.
 *
 *   pre-copy   iteration k: DST listens for pages (receive-pages, into pages-k, parent pages-(k-1));
 *              SRC pre-dumps the task into it (the dirty tracker sends only what changed since
 *              k-1); DST reads those pages into the skeleton (a stub with the task's PID holding
 *              its memory). The policy (policy.ts) decides when to stop.
 *   freeze     DST listens for the final pages; SRC's final dump freezes the task, sends the pages
 *              dirtied since the last iteration and writes the other images; they are carried to
 *              DST over the control channel; DST restores into the skeleton, reading only the
 *              final pages. Downtime is measured from the final dump's request to the restore's
 *              answer (the task runs on DST), both seen from here: it is never under-reported.
 *   commit     DST confirms the task runs; SRC kills the frozen original (or stops it with
 *              --keep-source). Images on both sides are removed.
 * With --tcp-established the task's TCP connections go too, and --move-address takes the
 * addresses they are on along: SRC says where it holds them and DST that it could take them
 * before anything is frozen; SRC releases them after the final dump, DST takes them (and tells
 * its neighbours) once the connections are locked, before restoring them.
 * Anything failing before the restore is confirmed gives SRC its addresses back, resumes the
 * source untouched (it was never
 * killed: the final dump leaves it frozen under the SRC agent's ptrace), ends the tracking, kills
 * DST's skeleton and removes both sides' images; the error says which step failed.
 * Should the controller itself go away while the source is frozen, SRC's agent asks DST's how
 * the migration ended (migration-state): the task runs there, and the source is ended; or its
 * restore was never asked for, which DST then refuses, and the source runs on.
 */

import { randomBytes } from 'node:crypto';
import { CriuError, describeError } from '../src/errors.js';
import { log } from '../src/log.js';
import type { Agent } from './agent-api.js';
import { AgentClient } from './agent-client.js';
import { decide, DEFAULT_POLICY, type Decision, type IterationRecord, type PolicyOptions } from './policy.js';

export interface MigrateOptions {
  src: Agent;
  dst: Agent;
  pid: number;
  policy?: Partial<PolicyOptions>;
  /** Stop the source instead of killing it once DST runs the task. */
  keepSource?: boolean;
  /** Keep the images on both hosts (for inspection). */
  keepImages?: boolean;
  /** Progress, once per iteration and per phase. */
  onEvent?: (e: MigrateEvent) => void;
  /** Take the task's established TCP connections (criu dump --tcp-established). */
  tcpEstablished?: boolean;
  /** Take its connected TCP sockets without their connections, restored closed on DST (--tcp-close). */
  tcpClose?: boolean;
  /** Leave out connections waiting in a listener's accept queue (--skip-in-flight). */
  skipInFlight?: boolean;
  /** Addresses that move from SRC to DST with the task (with their prefix and device on SRC). */
  moveAddresses?: readonly string[];
}

export type MigrateEvent =
  | {
      kind: 'iteration';
      index: number;
      bytes: number;
      pages: number;
      ms: number;
      frozenMs: number;
      /** Bytes/s the task dirtied: this iteration's bytes over the time since the previous one began (NaN for the first). */
      dirtyRate: number;
      decision: Decision;
    }
  | { kind: 'phase'; phase: 'final-dump' | 'restore' | 'commit'; ms: number };

export interface MigrateSummary {
  pid: number;
  /** PID on DST (the same as on SRC). */
  dstPid: number;
  totalMs: number;
  downtimeMs: number;
  /** Time the source was frozen by the final dump (SRC's stats-dump). */
  frozenMs: number;
  /** DST's restore, from its request to the task running. */
  restoreMs: number;
  iterations: number;
  /** Page bytes sent: each pre-dump iteration, then the final dump. */
  bytesPerIteration: number[];
  /** Other image bytes carried to DST after the freeze. */
  imageBytes: number;
  bytesSent: number;
  stopReason: string;
}

const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;

export async function migrate(opts: MigrateOptions): Promise<MigrateSummary> {
  const { src, dst, pid } = opts;
  const policy = { ...DEFAULT_POLICY, ...opts.policy };
  // Unique even for two controllers started in the same millisecond for the same pid (two sources).
  const id = `m-${pid}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const emit = opts.onEvent ?? (() => undefined);
  const t0 = nowMs();
  const history: IterationRecord[] = [];
  const bytesPerIteration: number[] = [];
  let step = 'contacting the agents';
  let isCommitted = false;
  /** The moved addresses, as SRC held them ("ADDR/PREFIX@DEV"), once SRC has released them. */
  let released: string[] = [];
  /** Once DST was asked to restore (and so to take the addresses). */
  let isRestoreAsked = false;
  const tcp = {
    ...(opts.tcpEstablished === true ? { tcpEstablished: true } : {}),
    ...(opts.tcpClose === true ? { tcpClose: true } : {}),
    ...(opts.skipInFlight === true ? { skipInFlight: true } : {}),
  };
  try {
    await Promise.all([src.hello(), dst.hello()]);
    let moving: string[] = [];
    if ((opts.moveAddresses ?? []).length > 0) {
      step = 'checking the addresses to move';
      moving = (await src.call('addresses', { action: 'held', addresses: [...(opts.moveAddresses ?? [])] })).addresses;
      await dst.call('addresses', { action: 'check-free', addresses: moving });
    }
    // Pre-copy.
    let decision: Decision | undefined;
    let tPrev = NaN;
    for (let k = 1; ; k++) {
      const tIt = nowMs();
      step = `iteration ${k}: starting DST's page server`;
      const rp = await dst.call('receive-pages', {
        dir: `${id}/pages-${k}`,
        port: 0,
        ...(k > 1 ? { prevDir: `${id}/pages-${k - 1}` } : {}),
      });
      step = `iteration ${k}: pre-dump on SRC`;
      const pd = await withReceiverReason(
        dst,
        rp.serverId,
        src.call('pre-dump', { pid, dir: `${id}/src-${k}`, psAddress: rp.address, psPort: rp.port, ...tcp }, 600_000),
      );
      step = `iteration ${k}: receiving pages on DST`;
      const rw = await dst.call('receive-wait', { serverId: rp.serverId, timeoutMs: 60_000 }, 70_000);
      const ms = nowMs() - tIt;
      step = `iteration ${k}: reading pages into the task on DST`;
      await dst.call(
        'skeleton-apply',
        { pid, dir: `${id}/pages-${k}`, processes: pd.processes, namespaces: pd.namespaces },
        600_000,
      );
      history.push({ bytes: rw.bytes, ms });
      bytesPerIteration.push(rw.bytes);
      decision = decide(history, nowMs() - t0, policy);
      emit({
        kind: 'iteration',
        index: k,
        bytes: rw.bytes,
        pages: rw.pagesReceived,
        ms,
        frozenMs: pd.frozenUs / 1000,
        dirtyRate: (rw.bytes / (tIt - tPrev)) * 1000,
        decision,
      });
      tPrev = tIt;
      log().info(`migrate: iteration ${k}: ${rw.bytes} bytes in ${ms.toFixed(0)} ms; ${decision.reason}`);
      if (decision.isStop) break;
    }
    const last = history.length;

    // Freeze: final dump, images to DST, restore.
    step = 'starting the final page server on DST';
    const rp = await dst.call('receive-pages', { dir: `${id}/final`, port: 0, prevDir: `${id}/pages-${last}` });
    // The final dump answers with the task still frozen and its small images in the answer,
    // which go on to DST with the restore request: two messages from the freeze to the restore.
    step = 'final dump on SRC';
    const fd = await withReceiverReason(
      dst,
      rp.serverId,
      src.call(
        'final-dump',
        {
          pid,
          dir: `${id}/final`,
          psAddress: rp.address,
          psPort: rp.port,
          ...tcp,
          // Should this controller go away with the source frozen, SRC asks DST how it ended.
          ...(dst instanceof AgentClient ? { dstAgent: dst.name } : {}),
          ...(opts.keepSource === true ? { keepSource: true } : {}),
        },
        120_000,
      ),
    );
    if (moving.length > 0) {
      step = 'releasing the addresses on SRC';
      released = moving;
      await src.call('addresses', { action: 'release', addresses: moving });
    }
    const tDumped = nowMs();
    emit({ kind: 'phase', phase: 'final-dump', ms: fd.sinceFreezeUs / 1000 });
    const imageBytes = fd.images.reduce((n, f) => n + f.data.length, 0);
    step = 'restore on DST';
    isRestoreAsked = true;
    const rr = await dst.call(
      'restore-final',
      {
        pid,
        dir: `${id}/final`,
        images: fd.images,
        serverId: rp.serverId,
        ...(moving.length > 0 ? { addresses: moving } : {}),
        ...(opts.tcpClose === true ? { tcpClose: true } : {}),
      },
      120_000,
    );
    bytesPerIteration.push(rr.bytes);
    const tRunning = nowMs();
    emit({ kind: 'phase', phase: 'restore', ms: tRunning - tDumped });

    // Commit.
    step = 'confirming the task runs on DST';
    const running = await dst.checkRunning(rr.pid);
    if (!running.isRunning)
      throw new CriuError(
        'ETASK',
        `The restored task ${rr.pid} is not running on ${dst.name} (state ${running.state ?? 'gone'})`,
      );
    isCommitted = true;
    step = 'ending the source';
    await src.call('source-end', { pid, action: opts.keepSource === true ? 'stop' : 'kill' });
    emit({ kind: 'phase', phase: 'commit', ms: nowMs() - tRunning });
    if (opts.keepImages !== true) await cleanup(src, dst, id);
    const bytesSent = bytesPerIteration.reduce((n, b) => n + b, 0) + imageBytes;
    return {
      pid,
      dstPid: rr.pid,
      totalMs: nowMs() - t0,
      // SRC's clock from the freeze to its answer, then ours: the answer's one-way trip is not
      // counted (well under a millisecond between hosts of one network).
      downtimeMs: fd.sinceFreezeUs / 1000 + (tRunning - tDumped),
      frozenMs: fd.frozenUs / 1000,
      restoreMs: tRunning - tDumped,
      iterations: last,
      bytesPerIteration,
      imageBytes,
      bytesSent,
      stopReason: decision?.reason ?? '',
    };
  } catch (err) {
    if (isCommitted) {
      // The task runs on DST: only the source's end failed. Say so; never resume a second copy.
      throw new CriuError('ETASK', `Migrated, but ${step} failed: ${describeError(err)}`, { cause: err });
    }
    log().info(`migrate: ${step} failed: ${describeError(err)}; resuming the source`);
    if (released.length > 0 && isRestoreAsked)
      await dst.call('addresses', { action: 'drop', addresses: released }).catch((e: unknown) => {
        log().error(`migrate: cannot make DST give the addresses back: ${describeError(e)}`);
      });
    if (released.length > 0)
      await src.call('addresses', { action: 'take', addresses: released }).catch((e: unknown) => {
        log().error(`migrate: cannot give SRC its addresses back: ${describeError(e)}`);
      });
    await src.call('source-end', { pid, action: 'resume' }).catch((e: unknown) => {
      log().error(`migrate: cannot resume the source: ${describeError(e)}`);
    });
    await dst.call('skeleton-abort', { pid, id }).catch(() => undefined);
    if (opts.keepImages !== true) await cleanup(src, dst, id);
    const code = err instanceof CriuError ? err.code : 'ETASK';
    throw new CriuError(code, `Migration failed (${step}): ${describeError(err)}; the source runs on`, { cause: err });
  }
}

/**
 * A dump that fails while sending pages usually only sees the connection drop: the reason is on
 * the receiving side (a full disk, say). Ask DST's page server how it ended and say that first.
 */
async function withReceiverReason<T>(dst: Agent, serverId: number, sending: Promise<T>): Promise<T> {
  try {
    return await sending;
  } catch (err) {
    const why = await dst
      .call('receive-wait', { serverId, timeoutMs: 2000 }, 5000)
      .then(() => null)
      .catch((e: unknown) => describeError(e));
    if (why === null) throw err;
    throw new CriuError(
      err instanceof CriuError ? err.code : 'EPROTOCOL',
      `DST's page server: ${why} (the sender: ${describeError(err)})`,
      {
        cause: err,
      },
    );
  }
}

async function cleanup(src: Agent, dst: Agent, id: string): Promise<void> {
  await Promise.all([src.cleanup(id).catch(() => false), dst.cleanup(id).catch(() => false)]);
}
