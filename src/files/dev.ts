/**
 * Device numbers: the userspace dev_t of stat(2) (glibc's encoding) split into major and minor,
 * and CRIU's kernel encoding of image fields marked `(criu).dev` (MKKDEV: major << 20 | minor).
 */

/** Major number of a userspace dev_t: bits 8-19, and 44-63 for the high part. */
export function devMajor(dev: bigint): number {
  return Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n));
}

/** Minor number of a userspace dev_t: bits 0-7, and 20-43 for the high part. */
export function devMinor(dev: bigint): number {
  return Number((dev & 0xffn) | ((dev >> 12n) & 0xffffff00n));
}

/** CRIU's kernel dev encoding (criu/include/kerndat.h MKKDEV) of a userspace dev_t. */
export function kdev(dev: bigint): number {
  return ((devMajor(dev) << 20) | devMinor(dev)) >>> 0;
}
