/**
 * The x86 CPU feature vocabulary of cpuinfo.img (CPUINFO, cpuinfo_x86_entry): which cpuid register
 * each capability word holds, the names of the feature bits, and which bits the `ins` and `fpu`
 * checks of --cpu-cap look at. Pure data; no kernel interface.
 *
 * Capability words (`capability`, u32 each; a feature is bit `word * 32 + bit`). The order is
 * CRIU's (compel/arch/x86/.../asm/cpu.h), which started as the kernel's X86_FEATURE_* words but is
 * frozen as image ABI: word 11 is CPUID 7.0 ECX here, whatever the kernel uses it for today.
 *
 *   word  source                 word  source                 word  source
 *    0    CPUID 1 EDX             7    (Linux-defined, 0)     14    CPUID 6 EAX
 *    1    CPUID 0x80000001 EDX    8    (Linux-defined, 0)     15    CPUID 0x8000000a EDX
 *    2    (Transmeta, 0)          9    CPUID 7.0 EBX          16    CPUID 0xf.0 EDX
 *    3    Linux-defined (NOPL..) 10    CPUID 0xd.1 EAX        17    CPUID 0x80000007 EBX
 *    4    CPUID 1 ECX            11    CPUID 7.0 ECX          18    CPUID 7.0 EDX
 *    5    (Centaur, 0)           12    CPUID 0xf.1 EDX
 *    6    CPUID 0x80000001 ECX   13    CPUID 0x80000008 EBX
 *
 * capability_ver 1 images (CRIU 3.x) carry words 0..11, capability_ver 2 (CRIU 3.14+, 4.x) 0..18.
 */

/** Capability word indices (CRIU's enum cpuid_leafs). */
export const CPUID_1_EDX = 0;
export const CPUID_8000_0001_EDX = 1;
export const CPUID_LNX_1 = 3;
export const CPUID_1_ECX = 4;
export const CPUID_8000_0001_ECX = 6;
export const CPUID_7_0_EBX = 9;
export const CPUID_D_1_EAX = 10;
export const CPUID_7_0_ECX = 11;
export const CPUID_F_1_EDX = 12;
export const CPUID_8000_0008_EBX = 13;
export const CPUID_6_EAX = 14;
export const CPUID_8000_000A_EDX = 15;
export const CPUID_F_0_EDX = 16;
export const CPUID_8000_0007_EBX = 17;
export const CPUID_7_0_EDX = 18;

/** Words per capability_ver (CRIU's NCAPINTS_V1, NCAPINTS_V2). */
export const NCAPINTS_BY_VERSION: ReadonlyMap<number, number> = new Map([
  [1, 12],
  [2, 19],
]);
/** The version and word count criu-ts writes (as CRIU 4.2). */
export const CAPABILITY_VER = 2;
export const NCAPINTS = 19;

/** A feature bit: word * 32 + bit. */
export type FeatureBit = number;
const f = (word: number, bit: number): FeatureBit => word * 32 + bit;

