/**
 * The TTY fd kind: terminals, as CRIU writes them:
 * `file_entry {type TTY, id, tty: tty_file_entry {id, tty_info_id, flags, fown}}` in files.img,
 * and one `tty_info_entry` per terminal (per pty index for masters) in tty-info.img:
 *
 *   tty_info_entry { id, type (PTY, CTTY, CONSOLE, VT, SERIAL), locked, exclusive, packet_mode,
 *                    sid and pgrp (the terminal's session and foreground process group, as the
 *                    task saw them; 0 when it is not the task's controlling terminal), rdev and
 *                    dev (CRIU's kernel encoding; a master has /dev/ptmx's 5:2), termios,
 *                    termios_locked, winsize, pty {index} for both ends of a pty, uid, gid }
 *
 * Two cases:
 *
 * Shell jobs (-j/--shell-job). Without -j a terminal fd is refused before the task is frozen.
 * With -j the terminal is the shell's, not the task's: it is recorded as above, and on restore the
 * task gets the terminal of `criu restore` instead (criu's stdin, opened in the task through
 * /proc/CRIU/fd/0 with the dumped flags and O_NOCTTY), with the dumped termios and locked termios
 * put back (tcsetattr, as CRIU's restore_tty_params). The window size is not: it belongs to the
 * terminal the job is now shown in. Session and process group: the task inherits criu's session,
 * and its own process group when it led one (src/restore/index.ts); when it was the terminal's
 * foreground group at dump, it is made the foreground group again (TIOCSPGRP) so that job control
 * goes on: reads and writes do not stop it with SIGTTIN/SIGTTOU, ^C and ^Z reach it. One such
 * terminal only (besides /dev/tty, the same one): CRIU's -j too migrates "a single external tty".
 *
 * Pty pairs the task owns (a /dev/ptmx master and its /dev/pts/N slaves: script(1), terminal
 * multiplexers), with or without -j. Restore opens /dev/ptmx until it hands out the dumped
 * index N (it gives the lowest free one), unlocks it, opens /dev/pts/N (without O_NOCTTY when it
 * was the controlling terminal of the task, a session leader then: it becomes that again), and
 * puts back termios, window size, packet mode, the lock and the foreground group. Whichever end
 * comes first opens the master. Not kept: data queued in the pty at dump (lost), a master opened
 * by another path than /dev/ptmx (/dev/pts/ptmx: reopened as /dev/ptmx); legacy BSD ptys are
 * refused.
 *
 * Kernel interfaces: ioctl(2) injected into the task: TCGETS2/TCSETS2, TIOCGLCKTRMIOS/
 * TIOCSLCKTRMIOS (setting needs CAP_SYS_ADMIN: the task is still root then), TIOCGWINSZ,
 * TIOCGEXCL, TIOCGSID and TIOCGPGRP (only answered for the caller's controlling terminal: hence
 * injected), TIOCSPGRP; for ptys TIOCGPTN, TIOCSPTLCK/TIOCGPTLCK, TIOCPKT/TIOCGPKT, TIOCSWINSZ,
 * TIOCSCTTY; "tty-index:" in /proc/PID/fdinfo of a master. Terminal majors:
 * include/uapi/linux/major.h.
 */

