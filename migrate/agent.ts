/**
 * The agent: `criu-migrate agent --listen ADDR:PORT --token-file F [-D DIR]`. It runs on each
 * host of a migration and does there what the controller asks (agent-ops.ts: page servers,
 * restores, small image files), over the WebSocket control channel of protocol.ts.
 *
 * Security: the listen address is always explicit (0.0.0.0 only when given as such); a client
 * must pass the challenge-response of protocol.ts before any other request, or the agent answers
 * with an error and closes the connection; MACs are compared in constant time; the token is never
 * logged, and reaches page servers through a file, never an argv. Whoever holds the token can make
 * the agent restore any images, that is run any code as the agent's user (root): treat the token
 * like a root password. Without --tls the control channel and the page data are unencrypted (run
 * them on a trusted network or a tunnel; the token itself never crosses the wire); with it the
 * control channel is wss and requires the controller's certificate, and page data goes inside TLS.
 *
 * SIGTERM/SIGINT: stop listening, close every connection, stop the page servers and restores this
 * agent started (restored tasks keep running), exit 0.
 */

import { readFile } from 'node:fs/promises';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { resolve } from 'node:path';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';

import { CriuError, ProtocolError, UsageError, describeError } from '../src/errors.js';
import { loadTlsCredentials, tlsServerOptions, type TlsCredentials, type TlsOptions } from '../src/index.js';
import { createLogger, log, setLogger, type LogLevel } from '../src/log.js';
import { AgentOps, DEFAULT_IMAGES_ROOT, migrationOf, type OrphanedSource } from './agent-ops.js';
import {
  CLOSE_AUTH,
  CLOSE_PROTOCOL,
  MAX_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  clientMac,
  decodeMessage,
  encodeMessage,
  macEqual,
  makeNonce,
  parseHostPort,
  serverMac,
  type AuthParams,
  type Message,
  type ParamsOf,
  type RequestMessage,
  type ResultOf,
} from './protocol.js';

/** A client that has not authenticated within this long is dropped. */
const AUTH_TIMEOUT_MS = 10_000;

export interface AgentServerOptions {
  address: string;
  /** 0 picks a free port. */
  port: number;
  token: string;
  imagesRoot: string;
  /** Handed to page servers as --token-file. */
  tokenFile?: string;
  /** argv of criu before its subcommand (tests); default the repo's bin/criu.js. */
  criuCommand?: readonly string[];
  authTimeoutMs?: number;
  /**
   * TLS (--tls): the control channel is wss, the controller must present a certificate of the
   * CA; this host's page servers and dumps run inside TLS with the same credentials.
   */
  tls?: { files: TlsOptions; creds: TlsCredentials };
}

export class AgentServer {
  readonly address: string;
  readonly port: number;
  private readonly wss: WebSocketServer;
  /** The https server under wss (TLS only): wss.close() leaves it open. */
  private readonly https: HttpsServer | null;
  private readonly ops: AgentOps;
  private readonly token: string;
  private readonly authTimeoutMs: number;

  private constructor(wss: WebSocketServer, https: HttpsServer | null, ops: AgentOps, opts: AgentServerOptions) {
    this.wss = wss;
    this.https = https;
    this.ops = ops;
    this.token = opts.token;
    this.authTimeoutMs = opts.authTimeoutMs ?? AUTH_TIMEOUT_MS;
    const info = wss.address() as AddressInfo;
    this.address = info.address;
    this.port = info.port;
    wss.on('connection', (ws, req) => this.serve(ws, `${req.socket.remoteAddress}:${req.socket.remotePort}`));
  }

  /** Create the images root and listen; resolves once listening. */
  static async listen(opts: AgentServerOptions): Promise<AgentServer> {
    if (opts.token === '') throw new UsageError('The agent token is empty');
    const ops = new AgentOps({
      imagesRoot: opts.imagesRoot,
      pageServerAddress: opts.address,
      token: opts.token,
      isWarmedUp: true, // a long-lived agent: its first migration should not pay for cold code
      ...(opts.tokenFile === undefined ? {} : { tokenFile: opts.tokenFile }),
      ...(opts.criuCommand === undefined ? {} : { criuCommand: opts.criuCommand }),
      ...(opts.tls === undefined ? {} : { tls: opts.tls }),
    });
    await ops.init();
    const cannotListen = (err: Error): CriuError =>
      new CriuError('EUSAGE', `Cannot listen on ${opts.address}:${opts.port}: ${err.message}`, { cause: err });
    if (opts.tls !== undefined) {
      const https = tlsServer(opts.tls.creds);
      const wss = new WebSocketServer({ server: https, maxPayload: MAX_MESSAGE_BYTES });
      await new Promise<void>((done, fail) => {
        https.once('error', (err) => fail(cannotListen(err)));
        https.listen(opts.port, opts.address, () => done());
      });
      return new AgentServer(wss, https, ops, opts);
    }
    const wss = await new Promise<WebSocketServer>((done, fail) => {
      const s = new WebSocketServer({ host: opts.address, port: opts.port, maxPayload: MAX_MESSAGE_BYTES });
      s.once('listening', () => done(s));
      s.once('error', (err) => fail(cannotListen(err)));
    });
    return new AgentServer(wss, null, ops, opts);
  }

