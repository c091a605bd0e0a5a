/**
 * The vDSO layout of a process: its special mappings [vvar], [vvar_vclock] (kernel 6.13+ splits
 * vvar in two) and [vdso], their order and sizes, from /proc/PID/maps. A dump records the layout;
 * restore compares it with the running kernel's, because `arch_prctl(ARCH_MAP_VDSO_64)` maps the
 * current kernel's vDSO and a task whose vDSO calls land somewhere else must not be resumed.
 */

import type { MapsEntry } from '../proc/maps.js';

export const VDSO_AREA_NAMES = ['[vvar]', '[vvar_vclock]', '[vdso]'] as const;
export type VdsoAreaName = (typeof VDSO_AREA_NAMES)[number];

export interface VdsoArea {
  name: VdsoAreaName;
  start: bigint;
  end: bigint;
  sizeBytes: number;
}

/** The special mappings in address order. Empty when the process has no vDSO. */
export interface VdsoLayout {
  areas: readonly VdsoArea[];
}

export function parseVdsoLayout(maps: readonly MapsEntry[]): VdsoLayout {
  const areas: VdsoArea[] = [];
  for (const m of maps) {
    if ((VDSO_AREA_NAMES as readonly string[]).includes(m.path)) {
      areas.push({ name: m.path as VdsoAreaName, start: m.start, end: m.end, sizeBytes: Number(m.end - m.start) });
    }
  }
  areas.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  return { areas };
}

/** "[vvar] 16 KiB, [vvar_vclock] 8 KiB, [vdso] 8 KiB": names, sizes and order, no addresses. */
export function formatVdsoLayout(layout: VdsoLayout): string {
  if (layout.areas.length === 0) return 'no vDSO';
  return layout.areas.map((a) => `${a.name} ${a.sizeBytes / 1024} KiB`).join(', ');
}

/**
 * Why a task dumped with `dumped` cannot get the vDSO of `current`, or null when the two have the
 * same areas, in the same order, of the same sizes (addresses may differ: restore maps at the
 * dumped address).
 */
export function vdsoMismatch(dumped: VdsoLayout, current: VdsoLayout): string | null {
  const a = formatVdsoLayout(dumped);
  const b = formatVdsoLayout(current);
  return a === b ? null : `vDSO layout differs: image has ${a}, this kernel has ${b}`;
}
