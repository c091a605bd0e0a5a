/**
 * The one interface the migration controller uses for a host, whether it is reached through a
 * WebSocket agent (AgentClient, agent-client.ts) or is this machine itself (LocalAgent,
 * local-agent.ts): so the controller treats SRC and DST alike. Each method is one operation of
 * protocol.ts; failures reject with a CriuError (ProtocolError when the agent cannot be reached or
 * dies mid-request). Methods may be called concurrently.
 */

import type {
  CheckRunningResult,
  FileEntry,
  HelloResult,
  OpName,
  PageServerStartParams,
  PageServerStartResult,
  PageServerWaitResult,
  ParamsOf,
  RestoreParams,
  RestoreResult,
  ResultOf,
} from './protocol.js';

/** The operations a controller may call (auth belongs to the connection, not to the API). */
export type AgentOp = Exclude<OpName, 'auth'>;

export interface Agent {
  /** "local", or the agent's ADDR:PORT: for messages. */
  readonly name: string;
  /** One operation by name (the typed methods below are shorthands). */
  call<K extends AgentOp>(op: K, params: ParamsOf<K>, timeoutMs?: number): Promise<ResultOf<K>>;
  /** Versions and host facts. */
  hello(): Promise<HelloResult>;
  /** Start `criu page-server` into `dir`; resolves once it listens. */
  pageServerStart(params: PageServerStartParams): Promise<PageServerStartResult>;
  /** How a page server ended (or `running` after `timeoutMs`). */
  pageServerWait(serverId: number, timeoutMs?: number): Promise<PageServerWaitResult>;
  /** `criu restore -D dir -d`: the restored pid (in the host's PID namespace) or criu's error. */
  restore(params: RestoreParams): Promise<RestoreResult>;
  checkRunning(pid: number): Promise<CheckRunningResult>;
  /** Send `signal` (default SIGKILL); false when there is no such task. */
  kill(pid: number, signal?: NodeJS.Signals): Promise<boolean>;
  /** Remove an images dir the agent created; false when it did not exist. */
  cleanup(dir: string): Promise<boolean>;
  putFile(dir: string, name: string, data: Uint8Array, mode?: number): Promise<void>;
  getFile(dir: string, name: string): Promise<Buffer>;
  listDir(dir: string): Promise<FileEntry[]>;
  /** Disconnect (AgentClient) or stop what was started (LocalAgent). Idempotent. */
  close(): Promise<void>;
}

/** The typed methods of Agent over `call`, shared by both implementations. */
export abstract class AgentBase implements Agent {
  abstract readonly name: string;
  abstract call<K extends AgentOp>(op: K, params: ParamsOf<K>, timeoutMs?: number): Promise<ResultOf<K>>;
  abstract close(): Promise<void>;

  hello(): Promise<HelloResult> {
    return this.call('hello', {});
  }

  pageServerStart(params: PageServerStartParams): Promise<PageServerStartResult> {
    return this.call('page-server-start', params);
  }

  pageServerWait(serverId: number, timeoutMs?: number): Promise<PageServerWaitResult> {
    // Without a timeout the wait is unbounded: the request must not time out before it.
    return this.call(
      'page-server-wait',
      timeoutMs === undefined ? { serverId } : { serverId, timeoutMs },
      timeoutMs === undefined ? 0 : timeoutMs + 10_000,
    );
  }

  restore(params: RestoreParams): Promise<RestoreResult> {
    return this.call('restore', params, 180_000);
  }

  checkRunning(pid: number): Promise<CheckRunningResult> {
    return this.call('check-running', { pid });
  }

  async kill(pid: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<boolean> {
    return (await this.call('kill', { pid, signal })).isSent;
  }

  async cleanup(dir: string): Promise<boolean> {
    return (await this.call('cleanup', { dir })).isRemoved;
  }

  async putFile(dir: string, name: string, data: Uint8Array, mode?: number): Promise<void> {
    await this.call('put-file', mode === undefined ? { dir, name, data } : { dir, name, data, mode });
  }

  async getFile(dir: string, name: string): Promise<Buffer> {
    const { data } = await this.call('get-file', { dir, name });
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }

  async listDir(dir: string): Promise<FileEntry[]> {
    return (await this.call('list-dir', { dir })).entries;
  }
}
