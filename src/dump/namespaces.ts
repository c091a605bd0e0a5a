/**
 * The namespaces of a dumped tree, as CRIU sees them: a namespace the tree's root shares with
 * criu is left alone (a restore puts the tree in the restoring criu's); one the root has of its
 * own is the tree's, dumped, and made new on restore. Every other process and thread of the tree
 * must be in the root's namespaces (CRIU: "Can't dump nested namespace").
 *
 * criu-ts dumps three kinds:
 *   - pid: nothing to dump (as in CRIU), but the images hold the pids as the namespace sees them
 *     (pid-ns.ts); its init must be the tree's root;
 *   - uts: the host and domain names, in utsns-<id>.img;
 *   - ipc: the IPC sysctls, in ipcns-var-<id>.img; the System V shared memory segments the tree
 *     attaches (sysv-shm.ts, read in the namespace), in ipcns-shm-<id>.img; its semaphore sets
 *     and message queues (sysv-ipc.ts), in ipcns-sem-<id>.img and ipcns-msg-<id>.img.
 * `--namespaces` (`-n`) asks for a kind even when the root shares it with criu (uts and ipc only):
 * it is then dumped all the same, and the restore gives the tree a new one with what was dumped,
 * as CRIU's `-n` did. Any other kind of its own (network, mount, user, cgroup, time), asked for
 * or found, is refused in one line before anything is frozen, as is a process or thread in
 * another namespace than the root's, or a task that unshared a PID or time namespace for its
 * children.
 *
 * The values are read through the namespace itself: this thread enters it for a moment
 * (sys/namespaces.ts), as /proc/sys and /proc/sysvipc show the reader's.
 *
 * Image kinds: UTSNS, IPC_VAR.
 */

