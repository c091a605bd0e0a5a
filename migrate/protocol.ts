/**
 * The control protocol between the migration controller and a host's agent (agent.ts,
 * agent-client.ts): WebSocket binary frames, each one message encoded with msgpack (msgpackr,
 * plain maps, no records extension, so any msgpack implementation can speak it).
 *
 * Session:
 *
 *   agent  -> client   {kind:'challenge', protocol, nonce}            right after the upgrade
 *   client -> agent    {kind:'request', id, op:'auth', params:{mac, nonce}}
 *   agent  -> client   {kind:'response', id, ok:true, result:{mac}}   or an error, then close 4001
 *   client -> agent    {kind:'request', id, op, params}                any number, in parallel
 *   agent  -> client   {kind:'response', id, ok, result | error}      one per request, any order
 *
 * Authentication is challenge-response over the pre-shared token, in both directions: the client
 * proves it knows the token with HMAC-SHA256(token, "criu-ts agent client" ‖ agent nonce), the
 * agent answers with HMAC-SHA256(token, "criu-ts agent server" ‖ client nonce). The token itself
 * never crosses the wire, so a passive observer cannot replay it. Until `auth` succeeds the agent
 * answers any other request with an error and closes the connection (close code 4001).
 *
 * Paths: every `dir` is relative to the agent's images root (its -D), "MIGRATION-ID/SUBDIR...",
 * with segments of [A-Za-z0-9._-] and no "." or "..": a controller cannot make an agent read or
 * write outside its root. File names in put-file/get-file are one such segment.
 *
 * Everything here is pure: types, constants, validation. Touches no kernel interface.
 */

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { Packr } from 'msgpackr';

/**
 * Bumped on any incompatible change; both sides refuse another version. 4: TCP connections
 * (half-closed ones too, --tcp-close) and moved addresses. 5: a source left frozen by a
 * controller that went away asks DST how its migration ended (migration-state).
 */
export const PROTOCOL_VERSION = 5;

/** WebSocket close code: authentication missing or refused. */
export const CLOSE_AUTH = 4001;
/** WebSocket close code: a message that does not decode or has the wrong shape. */
export const CLOSE_PROTOCOL = 4002;

/** Largest message either side accepts (put-file/get-file carry whole files). */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** Largest file put-file/get-file carry: the message limit less room for the envelope. */
export const MAX_FILE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024;

export const NONCE_BYTES = 32;

// ---------------------------------------------------------------------------------------------
// Operations: for each, what the request carries and what a success returns.

/** What an agent tells about itself and its host. */
export interface HelloResult {
  protocol: number;
  /** criu-ts version (package.json) of the agent. */
  version: string;
  /** uname -r. */
  kernel: string;
  hostname: string;
  /** The agent's images root (absolute, on its host). */
  imagesRoot: string;
  /** Bytes available to the agent in its images root (statfs f_bavail × f_bsize). */
  freeBytes: number;
  /** Dirty-memory trackers usable on this host, best first (kerndat). */
  trackers: string[];
  /** The agent's pid, as its own PID namespace sees it. */
  pid: number;
  /** Random, one per running agent: tells an agent it reached itself. */
  instance: string;
}

export interface PageServerStartParams {
  /** Images dir the page server writes into (created, 0700). */
  dir: string;
  /** TCP port; 0 lets the kernel pick one (the result says which). */
  port: number;
  /** Address to listen on; default: the agent's own listen address. */
  address?: string;
  /** The parent images dir of an incremental step (agent-relative, like `dir`). */
  prevDir?: string;
}

export interface PageServerStartResult {
  /** Handle for page-server-wait. */
  serverId: number;
  /** The pid of the page server (the agent's PID namespace). */
  pid: number;
  address: string;
  port: number;
}

export interface PageServerWaitParams {
  serverId: number;
  /** Give up (the page server keeps running) after this long; default: wait for ever. */
  timeoutMs?: number;
}

export type PageServerWaitResult =
  { state: 'exited'; exitCode: number | null; signal: string | null; error: string | null } | { state: 'running' };

export interface RestoreParams {
  dir: string;
  /** Extra `criu restore` options (for example ["-v4"]); checked against a short allow-list. */
  extraArgs?: string[];
}

export type RestoreResult =
  | { state: 'restored'; pid: number }
  /** criu restore failed: its exit code and last error line. */
  | { state: 'failed'; exitCode: number | null; error: string };

export interface PidParams {
  pid: number;
}

