/**
 * TLS for the page server, as CRIU's `--tls` (criu/tls.c, GnuTLS), so that either end may be a
 * real CRIU:
 *   - X.509 on both sides: the server requires a client certificate, and each end checks the
 *     other's chain against the CA (--tls-cacert) and the revocation list (--tls-cacrl);
 *   - the client checks that the server's certificate names the address it connected to
 *     (--address); the server checks the client's against its own --address when one was given,
 *     as CRIU does; --tls-no-cn-verify skips both name checks;
 *   - files default to CRIU's: /etc/pki/CA/cacert.pem, /etc/pki/CA/cacrl.pem (used when
 *     readable), /etc/pki/criu/cert.pem, /etc/pki/criu/private/key.pem. Without --tls-cacert the
 *     trusted CAs are Node's bundled root store plus the default CA file when it exists (CRIU:
 *     the system's store plus that file).
 *   - the server offers TLS 1.2 at most (see tlsAccept: CRIU's client cannot take TLS 1.3's
 *     session tickets); the client takes 1.2 or 1.3, as the server offers (CRIU's server: 1.3).
 *
 * The handshake and the records are Node's (OpenSSL), on the fd the native layer connected or
 * accepted, handed over to libuv. Inside TLS, page data passes through user space (decrypted
 * records are copied into the page server's receive buffer): no splice.
 *
 * Record boundaries matter to CRIU: its page server reads page data record by record
 * (tls_recv_data_to_fd) and takes a whole record as data. TlsConnection.writeAll therefore writes
 * each buffer on its own (one SSL_write, records holding that buffer only), never a header and
 * data together; the client never puts two records' data in one buffer.
 */

import { constants } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Socket } from 'node:net';
import * as tls from 'node:tls';
import { ProtocolError, UsageError } from '../errors.js';
import { SOL_TCP } from '../kernel/constants.js';
import * as sys from '../sys/native.js';
import { SHUT_WR, closedEarly, type Connection, type Transport } from './socket.js';

/** CRIU's default files (criu/tls.c, SYSCONFDIR /etc). */
export const TLS_DEFAULT_FILES = {
  cacert: '/etc/pki/CA/cacert.pem',
  cacrl: '/etc/pki/CA/cacrl.pem',
  cert: '/etc/pki/criu/cert.pem',
  key: '/etc/pki/criu/private/key.pem',
} as const;

/** --tls-cacert, --tls-cacrl, --tls-cert, --tls-key, --tls-no-cn-verify (unset: CRIU's defaults). */
export interface TlsOptions {
  cacert?: string;
  cacrl?: string;
  cert?: string;
  key?: string;
  isNoCnVerify?: boolean;
}

/** Credentials read and checked once per run (loadTlsCredentials). */
export interface TlsCredentials {
  readonly ca: (string | Buffer)[];
  readonly crl: Buffer | null;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly isNoCnVerify: boolean;
  /** Built from the above (a client's context; a server passes the parts to tls.createServer). */
  readonly context: tls.SecureContext;
}

/** Decrypted bytes held for the reader before the socket is paused. */
const HIGH_WATER_BYTES = 8 << 20;
/** TCP_USER_TIMEOUT (tcp(7)), as socket.ts sets it on plain connections. */
const TCP_USER_TIMEOUT = 18;
/** How long end() waits for the peer to close its side. */
const CLOSE_LINGER_MS = 5000;
/** How long the server waits for a client's handshake when no idle timeout is set (Node's default). */
const HANDSHAKE_TIMEOUT_MS = 120_000;

async function readPem(path: string, option: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new UsageError(`Cannot read the TLS ${what} "${path}" (${option}): ${code}`);
  }
}

const nrCertificates = (pem: Buffer): number => pem.toString('latin1').split('-----BEGIN CERTIFICATE-----').length - 1;