import { fstatSync, readdirSync, readFileSync, readlinkSync, constants as fsc } from 'node:fs';
import { ImageError, UnsupportedError, isErrno } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { O_NOCTTY } from '../kernel/constants.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import { log } from '../log.js';
import { devMajor, devMinor, kdev } from './dev.js';
import { setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import { AT_FDCWD, closeInTask, openInTask, reopenFlags, taskSyscallError } from './task-io.js';
import { FD_TYPES, type FdDumpInput, type FdKindModule, type FileOptions, type FileRestoreContext } from './types.js';
import { readStat } from '../proc/stat.js';

/** TtyType of proto/tty.proto. */
export const TTY_TYPE = { UNKNOWN: 0, PTY: 1, CONSOLE: 2, VT: 3, CTTY: 4, EXT_TTY: 5, SERIAL: 6 } as const;

/** ioctl(2) requests. uapi/asm-generic/ioctls.h. */
const TCGETS2 = 0x802c542an;
const TCSETS2 = 0x402c542bn;
const TIOCGLCKTRMIOS = 0x5456n;
const TIOCSLCKTRMIOS = 0x5457n;
const TIOCGWINSZ = 0x5413n;
const TIOCGEXCL = 0x80045440n;
const TIOCGSID = 0x5429n;
const TIOCGPGRP = 0x540fn;
const TIOCSPGRP = 0x5410n;

/** Kernel termios: c_cc has NCCS = 19 entries. */
const NCCS = 19;
/**
 * struct termios2 (uapi/asm-generic/termbits.h), 44 bytes; struct termios is its first 36:
 *
 *   0 c_iflag u32 | 4 c_oflag u32 | 8 c_cflag u32 | 12 c_lflag u32 | 16 c_line u8 |
 *   17 c_cc[19] u8 | 36 c_ispeed u32 | 40 c_ospeed u32
 */
const TERMIOS2_BYTES = 44;
const TERMIOS_BYTES = 36;

/** Major numbers of terminal character devices. */
const TTY_MAJOR = 4;
const TTYAUX_MAJOR = 5;
const PTY_MASTER_MAJOR = 2;
const UNIX98_PTY_MASTER_MAJOR = 128;
const UNIX98_PTY_SLAVE_MAJOR = 136;
const UNIX98_PTY_MAJOR_COUNT = 8;

type TtyRole = 'pty-slave' | 'pty-master' | 'ctty' | 'console' | 'vt' | 'serial';

/** What kind of terminal a tty rdev is. */
export function ttyRole(rdev: bigint): TtyRole {
  const major = devMajor(rdev);
  const minor = devMinor(rdev);
  if (major >= UNIX98_PTY_SLAVE_MAJOR && major < UNIX98_PTY_SLAVE_MAJOR + UNIX98_PTY_MAJOR_COUNT) return 'pty-slave';
  if (major >= UNIX98_PTY_MASTER_MAJOR && major < UNIX98_PTY_MASTER_MAJOR + UNIX98_PTY_MAJOR_COUNT) return 'pty-master';
  if (major === PTY_MASTER_MAJOR) return 'pty-master';
  if (major === TTYAUX_MAJOR) return minor === 0 ? 'ctty' : minor === 2 ? 'pty-master' : 'console';
  if (major === TTY_MAJOR && minor < 64) return 'vt';
  return 'serial';
}

const TYPE_OF_ROLE: Record<TtyRole, number> = {
  'pty-slave': TTY_TYPE.PTY,
  'pty-master': TTY_TYPE.PTY,
  ctty: TTY_TYPE.CTTY,
  console: TTY_TYPE.CONSOLE,
  vt: TTY_TYPE.VT,
  serial: TTY_TYPE.SERIAL,
};

function isTtyDevice(input: FdDumpInput): boolean {
  if ((Number(input.stat.mode) & fsc.S_IFMT) !== fsc.S_IFCHR) return false;
  const major = devMajor(input.stat.rdev);
  return (major >= 2 && major <= 5) || (major >= 128 && major <= 143);
}

/** termios2 bytes as a termios_entry. */
export function termiosEntry(buf: Buffer): ImageEntry {
  const cc: number[] = [];
  for (let i = 0; i < NCCS; i++) cc.push(buf.readUInt8(17 + i));
  return {
    c_iflag: buf.readUInt32LE(0),
    c_oflag: buf.readUInt32LE(4),
    c_cflag: buf.readUInt32LE(8),
    c_lflag: buf.readUInt32LE(12),
    c_line: buf.readUInt8(16),
    c_ispeed: buf.length >= TERMIOS2_BYTES ? buf.readUInt32LE(36) : 0,
    c_ospeed: buf.length >= TERMIOS2_BYTES ? buf.readUInt32LE(40) : 0,
    c_cc: cc,
  };
}

/** A termios_entry as termios2 bytes (or struct termios when `bytes` is 36). */
export function termiosBytes(e: ImageEntry, bytes = TERMIOS2_BYTES): Buffer {
  const buf = Buffer.alloc(bytes);
  buf.writeUInt32LE(Number(e['c_iflag']) >>> 0, 0);
  buf.writeUInt32LE(Number(e['c_oflag']) >>> 0, 4);
  buf.writeUInt32LE(Number(e['c_cflag']) >>> 0, 8);
  buf.writeUInt32LE(Number(e['c_lflag']) >>> 0, 12);
  buf.writeUInt8(Number(e['c_line']) & 0xff, 16);
  const cc = (e['c_cc'] as number[] | undefined) ?? [];
  for (let i = 0; i < NCCS; i++) buf.writeUInt8(Number(cc[i] ?? 0) & 0xff, 17 + i);
  if (bytes >= TERMIOS2_BYTES) {
    buf.writeUInt32LE(Number(e['c_ispeed'] ?? 0) >>> 0, 36);
    buf.writeUInt32LE(Number(e['c_ospeed'] ?? 0) >>> 0, 40);
  }
  return buf;
}

/** ioctl(fd, req, buf) in the task; returns the buffer as the kernel left it, or the -errno. */
function ioctlInTask(inj: Injector, fd: number, req: bigint, bytes: number, input?: Buffer): Buffer | bigint {
  const addr = inj.pushData(input ?? Buffer.alloc(bytes));
  const ret = inj.syscall(NR.ioctl, [BigInt(fd), req, addr]);
  if (ret < 0n && ret >= -4095n) return ret;
  return inj.readMemory(addr, bytes);
}

function ioctlOrThrow(inj: Injector, fd: number, req: bigint, bytes: number, name: string, input?: Buffer): Buffer {
  const got = ioctlInTask(inj, fd, req, bytes, input);
  if (typeof got === 'bigint') throw taskSyscallError('ioctl', got, [fd, name]);
  return got;
}

/** An int the task's ioctl wrote, or 0 when the terminal is not its controlling one (ENOTTY). */
function ioctlInt(inj: Injector, fd: number, req: bigint): number {
  const got = ioctlInTask(inj, fd, req, 4);
  return typeof got === 'bigint' ? 0 : got.readInt32LE(0);
}

function dumpTtyInfo(input: FdDumpInput, infoId: number, inj: Injector): ImageEntry {
  const { fd, stat } = input;
  const role = ttyRole(stat.rdev);
  const termios = ioctlOrThrow(inj, fd, TCGETS2, TERMIOS2_BYTES, 'TCGETS2');
  const locked = ioctlOrThrow(inj, fd, TIOCGLCKTRMIOS, TERMIOS_BYTES, 'TIOCGLCKTRMIOS');
  const winsize = ioctlOrThrow(inj, fd, TIOCGWINSZ, 8, 'TIOCGWINSZ');
  const info: ImageEntry = {
    id: infoId,
    type: TYPE_OF_ROLE[role],
    locked: false,
    exclusive: ioctlInt(inj, fd, TIOCGEXCL) !== 0,
    packet_mode: false,
    sid: ioctlInt(inj, fd, TIOCGSID),
    pgrp: ioctlInt(inj, fd, TIOCGPGRP),
    rdev: kdev(stat.rdev),
    termios: termiosEntry(termios),
    termios_locked: termiosEntry(locked),
    winsize: {
      ws_row: winsize.readUInt16LE(0),
      ws_col: winsize.readUInt16LE(2),
      ws_xpixel: winsize.readUInt16LE(4),
      ws_ypixel: winsize.readUInt16LE(6),
    },
  };
  if (role === 'pty-slave')
    info['pty'] = { index: (devMajor(stat.rdev) - UNIX98_PTY_SLAVE_MAJOR) * 256 + devMinor(stat.rdev) };
  info['dev'] = kdev(stat.dev);
  info['uid'] = Number(stat.uid);
  info['gid'] = Number(stat.gid);
  inj.resetScratch();
  return info;
}

/**
 * Refuse, before any process is created, a restore of a shell job's terminal without -j (the
 * terminals of pty pairs the task owns need none).
 */
export function checkTtyRestore(
  files: readonly ImageEntry[],
  infos: readonly ImageEntry[],
  options: FileOptions,
): void {
  if (options.isShellJob === true) return;
  for (const f of files) {
    if (Number(f['type']) !== FD_TYPES.TTY) continue;
    const infoId = Number((f['tty'] as ImageEntry | undefined)?.['tty_info_id']);
    const info = infos.find((i) => Number(i['id']) === infoId);
    if (info !== undefined && (isMasterInfo(info) || pairedMasterOf(info, infos) !== undefined)) continue;
    if (info !== undefined && isPtyCtty(info, infos)) continue;
    throw new UnsupportedError(
      'shell-job',
      `Cannot restore file ${String(f['id'])}: it is a terminal of a shell job; restore with --shell-job (-j)`,
    );
  }
}

/** The terminal shell-job fds are given on restore: criu's stdin. Throws when it is none. */
function criuTerminal(): string {
  const st = fstatSync(0, { bigint: true });
  if ((Number(st.mode) & fsc.S_IFMT) !== fsc.S_IFCHR || ttyRole(st.rdev) === 'pty-master' || !isTtyRdevNumber(st.rdev))
    throw new UnsupportedError(
      'shell-job',
      'Cannot restore a shell job: the stdin of criu restore is not a terminal (--shell-job gives the task the terminal criu runs in)',
    );
  return `/proc/${process.pid}/fd/0`;
}

function isTtyRdevNumber(rdev: bigint): boolean {
  const major = devMajor(rdev);
  return (major >= 2 && major <= 5) || (major >= 128 && major <= 143);
}

const TIOCGPTN = 0x80045430n;
const TIOCSPTLCK = 0x40045431n;
const TIOCGPKT = 0x80045438n;
const TIOCGPTLCK = 0x80045439n;
const TIOCPKT = 0x5420n;
const TIOCSWINSZ = 0x5414n;
const TIOCSCTTY = 0x540en;
const PTMX_RDEV_K = (TTYAUX_MAJOR << 20) | 2;

/** The pty index of a slave's device number (/dev/pts/N: N). */
function slaveIndexOf(rdev: bigint): number {
  return (devMajor(rdev) - UNIX98_PTY_SLAVE_MAJOR) * 256 + devMinor(rdev);
}

/** The pty index of a /dev/ptmx master ("tty-index:" in its fdinfo), or undefined. */
function masterIndexOf(input: FdDumpInput): number | undefined {
  const m = /^tty-index:\s*(\d+)$/m.exec(input.fdinfo.raw);
  return m === null ? undefined : Number(m[1]);
}

/**
 * Does the dump hold the master of pty `index` (then its slave is no shell's terminal): task
 * `pid`, or another process of the dumped tree (`options.treePids`)?
 */
function dumpHoldsMaster(pid: number, index: number, options: FileOptions): boolean {
  return (options.treePids ?? [pid]).some((p) => taskHoldsMaster(p, index));
}

function taskHoldsMaster(pid: number, index: number): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  for (const fd of fds) {
    try {
      if (!readlinkSync(`/proc/${pid}/fd/${fd}`).endsWith('ptmx')) continue;
      const m = /^tty-index:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
      if (m !== null && Number(m[1]) === index) return true;
    } catch {
      // closed meanwhile
    }
  }
  return false;
}