export interface CheckRunningResult {
  isRunning: boolean;
  /** One-letter state from /proc/PID/stat (R, S, D, T, t, Z...), null when gone. */
  state: string | null;
}

export interface KillParams {
  pid: number;
  /** Default SIGKILL. */
  signal?: string;
}

export interface DirParams {
  dir: string;
}

export interface PutFileParams {
  dir: string;
  name: string;
  data: Uint8Array;
  /** Permission bits; default 0600. */
  mode?: number;
}

export interface GetFileParams {
  dir: string;
  name: string;
}

export interface FileEntry {
  name: string;
  sizeBytes: number;
  isDir: boolean;
}

export interface AuthParams {
  /** HMAC-SHA256(token, CLIENT_LABEL ‖ agent nonce). */
  mac: Uint8Array;
  /** The client's challenge for the agent. */
  nonce: Uint8Array;
}

/** Where a dump sends its pages: a page server (DST's receive-pages). */
export interface PagesTargetParams {
  psAddress?: string;
  psPort?: number;
}

export interface DumpParams extends PagesTargetParams {
  pid: number;
  /** The source-side images dir (agent-relative). */
  dir: string;
  /** The previous iteration's source-side dir (agent-relative). */
  prevDir?: string;
  /** Take established TCP connections (criu dump --tcp-established). */
  tcpEstablished?: boolean;
  /** Take connected TCP sockets without their connections (criu dump --tcp-close). */
  tcpClose?: boolean;
  /** Leave out connections waiting in a listener's accept queue (criu dump --skip-in-flight). */
  skipInFlight?: boolean;
}

export interface FinalDumpParams extends DumpParams {
  /**
   * DST's agent ("HOST:PORT", as the controller reached it). Should the controller's connection
   * drop while the task is frozen here, SRC asks DST how the migration ended (migration-state)
   * and ends the source as the controller would have; without it the source stays frozen until
   * the agent stops.
   */
  dstAgent?: string;
  /** The source is stopped, not killed, once DST runs the task (criu-migrate --keep-source). */
  keepSource?: boolean;
}

/**
 * How a migration ended on DST, asked by SRC for a source the controller left frozen: 'running'
 * (DST's final restore succeeded), 'restoring' (under way: ask again) or 'none' (never asked, or
 * failed). Answering 'none' makes DST refuse any later restore-final of the migration, so that
 * SRC may resume its source.
 */
export interface MigrationStateResult {
  state: string;
}

export interface PreDumpResultWire {
  frozenUs: number;
  copyUs: number;
  pagesWritten: number;
  pagesSkipped: number;
  /** The processes pre-dumped, parents first (the skeleton's shape and memory). */
  processes: ProcessWire[];
  /** The namespace kinds the tree has of its own, comma separated ("" for none). */
  namespaces: string;
}

/** One pre-dumped process (src/dump/pre-dump.ts ProcessLayout) on the wire. */
export interface ProcessWire {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  /** Its writable private anonymous VMAs, flat [start, end, ...] byte addresses. */
  anonVmas: number[];
  /** Its mappings of files by path (ProcessLayout.fileVmas). */
  fileVmas: FileVmaWire[];
}

export interface FileVmaWire {
  start: number;
  end: number;
  prot: number;
  flags: number;
  pgoff: number;
  fdflags: number;
  path: string;
}

/** An image file carried in a message (the final dump's small images: a few KiB). */
export interface ImageFileWire {
  name: string;
  data: Uint8Array;
}

export interface FinalDumpResultWire {
  frozenUs: number;
  /** From the freeze until this answer was sent, on SRC's clock (the task is still frozen). */
  sinceFreezeUs: number;
  pagesWritten: number;
  pagesSkipped: number;
  /** Every image of the dump but the pages (those went to DST's page server). */
  images: ImageFileWire[];
}

export interface RestoreFinalParams {
  pid: number;
  dir: string;
  /** Images to write into `dir` first (the final dump's, carried by the controller). */
  images?: ImageFileWire[];
  /** The page server receiving the final pages: its session is awaited first. */
  serverId?: number;
  /** Addresses ("ADDR/PREFIX@DEV") to take before the tree's connections are restored. */
  addresses?: string[];
  /** Restore the TCP connections closed (criu restore --tcp-close). */
  tcpClose?: boolean;
}

