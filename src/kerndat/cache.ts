/**
 * The kerndat cache: what probeKernel found, kept in a file so that the later criu-ts commands of
 * the same boot do not probe again. Probing starts two child processes and traces one (45-50 ms
 * of a `criu pre-dump` here); CRIU keeps its own kerndat in /run/criu.kdat for the same reason.
 *
 * File: /run/criu-ts/kerndat.json (directory 0700, file 0600, written atomically), or the path in
 * CRIU_TS_KERNDAT_CACHE; CRIU_TS_KERNDAT_CACHE=0 neither reads nor writes one. It is used only when
 * everything the probes depend on is as it was:
 *
 *   format     CACHE_FORMAT below, raised whenever a probe or the Kerndat shape changes
 *   bootId     /proc/sys/kernel/random/boot_id: a reboot (or another kernel) probes again
 *   release    the kernel release (uname -r)
 *   euid       the effective uid, and
 *   capEff     the effective capabilities: what a probe may do depends on them
 *
 * and only when the file belongs to this euid and no one else may write it. Anything else (a
 * missing, unreadable, foreign or malformed file) means probing again and rewriting the file. A
 * sysctl changed since (vm.unprivileged_userfaultfd, kernel.yama.ptrace_scope) is not seen until
 * `criu check`, which always probes and rewrites the file.
 */

import { lstatSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import path from 'node:path';
import { describeError } from '../errors.js';
import { log } from '../log.js';
import { capabilitiesOf, parseCapEff, type Capabilities } from './caps.js';
import type { Kerndat } from './index.js';
import type { ProbeResult } from './probes.js';
import { VDSO_AREA_NAMES, type VdsoArea, type VdsoLayout } from './vdso.js';

export const DEFAULT_KERNDAT_CACHE = '/run/criu-ts/kerndat.json';
const CACHE_FORMAT = 1;

/** The cache file to use, or null when caching is off. */
export function kerndatCachePath(): string | null {
  const v = process.env['CRIU_TS_KERNDAT_CACHE'];
  if (v === undefined || v === '') return DEFAULT_KERNDAT_CACHE;
  return v === '0' ? null : v;
}

/** What a cached kerndat must have been probed under to be used now. */
export interface CacheKey {
  format: number;
  bootId: string;
  release: string;
  euid: number;
  capEff: string;
}

/** This process's key, or null when it cannot be told (then nothing is cached). */
export function currentCacheKey(): CacheKey | null {
  try {
    return {
      format: CACHE_FORMAT,
      bootId: readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
      release: release(),
      euid: process.geteuid?.() ?? -1,
      capEff: parseCapEff(readFileSync('/proc/self/status', 'utf8')).toString(16),
    };
  } catch {
    return null;
  }
}

const hex = (v: bigint): string => v.toString(16);

/** The file's text for `kd` probed under `key`. */
export function encodeKerndat(kd: Kerndat, key: CacheKey): string {
  return `${JSON.stringify({
    key,
    kerndat: {
      ...kd,
      uffdFeatures: kd.uffdFeatures === null ? null : hex(kd.uffdFeatures),
      vdso:
        kd.vdso === null ? null : { areas: kd.vdso.areas.map((a) => ({ ...a, start: hex(a.start), end: hex(a.end) })) },
      caps: kd.caps === null ? null : hex(kd.caps.effective),
    },
  })}\n`;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const isHex = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{1,16}$/.test(v);
const big = (v: string): bigint => BigInt(`0x${v}`);

function decodeProbe(v: unknown): ProbeResult | null {
  if (!isObj(v)) return null;
  const { id, title, isRequired, isOk, detail } = v;
  if (typeof id !== 'string' || typeof title !== 'string' || typeof detail !== 'string') return null;
  if (typeof isRequired !== 'boolean' || typeof isOk !== 'boolean') return null;
  return { id: id as ProbeResult['id'], title, isRequired, isOk, detail };
}

function decodeVdso(v: unknown): VdsoLayout | null | undefined {
  if (v === null) return null;
  if (!isObj(v) || !Array.isArray(v['areas'])) return undefined;
  const areas: VdsoArea[] = [];
  for (const a of v['areas'] as unknown[]) {
    if (!isObj(a) || !isHex(a['start']) || !isHex(a['end']) || typeof a['sizeBytes'] !== 'number') return undefined;
    const name = a['name'];
    if (typeof name !== 'string' || !(VDSO_AREA_NAMES as readonly string[]).includes(name)) return undefined;
    areas.push({
      name: name as VdsoArea['name'],
      start: big(a['start']),
      end: big(a['end']),
      sizeBytes: a['sizeBytes'],
    });
  }
  return { areas };
}

const FLAGS = [
  'hasPtraceSeize',
  'hasProcessVmReadv',
  'hasPidfd',
  'hasClone3SetTid',
  'hasPagemapScan',
  'hasUffdWpAsync',
  'hasUffdWpUnpopulated',
  'hasSoftDirty',
  'hasTcpRepair',
] as const;

/** The kerndat in `text` when it was probed under `key`; null when not, or when malformed. */
export function decodeKerndat(text: string, key: CacheKey): Kerndat | null {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObj(raw) || !isObj(raw['key']) || !isObj(raw['kerndat'])) return null;
  const k = raw['key'];
  if (
    k['format'] !== key.format ||
    k['bootId'] !== key.bootId ||
    k['release'] !== key.release ||
    k['euid'] !== key.euid ||
    k['capEff'] !== key.capEff
  )
    return null;
  const o = raw['kerndat'];
  const flags = {} as Record<(typeof FLAGS)[number], boolean>;
  for (const f of FLAGS) {
    const v = o[f];
    if (typeof v !== 'boolean') return null;
    flags[f] = v;
  }
  const uffd = o['uffdFeatures'];
  if (uffd !== null && !isHex(uffd)) return null;
  const vdso = decodeVdso(o['vdso']);
  if (vdso === undefined) return null;
  const capsRaw = o['caps'];
  if (capsRaw !== null && !isHex(capsRaw)) return null;
  const caps: Capabilities | null = capsRaw === null ? null : capabilitiesOf(big(capsRaw));
  const ns = o['namespaces'];
  if (!Array.isArray(ns) || !ns.every((n) => typeof n === 'string')) return null;
  if (!Array.isArray(o['probes'])) return null;
  const probes: ProbeResult[] = [];
  for (const p of o['probes'] as unknown[]) {
    const probe = decodeProbe(p);
    if (probe === null) return null;
    probes.push(probe);
  }
  return {
    ...flags,
    uffdFeatures: uffd === null ? null : big(uffd),
    vdso,
    caps,
    namespaces: ns as string[],
    probes,
  };
}

/** The cached kerndat for this process, or null (no usable cache: the caller probes). */
export function loadKerndat(file: string, key: CacheKey): Kerndat | null {
  let text: string;
  try {
    const st = lstatSync(file);
    // Only a file of ours that no one else may write: its contents decide what dump tries.
    if (!st.isFile() || st.uid !== key.euid || (st.mode & 0o022) !== 0) return null;
    text = readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  return decodeKerndat(text, key);
}

/** Keep `kd` for the next commands. Best effort: a file that cannot be written is only logged. */
export function storeKerndat(file: string, kd: Kerndat, key: CacheKey): void {
  const tmp = `${file}.tmp${process.pid}`;
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(tmp, encodeKerndat(kd, key), { mode: 0o600 });
    renameSync(tmp, file);
  } catch (err) {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // nothing more to do
    }
    log().debug(`kerndat: not cached in ${file}: ${describeError(err)}`);
  }
}