function isMasterInfo(info: ImageEntry): boolean {
  return Number(info['rdev']) === PTMX_RDEV_K && info['pty'] !== undefined;
}

/**
 * Is task `pid`'s controlling terminal (tty_nr of /proc/PID/stat) the slave of a pty whose master
 * the dump holds? Then its /dev/tty is that slave, which the restore makes its terminal again.
 */
function cttyIsDumpedPty(pid: number, options: FileOptions): boolean {
  const ttyNr = readStat(pid)?.tty_nr ?? 0;
  if (ttyNr <= 0) return false;
  const rdev = BigInt(ttyNr);
  return ttyRole(rdev) === 'pty-slave' && dumpHoldsMaster(pid, slaveIndexOf(rdev), options);
}

/** /dev/tty, when the dump holds a pty master: the controlling terminal is that pty's slave. */
function isPtyCtty(info: ImageEntry, infos: readonly ImageEntry[]): boolean {
  return Number(info['type']) === TTY_TYPE.CTTY && infos.some(isMasterInfo);
}

/** /dev/tty opened in the task, whose controlling terminal is set again by now. */
function openCtty(tty: ImageEntry, ctx: FileRestoreContext): number {
  const inj = ctx.injector;
  let fd: number;
  try {
    fd = openInTask(inj, '/dev/tty', Number(tty['flags']));
  } catch (err) {
    // ENXIO: the task has no controlling terminal.
    if (isErrno(err, 'ENXIO'))
      throw new UnsupportedError(
        'ctty',
        `Cannot restore /dev/tty of task ${ctx.pid}: its controlling terminal (a pty of the dump) is not back yet`,
        { cause: err },
      );
    throw err;
  } finally {
    inj.resetScratch();
  }
  try {
    restoreFown(inj, fd, tty['fown'] as ImageEntry | undefined);
  } catch (err) {
    closeInTask(inj, fd);
    throw err;
  }
  return fd;
}

