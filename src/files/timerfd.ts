/**
 * timerfd (fd kind TIMERFD): file_entry { type: TIMERFD, id, tfd: { id, flags, fown, clockid,
 * ticks, settime_flags, vsec, vnsec (time left), isec, insec (interval) } }.
 *
 * Dump reads /proc/PID/fdinfo/FD (fs/timerfd.c timerfd_show, kernel 4.1+):
 *
 *   clockid: 1
 *   ticks: 0                     expirations not read yet
 *   settime flags: 00            octal: TFD_TIMER_ABSTIME 1, TFD_TIMER_CANCEL_ON_SET 2
 *   it_value: (99, 404666400)    time left until the next expiry, relative, even for ABSTIME
 *   it_interval: (1, 0)
 *
 * Restore inside the task: timerfd_create(clockid, TFD_NONBLOCK as recorded), timerfd_settime
 * with the time left (relative; with TFD_TIMER_ABSTIME recorded, the task's clock_gettime of that
 * clock plus the time left, so the flag and CANCEL_ON_SET keep their meaning), then the unread
 * expirations with ioctl(TFD_IOC_SET_TICKS) as CRIU does. A periodic timer with no time left and
 * expirations not read (the kernel restarts it on the read) is armed one interval ahead; with no
 * expirations it was disarmed, and is set so, its interval kept (fdinfo shows it).
 */

import type { ImageEntry } from '../images/index.js';
import { O_NONBLOCK } from '../kernel/constants.js';
import { fdInfoLines } from '../proc/fdinfo.js';
import { descriptionFlags, setStatusFlagsInTask } from './file-flags.js';
import { dumpFown, restoreFown } from './fown.js';
import { FD_TYPES, type FdInfo, type FdKindModule } from './types.js';

/** timerfd_settime(2) flag. uapi/linux/timerfd.h. */
export const TFD_TIMER_ABSTIME = 1;
/** _IOW('T', 0, __u64). uapi/linux/timerfd.h. */
export const TFD_IOC_SET_TICKS = 0x40085400n;

const NSEC_PER_SEC = 1_000_000_000n;

export interface TimerfdState {
  clockid: number;
  ticks: bigint;
  settimeFlags: number;
  valueSec: bigint;
  valueNsec: bigint;
  intervalSec: bigint;
  intervalNsec: bigint;
}

/** The timer's state from a timerfd's fdinfo. */
export function parseTimerfdInfo(info: FdInfo): TimerfdState {
  const one = (key: string): string => {
    const v = fdInfoLines(info, key)[0];
    if (v === undefined) throw new Error(`No "${key}" in the fdinfo of a timerfd`);
    return v;
  };
  const pair = (key: string): [bigint, bigint] => {
    const m = /^\((\d+),\s*(\d+)\)$/.exec(one(key));
    if (m === null) throw new Error(`Cannot parse "${key}" in the fdinfo of a timerfd`);
    return [BigInt(m[1] as string), BigInt(m[2] as string)];
  };
  const [valueSec, valueNsec] = pair('it_value');
  const [intervalSec, intervalNsec] = pair('it_interval');
  return {
    clockid: Number(one('clockid')),
    ticks: BigInt(one('ticks')),
    settimeFlags: parseInt(one('settime flags'), 8),
    valueSec,
    valueNsec,
    intervalSec,
    intervalNsec,
  };
}

/** struct itimerspec: interval then value, each {i64 sec, i64 nsec}. */
function itimerspec(intervalNs: bigint, valueNs: bigint): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigInt64LE(intervalNs / NSEC_PER_SEC, 0);
  b.writeBigInt64LE(intervalNs % NSEC_PER_SEC, 8);
  b.writeBigInt64LE(valueNs / NSEC_PER_SEC, 16);
  b.writeBigInt64LE(valueNs % NSEC_PER_SEC, 24);
  return b;
}

const big = (v: unknown): bigint => BigInt((v ?? 0) as bigint | number);

export const timerfdFile: FdKindModule = {
  type: FD_TYPES.TIMERFD,
  name: 'timerfd',
  restoreOrder: 10,

  matches(input) {
    return input.link === 'anon_inode:[timerfd]';
  },

  async dump(input, id, ctx) {
    const s = parseTimerfdInfo(input.fdinfo);
    return {
      type: FD_TYPES.TIMERFD,
      id,
      tfd: {
        id,
        flags: descriptionFlags(input.fdinfo.flags),
        fown: dumpFown(input, ctx),
        clockid: s.clockid,
        ticks: s.ticks,
        settime_flags: s.settimeFlags,
        vsec: s.valueSec,
        vnsec: s.valueNsec,
        isec: s.intervalSec,
        insec: s.intervalNsec,
      },
    };
  },

  async restore(entry, ctx) {
    const tfd = entry['tfd'] as ImageEntry;
    const flags = Number(tfd['flags'] ?? 0);
    const clockid = Number(tfd['clockid']);
    const settimeFlags = Number(tfd['settime_flags'] ?? 0);
    const { injector } = ctx;
    const createFlags = flags & O_NONBLOCK;
    const fd = Number(injector.syscallOrThrow('timerfd_create', [BigInt(clockid), BigInt(createFlags)]));
    const intervalNs = big(tfd['isec']) * NSEC_PER_SEC + big(tfd['insec']);
    const ticks = big(tfd['ticks']);
    let valueNs = big(tfd['vsec']) * NSEC_PER_SEC + big(tfd['vnsec']);
    // A periodic timer that expired and was not read since has no time left: the kernel restarts
    // it on the read. Armed one interval ahead, it ticks on (its unread expirations are set
    // below). Without expirations, no time left means disarmed, with its interval kept.
    if (valueNs === 0n && intervalNs !== 0n && ticks !== 0n) valueNs = intervalNs;
    if (valueNs !== 0n && settimeFlags & TFD_TIMER_ABSTIME) {
      const now = injector.pushData(Buffer.alloc(16));
      injector.syscallOrThrow('clock_gettime', [BigInt(clockid), now]);
      const ts = injector.readMemory(now, 16);
      valueNs += ts.readBigInt64LE(0) * NSEC_PER_SEC + ts.readBigInt64LE(8);
    }
    if (valueNs !== 0n || intervalNs !== 0n) {
      const its = injector.pushData(itimerspec(intervalNs, valueNs));
      injector.syscallOrThrow('timerfd_settime', [BigInt(fd), BigInt(settimeFlags), its, 0n]);
    }
    if (ticks !== 0n) {
      const buf = Buffer.alloc(8);
      buf.writeBigUInt64LE(ticks);
      injector.syscallOrThrow('ioctl', [BigInt(fd), TFD_IOC_SET_TICKS, injector.pushData(buf)]);
    }
    setStatusFlagsInTask(injector, fd, flags, createFlags);
    restoreFown(injector, fd, tfd['fown'] as ImageEntry | undefined);
    return fd;
  },
};