/** Read the files CRIU's --tls reads, with its defaults, and check that they make a context. */
export async function loadTlsCredentials(opts: TlsOptions): Promise<TlsCredentials> {
  const ca: (string | Buffer)[] = [];
  if (opts.cacert !== undefined) {
    const pem = await readPem(opts.cacert, '--tls-cacert', 'CA certificate');
    if (nrCertificates(pem) === 0)
      throw new UsageError(`Cannot use the TLS CA certificate "${opts.cacert}" (--tls-cacert): no certificate in it`);
    ca.push(pem);
  } else {
    ca.push(...tls.rootCertificates);
    const pem = await readFile(TLS_DEFAULT_FILES.cacert).catch(() => null);
    if (pem !== null && nrCertificates(pem) > 0) ca.push(pem);
  }
  const crl =
    opts.cacrl !== undefined
      ? await readPem(opts.cacrl, '--tls-cacrl', 'revocation list')
      : await readFile(TLS_DEFAULT_FILES.cacrl).catch(() => null);
  const certPath = opts.cert ?? TLS_DEFAULT_FILES.cert;
  const keyPath = opts.key ?? TLS_DEFAULT_FILES.key;
  const cert = await readPem(certPath, '--tls-cert', 'certificate');
  const key = await readPem(keyPath, '--tls-key', 'private key');
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext({ ca, cert, key, ...(crl === null ? {} : { crl }) });
  } catch (err) {
    throw new UsageError(
      `Cannot use the TLS certificate "${certPath}", key "${keyPath}"` +
        `${crl === null ? '' : ' and revocation list'}: ${tlsReason(err)}`,
    );
  }
  return { ca, crl, cert, key, isNoCnVerify: opts.isNoCnVerify === true, context };
}

/**
 * The options of a TLS server with these credentials that requires a client certificate
 * (tls.createServer's; https.createServer takes them too). The certificate is checked by the
 * caller after the handshake, so that a refusal is reported with its reason.
 */
export function tlsServerOptions(creds: TlsCredentials): tls.TlsOptions {
  return {
    ca: creds.ca,
    cert: creds.cert,
    key: creds.key,
    ...(creds.crl === null ? {} : { crl: creds.crl }),
    requestCert: true,
    rejectUnauthorized: false,
  };
}

/** One line for a TLS or socket error: OpenSSL's reason when it has one, else the first line. */
export function tlsReason(err: unknown): string {
  const e = err as Error & { reason?: unknown; code?: unknown };
  if (typeof e.reason === 'string' && e.reason !== '') return e.reason;
  const line = String(e.message ?? err).split('\n')[0] ?? '';
  return line === '' && typeof e.code === 'string' ? e.code : line;
}

/** The error a timed-out socket is destroyed with. */
class IdleTimeout extends Error {
  constructor() {
    super('idle timeout');
  }
}

/** The connection's fd handed over to a node:net Socket (libuv makes it non-blocking). */
function toLibuv(conn: Connection): { peer: string; fd: number; raw: Socket } {
  const peer = conn.peer;
  const fd = conn.release();
  return { peer, fd, raw: new Socket({ fd, readable: true, writable: true }) };
}

/**
 * Client side: the TLS handshake on a connection just made, then the page-server stream inside
 * it. `checkName`: the address the server's certificate must name (null: no name check).
 * Takes `conn` over: on failure it is closed.
 */
export async function tlsConnect(
  conn: Connection,
  creds: TlsCredentials,
  checkName: string | null,
  timeoutMs?: number,
): Promise<TlsConnection> {
  const { peer, fd, raw } = toLibuv(conn);
  const sock = tls.connect({
    socket: raw,
    secureContext: creds.context,
    // The name is the address given (CRIU: --address); SNI is not sent, as by CRIU.
    servername: '',
    checkServerIdentity: (_host, cert) =>
      creds.isNoCnVerify || checkName === null ? undefined : tls.checkServerIdentity(checkName, cert),
  });
  if (timeoutMs !== undefined && timeoutMs > 0) sock.setTimeout(timeoutMs, () => sock.destroy(new IdleTimeout()));
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('secureConnect', resolve);
      sock.once('error', reject);
      sock.once('close', () => reject(new Error('closed')));
    });
  } catch (err) {
    sock.on('error', () => undefined); // reported once, below; a late one must not go unhandled
    sock.destroy();
    throw new ProtocolError(peer, handshakeReason(err, 'server', checkName), 'the TLS handshake', { cause: err });
  }
  sock.setTimeout(0);
  return new TlsConnection(sock, peer, fd);
}

/**
 * Server side: the TLS handshake on an accepted connection, the client's certificate checked
 * (chain always; name against `checkName` unless null or --tls-no-cn-verify). Takes `conn` over:
 * on failure it is closed.
 */