import { closeSync, readFileSync } from 'node:fs';
import { UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import { readNamespaces, type NsLink } from '../proc/misc.js';
import { readProcDir, readProcLink } from '../proc/read.js';
import { readStat } from '../proc/stat.js';
import { readStatus } from '../proc/status.js';
import { PF_EXITING } from '../kernel/constants.js';
import { inNamespace, openNamespace } from '../sys/namespaces.js';

/** The namespace kinds of task_kobj_ids_entry, in the order CRIU numbers them (ids.ts). */
export const NS_KINDS = ['pid', 'net', 'ipc', 'uts', 'time', 'mnt', 'user', 'cgroup'] as const;
export type NsKind = (typeof NS_KINDS)[number];

/** The kinds criu-ts dumps when the tree has them of its own. */
const DUMPABLE: readonly NsKind[] = ['uts', 'ipc', 'pid'];
/** The kinds --namespaces may ask for where the tree shares criu's. */
const REQUESTABLE: readonly NsKind[] = ['uts', 'ipc'];

const NS_WHAT: Record<NsKind, string> = {
  pid: 'PID',
  net: 'network',
  ipc: 'IPC',
  uts: 'UTS',
  time: 'time',
  mnt: 'mount',
  user: 'user',
  cgroup: 'cgroup',
};

export interface TreeNamespaces {
  /** The kinds the tree takes as its own: dumped, and made new on restore. */
  own: ReadonlySet<NsKind>;
  /** Whether the tree's IPC namespace is criu's: its System V segments are then the host's. */
  isIpcCriu: boolean;
}

/** A tree whose namespaces are all criu's and none asked for: nothing to dump. */
export const CRIU_NAMESPACES: TreeNamespaces = { own: new Set(), isIpcCriu: true };

/**
 * Check the namespaces of tree `root` (its live members: `pids`, root first), with the kinds
 * `requested` by --namespaces. Throws UnsupportedError for what criu-ts cannot dump.
 */
export function checkTreeNamespaces(
  root: number,
  pids: readonly number[],
  requested: readonly string[] = [],
): TreeNamespaces {
  const refuse = (why: string): never => {
    throw new UnsupportedError('namespace', `Cannot dump tree ${root}: ${why}`);
  };
  for (const kind of requested)
    if (!(REQUESTABLE as readonly string[]).includes(kind))
      refuse(`--namespaces ${kind}: criu-ts cannot dump ${whatOf(kind)} namespaces yet (only uts and ipc)`);
  const mine = readNamespaces(process.pid) ?? new Map<string, NsLink>();
  const rootNs = readNamespaces(root);
  if (rootNs === null) return CRIU_NAMESPACES; // gone: the freeze says so
  const own = new Set<NsKind>();
  for (const kind of NS_KINDS) {
    const theirs = rootNs.get(kind);
    const ours = mine.get(kind);
    if (theirs === undefined || ours === undefined) continue; // a kind this kernel lacks
    if (theirs.inode !== ours.inode) {
      if (!DUMPABLE.includes(kind))
        refuse(
          `it lives in a ${NS_WHAT[kind]} namespace of its own, which criu-ts cannot dump yet (only uts, ipc and pid)`,
        );
      if (kind === 'pid') checkPidNamespace(root, pids, refuse);
      own.add(kind);
    } else if (requested.includes(kind)) own.add(kind);
  }
  for (const pid of pids) {
    for (const tid of readProcDir(`/proc/${pid}/task`) ?? []) {
      const ns = readNamespaces(pid, Number(tid));
      if (ns === null) continue; // gone meanwhile: the freeze finds out
      const who = Number(tid) === pid ? `process ${pid}` : `thread ${tid} of process ${pid}`;
      for (const kind of NS_KINDS) {
        const theirs = ns.get(kind);
        const roots = rootNs.get(kind);
        if (theirs !== undefined && roots !== undefined && theirs.inode !== roots.inode)
          refuse(`${who} is in another ${NS_WHAT[kind]} namespace than the tree's root; not supported`);
      }
      for (const kind of ['pid', 'time'] as const) {
        const forChildren = ns.get(`${kind}_for_children`);
        const current = ns.get(kind);
        if (current === undefined) continue;
        // A PID namespace unshared for children none of which exists yet reads as no link at all
        // (it has no reaper); so does any *_for_children of a task on its way out.
        const isUnshared =
          forChildren === undefined ? kind === 'pid' && isLive(Number(tid)) : forChildren.inode !== current.inode;
        if (isUnshared) refuse(`${who} has unshared a ${NS_WHAT[kind]} namespace for its children; not supported`);
      }
    }
  }
  return { own, isIpcCriu: rootNs.get('ipc')?.inode === mine.get('ipc')?.inode };
}

/**
 * A tree in a PID namespace of its own is dumped whole, as CRIU does: its root must be the
 * namespace's init, and each process's session and group leaders inside it (the images hold
 * the namespace's pids; one outside has none there).
 */
function checkPidNamespace(root: number, pids: readonly number[], refuse: (why: string) => never): void {
  const rootIds = readStatus(root)?.nsPid ?? [];
  if (rootIds.length < 2 || rootIds.at(-1) !== 1)
    refuse(
      `it lives in a PID namespace of its own without being its init (it is ${rootIds.at(-1) ?? '?'} there): ` +
        'dump the namespace from its init',
    );
  const level = rootIds.length - 1;
  // Every process of the namespace is the init's descendant (a zombie or a child forked since the
  // tree was read too), but one that joined it (setns): it would be killed with the tree and not
  // come back.
  const ns = readProcLink(`/proc/${root}/ns/pid`);
  const members = new Set(pids);
  for (const name of readProcDir('/proc') ?? []) {
    const other = Number(name);
    if (!Number.isInteger(other) || members.has(other)) continue;
    if (ns !== null && pidNsOf(other) === ns && !isDescendant(other, root))
      refuse(`process ${other} is in its PID namespace without being of the tree (it joined it with setns)`);
  }
  for (const pid of pids) {
    const st = readStatus(pid);
    if (st === null) continue; // gone meanwhile: the freeze finds out
    for (const [what, ids] of [
      ['session', st.nsSid],
      ['process group', st.nsPgid],
    ] as const)
      if ((ids[level] ?? 0) === 0)
        refuse(
          `the ${what} leader of process ${pid} is outside the tree's PID namespace; ` +
            'start its init as a session leader there (setsid)',
        );
  }
}

/** Whether process `pid` descends from `root` (by its parents; false once gone). */
function isDescendant(pid: number, root: number): boolean {
  for (let p = readStatus(pid)?.ppid, steps = 0; p !== undefined && p > 0 && steps < 4096; steps++) {
    if (p === root) return true;
    p = readStatus(p)?.ppid;
  }
  return false;
}

/** The PID namespace link of process `pid`; null when gone or not ours to read (EACCES: init's). */
function pidNsOf(pid: number): string | null {
  try {
    return readProcLink(`/proc/${pid}/ns/pid`);
  } catch {
    return null;
  }
}

/** Whether task `tid` (a process or a thread) is alive: not a zombie, not exiting. */
function isLive(tid: number): boolean {
  const st = readStat(tid);
  return st !== null && st.state !== 'Z' && st.state !== 'X' && (st.flags & PF_EXITING) === 0;
}

/** How a namespace kind is called in messages ("PID", "network"...). */
export function whatOf(kind: string): string {
  return kind in NS_WHAT ? NS_WHAT[kind as NsKind] : kind;
}

/** Read /proc files in namespace `kind` of task `pid`. */
function readIn<T>(pid: number, kind: 'uts' | 'ipc', fn: () => T): T {
  const fd = openNamespace(pid, kind);
  try {
    return inNamespace(fd, kind, fn);
  } finally {
    closeSync(fd);
  }
}

/** Run `fn` (reading /proc/sysvipc, shmctl) in the tree's IPC namespace. */
export function inTreeIpc<T>(pid: number, ns: TreeNamespaces, fn: () => T): T {
  return ns.isIpcCriu ? fn() : readIn(pid, 'ipc', fn);
}

function sysctl(name: string): string {
  return readFileSync(`/proc/sys/${name}`, 'utf8').trim();
}

/** A sysctl that may be missing on this kernel (auto_msgmni went in 4.1, say). */
function sysctlOr(name: string, fallback: string): string {
  try {
    return sysctl(name);
  } catch {
    return fallback;
  }
}

/** utsns_entry of task `pid`'s UTS namespace. */
export function dumpUtsns(pid: number): ImageEntry {
  return readIn(pid, 'uts', () => ({
    nodename: sysctl('kernel/hostname'),
    domainname: sysctl('kernel/domainname'),
  }));
}

/** The IPC sysctls of ipc_var_entry, by field, with their /proc/sys names (restore writes them back). */
export const IPC_VAR_SYSCTLS: readonly { field: string; name: string; isU64?: boolean; isOptional?: boolean }[] = [
  { field: 'msg_ctlmax', name: 'kernel/msgmax' },
  { field: 'msg_ctlmnb', name: 'kernel/msgmnb' },
  { field: 'msg_ctlmni', name: 'kernel/msgmni' },
  { field: 'shm_ctlmax', name: 'kernel/shmmax', isU64: true },
  { field: 'shm_ctlall', name: 'kernel/shmall', isU64: true },
  { field: 'shm_ctlmni', name: 'kernel/shmmni' },
  { field: 'shm_rmid_forced', name: 'kernel/shm_rmid_forced' },
  { field: 'mq_queues_max', name: 'fs/mqueue/queues_max' },
  { field: 'mq_msg_max', name: 'fs/mqueue/msg_max' },
  { field: 'mq_msgsize_max', name: 'fs/mqueue/msgsize_max' },
  { field: 'mq_msg_default', name: 'fs/mqueue/msg_default', isOptional: true },
  { field: 'mq_msgsize_default', name: 'fs/mqueue/msgsize_default', isOptional: true },
  { field: 'msg_next_id', name: 'kernel/msg_next_id', isOptional: true },
  { field: 'sem_next_id', name: 'kernel/sem_next_id', isOptional: true },
  { field: 'shm_next_id', name: 'kernel/shm_next_id', isOptional: true },
];

/** ipc_var_entry of task `pid`'s IPC namespace. */
export function dumpIpcVar(pid: number): ImageEntry {
  return readIn(pid, 'ipc', () => {
    const entry: ImageEntry = {
      sem_ctls: sysctl('kernel/sem')
        .split(/\s+/)
        .map((v) => Number(v)),
      // Gone from the kernel since 4.1 (msgmni no longer scales with memory): CRIU writes 0.
      auto_msgmni: Number(sysctlOr('kernel/auto_msgmni', '0')),
    };
    for (const s of IPC_VAR_SYSCTLS) {
      const text = s.isOptional === true ? sysctlOr(s.name, '') : sysctl(s.name);
      // *_next_id reads -1 when unset: left out, as CRIU does (its restore would write it back,
      // which the kernel refuses).
      if (text === '' || text === '-1') continue;
      entry[s.field] = s.isU64 === true ? BigInt.asUintN(64, BigInt(text)) : Number(text) >>> 0;
    }
    return entry;
  });
}
