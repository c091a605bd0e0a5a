/**
 * Raw payloads that follow an entry in some image kinds, and their crit JSON ("extra" key).
 *
 *   pipes-data / fifo-data   pipe_data_entry.bytes bytes of pipe contents        base64
 *   sk-queues                sk_packet_entry.length bytes of a queued packet     base64
 *   tcp-stream-<ino>         inq_len bytes, then outq_len bytes                  {"inq","outq"}
 *   ghost-file-<id>          no chunks: the rest of the file; chunks: each       base64
 *                            ghost_chunk_entry is followed by `len` bytes
 *   bpfmap-data              keys_bytes + values_bytes bytes                     base64
 *   ipcns-shm-<id>           size bytes, padded to 4                             base64 (unpadded)
 *   ipcns-sem-<id>           nsems × u16, padded to 8                            list of numbers
 *   ipcns-msg-<id>           qnum × (u32 len, ipc_msg, msize bytes padded to 8)  [msg, base64, ...]
 *
 * The raw form (a Buffer holding exactly the bytes that follow the entry in the file, padding
 * included) is what readers return and writers take, so files round-trip byte for byte.
 *
 * Touches no kernel interface.
 */
import { base64Lines, critJsonToEntry, entryToCritJson, fromBase64 } from './crit-json.js';
import { decodeEntry, encodeEntry, type ImageEntry } from './entry-codec.js';
import type { JsonObject, JsonValue } from './json-text.js';
import { messageType } from './schema.js';

/** Where the payload's bytes come from while reading an image. */
export interface ExtraSource {
  /** Exactly n bytes (an ImageError when the file ends first). */
  readExact(n: number, what: string): Promise<Buffer>;
  /** Every byte up to the end of the file. */
  readRest(): Promise<Buffer>;
}

/** Position of an entry in its image: index 0 is the first entry; head is entry 0. */
export interface EntryContext {
  readonly index: number;
  readonly head: ImageEntry | undefined;
}

export interface ExtraCodec {
  /** Read the payload following `entry`; null when this entry has none. */
  read(src: ExtraSource, entry: ImageEntry, ctx: EntryContext): Promise<Buffer | null>;
  /** Whether `entry` is followed by a payload (for writers: it must then be given). */
  has(entry: ImageEntry, ctx: EntryContext): boolean;
  toJson(raw: Buffer, entry: ImageEntry): JsonValue;
  fromJson(json: JsonValue, entry: ImageEntry): Buffer;
}

const num = (e: ImageEntry, k: string): number => Number(e[k] ?? 0);
const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;
const str = (j: JsonValue): string => (typeof j === 'string' ? j : '');

function sized(size: (e: ImageEntry) => number, what: string): ExtraCodec {
  return {
    read: (src, e) => src.readExact(size(e), what),
    has: () => true,
    toJson: (raw) => base64Lines(raw),
    fromJson: (j) => fromBase64(str(j)),
  };
}

export const pipeDataExtra = sized((e) => num(e, 'bytes'), 'pipe data');
export const skQueueExtra = sized((e) => num(e, 'length'), 'socket queue data');
export const bpfmapDataExtra = sized((e) => num(e, 'keys_bytes') + num(e, 'values_bytes'), 'bpf map data');

export const tcpStreamExtra: ExtraCodec = {
  read: (src, e) => src.readExact(num(e, 'inq_len') + num(e, 'outq_len'), 'tcp queues'),
  has: () => true,
  toJson: (raw, e) => ({
    inq: base64Lines(raw.subarray(0, num(e, 'inq_len'))),
    outq: base64Lines(raw.subarray(num(e, 'inq_len'))),
  }),
  fromJson: (j) => {
    const o = (j ?? {}) as JsonObject;
    return Buffer.concat([fromBase64(str(o['inq'] ?? '')), fromBase64(str(o['outq'] ?? ''))]);
  },
};

/** Ghost files: the head (ghost_file_entry) owns the rest of the file unless it is chunked. */
export const ghostFileExtra: ExtraCodec = {
  has: (e, ctx) => (ctx.index === 0 ? e['chunks'] !== true : true),
  read: async (src, e, ctx) => {
    if (ctx.index === 0) return e['chunks'] === true ? null : src.readRest();
    return src.readExact(num(e, 'len'), 'ghost file chunk');
  },
  toJson: (raw) => base64Lines(raw),
  fromJson: (j) => fromBase64(str(j)),
};

