/**
 * The page-server wire protocol of CRIU (criu/page-xfer.c), byte for byte, plus criu-ts's optional
 * token step. Pure encoding and decoding: no sockets here (server.ts and client.ts use it).
 *
 * Every message starts with a `struct page_server_iov`, 24 bytes, host order (little-endian on
 * the machines criu-ts runs on):
 *
 *     0       4          8                16               24
 *     +-------+----------+----------------+----------------+
 *     | cmd   | nr_pages | vaddr          | dst_id         |
 *     | u32   | u32      | u64            | u64            |
 *     +-------+----------+----------------+----------------+
 *
 *   cmd      low 16 bits: the command (PS_IOV_*); high 16 bits: PE_* flags (ADD_F only).
 *   dst_id   (id << 8) | type; type 1 = a task's pagemap (id = pid), 2 = shared memory (id = shmid).
 *            Older CRIUs used other type numbers (see decodeDstId).
 *
 * Checked against Debian's criu 3.17.1 binary: it sends and receives exactly 0x18 bytes per
 * header (send(sk, &pi, 0x18)), and ADD_F|PE_PRESENT is the word 0x00040006.
 *
 * Commands and what follows them:
 *   ADD 1        legacy: nr_pages × 4096 bytes of data follow (pages present)
 *   HOLE 2       legacy: pages in the parent, no data
 *   OPEN 3       legacy open of dst_id, no reply
 *   OPEN2 4      open dst_id; the server replies 1 byte: 1 if it has a parent image for it, else 0
 *   PARENT 5     the server replies an i32: 1 if it has a parent image for dst_id, else 0
 *   ADD_F 6      the record: PE_* flags in cmd; with PE_PRESENT, nr_pages × 4096 bytes follow
 *   GET 7        lazy pages (restore side asks a dump-side server); not served by a receiving
 *                page server
 *   CLOSE 0x1023, FORCE_CLOSE 0x1024
 *                end of the session; the server replies an i32 status (0 = all data received
 *                and stored) and the client then closes the connection.
 *
 * Token step (criu-ts only; absent unless a token is configured on both sides, so that without
 * one the stream is CRIU's protocol exactly). Before the first header the client sends 40 bytes:
 *
 *     0            8                                   40
 *     +------------+-----------------------------------+
 *     | "CRTSAUTH" | SHA-256 of the token (UTF-8)      |
 *     | 8 ASCII    | 32 bytes                          |
 *     +------------+-----------------------------------+
 *
 * and the server answers 4 bytes, i32 LE: 0 = accepted; anything else = refused, after which the
 * server closes the connection. A client without the token (a plain CRIU among them: its first 8
 * bytes are an OPEN2 header, not the magic) is refused before any header is looked at, with no
 * answer at all (4 bytes would be read as OPEN2's has-parent byte): the connection closes. The message
 * is longer than a header, so a server that expects no token reads it as one, finds the unknown
 * command 0x5243 ("CR") and hangs up instead of waiting. The digest is as good as the token to
 * whoever sees it: run the connection through a TLS tunnel (README) on untrusted networks.
 */

import { createHash } from 'node:crypto';
import { ProtocolError } from '../errors.js';
import { PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT } from '../images/index.js';

/** sizeof(struct page_server_iov). */
export const PS_IOV_SIZE = 24;

export const PS_IOV_ADD = 1;
export const PS_IOV_HOLE = 2;
export const PS_IOV_OPEN = 3;
export const PS_IOV_OPEN2 = 4;
export const PS_IOV_PARENT = 5;
export const PS_IOV_ADD_F = 6;
export const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
export const PS_IOV_FORCE_CLOSE = 0x1024;

const PS_CMD_BITS = 16;
const PS_CMD_MASK = (1 << PS_CMD_BITS) - 1;
const PS_TYPE_BITS = 8n;
const PS_TYPE_MASK = (1n << PS_TYPE_BITS) - 1n;

/** The PE_* bits a record may carry. */
const PE_ALL = PE_PARENT | PE_LAZY | PE_PRESENT;

/** Commands by name, CRIU's numbers. */
export const PS_COMMANDS = {
  ADD: PS_IOV_ADD,
  HOLE: PS_IOV_HOLE,
  OPEN: PS_IOV_OPEN,
  OPEN2: PS_IOV_OPEN2,
  PARENT: PS_IOV_PARENT,
  ADD_F: PS_IOV_ADD_F,
  GET: PS_IOV_GET,
  CLOSE: PS_IOV_CLOSE,
  FORCE_CLOSE: PS_IOV_FORCE_CLOSE,
} as const;
export type PsCommand = keyof typeof PS_COMMANDS;