/** The master's info of a pty slave's info, when the task held both ends. */
function pairedMasterOf(info: ImageEntry, infos: readonly ImageEntry[]): ImageEntry | undefined {
  const index = (info['pty'] as ImageEntry | undefined)?.['index'];
  if (index === undefined || isMasterInfo(info)) return undefined;
  return infos.find((i) => isMasterInfo(i) && (i['pty'] as ImageEntry)['index'] === index);
}

/**
 * The master of pty `index`, opened in the task: /dev/ptmx hands out the lowest free index, so
 * it is opened until it gives `index`, the others closed again. Shared by the master's restore
 * and its slaves' (whichever comes first: the slave needs the pty to exist).
 */
function ptyMaster(ctx: FileRestoreContext, index: number, flags: number): number | undefined {
  const placed = (ctx.shared.get('tty.mastersPlaced') as Set<number> | undefined) ?? new Set<number>();
  ctx.shared.set('tty.mastersPlaced', placed);
  if (placed.has(index)) return undefined;
  const pending = (ctx.shared.get('tty.masters') as Map<number, number> | undefined) ?? new Map<number, number>();
  ctx.shared.set('tty.masters', pending);
  const known = pending.get(index);
  if (known !== undefined) return known;
  // In a tree, another process may have made the pty already (its master, or for its slaves).
  if (ctx.tree !== undefined && treeMasters(ctx.tree.shared).has(index)) return undefined;
  const inj = ctx.injector;
  const extra: number[] = [];
  try {
    for (;;) {
      const ret = inj.syscall(NR.openat, [
        AT_FDCWD,
        inj.pushData(Buffer.from('/dev/ptmx\0')),
        BigInt(reopenFlags(flags) | O_NOCTTY),
        0n,
      ]);
      if (ret < 0n && ret >= -4095n) throw taskSyscallError('openat', ret, ['"/dev/ptmx"']);
      const fd = Number(ret);
      const got = ioctlOrThrow(inj, fd, TIOCGPTN, 4, 'TIOCGPTN').readUInt32LE(0);
      inj.resetScratch();
      if (got === index) {
        const unlock = Buffer.alloc(4);
        ioctlOrThrow(inj, fd, TIOCSPTLCK, 4, 'TIOCSPTLCK', unlock);
        inj.resetScratch();
        // Kept above the fd table until its own entry (or finishRestore) claims it.
        const parked = ctx.parkFd(fd);
        pending.set(index, parked);
        if (ctx.tree !== undefined) treeMasters(ctx.tree.shared).set(index, { pid: ctx.pid, fd: parked });
        return parked;
      }
      extra.push(fd);
      if (got > index || extra.length > 4096)
        throw new UnsupportedError('pty-index', `Cannot restore pty ${index}: the index is taken (got ${got})`);
    }
  } finally {
    for (const fd of extra) closeInTask(inj, fd);
  }
}