export async function tlsAccept(
  conn: Connection,
  creds: TlsCredentials,
  checkName: string | null,
  timeoutMs?: number,
): Promise<TlsConnection> {
  const { peer, fd, raw } = toLibuv(conn);
  // A server that never listens: it only runs the handshake of the one connection handed to it.
  const server = tls.createServer({
    ...tlsServerOptions(creds),
    // At most TLS 1.2: a TLS 1.3 server sends session tickets after the handshake, and CRIU's
    // client (criu/tls.c) then fails its first read (GnuTLS answers GNUTLS_E_AGAIN, which it
    // does not retry: "The page server doesn't answer"). Tickets are useless anyway: one session
    // per server run.
    maxVersion: 'TLSv1.2',
    secureOptions: constants.SSL_OP_NO_TICKET,
    handshakeTimeout: timeoutMs !== undefined && timeoutMs > 0 ? timeoutMs : HANDSHAKE_TIMEOUT_MS,
  });
  let sock: tls.TLSSocket;
  try {
    sock = await new Promise<tls.TLSSocket>((resolve, reject) => {
      server.once('secureConnection', resolve);
      server.once('tlsClientError', reject);
      raw.once('close', () => reject(new Error('closed')));
      server.emit('connection', raw);
    });
  } catch (err) {
    raw.on('error', () => undefined); // reported once, below
    raw.destroy();
    throw new ProtocolError(peer, handshakeReason(err, 'client', null), 'the TLS handshake', { cause: err });
  }
  const refuse = (why: string): ProtocolError => {
    sock.on('error', () => undefined); // the refusal is the error reported
    sock.destroy();
    return new ProtocolError(peer, `the client's certificate was refused: ${why}`, 'the TLS handshake');
  };
  const cert = sock.getPeerCertificate();
  if (Object.keys(cert).length === 0) throw refuse('it presented none');
  if (!sock.authorized) throw refuse(verifyReason(sock.authorizationError));
  if (checkName !== null && !creds.isNoCnVerify) {
    const mismatch = tls.checkServerIdentity(checkName, cert);
    if (mismatch !== undefined)
      throw refuse(
        `it does not name ${checkName} (the page server's --address, as CRIU checks it; --tls-no-cn-verify skips this)`,
      );
  }
  return new TlsConnection(sock, peer, fd);
}

/** OpenSSL's words for the X.509 verification codes a page server meets most. */
const VERIFY_TEXT: Record<string, string> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unable to verify the first certificate',
  UNABLE_TO_GET_ISSUER_CERT: 'unable to get issuer certificate',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unable to get local issuer certificate',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'self-signed certificate',
  SELF_SIGNED_CERT_IN_CHAIN: 'self-signed certificate in certificate chain',
  CERT_REVOKED: 'certificate revoked',
  CERT_HAS_EXPIRED: 'certificate has expired',
  CERT_NOT_YET_VALID: 'certificate is not yet valid',
  CERT_SIGNATURE_FAILURE: 'certificate signature failure',
  INVALID_PURPOSE: 'unsupported certificate purpose',
  UNABLE_TO_GET_CRL: 'unable to get certificate CRL',
  CRL_HAS_EXPIRED: 'CRL has expired',
};

/** A verification code (TLSSocket.authorizationError) in words, with the code. */
function verifyReason(code: unknown): string {
  const c = typeof code === 'string' ? code : tlsReason(code);
  const text = VERIFY_TEXT[c];
  return text === undefined ? c : `${text} (${c})`;
}

/** Why a handshake failed, in one line, with a hint when the peer seems not to speak TLS. */
function handshakeReason(err: unknown, other: 'client' | 'server', checkName: string | null): string {
  if (err instanceof IdleTimeout) return `the ${other} sent nothing within the timeout`;
  const code = (err as { code?: unknown }).code;
  const hint = `(does the ${other} use --tls? does it accept this end's certificate?)`;
  if ((err as Error).message === 'closed' || code === 'ECONNRESET' || code === 'EPIPE')
    return `the ${other} closed the connection ${hint}`;
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG')
    return `what the ${other} sent is not TLS (does the ${other} use --tls?)`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    return `the ${other}'s certificate does not name ${checkName ?? 'it'}: ${tlsReason(err)} (--tls-no-cn-verify skips this check)`;
  if (typeof code === 'string' && !code.startsWith('ERR_'))
    return `the ${other}'s certificate was refused: ${tlsReason(err)} (${code})`; // an X.509 verification code
  return tlsReason(err);
}

/** The page-server stream inside TLS: the Transport of a TLSSocket. */
export class TlsConnection implements Transport {
  readonly spliceFd = null;
  bytesIn = 0;
  bytesOut = 0;
  /** Decrypted data not yet read: chunks[0] from `head` on, then the others whole. */
  private readonly chunks: Buffer[] = [];
  private head = 0;
  private queued = 0;
  private isEnded = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;
  private isClosed = false;

