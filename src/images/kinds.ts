/**
 * The table of image kinds: one line per kind, naming its magic (crit's name for it), its file
 * name(s), its protobuf message and any raw payload after its entries. Adding a kind means adding
 * its schema under proto/ and one line here.
 *
 * File layout (host order, little endian on x86_64):
 *
 *   common kinds    | u32 0x54564319 (IMG_COMMON)  | u32 kind magic | entries...
 *   service kinds   | u32 0x55105940 (IMG_SERVICE) | u32 kind magic | entries...   (stats, caches)
 *   inventory.img   | u32 0x58313116 (INVENTORY)   | entries...
 *   raw kinds       | bytes (pages-<n>.img: concatenated pages; no magic at all)
 *   entry           | u32 length | proto2 message (length bytes) | [raw payload, see extras.ts]
 *
 * Magics checked against CRIU 3.17's pycriu magic table (crit decode names the kind it finds).
 */
import {
  bpfmapDataExtra,
  ghostFileExtra,
  ipcMsgExtra,
  ipcSemExtra,
  ipcShmExtra,
  pipeDataExtra,
  skQueueExtra,
  tcpStreamExtra,
  type ExtraCodec,
} from './extras.js';

export const IMG_COMMON_MAGIC = 0x54564319;
export const IMG_SERVICE_MAGIC = 0x55105940;
/** inventory_entry.img_version of images with the common magic. */
export const IMG_VERSION = 2;

export type ImageHeader = 'common' | 'service' | 'own' | 'raw';

export interface ImageKind {
  /** crit's name of the magic ("PAGEMAP"); the "magic" of crit's JSON. */
  readonly name: string;
  /** The kind's magic; 0 for raw kinds. */
  readonly magic: number;
  readonly header: ImageHeader;
  /** File name templates: %d a decimal id, %x a hex id; the first one is used when writing. */
  readonly files: readonly string[];
  /** Message type of the entries ('' for raw kinds). */
  readonly type: string;
  /** Message type of the first entry when it differs (pagemap_head, ghost_file_entry). */
  readonly headType?: string;
  /** Raw payload after entries. */
  readonly extra?: ExtraCodec;
}

type More = { headType?: string; extra?: ExtraCodec };
const common = (name: string, magic: number, files: string | string[], type: string, more: More = {}): ImageKind => ({
  name,
  magic,
  header: 'common',
  files: typeof files === 'string' ? [files] : files,
  type,
  ...more,
});
const raw = (name: string, files: string | string[]): ImageKind => ({
  name,
  magic: 0,
  header: 'raw',
  files: typeof files === 'string' ? [files] : files,
  type: '',
});