/**
 * In a tree: the ptys made so far, by index: where the master is open (the process that made it
 * for its slaves, its fd parked there; or the one whose master it is, `fd` -1 then).
 */
function treeMasters(shared: Map<string, unknown>): Map<number, { pid: number; fd: number }> {
  let m = shared.get('tty.treeMasters') as Map<number, { pid: number; fd: number }> | undefined;
  if (m === undefined) {
    m = new Map();
    shared.set('tty.treeMasters', m);
  }
  return m;
}

async function restoreMaster(tty: ImageEntry, info: ImageEntry, ctx: FileRestoreContext): Promise<number> {
  const inj = ctx.injector;
  const index = Number((info['pty'] as ImageEntry)['index']);
  // Made by another process of the tree for its slaves: the master is taken from there.
  const elsewhere = ctx.tree === undefined ? undefined : treeMasters(ctx.tree.shared).get(index);
  const fd =
    elsewhere !== undefined && elsewhere.pid !== ctx.pid && elsewhere.fd >= 0 && ctx.tree !== undefined
      ? ctx.tree.takeFrom(elsewhere.pid, elsewhere.fd)
      : ptyMaster(ctx, index, Number(tty['flags']));
  if (fd === undefined) throw new ImageError('tty-info.img', `pty ${index} has two masters`);
  if (ctx.tree !== undefined) treeMasters(ctx.tree.shared).set(index, { pid: ctx.pid, fd: -1 });
  ctx.shared.set('tty.masters', ctx.shared.get('tty.masters') ?? new Map<number, number>());
  ctx.shared.set('tty.mastersPlaced', ctx.shared.get('tty.mastersPlaced') ?? new Set<number>());
  (ctx.shared.get('tty.masters') as Map<number, number>).delete(index);
  (ctx.shared.get('tty.mastersPlaced') as Set<number>).add(index);
  // Opened for a slave first maybe, without the master's own status flags.
  setStatusFlagsInTask(inj, fd, Number(tty['flags']), 0);
  const word = (v: boolean): Buffer => Buffer.from([v ? 1 : 0, 0, 0, 0]);
  if (info['packet_mode'] === true) ioctlOrThrow(inj, fd, TIOCPKT, 4, 'TIOCPKT', word(true));
  // The lock is set back once every slave of the pty is open (finishRestore).
  if (info['locked'] === true) ctx.shared.set(`tty.relock.${index}`, Number(tty['id']));
  restoreFown(inj, fd, tty['fown'] as ImageEntry | undefined);
  inj.resetScratch();
  return fd;
}

