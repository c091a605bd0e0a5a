/**
 * System V shared memory segments of a dump (ipcns-shm-<id>.img, src/dump/sysv-shm.ts) made
 * again, each with its id, key, size, owner and permissions, and attached where the processes
 * had them.
 *
 *   1. check (before any process exists): every segment's id is free here, and its key too
 *      (a key in use belongs to another segment: shmget would hand that one out);
 *   2. create, in criu's own process: /proc/sys/kernel/shm_next_id = the id, then
 *      shmget(key, size, IPC_CREAT | IPC_EXCL | mode), which takes the id (the kernel resets
 *      shm_next_id after use), then IPC_SET for owner, group and mode, as CRIU does. The
 *      creator (cuid, cgid) is criu's: the kernel does not let it be set;
 *   3. attach (mm.ts, with the process's other mappings): shmat(id, start, SHM_RDONLY unless
 *      writable) injected into the process; the first attachment also gets the contents,
 *      written through criu's /proc/PID/map_files/ file on that mapping;
 *   4. once the tree is whole: a segment no process attaches (an IPC namespace's, dumped whole)
 *      is filled through an attachment of criu's own for a moment; a segment that was removed
 *      (SHM_DEST) when dumped is removed again, to go with its last attachment. A failed restore
 *      removes what it made.
 */