export const IMAGE_KINDS: readonly ImageKind[] = [
  { name: 'INVENTORY', magic: 0x58313116, header: 'own', files: ['inventory.img'], type: 'inventory_entry' },
  common('PSTREE', 0x50273030, 'pstree.img', 'pstree_entry'),
  common('CORE', 0x55053847, 'core-%d.img', 'core_entry'),
  common('IDS', 0x54432030, 'ids-%d.img', 'task_kobj_ids_entry'),
  common('MM', 0x57492820, 'mm-%d.img', 'mm_entry'),
  common('VMAS', 0x54123737, 'vmas-%d.img', 'vma_entry'),
  common('PAGEMAP', 0x56084025, ['pagemap-%d.img', 'pagemap-shmem-%d.img'], 'pagemap_entry', {
    headType: 'pagemap_head',
  }),
  raw('PAGES', 'pages-%d.img'),
  common('FILES', 0x56303138, 'files.img', 'file_entry'),
  common('FDINFO', 0x56213732, 'fdinfo-%d.img', 'fdinfo_entry'),
  common('REG_FILES', 0x50363636, 'reg-files.img', 'reg_file_entry'),
  common('EXT_FILES', 0x59255641, 'ext-files.img', 'ext_file_entry'),
  common('NS_FILES', 0x61394011, 'ns-files.img', 'ns_file_entry'),
  common('REMAP_FPATH', 0x59133954, 'remap-fpath.img', 'remap_file_path_entry'),
  common('GHOST_FILE', 0x52583605, 'ghost-file-%x.img', 'ghost_chunk_entry', {
    headType: 'ghost_file_entry',
    extra: ghostFileExtra,
  }),
  common('PIPES', 0x56513555, 'pipes.img', 'pipe_entry'),
  common('PIPES_DATA', 0x56453709, 'pipes-data.img', 'pipe_data_entry', { extra: pipeDataExtra }),
  common('FIFO', 0x58364939, 'fifo.img', 'fifo_entry'),
  common('FIFO_DATA', 0x59333054, 'fifo-data.img', 'pipe_data_entry', { extra: pipeDataExtra }),
  common('FS', 0x51403912, 'fs-%d.img', 'fs_entry'),
  common('CREDS', 0x54023547, 'creds-%d.img', 'creds_entry'),
  common('SIGACT', 0x55344201, 'sigacts-%d.img', 'sa_entry'),
  common('RLIMIT', 0x57113925, 'rlimit-%d.img', 'rlimit_entry'),
  common('ITIMERS', 0x57464056, 'itimers-%d.img', 'itimer_entry'),
  common('POSIX_TIMERS', 0x52603957, 'posix-timers-%d.img', 'posix_timer_entry'),
  common('SIGNAL', 0x59255647, ['signal-p-%d.img', 'signal-s-%d.img'], 'siginfo_entry'),
  common('TTY_FILES', 0x59433025, 'tty.img', 'tty_file_entry'),
  common('TTY_INFO', 0x59453036, 'tty-info.img', 'tty_info_entry'),
  common('TTY_DATA', 0x59413026, 'tty-data.img', 'tty_data_entry'),
  common('EVENTFD_FILE', 0x44523722, 'eventfd.img', 'eventfd_file_entry'),
  common('EVENTPOLL_FILE', 0x45023858, 'eventpoll.img', 'eventpoll_file_entry'),
  common('EVENTPOLL_TFD', 0x44433746, 'eventpoll-tfd.img', 'eventpoll_tfd_entry'),
  common('SIGNALFD', 0x57323820, 'signalfd.img', 'signalfd_entry'),
  common('TIMERFD', 0x50493712, 'timerfd.img', 'timerfd_entry'),
  common('INOTIFY_FILE', 0x48424431, 'inotify.img', 'inotify_file_entry'),
  common('INOTIFY_WD', 0x54562009, 'inotify-wd.img', 'inotify_wd_entry'),
  common('FANOTIFY_FILE', 0x55096122, 'fanotify.img', 'fanotify_file_entry'),
  common('FANOTIFY_MARK', 0x56506035, 'fanotify-mark.img', 'fanotify_mark_entry'),
  common('MEMFD_INODE', 0x48453499, 'memfd.img', 'memfd_inode_entry'),
  common('FILE_LOCKS', 0x54323616, 'filelocks.img', 'file_lock_entry'),
  common('UNIXSK', 0x54373943, 'unixsk.img', 'unix_sk_entry'),
  common('INETSK', 0x56443851, 'inetsk.img', 'inet_sk_entry'),
  common('PACKETSK', 0x60454618, 'packetsk.img', 'packet_sock_entry'),
  common('NETLINK_SK', 0x58005614, 'netlinksk.img', 'netlink_sk_entry'),
  common('SK_QUEUES', 0x56264026, 'sk-queues.img', 'sk_packet_entry', { extra: skQueueExtra }),
  common('TCP_STREAM', 0x51465506, 'tcp-stream-%x.img', 'tcp_stream_entry', { extra: tcpStreamExtra }),
  common('TUNFILE', 0x57143751, 'tunfile.img', 'tunfile_entry'),
  common('BPFMAP_FILE', 0x57506142, 'bpfmap-file.img', 'bpfmap_file_entry'),
  common('BPFMAP_DATA', 0x64324033, 'bpfmap-data.img', 'bpfmap_data_entry', { extra: bpfmapDataExtra }),
  common('SECCOMP', 0x64413049, 'seccomp.img', 'seccomp_entry'),
  common('CPUINFO', 0x61404013, 'cpuinfo.img', 'cpuinfo_entry'),
  common('TIMENS', 0x43114433, 'timens-%d.img', 'timens_entry'),
  common('UTSNS', 0x54473203, 'utsns-%d.img', 'utsns_entry'),
  common('PIDNS', 0x61157326, 'pidns-%d.img', 'pidns_entry'),
  common('USERNS', 0x55474906, 'userns-%d.img', 'userns_entry'),
  common('NETNS', 0x55933752, 'netns-%d.img', 'netns_entry'),
  common('NETDEV', 0x57373951, 'netdev-%d.img', 'net_device_entry'),
  common('IPC_VAR', 0x53115007, 'ipcns-var-%d.img', 'ipc_var_entry'),
  common('IPCNS_SHM', 0x46283044, 'ipcns-shm-%d.img', 'ipc_shm_entry', { extra: ipcShmExtra }),
  common('IPCNS_MSG', 0x55453737, 'ipcns-msg-%d.img', 'ipc_msg_entry', { extra: ipcMsgExtra }),
  common('IPCNS_SEM', 0x59573019, 'ipcns-sem-%d.img', 'ipc_sem_entry', { extra: ipcSemExtra }),
  common('MNTS', 0x55563928, 'mountpoints-%d.img', 'mnt_entry'),
  common('CGROUP', 0x59383330, 'cgroup.img', 'cgroup_entry'),
  common('BINFMT_MISC', 0x67343323, 'binfmt-misc-%d.img', 'binfmt_misc_entry'),
  common('AUTOFS', 0x49353943, 'autofs-%d.img', 'autofs_entry'),
  common('APPARMOR', 0x59423047, 'apparmor.img', 'apparmor_entry'),
  { name: 'STATS', magic: 0x57093306, header: 'service', files: ['stats-dump', 'stats-restore'], type: 'stats_entry' },
  { name: 'IRMAP_CACHE', magic: 0x57004059, header: 'service', files: ['irmap-cache'], type: 'irmap_cache_entry' },
  raw('IFADDR', 'ifaddr-%d.img'),
  raw('ROUTE', ['route-%d.img', 'route6-%d.img', 'rule-%d.img']),
  raw('IPTABLES', ['iptables-%d.img', 'ip6tables-%d.img', 'nftables-%d.img']),
  raw('TMPFS', ['tmpfs-dev-%d.tar.gz.img', 'tmpfs-%d.tar.gz.img']),
];