  constructor(
    private readonly sock: tls.TLSSocket,
    readonly peer: string,
    /** The socket's fd, owned by `sock` (for setsockopt only). */
    private readonly fd: number,
  ) {
    sock.on('data', (data: Buffer) => {
      this.chunks.push(data);
      this.queued += data.length;
      if (this.queued >= HIGH_WATER_BYTES) sock.pause();
      this.notify();
    });
    const ended = (): void => {
      this.isEnded = true;
      this.notify();
    };
    sock.on('end', ended);
    sock.on('close', ended);
    sock.on('error', (err) => {
      this.failure ??= err;
      this.notify();
    });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  setTimeouts(timeoutMs: number): void {
    this.sock.setTimeout(timeoutMs, () => this.sock.destroy(new IdleTimeout()));
    const b = Buffer.alloc(4);
    b.writeInt32LE(timeoutMs, 0);
    sys.setsockopt(this.fd, SOL_TCP, TCP_USER_TIMEOUT, b);
  }

  async readSome(buf: Buffer, offset: number, len: number, command?: string): Promise<number> {
    while (this.queued === 0) {
      if (this.failure !== null) throw this.ioError(this.failure, 'cannot read', command);
      if (this.isEnded) return 0;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    let got = 0;
    while (got < len && this.queued > 0) {
      const chunk = this.chunks[0] as Buffer;
      const n = Math.min(chunk.length - this.head, len - got);
      chunk.copy(buf, offset + got, this.head, this.head + n);
      got += n;
      this.head += n;
      this.queued -= n;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    if (this.queued < HIGH_WATER_BYTES && this.sock.isPaused()) this.sock.resume();
    this.bytesIn += got;
    return got;
  }

  async readFully(buf: Buffer, offset: number, len: number, command?: string): Promise<number> {
    let done = 0;
    while (done < len) {
      const got = await this.readSome(buf, offset + done, len - done, command);
      if (got === 0) break;
      done += got;
    }
    return done;
  }

  async readExact(len: number, what: string, command?: string): Promise<Buffer> {
    const isFirst = this.bytesIn === 0;
    const buf = Buffer.alloc(len);
    const got = await this.readFully(buf, 0, len, command);
    if (got === len) return buf;
    // A TLS 1.3 server checks the client's certificate after the client's handshake is done: a
    // refused client learns it here, as a connection closed before the first answer.
    const hint =
      isFirst && got === 0
        ? " (inside TLS: the page server may have refused this client's certificate; its log says why)"
        : '';
    throw closedEarly(this.peer, got, len, what, command, hint);
  }

  async writeAll(bufs: Buffer[], command?: string): Promise<void> {
    for (const b of bufs) {
      if (b.length === 0) continue;
      if (this.failure !== null) throw this.ioError(this.failure, 'cannot send', command);
      // One write at a time: the stream would hand queued writes to OpenSSL as one (writev),
      // mixing a header and page data in one record.
      await new Promise<void>((resolve, reject) => this.sock.write(b, (err) => (err ? reject(err) : resolve())));
      this.bytesOut += b.length;
    }
  }

  shutdown(how: number): void {
    if (how === SHUT_WR) this.sock.end();
    else this.sock.destroy();
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.sock.destroy();
  }

  /**
   * close_notify and FIN, then wait for the peer to close its side (the socket then goes: no
   * half-open TLS here), CLOSE_LINGER_MS at most. Not at once: CRIU's page server sends its own
   * close_notify as it ends, and a socket already closed would answer it with a reset, which that
   * server reports as a failure.
   */
  async end(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    if (this.failure !== null || this.sock.destroyed) {
      this.sock.destroy();
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => this.sock.destroy(), CLOSE_LINGER_MS);
      this.sock.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.sock.end();
    });
  }

  ioError(err: unknown, action: string, command?: string): Error {
    if (err instanceof ProtocolError) return err;
    const code = (err as { code?: unknown }).code;
    const why =
      err instanceof IdleTimeout
        ? action === 'cannot send'
          ? 'the peer took nothing within the timeout'
          : 'the peer sent nothing within the timeout'
        : code === 'ECONNRESET' || code === 'EPIPE' || code === 'ERR_STREAM_DESTROYED'
          ? 'the connection was reset'
          : code === 'ETIMEDOUT'
            ? 'the peer acknowledged nothing within the timeout'
            : `TLS: ${tlsReason(err)}`;
    return new ProtocolError(this.peer, `${action}: ${why}`, command, { cause: err });
  }
}
