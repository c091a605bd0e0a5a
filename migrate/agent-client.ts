/**
 * The controller's end of the control channel (protocol.ts): connect to an agent, prove the token
 * and check the agent's proof, then typed requests (agent-api.ts) with per-request timeouts.
 *
 * A dead agent is noticed two ways: a closed connection rejects every pending request at once,
 * and pings every `keepaliveMs` cut a connection whose peer vanished without a FIN (a host whose
 * network went away) once `keepaliveMisses` of them in a row got no pong and nothing else came. Either way the error is a
 * ProtocolError naming the agent and the operation that was pending.
 */

import { checkServerIdentity, type ConnectionOptions } from 'node:tls';
import WebSocket from 'ws';

import { CriuError, ProtocolError, type ErrorCode } from '../src/errors.js';
import type { TlsCredentials } from '../src/index.js';
import { AgentBase, type AgentOp } from './agent-api.js';
import {
  MAX_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  clientMac,
  decodeMessage,
  encodeMessage,
  macEqual,
  makeNonce,
  parseHostPort,
  serverMac,
  type OpName,
  type ParamsOf,
  type ResultOf,
} from './protocol.js';

const ERROR_CODES: readonly string[] = [
  'ESYSCALL',
  'EIMAGE',
  'EPROTOCOL',
  'EUNSUPPORTED',
  'EUSAGE',
  'ETASK',
  'ENOTIMPL',
] satisfies ErrorCode[];

/** An operation the agent ran and that failed there: the agent's code and message. */
export class AgentError extends CriuError {
  readonly agent: string;
  readonly op: string;

  constructor(agent: string, op: string, code: string, message: string) {
    super(ERROR_CODES.includes(code) ? (code as ErrorCode) : 'EPROTOCOL', `Agent ${agent}: ${op} failed: ${message}`);
    this.agent = agent;
    this.op = op;
  }
}

export interface ConnectOptions {
  /** Connecting and authenticating; default 10 s. */
  connectTimeoutMs?: number;
  /** Default per-request timeout (0: none); default 60 s. */
  requestTimeoutMs?: number;
  /** Ping interval. Default 5 s. */
  keepaliveMs?: number;
  /**
   * Pings in a row that may go unanswered (no pong, no other message) before the connection is
   * dropped. Default 3: an agent busy restoring a large process can keep its event loop (which
   * answers pings) from running for seconds; a host that is gone stays silent for good.
   */
  keepaliveMisses?: number;
  /** TLS (wss): the agent's certificate must be the CA's and name its address (unless isNoCnVerify). */
  tls?: TlsCredentials;
}