/**
 * The addresses that move with a process (criu-migrate --move-address), as "ADDR/PREFIX@DEV":
 * 'held' (SRC: where it holds each ADDR given bare; an error if it does not), 'check-free' (DST:
 * an error if it could not take them), 'release' (SRC, the process frozen), 'take' (SRC, when
 * the migration fails after 'release'; those it holds already are left), 'drop' (DST, when the
 * migration fails after its restore was asked for: those it holds go). The result: the
 * addresses, as "ADDR/PREFIX@DEV".
 */
export interface AddressesParams {
  action: string;
  addresses: string[];
}

export interface ReceivePagesParams {
  dir: string;
  port: number;
  address?: string;
  prevDir?: string;
}

/** Each operation: its params and its result. */
export interface Ops {
  auth: { params: AuthParams; result: { mac: Uint8Array } };
  hello: { params: Record<string, never>; result: HelloResult };
  'page-server-start': { params: PageServerStartParams; result: PageServerStartResult };
  'page-server-wait': { params: PageServerWaitParams; result: PageServerWaitResult };
  restore: { params: RestoreParams; result: RestoreResult };
  'check-running': { params: PidParams; result: CheckRunningResult };
  kill: { params: KillParams; result: { isSent: boolean } };
  cleanup: { params: DirParams; result: { isRemoved: boolean } };
  'put-file': { params: PutFileParams; result: { sizeBytes: number } };
  'get-file': { params: GetFileParams; result: { data: Uint8Array } };
  'list-dir': { params: DirParams; result: { entries: FileEntry[] } };
  'pre-dump': { params: DumpParams; result: PreDumpResultWire };
  'final-dump': { params: FinalDumpParams; result: FinalDumpResultWire };
  'source-end': { params: { pid: number; action: string }; result: { isDone: boolean } };
  'receive-pages': { params: ReceivePagesParams; result: { serverId: number; address: string; port: number } };
  'receive-wait': { params: PageServerWaitParams; result: { pagesReceived: number; bytes: number } };
  'skeleton-apply': {
    params: { pid: number; dir: string; processes: ProcessWire[]; namespaces?: string };
    result: { pagesFilled: number };
  };
  /** `id`: the migration (without: the skeletons of `pid` of every migration). */
  'skeleton-abort': { params: { pid: number; id?: string }; result: { isDone: boolean } };
  'restore-final': {
    params: RestoreFinalParams;
    result: { pid: number; restoreUs: number; pagesReceived: number; bytes: number };
  };
  addresses: { params: AddressesParams; result: { addresses: string[] } };
  'migration-state': { params: { id: string }; result: MigrationStateResult };
}

export type OpName = keyof Ops;
export type ParamsOf<K extends OpName> = Ops[K]['params'];
export type ResultOf<K extends OpName> = Ops[K]['result'];

export const OP_NAMES = [
  'auth',
  'hello',
  'page-server-start',
  'page-server-wait',
  'restore',
  'check-running',
  'kill',
  'cleanup',
  'put-file',
  'get-file',
  'list-dir',
  'pre-dump',
  'final-dump',
  'source-end',
  'receive-pages',
  'receive-wait',
  'skeleton-apply',
  'skeleton-abort',
  'restore-final',
  'addresses',
  'migration-state',
] as const satisfies readonly OpName[];

// ---------------------------------------------------------------------------------------------
// Envelopes.

export interface ChallengeMessage {
  kind: 'challenge';
  protocol: number;
  nonce: Uint8Array;
}

export interface RequestMessage<K extends OpName = OpName> {
  kind: 'request';
  id: number;
  op: K;
  params: ParamsOf<K>;
}

/** A failed request: the error's stable code (src/errors.ts ErrorCode) and its message. */
export interface WireError {
  code: string;
  message: string;
}

export type ResponseMessage =
  | { kind: 'response'; id: number; ok: true; result: unknown }
  | { kind: 'response'; id: number; ok: false; error: WireError };

export type Message = ChallengeMessage | RequestMessage | ResponseMessage;

const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: true });

export function encodeMessage(msg: Message): Buffer {
  return packr.pack(msg);
}