async function restorePairedSlave(tty: ImageEntry, info: ImageEntry, ctx: FileRestoreContext): Promise<number> {
  const inj = ctx.injector;
  const index = Number((info['pty'] as ImageEntry)['index']);
  ptyMaster(ctx, index, 2 /* O_RDWR */);
  // The task's controlling terminal when it led the session owning it: opened without
  // O_NOCTTY by the (new) session leader, it becomes that again.
  const infos = (await ctx.entriesOf('TTY_INFO')).map((e) => e.entry);
  const master = pairedMasterOf(info, infos);
  const session =
    master === undefined ? { sid: Number(info['sid']), pgrp: Number(info['pgrp']) } : ptySession(info, master);
  const isCtty = session.sid === ctx.pid;
  const path = `/dev/pts/${index}`;
  const flags = reopenFlags(Number(tty['flags'])) | (isCtty ? 0 : O_NOCTTY);
  const ret = inj.syscall(NR.openat, [AT_FDCWD, inj.pushData(Buffer.from(`${path}\0`)), BigInt(flags), 0n]);
  if (ret < 0n && ret >= -4095n) throw taskSyscallError('openat', ret, [`"${path}"`, `0${flags.toString(8)}`]);
  const fd = Number(ret);
  try {
    const done = (ctx.shared.get('tty.paramsSet') as Set<number> | undefined) ?? new Set<number>();
    ctx.shared.set('tty.paramsSet', done);
    const infoId = Number(info['id']);
    if (!done.has(infoId)) {
      done.add(infoId);
      if (isCtty) ioctlInTask(inj, fd, TIOCSCTTY, 0); // already so, unless opened O_NOCTTY before
      restoreTtyParams(inj, fd, info);
      const ws = info['winsize'] as ImageEntry | undefined;
      if (ws !== undefined) {
        const buf = Buffer.alloc(8);
        buf.writeUInt16LE(Number(ws['ws_row']), 0);
        buf.writeUInt16LE(Number(ws['ws_col']), 2);
        buf.writeUInt16LE(Number(ws['ws_xpixel']), 4);
        buf.writeUInt16LE(Number(ws['ws_ypixel']), 6);
        ioctlOrThrow(inj, fd, TIOCSWINSZ, 8, 'TIOCSWINSZ', buf);
      }
      // Its foreground group: this process's, or (in a tree) another's of its session.
      const { pgrp } = session;
      if (isCtty && (pgrp === ctx.pid || (ctx.tree !== undefined && pgrp > 0)))
        ctx.shared.set('tty.foreground', { fileId: Number(tty['id']), pgrp });
    }
    restoreFown(inj, fd, tty['fown'] as ImageEntry | undefined);
  } catch (err) {
    closeInTask(inj, fd);
    throw err;
  }
  inj.resetScratch();
  return fd;
}

interface ForegroundWish {
  fileId: number;
  pgrp: number;
}