/** Kind by crit's magic name ("CORE"). */
export const kindsByName: ReadonlyMap<string, ImageKind> = new Map(IMAGE_KINDS.map((k) => [k.name, k]));

/** Kind by magic value (raw kinds excluded). */
export const kindsByMagic: ReadonlyMap<number, ImageKind> = new Map(
  IMAGE_KINDS.filter((k) => k.header !== 'raw').map((k) => [k.magic, k]),
);

export function imageKind(name: string): ImageKind {
  const kind = kindsByName.get(name);
  if (kind === undefined) throw new Error(`Unknown image kind ${name}`);
  return kind;
}

const patterns: readonly (readonly [RegExp, ImageKind])[] = IMAGE_KINDS.flatMap((k) =>
  k.files.map((f) => {
    const re = f.replace(/[.]/g, '\\.').replace('%d', '\\d+').replace('%x', '[0-9a-f]+');
    return [new RegExp(`^${re}$`), k] as const;
  }),
);

/** The kind a file name belongs to, by name only (headers are the authority: see image-reader). */
export function kindOfFileName(fileName: string): ImageKind | undefined {
  // pagemap-shmem-N must not be taken for something else: longest template first is not needed,
  // the patterns are anchored and disjoint.
  return patterns.find(([re]) => re.test(fileName))?.[1];
}

/** The file name of a kind for an id (the kind's first template). */
export function imageFileName(kind: ImageKind | string, id?: number | bigint | string): string {
  const k = typeof kind === 'string' ? imageKind(kind) : kind;
  const template = k.files[0] as string;
  if (!template.includes('%')) return template;
  if (id === undefined) throw new Error(`Image kind ${k.name} needs an id for its file name`);
  const text = template.includes('%x') ? (typeof id === 'string' ? id : id.toString(16)) : String(id);
  return template.replace(/%[dx]/, text);
}
