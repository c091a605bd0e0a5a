import t from 'tap';
import {
  parseCgroup,
  parseComm,
  parseDecimal,
  parseLinkTarget,
  parseNsLink,
  parsePersonality,
} from '../../../src/proc/misc.js';
import { parseChildren } from '../../../src/proc/children.js';

// Texts of real /proc files of this machine (kernel 6.18).

t.test('personality', async (t) => {
  t.equal(parsePersonality('00000000\n'), 0);
  t.equal(parsePersonality('00400000\n'), 0x400000, 'READ_IMPLIES_EXEC');
  t.throws(() => parsePersonality('\n'), /Cannot parse personality/);
});

t.test('comm keeps spaces and parentheses', async (t) => {
  t.equal(parseComm('x) y (z\n'), 'x) y (z');
  t.equal(parseComm('bash\n'), 'bash');
});

t.test('links', async (t) => {
  t.same(parseLinkTarget('/tmp/sleepdel (deleted)'), { path: '/tmp/sleepdel', isDeleted: true });
  t.same(parseLinkTarget('/work/main'), { path: '/work/main', isDeleted: false });
  t.same(parseNsLink('net:[4026531833]'), { type: 'net', inode: 4026531833 });
  t.same(parseNsLink('pid_for_children:[4026531836]'), { type: 'pid_for_children', inode: 4026531836 });
  t.throws(() => parseNsLink('net'), /Cannot parse namespace link/);
});

t.test('loginuid and oom_score_adj', async (t) => {
  t.equal(parseDecimal('loginuid', '4294967295'), 4294967295, 'unset: (uid_t)-1, no newline');
  t.equal(parseDecimal('oom_score_adj', '-1000\n'), -1000);
  t.throws(() => parseDecimal('oom_score_adj', 'x\n'), /Cannot parse oom_score_adj/);
});

t.test('cgroup', async (t) => {
  const lines = parseCgroup(
    '9:name=systemd:/\n8:pids:/\n4:memory:/process_api/e24fb2d5a82257c38d24c1d40ce986aa\n2:cpuacct:/\n0::/\n',
  );
  t.equal(lines.length, 5);
  t.same(lines[0], { hierarchyId: 9, controllers: ['name=systemd'], path: '/' });
  t.same(lines[2], { hierarchyId: 4, controllers: ['memory'], path: '/process_api/e24fb2d5a82257c38d24c1d40ce986aa' });
  t.same(lines[4], { hierarchyId: 0, controllers: [], path: '/' });
  t.same(parseCgroup('3:cpu,cpuacct:/a:b\n')[0], { hierarchyId: 3, controllers: ['cpu', 'cpuacct'], path: '/a:b' });
});

t.test('children', async (t) => {
  t.same(parseChildren('26593 '), [26593]);
  t.same(parseChildren('26593 27001 '), [26593, 27001]);
  t.same(parseChildren(''), []);
});
