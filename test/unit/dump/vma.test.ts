/** VMA classification against CRIU's vma_entry conventions (the golden CRIU 4.2 mm images). */
import t from 'tap';
import { classifyVma, MAP, PROT, VMA_AREA } from '../../../src/dump/vma.js';
import { parseSmaps } from '../../../src/proc/smaps.js';

function smaps(line: string, flags: string): ReturnType<typeof parseSmaps>[number] {
  const text = `${line}\nSize: 4 kB\nRss: 0 kB\nVmFlags: ${flags}\n`;
  const e = parseSmaps(text)[0];
  if (e === undefined) throw new Error('no entry');
  return e;
}

t.test('private file mappings: REGULAR | FILE_PRIVATE, only copied-on-write pages dumped', async (t) => {
  const v = classifyVma(smaps('55b161598000-55b161599000 r-xp 00001000 fe:00 123 /usr/bin/x', 'rd ex mr mw me'));
  t.equal(v.status, VMA_AREA.REGULAR | VMA_AREA.FILE_PRIVATE);
  t.equal(v.flags, MAP.PRIVATE);
  t.equal(v.prot, PROT.READ | PROT.EXEC);
  t.equal(v.pgoff, 0x1000n);
  t.equal(v.path, '/usr/bin/x');
  t.equal(v.pages, 'cow');
});

t.test('anonymous memory, heap and stack', async (t) => {
  const anon = classifyVma(smaps('7ff2d0a29000-7ff2d0a2c000 rw-p 00000000 00:00 0', 'rd wr mr mw me ac'));
  t.equal(anon.status, VMA_AREA.REGULAR | VMA_AREA.ANON_PRIVATE);
  t.equal(anon.flags, MAP.PRIVATE | MAP.ANONYMOUS);
  t.equal(anon.pages, 'anon');
  const heap = classifyVma(smaps('55b17ebc4000-55b17ebe5000 rw-p 00000000 00:00 0 [heap]', 'rd wr mr mw me ac'));
  t.equal(heap.status, VMA_AREA.REGULAR | VMA_AREA.HEAP | VMA_AREA.ANON_PRIVATE);
  const stack = classifyVma(smaps('7ffceb409000-7ffceb42a000 rw-p 00000000 00:00 0 [stack]', 'rd wr mr mw me gd ac'));
  t.equal(stack.flags, MAP.PRIVATE | MAP.ANONYMOUS | MAP.GROWSDOWN, 'growsdown from VmFlags gd');
});

t.test('the vDSO is dumped (as CRIU does), vvar never; madvise flags come from VmFlags', async (t) => {
  const vdso = classifyVma(smaps('7ff2d0c1f000-7ff2d0c21000 r-xp 00000000 00:00 0 [vdso]', 'rd ex mr mw me de'));
  t.equal(vdso.status, VMA_AREA.REGULAR | VMA_AREA.VDSO | VMA_AREA.ANON_PRIVATE);
  t.equal(vdso.pages, 'vdso', 'its present pages go into the image, untracked');
  const vvar = classifyVma(smaps('7ff2d0c19000-7ff2d0c1d000 r--p 00000000 00:00 0 [vvar]', 'rd mr pf io de dd'));
  t.equal(
    vvar.status,
    VMA_AREA.REGULAR | VMA_AREA.VVAR | VMA_AREA.ANON_PRIVATE,
    'vvar is not refused as device memory',
  );
  t.equal(vvar.pages, 'none');
  t.equal(vvar.madv, 1n << 16n, 'MADV_DONTDUMP as in the golden image (madv 0x10000)');
  const advised = classifyVma(smaps('7f0000000000-7f0000100000 rw-p 00000000 00:00 0', 'rd wr mr mw me dc hg wf ac'));
  t.equal(advised.madv, (1n << 10n) | (1n << 14n) | (1n << 18n), 'DONTFORK, HUGEPAGE, WIPEONFORK');
});

t.test('device memory is refused', async (t) => {
  t.throws(
    () => classifyVma(smaps('7f0000000000-7f0000001000 rw-s 00000000 00:05 9 /dev/mem', 'rd wr sh mr mw me ms io pf')),
    {
      code: 'EUNSUPPORTED',
    },
  );
});
