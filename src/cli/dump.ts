/**
 * `criu dump -t PID -D DIR [-R | -s] [--prev-images-dir D] [--track-mem] [--auto-dedup]
 * [--page-server --address A --port N] [--action-script S]` and `criu pre-dump` with the same
 * memory options: map the options to the dump library calls.
 */

import { actionOption } from '../actions.js';
import { UsageError } from '../errors.js';
import { dump } from '../dump/index.js';
import { preDump } from '../dump/pre-dump.js';
import type { PageSink } from '../dump/page-sink.js';
import type { PidfdStore } from '../dump/pidfd-store.js';
import type { FileOptions } from '../files/types.js';
import type { CliIo } from './commands.js';
import { interruptSignal } from './launch.js';
import type { Options } from './options.js';
import { progressReporter } from './progress.js';
import { tlsOptionsOf } from './tls-options.js';

function treeOf(opts: Options, command: string): number {
  if (opts.tree === undefined) throw new UsageError(`${command} needs the task to checkpoint: -t/--tree PID`);
  return opts.tree;
}

/** --page-server: the sink that sends the pages there, connected. */
async function pageServerSink(opts: Options): Promise<PageSink | undefined> {
  if (!opts.pageServer) return undefined;
  if (opts.port === undefined && opts.psSocket === undefined) throw new UsageError('--page-server needs --port');
  const { connectPageServerSink } = await import('../dump/page-server-sink.js');
  const { readToken } = await import('./page-server-cmd.js');
  const token = await readToken(opts.token, opts.tokenFile);
  const tlsOpts = tlsOptionsOf(opts, opts.workDir);
  const tls =
    tlsOpts === undefined ? undefined : await (await import('../pageserver/tls.js')).loadTlsCredentials(tlsOpts);
  return connectPageServerSink({
    address: opts.address ?? '127.0.0.1',
    port: opts.port ?? 0,
    ...(opts.psSocket === undefined ? {} : { fd: opts.psSocket }),
    ...(token === undefined ? {} : { token }),
    ...(tls === undefined ? {} : { tls }),
  });
}

/** RPC's pidfd_store_sk, opened, or null without it. */
async function pidfdStoreOf(opts: Options): Promise<PidfdStore | null> {
  if (opts.pidfdStore === undefined) return null;
  const { PidfdStore } = await import('../dump/pidfd-store.js');
  return PidfdStore.open(opts.pidfdStore.clientPid, opts.pidfdStore.fd);
}

/** The options of criu(8) that decide which fds a dump takes and how. */
function fileOptionsOf(opts: Options): FileOptions {
  return {
    isShellJob: opts.shellJob,
    isLinkRemap: opts.linkRemap,
    isEvasiveDevices: opts.evasiveDevices,
    isTcpEstablished: opts.tcpEstablished,
    isTcpClose: opts.tcpClose,
    isSkipInFlight: opts.skipInFlight,
    isExtUnixSk: opts.extUnixSk,
    isFileLocks: opts.fileLocks,
  };
}

export async function runDump(opts: Options, io: CliIo): Promise<number> {
  const pid = treeOf(opts, 'dump');
  if (opts.leaveRunning && opts.leaveStopped)
    throw new UsageError('-R/--leave-running and -s/--leave-stopped exclude each other');
  const store = await pidfdStoreOf(opts);
  const progress = progressReporter(io);
  try {
    const sink = await pageServerSink(opts);
    await dump({
      pid,
      imagesDir: opts.imagesDir,
      end: opts.leaveRunning ? 'leave-running' : opts.leaveStopped ? 'leave-stopped' : 'kill',
      // criu exits right after: the dead task goes to its parent then, without criu waiting for
      // the kernel to free its memory.
      canLeaveKilledUnreaped: true,
      signal: interruptSignal,
      onProgress: progress.update,
      trackMem: opts.trackMem,
      tracker: opts.tracker,
      autoDedup: opts.autoDedup,
      fileOptions: fileOptionsOf(opts),
      namespaces: opts.namespaces,
      ...(opts.prevImagesDir === undefined ? {} : { prevImagesDir: opts.prevImagesDir }),
      ...(sink === undefined ? {} : { sink }),
      ...(store === null ? {} : { pidfdStore: store }),
      ...actionOption(opts),
    });
  } finally {
    progress.done();
    store?.close();
  }
  return 0;
}

export async function runPreDump(opts: Options, io: CliIo): Promise<number> {
  const pid = treeOf(opts, 'pre-dump');
  const store = await pidfdStoreOf(opts);
  const progress = progressReporter(io);
  try {
    const sink = await pageServerSink(opts);
    await preDump({
      pid,
      imagesDir: opts.imagesDir,
      tracker: opts.tracker,
      signal: interruptSignal,
      onProgress: progress.update,
      fileOptions: fileOptionsOf(opts),
      namespaces: opts.namespaces,
      ...(opts.prevImagesDir === undefined ? {} : { prevImagesDir: opts.prevImagesDir }),
      ...(sink === undefined ? {} : { sink }),
      ...(store === null ? {} : { pidfdStore: store }),
    });
  } finally {
    progress.done();
    store?.close();
  }
  return 0;
}

/** `criu dedup -D DIR`: silent like CRIU's (the log says how much was punched). */
export async function runDedup(opts: Options, _io: CliIo): Promise<number> {
  const { dedupChain } = await import('../mem/dedup.js');
  await dedupChain(opts.imagesDir);
  return 0;
}