/** Decode a frame; a string says why it is not a message. */
export function decodeMessage(data: Uint8Array): Message | string {
  let raw: unknown;
  try {
    raw = packr.unpack(data);
  } catch (err) {
    return `undecodable msgpack (${(err as Error).message})`;
  }
  if (!isObject(raw)) return 'a message is not a map';
  switch (raw['kind']) {
    case 'challenge':
      if (typeof raw['protocol'] !== 'number' || !isBytes(raw['nonce'])) return 'malformed challenge';
      return { kind: 'challenge', protocol: raw['protocol'], nonce: raw['nonce'] };
    case 'request': {
      const { id, op, params } = raw;
      if (!isId(id)) return 'a request without a valid id';
      if (typeof op !== 'string' || !(OP_NAMES as readonly string[]).includes(op)) return `unknown op "${String(op)}"`;
      if (!isObject(params)) return `request ${id} (${op}): params is not a map`;
      const bad = checkParams(op as OpName, params);
      if (bad !== null) return `request ${id} (${op}): ${bad}`;
      return { kind: 'request', id, op: op as OpName, params: params as unknown as ParamsOf<OpName> };
    }
    case 'response': {
      const { id, ok } = raw;
      if (!isId(id) || typeof ok !== 'boolean') return 'malformed response';
      if (ok) return { kind: 'response', id, ok, result: raw['result'] };
      const error = raw['error'];
      if (!isObject(error) || typeof error['code'] !== 'string' || typeof error['message'] !== 'string')
        return 'malformed error response';
      return { kind: 'response', id, ok, error: { code: error['code'], message: error['message'] } };
    }
    default:
      return `unknown message kind "${String(raw['kind'])}"`;
  }
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array);
}

function isBytes(x: unknown): x is Uint8Array {
  return x instanceof Uint8Array;
}

function isIntegers(x: unknown): x is number[] {
  return Array.isArray(x) && x.every((n) => typeof n === 'number' && Number.isSafeInteger(n));
}

function isProcess(x: unknown): x is ProcessWire {
  return (
    isObject(x) &&
    Object.keys(x).length === 6 &&
    ['pid', 'ppid', 'pgid', 'sid'].every((k) => isId(x[k])) &&
    isIntegers(x['anonVmas']) &&
    x['anonVmas'].length % 2 === 0 &&
    Array.isArray(x['fileVmas']) &&
    x['fileVmas'].every(isFileVma)
  );
}

function isFileVma(x: unknown): x is FileVmaWire {
  return (
    isObject(x) &&
    Object.keys(x).length === 7 &&
    ['start', 'end', 'prot', 'flags', 'pgoff', 'fdflags'].every((k) => isId(x[k])) &&
    typeof x['path'] === 'string' &&
    x['path'].startsWith('/') &&
    !x['path'].includes('\0')
  );
}

function isImageFile(x: unknown): x is ImageFileWire {
  return (
    isObject(x) &&
    Object.keys(x).length === 2 &&
    typeof x['name'] === 'string' &&
    checkFileName(x['name']) === null &&
    isBytes(x['data'])
  );
}

const FIELD_KIND_NAMES: Record<FieldKind, string> = {
  string: 'a string',
  number: 'a number',
  bytes: 'bytes',
  strings: 'a list of strings',
  numbers: 'a list of integers',
  files: 'a list of {name, data} with plain file names',
  processes: 'a list of {pid, ppid, pgid, sid, anonVmas, fileVmas}',
  boolean: 'true or false',
};

