/**
 * An RPC client for tests, as libcriu is one: a SOCK_SEQPACKET socketpair, `criu swrk FD` started
 * with the other end, requests and responses through criu-ts's own message codec.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { decodeResp, encodeReq, type CriuReq, type CriuResp } from '../../src/rpc/messages.js';
import { RpcSocket } from '../../src/rpc/socket.js';
import { ROOT } from './fixture.js';

export const CRIU_BIN = path.join(ROOT, 'bin/criu.js');

export interface RpcClient {
  socket: RpcSocket;
  /** Send a request, wait for its response. */
  call(req: CriuReq): Promise<CriuResp>;
  /** Send raw bytes, wait for the response. */
  callRaw(bytes: Uint8Array): Promise<CriuResp>;
  /** Resolves with the worker's exit code once it exits. */
  exited: Promise<number | null>;
  child: ChildProcess;
  close(): void;
}

/** Send `bytes` on `socket`, wait for the response. */
export async function exchange(socket: RpcSocket, bytes: Uint8Array): Promise<CriuResp> {
  await socket.send(bytes);
  const got = await socket.receive();
  if (got === null) throw new Error('criu closed the RPC connection without answering');
  return decodeResp(got);
}

function clientOf(socket: RpcSocket, child: ChildProcess): RpcClient {
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    socket,
    child,
    exited,
    call: (req) => exchange(socket, encodeReq(req)),
    callRaw: (bytes) => exchange(socket, bytes),
    close: () => socket.close(),
  };
}

/** Send a request on `socket` (a connection to `criu service`), wait for its response. */
export function request(socket: RpcSocket, req: CriuReq): Promise<CriuResp> {
  return exchange(socket, encodeReq(req));
}

/**
 * Start `criu swrk 3` with one end of a new socketpair; the client holds the other. `extraFds`
 * are handed on as the worker's fds 4, 5, ... (what a client passes for ps.fd or inherit_fd).
 */
export function startSwrk(env: NodeJS.ProcessEnv = process.env, extraFds: readonly number[] = []): RpcClient {
  const [mine, theirs] = RpcSocket.pair();
  const child = spawn(CRIU_BIN, ['swrk', '3'], {
    stdio: ['ignore', 'ignore', 'inherit', theirs.fd, ...extraFds],
    env,
  });
  theirs.close();
  return clientOf(mine, child);
}
