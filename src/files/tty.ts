/**
 * The TTY fd kind: terminals, for shell jobs (-j/--shell-job), as CRIU writes them:
 * `file_entry {type TTY, id, tty: tty_file_entry {id, tty_info_id, flags, fown}}` in files.img,
 * and one `tty_info_entry` per terminal in tty-info.img:
 *
 *   tty_info_entry { id, type (PTY, CTTY, CONSOLE, VT, SERIAL), locked, exclusive, packet_mode,
 *                    sid and pgrp (the terminal's session and foreground process group, as the
 *                    task saw them; 0 when it is not the task's controlling terminal), rdev and
 *                    dev (CRIU's kernel encoding), termios, termios_locked, winsize,
 *                    pty {index} for a pty slave, uid, gid }
 *
 * Without -j a terminal fd is refused before the task is frozen. With -j the terminal is the
 * shell's, not the task's: it is recorded as above, and on restore the task gets the terminal of
 * `criu restore` instead (criu's stdin, opened in the task through /proc/CRIU/fd/0 with the
 * dumped flags and O_NOCTTY), with the dumped termios and locked termios put back (tcsetattr, as
 * CRIU's restore_tty_params). The window size is not: it belongs to the terminal the job is now
 * shown in. Session and process group: the task inherits criu's session, and its own process
 * group when it led one (src/restore/index.ts); when it was the terminal's foreground group at
 * dump, it is made the foreground group again (TIOCSPGRP) so that job control goes on: reads
 * and writes do not stop it with SIGTTIN/SIGTTOU, ^C and ^Z reach it.
 *
 * Pty masters (a task owning both ends of a pty pair) are refused, with or without -j.
 *
 * Kernel interfaces: ioctl(2) injected into the task: TCGETS2/TCSETS2, TIOCGLCKTRMIOS/
 * TIOCSLCKTRMIOS (setting needs CAP_SYS_ADMIN: the task is still root then), TIOCGWINSZ,
 * TIOCGEXCL, TIOCGSID and TIOCGPGRP (only answered for the caller's controlling terminal: hence
 * injected), TIOCSPGRP. Terminal majors: include/uapi/linux/major.h.
 */

import { fstatSync, constants as fsc } from 'node:fs';
import { ImageError, UnsupportedError } from '../errors.js';
import type { ImageEntry } from '../images/index.js';
import type { Injector } from '../inject/injector.js';
import { O_NOCTTY } from '../kernel/constants.js';
import { SYSCALLS_X86_64 as NR } from '../kernel/syscalls.js';
import { log } from '../log.js';
import { devMajor, devMinor, kdev } from './dev.js';
import { dumpFown, restoreFown } from './fown.js';
import { AT_FDCWD, closeInTask, reopenFlags, taskSyscallError } from './task-io.js';
import { FD_TYPES, type FdDumpInput, type FdKindModule, type FileOptions, type FileRestoreContext } from './types.js';

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

/** Refuse, before any process is created, a restore of terminals without -j. */
export function checkTtyRestore(files: readonly ImageEntry[], options: FileOptions): void {
  const tty = files.find((f) => Number(f['type']) === FD_TYPES.TTY);
  if (tty !== undefined && options.isShellJob !== true)
    throw new UnsupportedError(
      'shell-job',
      `Cannot restore file ${String(tty['id'])}: it is a terminal of a shell job; restore with --shell-job (-j)`,
    );
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
    if (ttyRole(input.stat.rdev) === 'pty-master')
      return `${where}: pty master ${input.link} is not supported (the task owns a pty pair)`;
    if (options.isShellJob !== true)
      return `${where}: terminal ${input.link} is not supported without --shell-job (-j)`;
    return undefined;
  },

  async dump(input, id, ctx) {
    const infos = (ctx.shared.get('tty.infoByRdev') as Map<bigint, number> | undefined) ?? new Map<bigint, number>();
    ctx.shared.set('tty.infoByRdev', infos);
    let infoId = infos.get(input.stat.rdev);
    if (infoId === undefined) {
      infoId = infos.size + 1;
      infos.set(input.stat.rdev, infoId);
      await ctx.addEntry('TTY_INFO', dumpTtyInfo(input, infoId, ctx.injector));
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
    checkTtyRestore([entry], ctx.options ?? {});
    const fileId = Number(tty['id']);
    const infoId = Number(tty['tty_info_id']);
    const info = (await ctx.entriesOf('TTY_INFO')).find((e) => Number(e.entry['id']) === infoId)?.entry;
    if (info === undefined) throw new ImageError('tty-info.img', `tty info ${infoId} of tty file ${fileId} is missing`);
    const inj = ctx.injector;
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

/** tcsetattr and the locked termios, as dumped. */
function restoreTtyParams(inj: Injector, fd: number, info: ImageEntry): void {
  const locked = info['termios_locked'] as ImageEntry | undefined;
  if (locked !== undefined)
    ioctlOrThrow(inj, fd, TIOCSLCKTRMIOS, TERMIOS_BYTES, 'TIOCSLCKTRMIOS', termiosBytes(locked, TERMIOS_BYTES));
  const termios = info['termios'] as ImageEntry | undefined;
  if (termios !== undefined) ioctlOrThrow(inj, fd, TCSETS2, TERMIOS2_BYTES, 'TCSETS2', termiosBytes(termios));
}