export const ttyFile: FdKindModule = {
  type: FD_TYPES.TTY,
  name: 'tty',
  restoreOrder: 0,

  matches: isTtyDevice,

  refusal(input, options) {
    const where = `Cannot dump fd ${input.fd} of task ${input.pid}`;
    const role = ttyRole(input.stat.rdev);
    if (role === 'pty-master')
      return masterIndexOf(input) === undefined
        ? `${where}: pty master ${input.link} is not supported (a legacy BSD pty)`
        : undefined;
    if (role === 'pty-slave' && dumpHoldsMaster(input.pid, slaveIndexOf(input.stat.rdev), options)) return undefined;
    if (role === 'ctty' && cttyIsDumpedPty(input.pid, options)) return undefined;
    if (options.isShellJob !== true)
      return `${where}: terminal ${input.link} is not supported without --shell-job (-j)`;
    return undefined;
  },

  async dump(input, id, ctx) {
    const infos = (ctx.shared.get('tty.infoByKey') as Map<string, number> | undefined) ?? new Map<string, number>();
    ctx.shared.set('tty.infoByKey', infos);
    const role = ttyRole(input.stat.rdev);
    const masterIndex = role === 'pty-master' ? masterIndexOf(input) : undefined;
    const isPaired =
      masterIndex !== undefined ||
      (role === 'pty-slave' && dumpHoldsMaster(input.pid, slaveIndexOf(input.stat.rdev), ctx.options ?? {}));
    // Masters all have /dev/ptmx's device number: they are told apart by their pty index.
    const key = masterIndex !== undefined ? `master:${masterIndex}` : `rdev:${input.stat.rdev}`;
    let infoId = infos.get(key);
    if (infoId === undefined) {
      if (!isPaired && role !== 'ctty') {
        // All of them become criu's one terminal on restore: a second terminal (other than
        // /dev/tty, which names the same one) would silently merge into the first.
        const externals = (ctx.shared.get('tty.externals') as Set<bigint> | undefined) ?? new Set<bigint>();
        ctx.shared.set('tty.externals', externals);
        const other = [...externals][0];
        if (other !== undefined)
          throw new UnsupportedError(
            'shell-job',
            `Cannot dump fd ${input.fd} of task ${input.pid}: terminal ${input.link} is a second terminal (device ${devMajor(input.stat.rdev)}:${devMinor(input.stat.rdev)} besides ${devMajor(other)}:${devMinor(other)}); --shell-job takes one`,
          );
        externals.add(input.stat.rdev);
      }
      infoId = infos.size + 1;
      infos.set(key, infoId);
      const info = dumpTtyInfo(input, infoId, ctx.injector);
      if (masterIndex !== undefined) {
        info['pty'] = { index: masterIndex };
        info['packet_mode'] = ioctlInt(ctx.injector, input.fd, TIOCGPKT) !== 0;
        info['locked'] = ioctlInt(ctx.injector, input.fd, TIOCGPTLCK) !== 0;
        ctx.injector.resetScratch();
      }
      await ctx.addEntry('TTY_INFO', info);
    }
    const tty: ImageEntry = {
      id,
      tty_info_id: infoId,
      flags: reopenFlags(input.fdinfo.flags),
      fown: dumpFown(input, ctx),
    };
    return { type: FD_TYPES.TTY, id, tty };
  },

  async restore(entry, ctx) {
    const tty = entry['tty'] as ImageEntry | undefined;
    if (tty === undefined)
      throw new ImageError('files.img', `file ${String(entry['id'])} of type TTY has no tty entry`);
    const fileId = Number(tty['id']);
    const infoId = Number(tty['tty_info_id']);
    const info = (await ctx.entriesOf('TTY_INFO')).find((e) => Number(e.entry['id']) === infoId)?.entry;
    if (info === undefined) throw new ImageError('tty-info.img', `tty info ${infoId} of tty file ${fileId} is missing`);
    const inj = ctx.injector;
    const infos = (await ctx.entriesOf('TTY_INFO')).map((e) => e.entry);
    if (isMasterInfo(info)) return restoreMaster(tty, info, ctx);
    if (pairedMasterOf(info, infos) !== undefined) return restorePairedSlave(tty, info, ctx);
    // /dev/tty of a task whose controlling terminal is a pty of the dump (restored by now: the
    // session leader's slave, opened or made its terminal again, comes first): /dev/tty again.
    if (ctx.options?.isShellJob !== true && isPtyCtty(info, infos)) return openCtty(tty, ctx);
    checkTtyRestore([entry], infos, ctx.options ?? {});
    const path = criuTerminal();
    const flags = reopenFlags(Number(tty['flags'])) | O_NOCTTY;
    const ret = inj.syscall(NR.openat, [AT_FDCWD, inj.pushData(Buffer.from(`${path}\0`)), BigInt(flags), 0n]);
    if (ret < 0n && ret >= -4095n) throw taskSyscallError('openat', ret, [`"${path}"`, `0${flags.toString(8)}`]);
    const fd = Number(ret);
    try {
      const done = (ctx.shared.get('tty.paramsSet') as Set<number> | undefined) ?? new Set<number>();
      ctx.shared.set('tty.paramsSet', done);
      if (!done.has(infoId)) {
        done.add(infoId);
        restoreTtyParams(inj, fd, info);
        // The foreground group is set once the whole fd table is there (finishRestore).
        if (Number(info['pgrp']) === ctx.pid) ctx.shared.set('tty.foreground', { fileId, pgrp: ctx.pid });
      }
      restoreFown(inj, fd, tty['fown'] as ImageEntry | undefined);
    } catch (err) {
      closeInTask(inj, fd);
      throw err;
    }
    return fd;
  },

  async finishRestore(ctx: FileRestoreContext) {
    // A master opened for its slaves only (the task did not hold it: impossible from a dump, but
    // an image may say so) is closed; locks are set back.
    const pending = ctx.shared.get('tty.masters') as Map<number, number> | undefined;
    for (const fd of pending?.values() ?? []) closeInTask(ctx.injector, fd);
    pending?.clear();
    for (const [key, fileId] of ctx.shared) {
      if (!key.startsWith('tty.relock.')) continue;
      const fd = ctx.fdOfFileId(fileId as number);
      if (fd !== undefined) ioctlInTask(ctx.injector, fd, TIOCSPTLCK, 4, Buffer.from([1, 0, 0, 0]));
    }
    ctx.injector.resetScratch();
    if (ctx.tree !== undefined) await restoreTreeCtty(ctx);
    const wish = ctx.shared.get('tty.foreground') as ForegroundWish | undefined;
    if (wish === undefined) return;
    const fd = ctx.fdOfFileId(wish.fileId);
    if (fd === undefined) return;
    const pgrp = Buffer.alloc(4);
    pgrp.writeInt32LE(wish.pgrp, 0);
    // Fails (ENOTTY, EPERM) when criu's terminal is not the controlling terminal of the session
    // the task now belongs to: then there is no job control to give back.
    const got = ioctlInTask(ctx.injector, fd, TIOCSPGRP, 4, pgrp);
    if (typeof got === 'bigint')
      log().warn(`Cannot make task ${ctx.pid} the foreground job of its terminal: ioctl(TIOCSPGRP) failed (${got})`);
    ctx.injector.resetScratch();
  },
};