/** Feature bits named in messages and used by the checks (X86_FEATURE_* of CRIU and Linux). */
export const X86_FEATURE = {
  FPU: f(0, 0),
  TSC: f(0, 4),
  CX8: f(0, 8),
  SEP: f(0, 11),
  CMOV: f(0, 15),
  CLFLUSH: f(0, 19),
  MMX: f(0, 23),
  FXSR: f(0, 24),
  SSE: f(0, 25),
  SSE2: f(0, 26),
  SYSCALL: f(1, 11),
  MMXEXT: f(1, 22),
  RDTSCP: f(1, 27),
  '3DNOWEXT': f(1, 30),
  '3DNOW': f(1, 31),
  REP_GOOD: f(3, 16),
  NOPL: f(3, 20),
  CPUID: f(3, 25),
  SSE3: f(4, 0),
  PCLMULQDQ: f(4, 1),
  MONITOR: f(4, 3),
  SSSE3: f(4, 9),
  FMA: f(4, 12),
  CX16: f(4, 13),
  SSE4_1: f(4, 19),
  SSE4_2: f(4, 20),
  MOVBE: f(4, 22),
  POPCNT: f(4, 23),
  AES: f(4, 25),
  XSAVE: f(4, 26),
  OSXSAVE: f(4, 27),
  AVX: f(4, 28),
  F16C: f(4, 29),
  RDRAND: f(4, 30),
  LAHF_LM: f(6, 0),
  ABM: f(6, 5),
  SSE4A: f(6, 6),
  MISALIGNSSE: f(6, 7),
  '3DNOWPREFETCH': f(6, 8),
  XOP: f(6, 11),
  FMA4: f(6, 16),
  TBM: f(6, 21),
  MWAITX: f(6, 29),
  FSGSBASE: f(9, 0),
  BMI1: f(9, 3),
  HLE: f(9, 4),
  AVX2: f(9, 5),
  BMI2: f(9, 8),
  ERMS: f(9, 9),
  RTM: f(9, 11),
  MPX: f(9, 14),
  AVX512F: f(9, 16),
  AVX512DQ: f(9, 17),
  RDSEED: f(9, 18),
  ADX: f(9, 19),
  AVX512IFMA: f(9, 21),
  CLFLUSHOPT: f(9, 23),
  CLWB: f(9, 24),
  INTEL_PT: f(9, 25),
  AVX512PF: f(9, 26),
  AVX512ER: f(9, 27),
  AVX512CD: f(9, 28),
  SHA_NI: f(9, 29),
  AVX512BW: f(9, 30),
  AVX512VL: f(9, 31),
  XSAVEOPT: f(10, 0),
  XSAVEC: f(10, 1),
  XGETBV1: f(10, 2),
  XSAVES: f(10, 3),
  PREFETCHWT1: f(11, 0),
  AVX512VBMI: f(11, 1),
  PKU: f(11, 3),
  WAITPKG: f(11, 5),
  AVX512_VBMI2: f(11, 6),
  GFNI: f(11, 8),
  VAES: f(11, 9),
  VPCLMULQDQ: f(11, 10),
  AVX512_VNNI: f(11, 11),
  AVX512_BITALG: f(11, 12),
  AVX512_VPOPCNTDQ: f(11, 14),
  RDPID: f(11, 22),
  CLDEMOTE: f(11, 25),
  MOVDIRI: f(11, 27),
  MOVDIR64B: f(11, 28),
  CQM_LLC: f(16, 1),
  CLZERO: f(13, 0),
  AVX512_4VNNIW: f(18, 2),
  AVX512_4FMAPS: f(18, 3),
  AVX512_VP2INTERSECT: f(18, 8),
  SERIALIZE: f(18, 14),
  AMX_BF16: f(18, 22),
  AVX512_FP16: f(18, 23),
  AMX_TILE: f(18, 24),
  AMX_INT8: f(18, 25),
} as const;