interface Pending {
  op: OpName;
  resolve: (result: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

export class AgentClient extends AgentBase {
  readonly name: string;
  private readonly ws: WebSocket;
  private readonly pending = new Map<number, Pending>();
  private readonly requestTimeoutMs: number;
  private nextId = 1;
  private closedReason: string | null = null;
  private keepalive: NodeJS.Timeout | undefined;

  private constructor(name: string, ws: WebSocket, opts: ConnectOptions) {
    super();
    this.name = name;
    this.ws = ws;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 60_000;
  }

  /** Connect to the agent at `target` ("ADDR:PORT") and authenticate with `token`. */
  static async connect(target: string, token: string, opts: ConnectOptions = {}): Promise<AgentClient> {
    const where = parseHostPort(target);
    if (typeof where === 'string') throw new CriuError('EUSAGE', `Invalid agent address: ${where}`);
    const host = where.address.includes(':') ? `[${where.address}]` : where.address;
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const tls = opts.tls;
    // Handed on to tls.connect (ws's own type of checkServerIdentity is not node's).
    const tlsOptions: ConnectionOptions =
      tls === undefined
        ? {}
        : {
            secureContext: tls.context,
            checkServerIdentity: (_host, cert) =>
              tls.isNoCnVerify ? undefined : checkServerIdentity(where.address, cert),
          };
    const ws = new WebSocket(`${tls === undefined ? 'ws' : 'wss'}://${host}:${where.port}/`, {
      maxPayload: MAX_MESSAGE_BYTES,
      handshakeTimeout: timeoutMs,
      ...(tlsOptions as unknown as WebSocket.ClientOptions),
    });
    // Over TLS an agent that refuses this controller's certificate just closes the connection.
    const tlsHint =
      tls === undefined ? '' : " (over TLS: does the agent accept this controller's certificate? its log says)";
    const client = new AgentClient(target, ws, opts);
    const challenge = new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new ProtocolError(target, `no challenge within ${timeoutMs} ms`, 'connect'));
        ws.terminate();
      }, timeoutMs);
      ws.once('message', (data: WebSocket.RawData) => {
        clearTimeout(timer);
        const msg = decodeMessage(toBuffer(data));
        if (typeof msg === 'string' || msg.kind !== 'challenge')
          return reject(new ProtocolError(target, 'the first message is not a challenge', 'connect'));
        if (msg.protocol !== PROTOCOL_VERSION)
          return reject(
            new ProtocolError(
              target,
              `protocol version ${msg.protocol}, this controller speaks ${PROTOCOL_VERSION}`,
              'connect',
            ),
          );
        resolve(msg.nonce);
        ws.on('message', (d: WebSocket.RawData) => client.onMessage(d));
      });
      ws.once('error', (err) => {
        clearTimeout(timer);
        const code = (err as NodeJS.ErrnoException).code;
        // A TLS agent hangs up on a plain controller; a plain agent's answer is not TLS.
        const isHungUp = code === 'ECONNRESET' || err.message === 'socket hang up';
        const hint =
          tls === undefined && isHungUp
            ? ' (does the agent use --tls?)'
            : tls !== undefined && isHungUp
              ? tlsHint
              : tls !== undefined && code === 'ERR_SSL_WRONG_VERSION_NUMBER'
                ? ' (does the agent use --tls?)'
                : '';
        reject(new ProtocolError(target, `cannot connect: ${err.message}${hint}`, 'connect', { cause: err }));
      });
      ws.once('close', (code) => {
        clearTimeout(timer);
        reject(new ProtocolError(target, `the agent closed the connection (${code})${tlsHint}`, 'connect'));
      });
    });
    ws.on('close', (code, reason) => {
      const why = reason.length > 0 ? `${code}: ${reason.toString()}` : `${code}`;
      client.onClose(`the agent closed the connection (${why})`);
    });
    ws.on('error', (err) => client.onClose(`connection error: ${err.message}`));
    let agentNonce: Uint8Array;
    try {
      agentNonce = await challenge;
    } catch (err) {
      ws.terminate();
      throw err;
    }
    const nonce = makeNonce();
    try {
      const { mac } = await client.send('auth', { mac: clientMac(token, agentNonce), nonce }, timeoutMs);
      if (!macEqual(mac, serverMac(token, nonce)))
        throw new ProtocolError(target, 'the agent does not know the token (its proof is wrong)', 'auth');
    } catch (err) {
      ws.terminate();
      if (err instanceof AgentError)
        throw new ProtocolError(target, 'the agent refused the token', 'auth', { cause: err });
      throw err;
    }
    client.startKeepalive(opts.keepaliveMs ?? 5000, opts.keepaliveMisses ?? 3);
    return client;
  }

  call<K extends AgentOp>(op: K, params: ParamsOf<K>, timeoutMs?: number): Promise<ResultOf<K>> {
    return this.send(op, params, timeoutMs ?? this.requestTimeoutMs);
  }

  async close(): Promise<void> {
    if (this.keepalive !== undefined) clearInterval(this.keepalive);
    if (this.ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((done) => {
      const timer = setTimeout(() => this.ws.terminate(), 1000);
      this.ws.once('close', () => {
        clearTimeout(timer);
        done();
      });
      this.ws.close(1000, 'done');
    });
  }

  private send<K extends OpName>(op: K, params: ParamsOf<K>, timeoutMs: number): Promise<ResultOf<K>> {
    if (this.closedReason !== null) return Promise.reject(new ProtocolError(this.name, this.closedReason, op));
    const id = this.nextId++;
    return new Promise<ResultOf<K>>((resolve, reject) => {
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              this.pending.delete(id);
              reject(new ProtocolError(this.name, `no answer within ${timeoutMs} ms`, op));
            }, timeoutMs)
          : undefined;
      this.pending.set(id, { op, resolve: resolve as (r: unknown) => void, reject, timer });
      this.ws.send(encodeMessage({ kind: 'request', id, op, params }), (err) => {
        if (err !== undefined && err !== null)
          this.settle(id, new ProtocolError(this.name, `cannot send: ${err.message}`, op));
      });
    });
  }

  private onMessage(data: WebSocket.RawData): void {
    const msg = decodeMessage(toBuffer(data));
    if (typeof msg === 'string' || msg.kind !== 'response') {
      this.onClose(`the agent broke the protocol: ${typeof msg === 'string' ? msg : `unexpected ${msg.kind}`}`);
      this.ws.terminate();
      return;
    }
    const p = this.pending.get(msg.id);
    if (p === undefined) return; // timed out already
    if (msg.ok) this.settle(msg.id, null, msg.result);
    else this.settle(msg.id, new AgentError(this.name, p.op, msg.error.code, msg.error.message));
  }

  private settle(id: number, err: Error | null, result?: unknown): void {
    const p = this.pending.get(id);
    if (p === undefined) return;
    this.pending.delete(id);
    if (p.timer !== undefined) clearTimeout(p.timer);
    if (err === null) p.resolve(result);
    else p.reject(err);
  }

  /** The connection is gone: every pending request fails, naming its op. */
  private onClose(reason: string): void {
    this.closedReason ??= reason;
    if (this.keepalive !== undefined) clearInterval(this.keepalive);
    for (const [id, p] of [...this.pending])
      this.settle(id, new ProtocolError(this.name, `${reason} while waiting`, p.op));
  }

  private startKeepalive(intervalMs: number, maxMisses: number): void {
    let misses = 0;
    const answered = (): void => {
      misses = 0;
    };
    this.ws.on('pong', answered);
    this.ws.on('message', answered);
    this.keepalive = setInterval(() => {
      if (misses >= Math.max(1, maxMisses)) {
        this.onClose(`no answer to ${misses} pings over ${misses * intervalMs} ms (the agent or its host is gone)`);
        this.ws.terminate();
        return;
      }
      misses++;
      this.ws.ping();
    }, intervalMs);
    this.keepalive.unref();
  }
}

function toBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