export const ipcShmExtra: ExtraCodec = {
  // CRIU 3.x keeps the contents in pagemap-shmem-<id>.img instead, and says so.
  read: (src, e) =>
    e['in_pagemaps'] === true
      ? Promise.resolve(null)
      : src.readExact(roundUp(num(e, 'size'), 4), 'shared memory contents'),
  has: (e) => e['in_pagemaps'] !== true,
  toJson: (raw, e) => base64Lines(raw.subarray(0, num(e, 'size'))),
  fromJson: (j, e) => {
    const out = Buffer.alloc(roundUp(num(e, 'size'), 4));
    fromBase64(str(j)).copy(out, 0, 0, num(e, 'size'));
    return out;
  },
};

export const ipcSemExtra: ExtraCodec = {
  read: (src, e) => src.readExact(roundUp(num(e, 'nsems') * 2, 8), 'semaphore values'),
  has: () => true,
  toJson: (raw, e) => Array.from({ length: num(e, 'nsems') }, (_, i) => raw.readUInt16LE(i * 2)),
  fromJson: (j, e) => {
    const out = Buffer.alloc(roundUp(num(e, 'nsems') * 2, 8));
    ((j ?? []) as readonly JsonValue[]).forEach((v, i) => out.writeUInt16LE(Number(v), i * 2));
    return out;
  },
};

/** One System V message of an ipc_msg_entry's payload: its type and its text. */
export interface IpcMessage {
  mtype: bigint;
  text: Buffer;
}

/** An ipc_msg_entry's payload: per message, the length of its ipc_msg, the ipc_msg, the text padded to 8. */
export function encodeIpcMessages(msgs: readonly IpcMessage[]): Buffer {
  const parts: Buffer[] = [];
  for (const m of msgs) {
    const body = encodeEntry(messageType('ipc_msg'), { mtype: m.mtype, msize: m.text.length });
    const len = Buffer.alloc(4);
    len.writeUInt32LE(body.length, 0);
    const text = Buffer.alloc(roundUp(m.text.length, 8));
    m.text.copy(text);
    parts.push(len, body, text);
  }
  return Buffer.concat(parts);
}

/** The messages of an ipc_msg_entry's payload (as ipcMsgExtra.read returns it). */
export function decodeIpcMessages(raw: Buffer): IpcMessage[] {
  const out: IpcMessage[] = [];
  for (let off = 0; off < raw.length;) {
    const len = raw.readUInt32LE(off);
    const msg = decodeEntry(messageType('ipc_msg'), raw.subarray(off + 4, off + 4 + len));
    const size = num(msg, 'msize');
    off += 4 + len;
    out.push({ mtype: BigInt(msg['mtype'] as bigint | number), text: raw.subarray(off, off + size) });
    off += roundUp(size, 8);
  }
  return out;
}

export const ipcMsgExtra: ExtraCodec = {
  has: () => true,
  read: async (src, e) => {
    const parts: Buffer[] = [];
    for (let i = 0; i < num(e, 'qnum'); i++) {
      const len = await src.readExact(4, 'message length');
      const body = await src.readExact(len.readUInt32LE(0), 'message header');
      const msg = decodeEntry(messageType('ipc_msg'), body);
      parts.push(len, body, await src.readExact(roundUp(num(msg, 'msize'), 8), 'message text'));
    }
    return Buffer.concat(parts);
  },
  // crit lists, per message, its header (plain numbers) then its text as base64.
  toJson: (raw) =>
    decodeIpcMessages(raw).flatMap((m) => [
      entryToCritJson(messageType('ipc_msg'), { mtype: m.mtype, msize: m.text.length }, false),
      base64Lines(m.text),
    ]),
  fromJson: (j) => {
    const items = (j ?? []) as readonly JsonValue[];
    const msgs: IpcMessage[] = [];
    for (let i = 0; i + 1 < items.length; i += 2) {
      const msg = critJsonToEntry(messageType('ipc_msg'), items[i] as JsonObject);
      const text = Buffer.alloc(num(msg, 'msize'));
      fromBase64(str(items[i + 1] as JsonValue)).copy(text, 0, 0, text.length);
      msgs.push({ mtype: BigInt(msg['mtype'] as bigint | number), text });
    }
    return encodeIpcMessages(msgs);
  },
};
