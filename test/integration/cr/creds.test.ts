/** Changed credentials (uids, gids, groups, capability sets, bounding set) survive dump and restore. */
import t from 'tap';
import { dumpRestoreCheck } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

t.test('cr_creds keeps its credentials', { skip: needsRoot }, (t) => dumpRestoreCheck(t, 'cr_creds'));
