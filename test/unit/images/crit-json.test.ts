// crit's JSON value rules (pb2dict) and the Python json layout, both ways.
import t from 'tap';
import { critJsonToEntry, entryToCritJson, formatPyJson, messageType, parseJson } from '../../../src/images/index.js';

t.test('hex, flags, dev, dict, enum, bytes, ip', async (t) => {
  const vma = {
    start: 0x400000n,
    end: 0x401000n,
    pgoff: 0n,
    shmid: 0n,
    prot: 3,
    flags: 0x22,
    status: (1 << 0) | (1 << 9) | (1 << 20),
    fd: -1n,
    madv: 0x10000n,
    fdflags: 0,
  };
  const vj = entryToCritJson(messageType('vma_entry'), vma);
  t.same(vj, {
    start: '0x400000',
    end: '0x401000',
    pgoff: 0,
    shmid: 0,
    prot: 'PROT_READ | PROT_WRITE',
    flags: 'MAP_PRIVATE | MAP_ANON',
    status: 'VMA_AREA_REGULAR | VMA_ANON_PRIVATE | 0x100000',
    fd: -1,
    madv: '0x10000',
    fdflags: '0x0',
  });
  t.same(critJsonToEntry(messageType('vma_entry'), vj), vma);
  t.same(entryToCritJson(messageType('vma_entry'), { ...vma, prot: 0 })['prot'], '', 'no flags: empty string');

  const wd = { id: 1, i_ino: 5n, mask: 0x100, ignored_mask: 0, s_dev: (8 << 20) | 3, wd: 1 };
  const wj = entryToCritJson(messageType('inotify_wd_entry'), wd);
  t.equal(wj['s_dev'], '8:3');
  t.same(critJsonToEntry(messageType('inotify_wd_entry'), wj), wd);

  const ghost = { uid: 0, gid: 0, mode: 0o100644, dev: (253 << 20) | 1, ino: 7n, rdev: 0x10305 };
  const gj = entryToCritJson(messageType('ghost_file_entry'), ghost);
  t.equal(gj['rdev'], '259:5', 'old (glibc) dev encoding');
  t.same(critJsonToEntry(messageType('ghost_file_entry'), gj), ghost);

  const tc = { task_state: 1, exit_code: 0, personality: 0, flags: 0, blk_sigset: 0n, comm: 'a\u00e9\n' };
  const tj = entryToCritJson(messageType('task_core_entry'), tc);
  t.equal(tj['task_state'], 'Alive');
  t.equal(
    entryToCritJson(messageType('task_core_entry'), { ...tc, task_state: 9 })['task_state'],
    9,
    'unknown dict value stays a number',
  );
  t.equal(formatPyJson(tj['comm'] ?? null), '"a\\u00e9\\n"', 'ensure_ascii escapes');

  const isk = {
    id: 1,
    ino: 2,
    family: 2,
    type: 1,
    proto: 6,
    state: 10,
    src_port: 80,
    dst_port: 0,
    flags: 0x800,
    backlog: 128,
    src_addr: [0x0100007f],
    dst_addr: [0],
  };
  const ij = entryToCritJson(messageType('inet_sk_entry'), isk);
  t.same(
    [ij['family'], ij['type'], ij['proto'], ij['state'], ij['src_addr'], ij['dst_addr']],
    ['INET', 'STREAM', 'TCP', 'LISTEN', ['127.0.0.1'], ['0.0.0.0']],
  );
  t.same(critJsonToEntry(messageType('inet_sk_entry'), ij), isk);
  const six = { ...isk, family: 10, src_addr: [0, 0, 0, 0x01000000], dst_addr: [0x000080fe, 0, 0, 0x01000000] };
  const sj = entryToCritJson(messageType('inet_sk_entry'), six);
  t.same([sj['src_addr'], sj['dst_addr']], [['::1'], ['fe80::1']]);
  t.same(critJsonToEntry(messageType('inet_sk_entry'), sj), six);

  const usk = {
    id: 1,
    ino: 2,
    type: 1,
    state: 7,
    flags: 0,
    uflags: 0,
    backlog: 0,
    peer: 0,
    fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 },
    opts: { so_sndbuf: 1, so_rcvbuf: 2 },
    name: Buffer.from('\0abstract=x'),
  };
  const uj = entryToCritJson(messageType('unix_sk_entry'), usk);
  t.equal(uj['name'], '=00abstract=3Dx', 'quoted-printable unix name');
  t.same(critJsonToEntry(messageType('unix_sk_entry'), uj), usk);

  const sf = { filter: Buffer.alloc(100, 7), prev: 0, flags: 0 };
  const fj = entryToCritJson(messageType('seccomp_filter'), sf);
  t.match(fj['filter'], /^[A-Za-z0-9+/]{76}\n[A-Za-z0-9+/=]+\n$/, 'base64 in 76-column lines');
  t.same(critJsonToEntry(messageType('seccomp_filter'), fj), sf);

  const core = { mtype: 1 };
  t.same(entryToCritJson(messageType('core_entry'), core), { mtype: 'X86_64' });
  t.same(critJsonToEntry(messageType('core_entry'), { mtype: 'X86_64' }), core);
});

t.test('hex is inherited by nested messages; pretty off gives numbers', async (t) => {
  const regs = Object.fromEntries(
    [
      'r15',
      'r14',
      'r13',
      'r12',
      'bp',
      'bx',
      'r11',
      'r10',
      'r9',
      'r8',
      'ax',
      'cx',
      'dx',
      'si',
      'di',
      'orig_ax',
      'ip',
      'cs',
      'flags',
      'sp',
      'ss',
      'fs_base',
      'gs_base',
      'ds',
      'es',
      'fs',
      'gs',
    ].map((k) => [k, 0xfffffffffffffffcn]),
  );
  const ti = {
    clear_tid_addr: 0x10n,
    gpregs: { ...regs, mode: 1 },
    fpregs: { cwd: 895, swd: 0, twd: 0, fop: 0, rip: 0n, rdp: 0n, mxcsr: 8064, mxcsr_mask: 0xffff },
  };
  const j = entryToCritJson(messageType('thread_info_x86'), ti);
  t.equal((j['gpregs'] as Record<string, unknown>)['ax'], '0xfffffffffffffffc');
  t.equal((j['fpregs'] as Record<string, unknown>)['cwd'], 895);
  const plain = entryToCritJson(messageType('thread_info_x86'), ti, false);
  t.equal((plain['gpregs'] as Record<string, unknown>)['ax'], 0xfffffffffffffffcn);
  t.same(critJsonToEntry(messageType('thread_info_x86'), j), ti);
});

t.test('python json layout and big integers', async (t) => {
  t.equal(
    formatPyJson({ a: [], b: {}, c: [1, { d: 'x' }], e: true, f: null, g: 18446744073709551615n }),
    '{\n    "a": [],\n    "b": {},\n    "c": [\n        1,\n        {\n            "d": "x"\n        }\n    ],\n    "e": true,\n    "f": null,\n    "g": 18446744073709551615\n}',
  );
  t.same(parseJson('{"x": 18446744073709551615, "y": [1, -2, 3.5], "z": "\\u00e9\\n"}'), {
    x: 18446744073709551615n,
    y: [1, -2, 3.5],
    z: '\u00e9\n',
  });
  t.throws(() => parseJson('{"x": }'), /at character/);
  t.throws(() => parseJson('[1] 2'), /after the JSON value/);
});