/** Names of further bits, only for messages (the features no check singles out). */
const OTHER_NAMES: Readonly<Record<FeatureBit, string>> = {
  [f(0, 1)]: 'VME',
  [f(0, 2)]: 'DE',
  [f(0, 3)]: 'PSE',
  [f(0, 5)]: 'MSR',
  [f(0, 6)]: 'PAE',
  [f(0, 7)]: 'MCE',
  [f(0, 9)]: 'APIC',
  [f(0, 12)]: 'MTRR',
  [f(0, 13)]: 'PGE',
  [f(0, 14)]: 'MCA',
  [f(0, 16)]: 'PAT',
  [f(0, 17)]: 'PSE36',
  [f(0, 18)]: 'PN',
  [f(0, 21)]: 'DS',
  [f(0, 22)]: 'ACPI',
  [f(0, 27)]: 'SELFSNOOP',
  [f(0, 28)]: 'HT',
  [f(0, 29)]: 'ACC',
  [f(0, 30)]: 'IA64',
  [f(0, 31)]: 'PBE',
  [f(1, 19)]: 'MP',
  [f(1, 20)]: 'NX',
  [f(1, 25)]: 'FXSR_OPT',
  [f(1, 26)]: 'GBPAGES',
  [f(1, 29)]: 'LM',
  [f(3, 8)]: 'CONSTANT_TSC',
  [f(3, 22)]: 'XTOPOLOGY',
  [f(3, 24)]: 'NONSTOP_TSC',
  [f(4, 2)]: 'DTES64',
  [f(4, 4)]: 'DSCPL',
  [f(4, 5)]: 'VMX',
  [f(4, 6)]: 'SMX',
  [f(4, 7)]: 'EST',
  [f(4, 8)]: 'TM2',
  [f(4, 10)]: 'CID',
  [f(4, 11)]: 'SDBG',
  [f(4, 14)]: 'XTPR',
  [f(4, 15)]: 'PDCM',
  [f(4, 17)]: 'PCID',
  [f(4, 18)]: 'DCA',
  [f(4, 21)]: 'X2APIC',
  [f(4, 24)]: 'TSC_DEADLINE_TIMER',
  [f(4, 31)]: 'HYPERVISOR',
  [f(6, 1)]: 'CMP_LEGACY',
  [f(6, 2)]: 'SVM',
  [f(6, 3)]: 'EXTAPIC',
  [f(6, 4)]: 'CR8_LEGACY',
  [f(6, 9)]: 'OSVW',
  [f(6, 10)]: 'IBS',
  [f(6, 12)]: 'SKINIT',
  [f(6, 13)]: 'WDT',
  [f(6, 15)]: 'LWP',
  [f(6, 17)]: 'TCE',
  [f(6, 19)]: 'NODEID_MSR',
  [f(6, 22)]: 'TOPOEXT',
  [f(6, 23)]: 'PERFCTR_CORE',
  [f(6, 24)]: 'PERFCTR_NB',
  [f(6, 26)]: 'BPEXT',
  [f(6, 27)]: 'PTSC',
  [f(6, 28)]: 'PERFCTR_LLC',
  [f(9, 1)]: 'TSC_ADJUST',
  [f(9, 2)]: 'SGX',
  [f(9, 7)]: 'SMEP',
  [f(9, 10)]: 'INVPCID',
  [f(9, 12)]: 'CQM',
  [f(9, 15)]: 'RDT_A',
  [f(9, 20)]: 'SMAP',
  [f(10, 4)]: 'XFD',
  [f(11, 2)]: 'UMIP',
  [f(11, 4)]: 'OSPKE',
  [f(11, 7)]: 'SHSTK',
  [f(11, 13)]: 'TME',
  [f(11, 16)]: 'LA57',
  [f(11, 29)]: 'ENQCMD',
  [f(12, 0)]: 'CQM_OCCUP_LLC',
  [f(12, 1)]: 'CQM_MBM_TOTAL',
  [f(12, 2)]: 'CQM_MBM_LOCAL',
  [f(13, 1)]: 'IRPERF',
  [f(13, 2)]: 'XSAVEERPTR',
  [f(13, 4)]: 'RDPRU',
  [f(13, 9)]: 'WBNOINVD',
  [f(13, 12)]: 'AMD_IBPB',
  [f(13, 14)]: 'AMD_IBRS',
  [f(13, 15)]: 'AMD_STIBP',
  [f(14, 0)]: 'DTHERM',
  [f(14, 1)]: 'IDA',
  [f(14, 2)]: 'ARAT',
  [f(14, 4)]: 'PLN',
  [f(14, 6)]: 'PTS',
  [f(14, 7)]: 'HWP',
  [f(15, 0)]: 'NPT',
  [f(15, 1)]: 'LBRV',
  [f(15, 3)]: 'NRIPS',
  [f(15, 13)]: 'AVIC',
  [f(17, 0)]: 'OVERFLOW_RECOV',
  [f(17, 1)]: 'SUCCOR',
  [f(17, 3)]: 'SMCA',
  [f(18, 4)]: 'FSRM',
  [f(18, 10)]: 'MD_CLEAR',
  [f(18, 18)]: 'PCONFIG',
  [f(18, 20)]: 'IBT',
  [f(18, 26)]: 'SPEC_CTRL',
  [f(18, 27)]: 'INTEL_STIBP',
  [f(18, 28)]: 'FLUSH_L1D',
  [f(18, 29)]: 'ARCH_CAPABILITIES',
  [f(18, 30)]: 'CORE_CAPABILITIES',
  [f(18, 31)]: 'SPEC_CTRL_SSBD',
};

const NAMES: ReadonlyMap<FeatureBit, string> = new Map<FeatureBit, string>([
  ...Object.entries(OTHER_NAMES).map(([bit, name]): [number, string] => [Number(bit), name]),
  ...Object.entries(X86_FEATURE).map(([name, bit]): [number, string] => [bit, name]),
]);

/** A feature's name for messages: "AVX512F", or "word 11 bit 30" for a bit without a name. */
export function featureName(bit: FeatureBit): string {
  return NAMES.get(bit) ?? `word ${Math.floor(bit / 32)} bit ${bit % 32}`;
}

/** The bit of a named feature (the inverse of featureName), or undefined. */
export function featureBit(name: string): FeatureBit | undefined {
  for (const [bit, n] of NAMES) if (n === name.toUpperCase()) return bit;
  return undefined;
}

/** Whether `bit` is set in a capability word array (missing words are 0). */
export function hasFeature(words: readonly number[], bit: FeatureBit): boolean {
  return (((words[Math.floor(bit / 32)] ?? 0) >>> (bit % 32)) & 1) === 1;
}