const COMMAND_BY_NUMBER = new Map<number, PsCommand>(
  Object.entries(PS_COMMANDS).map(([name, n]) => [n, name as PsCommand]),
);

/** Which pagemap a record goes to. */
export type DstType = 'task' | 'shmem';
export interface Dst {
  type: DstType;
  /** pid for 'task', shmid for 'shmem'. */
  id: number;
}

/** One decoded header. */
export interface PsIov {
  command: PsCommand;
  /** PE_* bits (ADD_F; 0 otherwise). */
  flags: number;
  nrPages: number;
  vaddr: bigint;
  dstId: bigint;
}

/** `(id << 8) | type` with CRIU's current type numbers. */
export function encodeDstId(dst: Dst): bigint {
  if (!Number.isInteger(dst.id) || dst.id < 0) throw new RangeError(`Bad page-server id ${dst.id}`);
  return (BigInt(dst.id) << PS_TYPE_BITS) | (dst.type === 'task' ? 1n : 2n);
}

/**
 * The pagemap dst_id names, or null for a type no CRIU ever sent. Type numbers 10, 11, 16, 17
 * (task) and 27, 28, 29, 32, 33, 34 (shmem) come from CRIU 1.0 .. 3.2, which sent their changing
 * CR_FD_* constants; CRIU still accepts them, so do we.
 */
export function decodeDstId(dstId: bigint): Dst | null {
  const type = Number(dstId & PS_TYPE_MASK);
  const idBig = dstId >> PS_TYPE_BITS;
  if (idBig > 0xffffffffn) return null;
  const id = Number(idBig);
  if ([1, 10, 11, 16, 17].includes(type)) return { type: 'task', id };
  if ([2, 27, 28, 29, 32, 33, 34].includes(type)) return { type: 'shmem', id };
  return null;
}

/** The 24 bytes of a header. `flags` are allowed on ADD_F only. */
export function encodeIov(iov: PsIov, into?: Buffer, offset = 0): Buffer {
  const b = into ?? Buffer.alloc(PS_IOV_SIZE);
  if (iov.flags !== 0 && iov.command !== 'ADD_F') throw new RangeError(`${iov.command} takes no PE_* flags`);
  if ((iov.flags & ~PE_ALL) !== 0) throw new RangeError(`Unknown PE_* flags 0x${iov.flags.toString(16)}`);
  b.writeUInt32LE(((iov.flags << PS_CMD_BITS) | PS_COMMANDS[iov.command]) >>> 0, offset);
  b.writeUInt32LE(iov.nrPages, offset + 4);
  b.writeBigUInt64LE(iov.vaddr, offset + 8);
  b.writeBigUInt64LE(iov.dstId, offset + 16);
  return b;
}

/** A header of `command` for `dst` with no pages (OPEN, OPEN2, PARENT). */
export function controlIov(command: 'OPEN' | 'OPEN2' | 'PARENT', dst: Dst): PsIov {
  return { command, flags: 0, nrPages: 0, vaddr: 0n, dstId: encodeDstId(dst) };
}

/** The CLOSE header: all zero but the command (what CRIU sends). */
export function closeIov(isForce = false): PsIov {
  return { command: isForce ? 'FORCE_CLOSE' : 'CLOSE', flags: 0, nrPages: 0, vaddr: 0n, dstId: 0n };
}

/** An ADD_F header. */
export function addIov(dst: Dst, vaddr: bigint, nrPages: number, flags: number): PsIov {
  return { command: 'ADD_F', flags, nrPages, vaddr, dstId: encodeDstId(dst) };
}

/** Bytes of page data that follow a header (0 for all but ADD and ADD_F|PE_PRESENT). */
export function payloadBytes(iov: PsIov): number {
  if (iov.command === 'ADD' || (iov.command === 'ADD_F' && (iov.flags & PE_PRESENT) !== 0))
    return iov.nrPages * PAGE_SIZE;
  return 0;
}

/** The PE_* flags a page record stands for: ADD is present pages, HOLE pages in the parent. */
export function recordFlags(iov: PsIov): number {
  if (iov.command === 'ADD') return PE_PRESENT;
  if (iov.command === 'HOLE') return PE_PARENT;
  return iov.flags;
}

/** Command names by number: an array, as the decoder runs once per record (thousands a second). */
const COMMAND_BY_SMALL_NUMBER: (PsCommand | undefined)[] = [];
for (const [n, name] of COMMAND_BY_NUMBER) if (n < 16) COMMAND_BY_SMALL_NUMBER[n] = name;

/**
 * Decode and check one header. Anything CRIU would not send is a ProtocolError naming `peer`:
 * an unknown command, flags outside PE_*, flags on a command other than ADD_F, PE_PRESENT with
 * PE_PARENT, a page record without pages or at an address not page-aligned, a control command
 * with pages or an address.
 *
 * Called once per record of a stream of thousands of 1-page records: no closure, no string
 * and no bigint arithmetic on the path of a good header (the address is checked on its u32 halves).
 */
