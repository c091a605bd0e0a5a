/** Seccomp filters survive dump and restore, in every thread, stacked as they were. */
import t from 'tap';
import { dumpRestoreCheck } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

t.test('cr_seccomp keeps its filters', { skip: needsRoot }, (t) => dumpRestoreCheck(t, 'cr_seccomp'));