/** The features `ins` checks: what a program can execute, so the target must have each. */
export const INS_FEATURES: readonly FeatureBit[] = (() => {
  const F = X86_FEATURE;
  // CRIU's x86_ins_capability_mask (criu/arch/x86/cpu.c)...
  const criu = [
    ...[F.FPU, F.TSC, F.CX8, F.SEP, F.CMOV, F.CLFLUSH, F.MMX, F.FXSR, F.SSE, F.SSE2],
    ...[F.SYSCALL, F.MMXEXT, F.RDTSCP, F['3DNOWEXT'], F['3DNOW'], F.REP_GOOD, F.NOPL],
    ...[F.SSE3, F.PCLMULQDQ, F.MONITOR, F.SSSE3, F.CX16, F.SSE4_1, F.SSE4_2, F.MOVBE, F.POPCNT, F.AES],
    ...[F.XSAVE, F.OSXSAVE, F.AVX, F.F16C, F.RDRAND],
    ...[F.ABM, F.SSE4A, F.MISALIGNSSE, F['3DNOWPREFETCH'], F.XOP, F.FMA4, F.TBM],
    ...[F.FSGSBASE, F.BMI1, F.HLE, F.AVX2, F.BMI2, F.ERMS, F.RTM, F.MPX, F.AVX512F, F.AVX512DQ],
    ...[F.RDSEED, F.ADX, F.CLFLUSHOPT, F.AVX512PF, F.AVX512ER, F.AVX512CD, F.SHA_NI, F.AVX512BW],
    ...[F.AVX512VL, F.XSAVEOPT, F.XSAVEC, F.XGETBV1, F.PREFETCHWT1],
    ...[F.AVX512VBMI, F.AVX512_VBMI2, F.GFNI, F.VAES, F.VPCLMULQDQ, F.AVX512_VNNI, F.AVX512_BITALG],
    ...[F.AVX512_VPOPCNTDQ, F.RDPID, F.CLZERO, F.AVX512_4VNNIW, F.AVX512_4FMAPS],
  ];
  // ...less TME (memory encryption, no instruction), plus instruction sets CRIU's list misses:
  // a program using FMA or AVX512IFMA faults on a CPU without them just the same.
  const extra = [
    ...[F.FMA, F.LAHF_LM, F.MWAITX, F.AVX512IFMA, F.CLWB, F.WAITPKG, F.CLDEMOTE, F.MOVDIRI, F.MOVDIR64B],
    ...[F.AVX512_VP2INTERSECT, F.SERIALIZE, F.AMX_BF16, F.AVX512_FP16, F.AMX_TILE, F.AMX_INT8],
  ];
  return [...new Set([...criu, ...extra])].sort((a, b) => a - b);
})();

/** The features `fpu` checks (CRIU 4.x): the ones the saved FPU state format depends on. */
export const FPU_FEATURES: readonly FeatureBit[] = [
  X86_FEATURE.FPU,
  X86_FEATURE.FXSR,
  X86_FEATURE.OSXSAVE,
  X86_FEATURE.XSAVES,
];

/** XSAVE state components (bits of XCR0 and of xfeatures_mask). */
export const XFEATURE_NAMES: readonly string[] = [
  'x87',
  'SSE',
  'AVX',
  'MPX bounds registers',
  'MPX CSR',
  'AVX-512 opmask',
  'AVX-512 ZMM_Hi256',
  'AVX-512 Hi16_ZMM',
  'Processor Trace',
  'PKRU',
  'PASID',
  'CET user',
  'CET supervisor',
  'HDC',
  'UINTR',
  'LBR',
  'HWP',
  'AMX TILECFG',
  'AMX TILEDATA',
];

/** A state component's name: "AVX-512 opmask", or "xfeature 20". */
export function xfeatureName(bit: number): string {
  return XFEATURE_NAMES[bit] ?? `xfeature ${bit}`;
}

/**
 * The feature each of the first 11 state components needs in cpuid (CRIU's
 * xsave_cpuid_features): a component whose feature is absent is dropped from xfeatures_mask.
 */
export const XSAVE_CPUID_FEATURES: readonly FeatureBit[] = [
  X86_FEATURE.FPU,
  X86_FEATURE.SSE,
  X86_FEATURE.AVX,
  X86_FEATURE.MPX,
  X86_FEATURE.MPX,
  X86_FEATURE.AVX512F,
  X86_FEATURE.AVX512F,
  X86_FEATURE.AVX512F,
  X86_FEATURE.INTEL_PT,
  X86_FEATURE.PKU,
  f(14, 13), // HDC
];
