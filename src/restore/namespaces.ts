/**
 * The tree's own namespaces (src/dump/namespaces.ts), made again: as CRIU decides it, a kind whose
 * id in the root's ids-<pid>.img differs from the dumping criu's (the inventory's root_ids) was
 * the tree's own, and the root's stub is cloned into a new namespace of that kind
 * (CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID); its children inherit it. A PID namespace needs
 * nothing more (the root is 1 there, the others get their pids by clone3 set_tid: stub.ts,
 * tree.ts). Then, from this thread entering the new namespace for a moment (sys/namespaces.ts):
 *   - uts: the host and domain names of utsns-<id>.img, written to /proc/sys/kernel;
 *   - ipc: the IPC sysctls of ipcns-var-<id>.img written, then the System V shared memory
 *     segments (sysv-shm.ts, through inIpc), semaphore sets and message queues (sysv-ipc.ts)
 *     made there, and last the *_next_id sysctls (making an object moves them).
 * Refused in one line before any process exists: another kind of the tree's own (network,
 * mount...), a PID namespace whose root is not 1 in the images, a process whose namespaces are
 * not the root's, a missing namespace image.
 */

import { closeSync, existsSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { TaskError, UnsupportedError } from '../errors.js';
import { imageFileName, readImage, type ImageEntry } from '../images/index.js';
import { CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWUTS } from '../kernel/constants.js';
import { log } from '../log.js';
import { IPC_VAR_SYSCTLS, NS_KINDS, whatOf, type NsKind } from '../dump/namespaces.js';
import { inNamespace, openNamespace } from '../sys/namespaces.js';
import { makeMsgQueues, makeSemSets, type SysvRecord } from './sysv-ipc.js';
import { single, type RestoreImages } from './images.js';

const CLONE_FLAG: Partial<Record<NsKind, bigint>> = { uts: CLONE_NEWUTS, ipc: CLONE_NEWIPC, pid: CLONE_NEWPID };

/** The clone flags of a migration skeleton's root stub whose tree has namespaces of `kinds` of its own. */
export function namespaceCloneFlags(kinds: readonly string[]): bigint {
  let flags = 0n;
  for (const kind of kinds) {
    const flag = CLONE_FLAG[kind as NsKind];
    if (flag === undefined) throw new UnsupportedError('namespace', `criu-ts cannot make a ${kind} namespace`);
    flags |= flag;
  }
  return flags;
}

export class RestoredNamespaces {
  /** fds on the new namespaces, once the root's stub exists. */
  private readonly fds = new Map<'uts' | 'ipc', number>();

  private constructor(
    /** A PID namespace of the tree's own: its root is 1 there (CLONE_NEWPID). */
    readonly isPidOwn: boolean,
    private readonly uts: ImageEntry | undefined,
    private readonly ipcVar: ImageEntry | undefined,
    private readonly semSets: readonly SysvRecord[],
    private readonly msgQueues: readonly SysvRecord[],
  ) {}

  /** The namespaces the images ask for, checked. */
  static async load(img: RestoreImages): Promise<RestoredNamespaces> {
    const own: NsKind[] = [];
    const root = img.rootIds;
    for (const kind of NS_KINDS) {
      const field = `${kind}_ns_id`;
      const theirs = img.ids[field];
      if (root === undefined || root[field] === undefined || theirs === undefined) continue;
      if (Number(theirs) === Number(root[field])) continue;
      if (CLONE_FLAG[kind] === undefined)
        throw new UnsupportedError(
          'namespace',
          `Cannot restore the tree of ${img.pid}: it had a ${whatOf(kind)} namespace of its own, which criu-ts cannot restore yet (only uts, ipc and pid)`,
        );
      own.push(kind);
    }
    // The init of the new PID namespace is 1 there: so must the root be in the images.
    if (own.includes('pid') && img.pid !== 1)
      throw new UnsupportedError(
        'namespace',
        `Cannot restore the tree of ${img.pid}: it had a PID namespace of its own, whose init (the root) must be 1 in the images`,
      );
    for (const t of img.tree.slice(1))
      for (const kind of NS_KINDS) {
        const field = `${kind}_ns_id`;
        if (t.ids[field] !== undefined && Number(t.ids[field]) !== Number(img.ids[field]))
          throw new UnsupportedError(
            'namespace',
            `Cannot restore the tree of ${img.pid}: process ${t.pid} was in another ${whatOf(kind)} namespace than the root; not supported`,
          );
      }
    const entryOf = (kind: string, id: number): Promise<ImageEntry> => single(img.dir, imageFileName(kind, id), kind);
    const ipcId = Number(img.ids['ipc_ns_id']);
    /** The records of an optional image (CRIU writes none for an empty kind). */
    const records = async (kind: string): Promise<SysvRecord[]> => {
      const file = path.join(img.dir, imageFileName(kind, ipcId));
      if (!own.includes('ipc') || !existsSync(file)) return [];
      return (await readImage(file, kind)).records.map((r) =>
        r.extra === undefined ? { entry: r.entry } : { entry: r.entry, extra: r.extra },
      );
    };
    return new RestoredNamespaces(
      own.includes('pid'),
      own.includes('uts') ? await entryOf('UTSNS', Number(img.ids['uts_ns_id'])) : undefined,
      own.includes('ipc') ? await entryOf('IPC_VAR', ipcId) : undefined,
      await records('IPCNS_SEM'),
      await records('IPCNS_MSG'),
    );
  }

  /** The clone flags of the root's stub. */
  get cloneFlags(): bigint {
    return (
      (this.uts === undefined ? 0n : CLONE_NEWUTS) |
      (this.ipcVar === undefined ? 0n : CLONE_NEWIPC) |
      (this.isPidOwn ? CLONE_NEWPID : 0n)
    );
  }

  private isOwn(kind: 'uts' | 'ipc'): boolean {
    return (kind === 'uts' ? this.uts : this.ipcVar) !== undefined;
  }

  /** Whether the tree gets an IPC namespace of its own (empty: nothing of the host's is in the way). */
  get isIpcOwn(): boolean {
    return this.ipcVar !== undefined;
  }

  /** The root's stub `pid` exists, in its new namespaces: hold them, and name the host. */
  enter(pid: number): void {
    for (const kind of ['uts', 'ipc'] as const) {
      if (!this.isOwn(kind)) continue;
      // Never write the names or sysctls of criu's own namespace: the stub must be in a new one.
      if (readlinkSync(`/proc/${pid}/ns/${kind}`) === readlinkSync(`/proc/thread-self/ns/${kind}`))
        throw new TaskError(pid, `Task ${pid} is not in a ${whatOf(kind)} namespace of its own`);
    }
    if (this.uts !== undefined) {
      const uts = this.uts;
      const fd = openNamespace(pid, 'uts');
      this.fds.set('uts', fd);
      inNamespace(fd, 'uts', () => {
        writeFileSync('/proc/sys/kernel/hostname', String(uts['nodename']));
        writeFileSync('/proc/sys/kernel/domainname', String(uts['domainname']));
      });
      log().info(`restore: UTS namespace made (host name ${JSON.stringify(uts['nodename'])})`);
    }
    if (this.ipcVar !== undefined) this.fds.set('ipc', openNamespace(pid, 'ipc'));
  }

  /** Run `fn` (System V calls, /proc/sysvipc) in the tree's IPC namespace: its own, or criu's. */
  inIpc<T>(fn: () => T): T {
    const fd = this.fds.get('ipc');
    return fd === undefined ? fn() : inNamespace(fd, 'ipc', fn);
  }

  /** Write the IPC sysctls but the next ids: the limits, before anything is made in the namespace. */
  setIpcLimits(): void {
    this.writeIpcVar(false);
  }

  /**
   * Once the segments are made (sysv-shm.ts): make the semaphore sets and message queues
   * (sysv-ipc.ts), then write the next ids (making an object moves them).
   */
  finishIpc(): void {
    if (this.ipcVar === undefined) return;
    this.inIpc(() => {
      makeSemSets(this.semSets);
      makeMsgQueues(this.msgQueues);
    });
    if (this.semSets.length + this.msgQueues.length > 0)
      log().info(`Made ${this.semSets.length} System V semaphore set(s) and ${this.msgQueues.length} message queue(s)`);
    this.writeIpcVar(true);
  }

  /** The IPC sysctls: the next ids (`isNextIds`) or all the others. */
  private writeIpcVar(isNextIds: boolean): void {
    const entry = this.ipcVar;
    if (entry === undefined) return;
    this.inIpc(() => {
      const write = (name: string, value: string): void => {
        try {
          writeFileSync(`/proc/sys/${name}`, `${value}\n`);
        } catch (err) {
          throw new UnsupportedError('namespace', `Cannot restore the IPC sysctl ${name} = ${value}: ${String(err)}`, {
            cause: err,
          });
        }
      };
      const sem = entry['sem_ctls'] as number[] | undefined;
      if (!isNextIds && sem !== undefined && sem.length > 0) write('kernel/sem', sem.join(' '));
      for (const s of IPC_VAR_SYSCTLS) {
        if (s.name.endsWith('_next_id') !== isNextIds) continue;
        const v = entry[s.field];
        if (v === undefined || v === null) continue;
        // *_next_id: an unset one (-1, 0xffffffff in the image) cannot be written (the kernel takes
        // 0 and up), and a new namespace has it unset already.
        if (s.name.endsWith('_next_id') && (Number(v) | 0) < 0) continue;
        write(s.name, String(v));
      }
    });
  }

  /** Let go of the namespaces (the tree holds them from now on, or they end with a failed restore). */
  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