function isId(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

type FieldKind = 'string' | 'number' | 'bytes' | 'strings' | 'numbers' | 'files' | 'processes' | 'boolean';
type Shape = Record<string, { kind: FieldKind; isOptional?: boolean }>;

const req = (kind: FieldKind): { kind: FieldKind } => ({ kind });
const opt = (kind: FieldKind): { kind: FieldKind; isOptional: true } => ({ kind, isOptional: true });

/** The fields of each op's params; unknown fields are refused so typos do not pass silently. */
const PARAM_SHAPES: Record<OpName, Shape> = {
  auth: { mac: req('bytes'), nonce: req('bytes') },
  hello: {},
  'page-server-start': { dir: req('string'), port: req('number'), address: opt('string'), prevDir: opt('string') },
  'page-server-wait': { serverId: req('number'), timeoutMs: opt('number') },
  restore: { dir: req('string'), extraArgs: opt('strings') },
  'check-running': { pid: req('number') },
  kill: { pid: req('number'), signal: opt('string') },
  cleanup: { dir: req('string') },
  'put-file': { dir: req('string'), name: req('string'), data: req('bytes'), mode: opt('number') },
  'get-file': { dir: req('string'), name: req('string') },
  'list-dir': { dir: req('string') },
  'pre-dump': {
    pid: req('number'),
    dir: req('string'),
    prevDir: opt('string'),
    psAddress: opt('string'),
    psPort: opt('number'),
    tcpEstablished: opt('boolean'),
    tcpClose: opt('boolean'),
    skipInFlight: opt('boolean'),
  },
  'final-dump': {
    pid: req('number'),
    dir: req('string'),
    prevDir: opt('string'),
    psAddress: opt('string'),
    psPort: opt('number'),
    tcpEstablished: opt('boolean'),
    tcpClose: opt('boolean'),
    skipInFlight: opt('boolean'),
    dstAgent: opt('string'),
    keepSource: opt('boolean'),
  },
  'source-end': { pid: req('number'), action: req('string') },
  'receive-pages': { dir: req('string'), port: req('number'), address: opt('string'), prevDir: opt('string') },
  'receive-wait': { serverId: req('number'), timeoutMs: opt('number') },
  'skeleton-apply': { pid: req('number'), dir: req('string'), processes: req('processes'), namespaces: opt('string') },
  'skeleton-abort': { pid: req('number'), id: opt('string') },
  'restore-final': {
    pid: req('number'),
    dir: req('string'),
    images: opt('files'),
    serverId: opt('number'),
    addresses: opt('strings'),
    tcpClose: opt('boolean'),
  },
  addresses: { action: req('string'), addresses: req('strings') },
  'migration-state': { id: req('string') },
};

function checkParams(op: OpName, params: Record<string, unknown>): string | null {
  const shape = PARAM_SHAPES[op];
  for (const key of Object.keys(params)) if (!(key in shape)) return `unknown field "${key}"`;
  for (const [key, { kind, isOptional }] of Object.entries(shape)) {
    const v = params[key];
    if (v === undefined || v === null) {
      if (isOptional === true) {
        delete params[key];
        continue;
      }
      return `field "${key}" is missing`;
    }
    const isOk =
      kind === 'string'
        ? typeof v === 'string'
        : kind === 'number'
          ? typeof v === 'number' && Number.isFinite(v)
          : kind === 'bytes'
            ? isBytes(v)
            : kind === 'boolean'
              ? typeof v === 'boolean'
              : kind === 'numbers'
                ? isIntegers(v)
                : kind === 'files'
                  ? Array.isArray(v) && v.every(isImageFile)
                  : kind === 'processes'
                    ? Array.isArray(v) && v.every(isProcess)
                    : Array.isArray(v) && v.every((s) => typeof s === 'string');
    if (!isOk) return `field "${key}" is not ${FIELD_KIND_NAMES[kind]}`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Paths.

const SEGMENT = /^[A-Za-z0-9._-]{1,128}$/;

/** Why `dir` is not a valid agent-relative images dir, or null. */
export function checkDir(dir: string): string | null {
  const parts = dir.split('/');
  if (parts.length > 8) return `"${dir}" is too deep`;
  for (const p of parts) {
    if (p === '.' || p === '..' || !SEGMENT.test(p))
      return `"${dir}" is not a relative path of [A-Za-z0-9._-] segments`;
  }
  return null;
}

/** Why `name` is not a valid file name for put-file/get-file, or null. */
export function checkFileName(name: string): string | null {
  if (name === '.' || name === '..' || !SEGMENT.test(name)) return `"${name}" is not a plain file name`;
  return null;
}

// ---------------------------------------------------------------------------------------------
// Authentication.

const CLIENT_LABEL = 'criu-ts agent client\0';
const SERVER_LABEL = 'criu-ts agent server\0';

export function makeNonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

/** The client's proof for the agent's `nonce`. */
export function clientMac(token: string, nonce: Uint8Array): Buffer {
  return createHmac('sha256', token).update(CLIENT_LABEL).update(nonce).digest();
}

/** The agent's proof for the client's `nonce`. */
export function serverMac(token: string, nonce: Uint8Array): Buffer {
  return createHmac('sha256', token).update(SERVER_LABEL).update(nonce).digest();
}

/** Constant-time comparison of two MACs (false for different lengths, without a timing hint on content). */
export function macEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return timingSafeEqual(a, b);
}

// ---------------------------------------------------------------------------------------------
// Listen addresses.

/** "ADDR:PORT" or "[V6ADDR]:PORT" split; a string says what is wrong. ADDR is always required. */
export function parseHostPort(text: string): { address: string; port: number } | string {
  const m = /^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]\s]+):(\d{1,5})$/.exec(text);
  if (m === null) return `"${text}" is not ADDR:PORT (an address is required, e.g. 198.18.0.2:7000)`;
  const port = Number(m[2]);
  if (port > 65535) return `"${text}": port ${port} is out of range`;
  return { address: m[1] ?? '', port };
}
