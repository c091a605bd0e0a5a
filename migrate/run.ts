/**
 * `criu-migrate [options] SRC DST PID`: connect the two hosts (an agent's ADDR:PORT, or `local`),
 * run the controller (controller.ts), show progress and the summary.
 *
 * Output: on a terminal, one progress line per iteration on stderr (pages sent, MB/s, the dirty
 * set, the expected downtime) and per phase of the freeze; then a summary on stdout. With --json,
 * stdout is exactly one JSON object (progress still goes to stderr, on a terminal). With
 * --stats-dir, the numbers are also written there in CRIU's stats format: stats-dump (frozen_time
 * = downtime, memdump_time = final dump, memwrite_time = image transfer, pages_written = pages
 * sent in all) and stats-restore (restore_time). Exit 0 only when the task runs on DST.
 */

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { CriuError, UsageError } from '../src/errors.js';
import { writeImage } from '../src/images/index.js';
import { loadTlsCredentials, type TlsCredentials, type TlsOptions } from '../src/index.js';
import type { Agent } from './agent-api.js';
import { AgentClient } from './agent-client.js';
import { readTokenFile } from './agent.js';
import { migrate, type MigrateEvent, type MigrateSummary } from './controller.js';
import { LocalAgent } from './local-agent.js';
import type { PolicyOptions } from './policy.js';

export interface MigrateCliOptions {
  src: string;
  dst: string;
  pid: number;
  tokenFile?: string;
  /** --tls and its files: the agents' control channels are wss, page data goes inside TLS. */
  tls?: TlsOptions;
  isJson: boolean;
  keepSource: boolean;
  keepImages: boolean;
  policy: Partial<PolicyOptions>;
  /** --tcp-established: the task's TCP connections go too. */
  tcpEstablished?: boolean;
  /** --tcp-close: its connected TCP sockets go without their connections, closed on DST. */
  tcpClose?: boolean;
  /** --skip-in-flight: connections waiting in a listener's accept queue are left out. */
  skipInFlight?: boolean;
  /** --move-address: addresses that go from SRC to DST with the task. */
  moveAddresses?: readonly string[];
  statsDir?: string;
  /** Where `local` keeps its images (default the agent's root). */
  imagesDir?: string;
  out: (text: string) => void;
  err: (text: string) => void;
  isTerminal: boolean;
}

const MB = 1024 * 1024;

async function connectHost(
  spec: string,
  token: string | undefined,
  imagesDir: string | undefined,
  tls: { files: TlsOptions; creds: TlsCredentials } | undefined,
): Promise<Agent> {
  if (spec === 'local')
    return new LocalAgent({
      ...(imagesDir === undefined ? {} : { imagesRoot: imagesDir }),
      ...(token === undefined ? {} : { token }),
      ...(tls === undefined ? {} : { tls }),
    });
  if (token === undefined) throw new UsageError(`--token-file is needed to reach the agent at ${spec}`);
  return AgentClient.connect(spec, token, tls === undefined ? {} : { tls: tls.creds });
}

export function describeEvent(e: MigrateEvent): string {
  if (e.kind === 'phase') return `  ${e.phase.padEnd(10)} ${e.ms.toFixed(1)} ms`;
  const mbps = e.ms > 0 ? e.bytes / MB / (e.ms / 1000) : 0;
  const est = Number.isFinite(e.decision.estimatedMs) ? `${e.decision.estimatedMs.toFixed(0)} ms` : '?';
  return (
    `  iteration ${e.index}: ${e.pages} pages (${(e.bytes / MB).toFixed(1)} MB) in ${e.ms.toFixed(0)} ms, ` +
    `${mbps.toFixed(0)} MB/s, ${Number.isFinite(e.dirtyRate) ? `dirtied ${(e.dirtyRate / MB).toFixed(1)} MB/s, ` : ''}` +
    `frozen ${e.frozenMs.toFixed(1)} ms, est. downtime ${est}` +
    (e.decision.isStop ? ` -> freeze: ${e.decision.reason}` : '')
  );
}