import { closeSync, existsSync, openSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ImageError, UnsupportedError } from '../errors.js';
import { readImage } from '../images/image-reader.js';
import { PAGE_SIZE, readShmemRuns, shmemPagemapFileName, type ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { log } from '../log.js';
import { readShmSegments, SHM_DEST } from '../proc/sysvipc.js';
import * as sys from '../sys/native.js';
import {
  IPC_CREAT,
  IPC_EXCL,
  IPC_RMID,
  IPC_SET,
  IPC_STAT,
  SHM_EXEC,
  SHM_RDONLY,
  SHMID_DS_BYTES,
} from '../kernel/constants.js';
import { setIpcPerm } from './sysv-ipc.js';

const PROT_WRITE = 2n;
const PROT_EXEC = 4n;
const SHM_NEXT_ID = '/proc/sys/kernel/shm_next_id';
const IMAGE_NAME = /^ipcns-shm-\d+\.img$/;

interface Segment {
  id: number;
  key: number;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  contents: Uint8Array;
  isCreated: boolean;
  isFilled: boolean;
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;
const describe = (s: Segment): string => `System V shared memory segment ${s.id} (key ${hex(s.key)})`;

/** A segment's contents kept as CRIU 3.x keeps them: in pagemap-shmem-<id>.img (zeros where no page is). */
async function contentsInPagemaps(dir: string, seg: Segment): Promise<Buffer> {
  const out = Buffer.alloc(seg.size);
  await readShmemRuns(dir, seg.id, (offset, data) => {
    if (offset + BigInt(data.length) > BigInt(Math.ceil(seg.size / PAGE_SIZE) * PAGE_SIZE))
      throw new ImageError(shmemPagemapFileName(seg.id), `pages past the end of ${describe(seg)}`);
    data.copy(out, Number(offset));
  });
  return out;
}

export class SysvSegments {
  private constructor(private readonly byId: Map<number, Segment>) {}

  /** The segments of the dump in `dir` (none when it has no ipcns-shm image). */
  static async load(dir: string): Promise<SysvSegments> {
    const byId = new Map<number, Segment>();
    const names = existsSync(dir) ? readdirSync(dir).filter((n) => IMAGE_NAME.test(n)) : [];
    for (const name of names) {
      for (const r of (await readImage(path.join(dir, name), 'IPCNS_SHM')).records) {
        const desc = r.entry['desc'] as ImageEntry;
        const seg: Segment = {
          id: Number(desc['id']),
          key: Number(desc['key']) >>> 0,
          size: Number(r.entry['size']),
          mode: Number(desc['mode']),
          uid: Number(desc['uid']),
          gid: Number(desc['gid']),
          contents: r.extra ?? new Uint8Array(0),
          isCreated: false,
          isFilled: false,
        };
        if (r.entry['in_pagemaps'] === true) seg.contents = await contentsInPagemaps(dir, seg);
        if (seg.contents.length < seg.size) throw new ImageError(name, `${describe(seg)}: its contents are cut short`);
        byId.set(seg.id, seg);
      }
    }
    return new SysvSegments(byId);
  }

  /** Step 1: refuse, in one line, a segment whose id or key is taken here. */
  check(): void {
    if (this.byId.size === 0) return;
    const here = readShmSegments();
    for (const s of this.byId.values()) {
      const taken = here.get(s.id);
      if (taken !== undefined) {
        const hint =
          taken.key === s.key && taken.nattch === 0
            ? ' and unused (left by the dumped tree? ipcrm -m ' + s.id + ')'
            : '';
        throw new UnsupportedError(
          'sysv-shm-taken',
          `Cannot restore ${describe(s)}: id ${s.id} is in use here (key ${hex(taken.key)}, attached ${taken.nattch} time(s))${hint}`,
        );
      }
      if (s.key === 0 || (s.mode & SHM_DEST) !== 0) continue;
      const other = [...here.values()].find((o) => o.key === s.key);
      if (other !== undefined)
        throw new UnsupportedError(
          'sysv-shm-taken',
          `Cannot restore ${describe(s)}: its key is in use here by segment ${other.id}`,
        );
    }
  }

  /** Step 2: make every segment (empty; filled at its first attachment). */
  create(): void {
    for (const s of this.byId.values()) {
      const isRemoved = (s.mode & SHM_DEST) !== 0;
      writeFileSync(SHM_NEXT_ID, `${s.id}\n`);
      let id: number;
      try {
        id = sys.shmget(isRemoved ? 0 : s.key, s.size, (s.mode & 0o777) | IPC_CREAT | IPC_EXCL);
      } catch (err) {
        throw new UnsupportedError('sysv-shm-create', `Cannot restore ${describe(s)}: ${String(err)}`, { cause: err });
      }
      if (id !== s.id) {
        sys.shmctl(id, IPC_RMID, null);
        throw new UnsupportedError('sysv-shm-id', `Cannot restore ${describe(s)}: the kernel gave it id ${id}`);
      }
      s.isCreated = true;
      const ds = Buffer.alloc(SHMID_DS_BYTES);
      sys.shmctl(id, IPC_STAT, ds);
      setIpcPerm(ds, s);
      sys.shmctl(id, IPC_SET, ds);
    }
    if (this.byId.size > 0) log().info(`Made ${this.byId.size} System V shared memory segment(s)`);
  }

  /** Step 3: attach segment `id` at `start` in the task of `inj`, with protection `prot`. */
  attach(inj: Injector, id: number, start: bigint, prot: bigint): void {
    const s = this.byId.get(id);
    if (s === undefined || !s.isCreated)
      throw new ImageError('mm image', `System V shared memory segment ${id} at ${hex(start)} is not in the images`);
    const flags = ((prot & PROT_WRITE) === 0n ? SHM_RDONLY : 0) | ((prot & PROT_EXEC) !== 0n ? SHM_EXEC : 0);
    const got = inj.syscallOrThrow('shmat', [BigInt(id), start, BigInt(flags)]);
    if (got !== start)
      throw new ImageError('mm image', `${describe(s)} was attached at ${hex(got)}, not ${hex(start)}`);
    if (s.isFilled) return;
    const end = start + BigInt(Math.ceil(s.size / PAGE_SIZE) * PAGE_SIZE);
    const data = Buffer.from(s.contents.buffer, s.contents.byteOffset, s.size);
    const fd = openSync(`/proc/${inj.pid}/map_files/${start.toString(16)}-${end.toString(16)}`, 'r+');
    try {
      for (let done = 0; done < s.size;) done += sys.pwrite(fd, data, done, s.size - done, BigInt(done));
    } finally {
      closeSync(fd);
    }
    s.isFilled = true;
  }

  /**
   * Step 4: fill the segments no process attaches (an IPC namespace's, dumped whole) through an
   * attachment of criu's own for a moment; remove again the segments that were removed when
   * dumped.
   */
  finish(): void {
    for (const s of this.byId.values()) {
      if (s.isFilled || s.contents.subarray(0, s.size).every((b) => b === 0)) continue;
      const addr = sys.shmat(s.id, 0);
      try {
        const data = Buffer.from(s.contents.buffer, s.contents.byteOffset, s.size);
        const n = sys.processVmWritev(process.pid, data, 0, new BigUint64Array([addr, BigInt(s.size)]));
        if (n !== s.size) throw new ImageError('ipcns-shm', `${describe(s)}: wrote ${n} of ${s.size} bytes`);
      } finally {
        sys.shmdt(addr);
      }
      s.isFilled = true;
    }
    for (const s of this.byId.values()) if ((s.mode & SHM_DEST) !== 0) sys.shmctl(s.id, IPC_RMID, null);
  }

  /** A failed restore: remove every segment it made (each goes once its stubs are gone). */
  removeMade(): void {
    for (const s of this.byId.values()) {
      if (!s.isCreated) continue;
      try {
        sys.shmctl(s.id, IPC_RMID, null);
      } catch (err) {
        log().warn(`Cannot remove ${describe(s)} after the failed restore: ${String(err)}`);
      }
      s.isCreated = false;
    }
  }
}
