/**
 * `criu swrk FD` and `criu service [--address PATH] [-d] [--pidfile F]`: CRIU's RPC (src/rpc/).
 *
 * swrk: serve the connected SOCK_SEQPACKET socket FD, inherited from the client that started this
 * criu (libcriu, pycriu's use_binary, go-criu all do), until the client is done with it.
 *
 * service: listen at PATH (default ./criu_service.socket, with CRIU's warning), and serve each
 * connection in a `criu swrk` of its own, as CRIU forks a worker per connection: one client's
 * dump cannot disturb another's, and a crash ends only that connection. With -d the command
 * returns once the socket listens (a client may connect as soon as it returns): a detached copy
 * inherits the listening socket and serves; --pidfile gets that copy's pid. SIGTERM or SIGINT ends
 * a service; the workers finish the requests they are in.
 */

import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors.js';
import { findPackageFile } from '../package-files.js';
import { log } from '../log.js';
import type { CliIo } from './commands.js';
import { interruptSignal } from './launch.js';
import type { Options } from './options.js';
import type { RpcListener } from '../rpc/socket.js';

/** Where `criu service` listens without --address (relative to its working directory). */
export const DEFAULT_SERVICE_ADDRESS = 'criu_service.socket';
/** Set for the workers of a service (not started by their client: CRIU's "standalone service"). */
const SERVICE_WORKER_ENV = 'CRIU_TS_SERVICE_WORKER';
/** Set for a daemon copy of a service: the fd number of the listening socket it inherits. */
const SERVICE_FD_ENV = 'CRIU_TS_SERVICE_FD';
const INHERITED_FD = 3;

/** bin/criu.js of this installation (above this module: src/cli, dist/src/cli or dist/bundle). */
function criuLauncher(): string {
  const launcher = findPackageFile('bin/criu.js');
  if (launcher === null) throw new UsageError('Cannot find bin/criu.js to start RPC workers with');
  return launcher;
}

export async function runSwrk(opts: Options, _io: CliIo): Promise<number> {
  const text = opts.operands[0];
  if (text === undefined || !/^\d+$/.test(text)) throw new UsageError('swrk needs the socket fd: criu swrk FD');
  const { RpcSocket } = await import('../rpc/socket.js');
  const { serveConnection } = await import('../rpc/worker.js');
  const socket = new RpcSocket(Number(text));
  try {
    return await serveConnection({ socket, isSwrk: process.env[SERVICE_WORKER_ENV] !== '1' });
  } finally {
    socket.close();
  }
}

export async function runService(opts: Options, _io: CliIo): Promise<number> {
  const { RpcListener } = await import('../rpc/socket.js');
  const inherited = process.env[SERVICE_FD_ENV];
  delete process.env[SERVICE_FD_ENV];
  // Bound as given, relative to the working directory as in CRIU (a unix socket path has room
  // for 107 bytes only: no need to make a short relative one long).
  const address = opts.address ?? DEFAULT_SERVICE_ADDRESS;
  if (inherited !== undefined) return serve(RpcListener.fromFd(Number(inherited), address));
  if (opts.address === undefined) log().warn('Binding to local dir address!');
  const listener = RpcListener.open(address);
  log().info(`The service socket is bound to ${path.resolve(address)}`);
  if (!opts.daemon) {
    if (opts.pidfile !== undefined) await writeFile(path.resolve(opts.workDir, opts.pidfile), `${process.pid}\n`);
    return serve(listener);
  }
  // The copy gets the listening socket as fd 3 and serves; this command ends once it runs.
  const args = [criuLauncher(), 'service', '--address', address, `-v${opts.logLevel}`, '-W', opts.workDir];
  if (opts.logFile !== undefined) args.push('-o', opts.logFile);
  const child = spawn(process.execPath, args, {
    detached: true,
    cwd: process.cwd(),
    stdio: ['ignore', 'ignore', 'ignore', listener.fd],
    env: { ...process.env, [SERVICE_FD_ENV]: String(INHERITED_FD) },
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  listener.handOver();
  if (opts.pidfile !== undefined) await writeFile(path.resolve(opts.workDir, opts.pidfile), `${child.pid}\n`);
  child.unref();
  return 0;
}

/** Accept connections until interrupted, each served by a `criu swrk` worker. */
async function serve(listener: RpcListener): Promise<number> {
  const launcher = criuLauncher();
  const stopped = new Promise<null>((resolve) => {
    if (interruptSignal.aborted) resolve(null);
    interruptSignal.addEventListener('abort', () => resolve(null), { once: true });
  });
  log().info('Waiting for connections...');
  for (;;) {
    const accepting = listener.accept();
    const conn = await Promise.race([accepting, stopped]);
    if (conn === null) {
      accepting.catch(() => undefined); // woken by the close below
      break;
    }
    try {
      const worker = spawn(process.execPath, [launcher, 'swrk', String(INHERITED_FD)], {
        cwd: process.cwd(),
        stdio: ['ignore', 'ignore', 'ignore', conn.fd],
        env: { ...process.env, [SERVICE_WORKER_ENV]: '1' },
      });
      worker.on('error', (err) => log().error(`Cannot start an RPC worker: ${err.message}`));
      worker.on('exit', (code, signal) =>
        log().info(`Worker (pid ${worker.pid ?? '?'}) exited with ${signal ?? code}`),
      );
      log().info(`Connected: worker pid ${worker.pid ?? '?'}`);
    } finally {
      conn.close(); // the worker has its own copy
    }
  }
  listener.close();
  log().info('Service stopped');
  return 0;
}