  /** Stop listening, drop every client, stop the page servers and restores in flight. */
  async close(): Promise<void> {
    for (const ws of this.wss.clients) ws.close(1001, 'agent shutting down');
    const closed = new Promise<void>((done) => this.wss.close(() => done()));
    this.https?.close();
    await this.ops.close();
    // Clients that do not finish the closing handshake in time are cut.
    const timer = setTimeout(() => {
      for (const ws of this.wss.clients) ws.terminate();
    }, 1000);
    await closed;
    clearTimeout(timer);
  }

  private serve(ws: WebSocket, peer: string): void {
    const nonce = makeNonce();
    let isAuthenticated = false;
    log().info(`agent: connection from ${peer}`);
    const send = (msg: Message): void => {
      if (ws.readyState === ws.OPEN) ws.send(encodeMessage(msg));
    };
    const refuse = (id: number, reason: string): void => {
      log().warn(`agent: refused ${peer}: ${reason}`);
      send({ kind: 'response', id, ok: false, error: { code: 'EPROTOCOL', message: reason } });
      ws.close(CLOSE_AUTH, 'authentication failed');
    };
    const authTimer = setTimeout(() => {
      if (!isAuthenticated) {
        log().warn(`agent: ${peer} did not authenticate in time`);
        ws.close(CLOSE_AUTH, 'authentication timeout');
      }
    }, this.authTimeoutMs);
    const conn: Connection = { frozen: new Map(), isClosed: false };
    ws.on('close', () => {
      clearTimeout(authTimer);
      conn.isClosed = true;
      // The controller went away mid-migration: DST tells how it ended.
      for (const o of conn.frozen.values()) this.resolveOrphan(o);
    });
    ws.on('error', (err) => log().warn(`agent: connection ${peer}: ${err.message}`));

    ws.on('message', (data: RawData, isBinary: boolean) => {
      const msg = isBinary ? decodeMessage(toBuffer(data)) : 'a text frame';
      if (typeof msg === 'string' || msg.kind !== 'request') {
        const why = typeof msg === 'string' ? msg : `unexpected ${msg.kind} message`;
        log().warn(`agent: ${peer} broke the protocol: ${why}`);
        ws.close(isAuthenticated ? CLOSE_PROTOCOL : CLOSE_AUTH, why.slice(0, 120));
        return;
      }
      if (!isAuthenticated) {
        if (msg.op !== 'auth') return refuse(msg.id, `Authenticate first: "${msg.op}" before auth`);
        const params = msg.params as AuthParams;
        // The MAC is checked in constant time; the token is never logged, even on failure.
        if (!macEqual(params.mac, clientMac(this.token, nonce))) return refuse(msg.id, 'The token is wrong');
        isAuthenticated = true;
        clearTimeout(authTimer);
        log().info(`agent: ${peer} authenticated`);
        send({ kind: 'response', id: msg.id, ok: true, result: { mac: serverMac(this.token, params.nonce) } });
        return;
      }
      if (msg.op === 'auth') {
        send({
          kind: 'response',
          id: msg.id,
          ok: false,
          error: { code: 'EPROTOCOL', message: 'Already authenticated' },
        });
        return;
      }
      void this.run(msg, send, conn);
    });

    send({ kind: 'challenge', protocol: PROTOCOL_VERSION, nonce });
  }

  private resolveOrphan(o: OrphanedSource): void {
    this.ops.resolveOrphan(o).catch((err: unknown) => log().error(`agent: ${describeError(err)}`));
  }

  private async run(msg: RequestMessage, send: (m: Message) => void, conn: Connection): Promise<void> {
    const op = msg.op as Exclude<typeof msg.op, 'auth'>;
    try {
      const result = await this.ops.handle(op, msg.params as never);
      const orphan = trackFrozen(conn, msg, result);
      // The connection dropped while the final dump ran: its source is already an orphan.
      if (orphan !== undefined && conn.isClosed) this.resolveOrphan(orphan);
      send({ kind: 'response', id: msg.id, ok: true, result });
    } catch (err) {
      const code = err instanceof CriuError ? err.code : 'EPROTOCOL';
      const message =
        err instanceof CriuError ? describeError(err) : `The agent failed on ${op}: ${describeError(err)}`;
      log().warn(`agent: ${op} failed: ${message}`);
      send({ kind: 'response', id: msg.id, ok: false, error: { code, message } });
    }
  }
}