export function summaryJson(s: MigrateSummary, src: string, dst: string): Record<string, unknown> {
  return {
    pid: s.pid,
    dst_pid: s.dstPid,
    src,
    dst,
    downtime_ms: Number(s.downtimeMs.toFixed(3)),
    total_ms: Number(s.totalMs.toFixed(3)),
    frozen_ms: Number(s.frozenMs.toFixed(3)),
    restore_ms: Number(s.restoreMs.toFixed(3)),
    iterations: s.iterations,
    bytes_sent: s.bytesSent,
    bytes_per_iteration: s.bytesPerIteration,
    image_bytes: s.imageBytes,
    stop_reason: s.stopReason,
  };
}

function summaryText(s: MigrateSummary, src: string, dst: string): string {
  const per = s.bytesPerIteration.map((b) => `${(b / MB).toFixed(1)}`).join(' + ');
  return [
    `Migrated task ${s.pid} from ${src} to ${dst} (pid ${s.dstPid} there)`,
    `  total      ${s.totalMs.toFixed(0)} ms`,
    `  downtime   ${s.downtimeMs.toFixed(1)} ms (source frozen ${s.frozenMs.toFixed(1)} ms, restore ${s.restoreMs.toFixed(1)} ms)`,
    `  iterations ${s.iterations} pre-copy + final (${s.stopReason})`,
    `  sent       ${(s.bytesSent / MB).toFixed(1)} MB: ${per} MB of pages, ${(s.imageBytes / 1024).toFixed(0)} KiB of other images`,
    '',
  ].join('\n');
}

async function writeStats(dir: string, s: MigrateSummary, finalMs: number): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const us = (ms: number): number => Math.round(ms * 1000);
  await writeImage(path.join(dir, 'stats-dump'), 'STATS', [
    {
      entry: {
        dump: {
          freezing_time: 0,
          frozen_time: us(s.downtimeMs),
          memdump_time: us(finalMs),
          memwrite_time: 0,
          pages_scanned: 0,
          pages_skipped_parent: 0,
          pages_written: Math.round(s.bytesPerIteration.reduce((n, b) => n + b, 0) / 4096),
          pages_lazy: 0,
        },
      },
    },
  ]);
  await writeImage(path.join(dir, 'stats-restore'), 'STATS', [
    {
      entry: {
        restore: {
          pages_compared: 0,
          pages_skipped_cow: 0,
          forking_time: 0,
          restore_time: us(s.restoreMs),
          pages_restored: 0,
        },
      },
    },
  ]);
}

export async function runMigration(o: MigrateCliOptions): Promise<number> {
  if (!Number.isSafeInteger(o.pid) || o.pid <= 0) throw new UsageError(`Invalid PID "${o.pid}"`);
  if (o.src === o.dst) throw new UsageError('SRC and DST are the same host');
  const token = o.tokenFile === undefined ? undefined : await readTokenFile(o.tokenFile);
  const tls = o.tls === undefined ? undefined : { files: o.tls, creds: await loadTlsCredentials(o.tls) };
  const src = await connectHost(o.src, token, o.imagesDir, tls);
  let dst: Agent | undefined;
  let finalMs = 0;
  try {
    dst = await connectHost(o.dst, token, o.imagesDir, tls);
    if (o.isTerminal) o.err(`Migrating task ${o.pid} from ${o.src} to ${o.dst}\n`);
    const summary = await migrate({
      src,
      dst,
      pid: o.pid,
      policy: o.policy,
      keepSource: o.keepSource,
      keepImages: o.keepImages,
      tcpEstablished: o.tcpEstablished === true,
      tcpClose: o.tcpClose === true,
      skipInFlight: o.skipInFlight === true,
      moveAddresses: o.moveAddresses ?? [],
      onEvent: (e) => {
        if (e.kind === 'phase' && e.phase === 'final-dump') finalMs = e.ms;
        if (o.isTerminal) o.err(`${describeEvent(e)}\n`);
      },
    });
    if (o.statsDir !== undefined) await writeStats(o.statsDir, summary, finalMs);
    o.out(o.isJson ? `${JSON.stringify(summaryJson(summary, o.src, o.dst))}\n` : summaryText(summary, o.src, o.dst));
    return 0;
  } catch (err) {
    if (err instanceof CriuError) throw err;
    throw new CriuError('ETASK', String(err), { cause: err });
  } finally {
    await Promise.all([src.close(), dst?.close()]);
  }
}
