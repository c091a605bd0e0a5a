// creds_entry's no_new_privs (field 18, CRIU 4.x): wire bytes, crit JSON, the restore's reading of
// it, and Debian's crit 3.17 (which does not know the field) still decoding a core image that has it.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import {
  decodeEntry,
  encodeEntry,
  entryToCritJson,
  messageType,
  writeImage,
  type ImageEntry,
} from '../../../src/images/index.js';
import { hasNoNewPrivs } from '../../../src/restore/creds.js';

const creds: ImageEntry = {
  uid: 1000,
  gid: 100,
  euid: 1000,
  egid: 100,
  suid: 1000,
  sgid: 100,
  fsuid: 1000,
  fsgid: 100,
  secbits: 0,
};

t.test('no_new_privs is field 18, varint, only when set', async (t) => {
  const type = messageType('creds_entry');
  const without = encodeEntry(type, creds);
  const withBit = encodeEntry(type, { ...creds, no_new_privs: 1 });
  // key (18 << 3 | 0) = 144 = varint 0x90 0x01, then the value 1
  t.same([...withBit.subarray(without.length)], [0x90, 0x01, 0x01]);
  t.ok(withBit.subarray(0, without.length).equals(without), 'the rest is unchanged');
  t.equal(decodeEntry(type, withBit)['no_new_privs'], 1);
  t.equal(decodeEntry(type, without)['no_new_privs'], undefined, 'absent stays absent');
  t.equal(entryToCritJson(type, { ...creds, no_new_privs: 1 })['no_new_privs'], 1, 'crit JSON name');
});

t.test('the restore sets it only when the image says so', async (t) => {
  t.equal(hasNoNewPrivs(undefined), false);
  t.equal(hasNoNewPrivs(creds), false, 'CRIU 3.x image or bit clear');
  t.equal(hasNoNewPrivs({ ...creds, no_new_privs: 0 }), false);
  t.equal(hasNoNewPrivs({ ...creds, no_new_privs: 1 }), true);
});

const crit = ['/usr/bin/crit', '/usr/sbin/crit'].find((p) => existsSync(p));
t.test(
  'crit decodes a core image with no_new_privs',
  { skip: crit === undefined ? 'crit not installed' : false },
  async (t) => {
    const dir = t.testdir();
    const file = path.join(dir, 'core-1.img');
    await writeImage(file, 'CORE', [
      {
        mtype: 1,
        tc: { task_state: 1, exit_code: 0, personality: 0, flags: 0, blk_sigset: 0n, comm: 'x' },
        thread_core: { futex_rla: 0n, futex_rla_len: 0, creds: { ...creds, groups: [5], no_new_privs: 1 } },
      },
    ]);
    const r = spawnSync(crit as string, ['decode', '-i', file], { encoding: 'utf8' });
    t.equal(r.status, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { entries: { thread_core: { creds: Record<string, unknown> } }[] };
    const got = doc.entries[0]?.thread_core.creds;
    t.equal(got?.['uid'], 1000, 'the known fields around it are read');
    t.same(got?.['groups'], [5]);
    // crit 3.17 drops the unknown field; a crit that knows it shows it.
    t.ok(got?.['no_new_privs'] === undefined || got['no_new_privs'] === 1);
  },
);