export function decodeIov(buf: Buffer, peer: string, offset = 0): PsIov {
  if (buf.length - offset < PS_IOV_SIZE)
    throw new ProtocolError(peer, `a header is ${PS_IOV_SIZE} bytes, got ${buf.length - offset}`);
  const word = buf.readUInt32LE(offset);
  const number = word & PS_CMD_MASK;
  const flags = word >>> PS_CMD_BITS;
  const command = number < 16 ? COMMAND_BY_SMALL_NUMBER[number] : COMMAND_BY_NUMBER.get(number);
  if (command === undefined) throw new ProtocolError(peer, `unknown command word ${commandWordHex(word)}`);
  const nrPages = buf.readUInt32LE(offset + 4);
  const vaddrLow = buf.readUInt32LE(offset + 8);
  const vaddrHigh = buf.readUInt32LE(offset + 12);
  let reason: string | null = null;
  if (command !== 'ADD_F' && flags !== 0) reason = `flags 0x${flags.toString(16)} on a command that takes none`;
  else if ((flags & ~PE_ALL) !== 0) reason = `unknown page flags 0x${flags.toString(16)}`;
  else if ((flags & PE_PRESENT) !== 0 && (flags & PE_PARENT) !== 0) reason = 'pages both present and in the parent';
  else if (command === 'ADD' || command === 'HOLE' || command === 'ADD_F' || command === 'GET') {
    if (command === 'ADD_F' && flags === 0) reason = 'a page record without flags';
    else if (nrPages === 0) reason = 'a page record of 0 pages';
    else if (vaddrLow % PAGE_SIZE !== 0)
      reason = `address 0x${buf.readBigUInt64LE(offset + 8).toString(16)} is not page-aligned`;
    // nr_pages × 4096 < 2^44: only an address in the top 2^44 bytes can run past 2^64.
    else if (
      vaddrHigh >= 0xfffff000 &&
      buf.readBigUInt64LE(offset + 8) + BigInt(nrPages) * BigInt(PAGE_SIZE) > 1n << 64n
    )
      reason = 'the pages run past the address space';
  } else if (nrPages !== 0 || vaddrLow !== 0 || vaddrHigh !== 0) reason = 'pages or an address on a control command';
  const dstId = buf.readBigUInt64LE(offset + 16);
  if (reason === null && (command === 'CLOSE' || command === 'FORCE_CLOSE') && dstId !== 0n)
    reason = 'a destination on CLOSE';
  if (reason !== null) throw new ProtocolError(peer, `${reason} (command word ${commandWordHex(word)})`, command);
  return { command, flags, nrPages, vaddr: buf.readBigUInt64LE(offset + 8), dstId };
}

function commandWordHex(word: number): string {
  return `0x${word.toString(16).padStart(8, '0')}`;
}

// Replies --------------------------------------------------------------------------------------

/** OPEN2's reply: one byte, 1 = the server has a parent image for the pagemap. */
export function encodeOpen2Reply(hasParent: boolean): Buffer {
  return Buffer.from([hasParent ? 1 : 0]);
}

export function decodeOpen2Reply(buf: Buffer): boolean {
  return buf[0] !== 0;
}

/** The i32 replies of PARENT (1/0) and CLOSE (status, 0 = success). */
export function encodeI32Reply(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value, 0);
  return b;
}

export function decodeI32Reply(buf: Buffer): number {
  return buf.readInt32LE(0);
}

// Token step -----------------------------------------------------------------------------------

export const AUTH_MAGIC = Buffer.from('CRTSAUTH', 'ascii');
/** Magic + SHA-256. */
export const AUTH_SIZE = 40;
/** The server's answer to the token step. */
export const AUTH_ACCEPTED = 0;
export const AUTH_REFUSED = -1;

/** SHA-256 of the token's UTF-8 bytes. */
export function tokenDigest(token: string): Buffer {
  if (token.length === 0) throw new RangeError('A page-server token must not be empty');
  return createHash('sha256').update(token, 'utf8').digest();
}

/** The client's 40-byte token message. */
export function encodeAuth(token: string): Buffer {
  return Buffer.concat([AUTH_MAGIC, tokenDigest(token)]);
}

/** The digest a token message carries, or null when it is not a token message (refused). */
export function decodeAuth(msg: Buffer): Buffer | null {
  if (msg.length !== AUTH_SIZE || !msg.subarray(0, 8).equals(AUTH_MAGIC)) return null;
  return Buffer.from(msg.subarray(8));
}
