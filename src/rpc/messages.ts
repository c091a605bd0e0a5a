/**
 * CRIU's RPC messages (proto/rpc.proto): `criu_req` from the client, `criu_resp` back, encoded
 * with the image codec (src/images/entry-codec.ts), so field names are rpc.proto's (snake_case)
 * and enums are numbers.
 */

import { ProtocolError } from '../errors.js';
import { decodeEntry, encodeEntry, type ImageEntry } from '../images/entry-codec.js';
import { messageType } from '../images/schema.js';

/** criu_req_type. */
export const ReqType = {
  EMPTY: 0,
  DUMP: 1,
  RESTORE: 2,
  CHECK: 3,
  PRE_DUMP: 4,
  PAGE_SERVER: 5,
  NOTIFY: 6,
  CPUINFO_DUMP: 7,
  CPUINFO_CHECK: 8,
  FEATURE_CHECK: 9,
  VERSION: 10,
  WAIT_PID: 11,
  PAGE_SERVER_CHLD: 12,
  SINGLE_PRE_DUMP: 13,
} as const;

export const REQ_TYPE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(ReqType).map(([name, n]) => [n, name]),
);

/** criu_opts as decoded: rpc.proto's names; absent fields are absent. */
export type CriuOpts = ImageEntry;

export interface CriuReq {
  type: number;
  opts?: CriuOpts;
  notify_success?: boolean;
  keep_open?: boolean;
  features?: { mem_track?: boolean; lazy_pages?: boolean; pidfd_store?: boolean };
  pid?: number;
}

export interface CriuResp {
  type: number;
  success: boolean;
  dump?: { restored?: boolean };
  restore?: { pid: number };
  notify?: { script?: string; pid?: number };
  ps?: { address?: string; port?: number; pid?: number; fd?: number };
  cr_errno?: number;
  features?: { mem_track?: boolean; lazy_pages?: boolean; pidfd_store?: boolean };
  cr_errmsg?: string;
  version?: {
    major_number: number;
    minor_number: number;
    gitid?: string;
    sublevel?: number;
    extra?: number;
    name?: string;
  };
  status?: number;
}

/** A request from its bytes. Throws ProtocolError for bytes that are not a criu_req. */
export function decodeReq(bytes: Uint8Array): CriuReq {
  let e: ImageEntry;
  try {
    e = decodeEntry(messageType('criu_req'), bytes);
  } catch (err) {
    throw new ProtocolError('the RPC client', `its request does not decode: ${(err as Error).message}`, undefined, {
      cause: err,
    });
  }
  if (typeof e['type'] !== 'number') throw new ProtocolError('the RPC client', 'its request has no type');
  return e as unknown as CriuReq;
}

export function encodeReq(req: CriuReq): Buffer {
  return encodeEntry(messageType('criu_req'), req as unknown as ImageEntry);
}

export function decodeResp(bytes: Uint8Array): CriuResp {
  let e: ImageEntry;
  try {
    e = decodeEntry(messageType('criu_resp'), bytes);
  } catch (err) {
    throw new ProtocolError('criu', `its RPC response does not decode: ${(err as Error).message}`, undefined, {
      cause: err,
    });
  }
  if (typeof e['type'] !== 'number' || typeof e['success'] !== 'boolean')
    throw new ProtocolError('criu', 'its RPC response lacks its type or success');
  return e as unknown as CriuResp;
}

export function encodeResp(resp: CriuResp): Buffer {
  return encodeEntry(messageType('criu_resp'), resp as unknown as ImageEntry);
}