/** What the agent keeps of one controller's connection. */
interface Connection {
  /** Its final dumps whose source is still frozen here (and which name DST's agent), by pid. */
  frozen: Map<number, OrphanedSource>;
  /** The latest of them: the one an address release that follows is for. */
  latest?: OrphanedSource;
  isClosed: boolean;
}

/**
 * Keep `conn`'s frozen sources up to date after request `msg` succeeded with `result`; the
 * source a final dump just left frozen, if any.
 */
function trackFrozen(conn: Connection, msg: RequestMessage, result: unknown): OrphanedSource | undefined {
  if (msg.op === 'final-dump') {
    const p = msg.params as ParamsOf<'final-dump'>;
    if (p.dstAgent === undefined) return undefined;
    const o = {
      pid: p.pid,
      id: migrationOf(p.dir),
      dstAgent: p.dstAgent,
      keepSource: p.keepSource === true,
      addresses: [],
    };
    conn.frozen.set(p.pid, o);
    conn.latest = o;
    return o;
  }
  if (msg.op === 'addresses' && (msg.params as ParamsOf<'addresses'>).action === 'release') {
    if (conn.latest !== undefined) conn.latest.addresses = (result as ResultOf<'addresses'>).addresses;
  } else if (msg.op === 'source-end') {
    const pid = (msg.params as ParamsOf<'source-end'>).pid;
    conn.frozen.delete(pid);
    if (conn.latest?.pid === pid) delete conn.latest;
  }
  return undefined;
}

/**
 * The https server of a TLS agent: the controller must present a certificate the CA signed (its
 * name is not checked: it connects from anywhere). A refused one is logged, with the reason,
 * before any HTTP is read.
 */
function tlsServer(creds: TlsCredentials): HttpsServer {
  const https = createHttpsServer(tlsServerOptions(creds)); // the certificate is checked below

  https.prependListener('secureConnection', (sock: TLSSocket) => {
    if (sock.authorized) return;
    const peer = `${sock.remoteAddress}:${sock.remotePort}`;
    const why =
      Object.keys(sock.getPeerCertificate()).length === 0 ? 'it presented none' : String(sock.authorizationError);
    log().warn(`agent: refused ${peer}: its certificate: ${why}`);
    sock.destroy();
  });
  https.on('tlsClientError', (err, sock) =>
    log().warn(
      `agent: TLS handshake with ${sock.remoteAddress}:${sock.remotePort} failed: ${err.message.split('\n')[0]}`,
    ),
  );
  return https;
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** The first line of a token file; the error never quotes the file's content. */
export async function readTokenFile(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new UsageError(`Cannot read --token-file "${file}": ${(err as Error).message}`);
  }
  const token = text.split('\n')[0]?.replace(/\r$/, '') ?? '';
  if (token === '') throw new UsageError(`Invalid --token-file "${file}": its first line is empty`);
  return token;
}

export interface RunAgentOptions {
  /** ADDR:PORT, as given to --listen. */
  listen: string;
  tokenFile: string;
  /** --tls and its files (unset: plain). */
  tls?: TlsOptions;
  imagesDir?: string;
  logLevel?: LogLevel;
  /** Where the "listening" line goes (stdout). */
  out?: (text: string) => void;
}

/**
 * `criu-migrate agent`: listen, print "Agent listening on ADDR:PORT", serve until SIGTERM or
 * SIGINT, return the exit code.
 */
export async function runAgent(opts: RunAgentOptions): Promise<number> {
  const where = parseHostPort(opts.listen);
  if (typeof where === 'string') throw new UsageError(`Invalid --listen: ${where}`);
  const tokenFile = resolve(opts.tokenFile);
  const token = await readTokenFile(tokenFile);
  const tls = opts.tls === undefined ? undefined : { files: opts.tls, creds: await loadTlsCredentials(opts.tls) };
  if (opts.logLevel !== undefined) setLogger(createLogger({ level: opts.logLevel, file: '-', isPerPid: false }));
  const server = await AgentServer.listen({
    address: where.address,
    port: where.port,
    token,
    tokenFile,
    ...(tls === undefined ? {} : { tls }),
    imagesRoot: opts.imagesDir ?? DEFAULT_IMAGES_ROOT,
  });
  const shown = server.address.includes(':') ? `[${server.address}]` : server.address;
  (opts.out ?? ((s: string) => process.stdout.write(s)))(`Agent listening on ${shown}:${server.port}\n`);
  await new Promise<void>((done) => {
    const stop = (sig: NodeJS.Signals): void => {
      log().info(`agent: ${sig}: shutting down`);
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      done();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  await server.close().catch((err: unknown) => {
    throw new ProtocolError('agent', describeError(err));
  });
  return 0;
}