/**
 * In a tree, a session leader may hold its controlling terminal by a description another
 * process restored (inherited across fork, as script(1)'s child has its slave): taken over, not
 * opened, it did not become the controlling terminal on open. TIOCSCTTY makes it so, and its
 * foreground group is set with the others' (finishRestore).
 */
async function restoreTreeCtty(ctx: FileRestoreContext): Promise<void> {
  const infos = (await ctx.entriesOf('TTY_INFO')).map((e) => e.entry);
  for (const { entry } of await ctx.entriesOf('FILES')) {
    if (Number(entry['type']) !== FD_TYPES.TTY) continue;
    const tty = entry['tty'] as ImageEntry | undefined;
    const info = infos.find((i) => Number(i['id']) === Number(tty?.['tty_info_id']));
    const master = info === undefined ? undefined : pairedMasterOf(info, infos);
    if (info === undefined || master === undefined || ptySession(info, master).sid !== ctx.pid) continue;
    const fd = ctx.fdOfFileId(Number(entry['id']));
    if (fd === undefined) continue;
    const got = ioctlInTask(ctx.injector, fd, TIOCSCTTY, 0);
    if (typeof got === 'bigint')
      log().warn(
        `Cannot make pty ${String((info['pty'] as ImageEntry)['index'])} the terminal of session ${ctx.pid}: ${got}`,
      );
    const { pgrp } = ptySession(info, master);
    if (pgrp > 0 && !ctx.shared.has('tty.foreground'))
      ctx.shared.set('tty.foreground', { fileId: Number(entry['id']), pgrp });
    ctx.injector.resetScratch();
    return;
  }
}

/**
 * The session a pty is the controlling terminal of, and its foreground group: as the slave's
 * info says, or, when the slave was dumped from a process outside that session (which the
 * kernel does not tell), as its master's does (TIOCGSID and TIOCGPGRP answer on a master).
 */
function ptySession(slave: ImageEntry, master: ImageEntry): { sid: number; pgrp: number } {
  const sid = Number(slave['sid'] ?? 0);
  return sid !== 0
    ? { sid, pgrp: Number(slave['pgrp'] ?? 0) }
    : { sid: Number(master['sid'] ?? 0), pgrp: Number(master['pgrp'] ?? 0) };
}

/** tcsetattr and the locked termios, as dumped. */
function restoreTtyParams(inj: Injector, fd: number, info: ImageEntry): void {
  const locked = info['termios_locked'] as ImageEntry | undefined;
  if (locked !== undefined)
    ioctlOrThrow(inj, fd, TIOCSLCKTRMIOS, TERMIOS_BYTES, 'TIOCSLCKTRMIOS', termiosBytes(locked, TERMIOS_BYTES));
  const termios = info['termios'] as ImageEntry | undefined;
  if (termios !== undefined) ioctlOrThrow(inj, fd, TCSETS2, TERMIOS2_BYTES, 'TCSETS2', termiosBytes(termios));
}
