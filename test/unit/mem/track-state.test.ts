import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import {
  decodeKeptRecord,
  encodeKeptRecord,
  lockTracking,
  readKept,
  removeKept,
  writeKept,
  type KeptRecord,
} from '../../../src/mem/track/state.js';

const REC: KeptRecord = {
  kind: 'uffd',
  pid: 4242,
  targetStartTime: 123456,
  holder: { pid: 4250, startTime: 123999, fd: 3 },
  armed: [0x55a000000, 0x55a000010, 0x7ffd1c5e0, 0x7ffd1c601],
  hasState: true,
};

t.test('the record encodes to the documented JSON and decodes back', async (t) => {
  const text = encodeKeptRecord(REC);
  t.equal(
    text,
    '{"version":1,"kind":"uffd","pid":4242,"targetStartTime":123456,' +
      '"holder":{"pid":4250,"startTime":123999,"fd":3},' +
      '"armed":["55a000000000-55a000010000","7ffd1c5e0000-7ffd1c601000"],"hasState":true}\n',
  );
  t.same(decodeKeptRecord(text), REC);
  t.same(decodeKeptRecord(encodeKeptRecord({ ...REC, kind: 'none', holder: null, hasState: false })), {
    ...REC,
    kind: 'none',
    holder: null,
    hasState: false,
  });
});

t.test('a bad record is refused with a reason', async (t) => {
  const good = JSON.parse(encodeKeptRecord(REC)) as Record<string, unknown>;
  const bad = (patch: Record<string, unknown>): unknown => decodeKeptRecord(JSON.stringify({ ...good, ...patch }));
  t.equal(decodeKeptRecord('{'), 'not JSON');
  t.match(bad({ version: 2 }), /version 2/);
  t.match(bad({ kind: 'magic' }), /unknown kind/);
  t.match(bad({ pid: -1 }), /bad pid/);
  t.match(bad({ holder: null }), /without a holder/);
  t.match(bad({ holder: { pid: 1, startTime: 'x', fd: 3 } }), /bad holder/);
  t.match(bad({ armed: ['nope'] }), /bad armed/);
  t.match(bad({ hasState: 1 }), /bad hasState/);
});

t.test('records and state bytes are stored privately and read back', async (t) => {
  const dir = path.join(t.testdir(), 'track');
  const state = new Uint8Array([1, 2, 3, 250]);
  writeKept(dir, REC, state);
  t.equal(statSync(dir).mode & 0o777, 0o700);
  t.equal(statSync(path.join(dir, '4242.json')).mode & 0o777, 0o600);
  t.equal(statSync(path.join(dir, '4242.state')).mode & 0o777, 0o600);
  t.same(readKept(dir, 4242), { rec: REC, state });
  writeKept(dir, REC, null);
  t.same(readKept(dir, 4242), { rec: { ...REC, hasState: false }, state: null }, 'no state: no state file');
  t.equal(readKept(dir, 4243), null, 'nothing kept for another pid');
  writeFileSync(path.join(dir, '4242.json'), '{"version":1');
  t.match(readKept(dir, 4242), /4242\.json: not JSON/);
  writeFileSync(path.join(dir, '4242.json'), encodeKeptRecord(REC));
  t.match(readKept(dir, 4242), /4242\.state is missing/);
  writeFileSync(path.join(dir, '4242.json'), encodeKeptRecord({ ...REC, pid: 1 }));
  t.match(readKept(dir, 4242), /records pid 1/);
  removeKept(dir, 4242);
  t.equal(readKept(dir, 4242), null);
  t.throws(() => readFileSync(path.join(dir, '4242.state')), { code: 'ENOENT' });
});

t.test('the lock admits one holder per pid, and is free again once released', async (t) => {
  const pid = 1_000_000 + (process.pid % 100_000);
  const lock = await lockTracking(pid);
  await t.rejects(lockTracking(pid), { code: 'ETASK', message: /another criu process/ });
  const other = await lockTracking(pid + 1);
  other.release();
  lock.release();
  lock.release();
  // server.close() completes asynchronously.
  await new Promise((r) => setTimeout(r, 10));
  const again = await lockTracking(pid);
  again.release();
  t.pass('locked again after release');
});
