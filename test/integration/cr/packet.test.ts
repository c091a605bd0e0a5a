/**
 * Packet sockets (src/files/packet-socket.ts). cr_packet holds three: a raw one bound to lo for
 * every protocol, with options and three memberships (all-multicast twice, a multicast address),
 * non-blocking; a datagram one for IP on every interface; one with no protocol. After the restore
 * it checks each one's type, protocol, interface, options and flags, its memberships as lo counts
 * them, and that both others see a datagram it sends itself on 127.0.0.1.
 *
 * Here: the psk entries as crit reads them, the restore, a filter, a ring or a fanout group
 * refused in one line with the task running on, the migration with criu-migrate, and criu 3.17
 * restoring criu-ts's images (its own dump of a packet socket fails on this kernel: it cannot read
 * SO_PASSCRED of one).
 */
import path from 'node:path';
import t from 'tap';
import {
  criuAsync,
  dumpFileEntries,
  endExpectPass,
  expectDumpRefused,
  restoreExpectPass,
  startWorkload,
  waitGone,
} from '../../helpers/cr.js';
import { migrateCheck } from '../../helpers/migrate.js';
import { criuRestore, realCriuMissing, startSessionLeader } from '../../helpers/real-criu.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid, packet sockets)';

t.test('cr_packet: dump, the psk entries, restore', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_packet', dir);
  t.teardown(() => w.kill());
  const { images, entries: psk } = await dumpFileEntries(t, w, dir, 'psk');
  t.same(
    psk.map((e) => [e['type'], e['protocol'], e['ifindex']]),
    [
      [3, 0x0300, 1],
      [2, 0x0008, 0],
      [3, 0, 0],
    ],
    'raw ETH_P_ALL on lo, datagram ETH_P_IP anywhere, raw without protocol (protocols in network order)',
  );
  const raw = psk[0] ?? {};
  t.same(
    [raw['aux_data'], raw['orig_dev'], raw['copy_thresh'], (raw['mclist'] as unknown[] | undefined)?.length],
    [true, true, 100, 3],
    'the raw one: its options and three memberships',
  );
  await restoreExpectPass(t, w, images, dir);
});

t.test(
  'a packet socket with a filter, a ring or a fanout group is refused; the task runs on',
  { skip: needsRoot },
  async (t) => {
    const whys: Record<string, string> = {
      filter: 'a socket filter \\(SO_ATTACH_FILTER\\)',
      ring: 'mapped rings \\(PACKET_RX_RING, PACKET_TX_RING\\)',
      fanout: 'a fanout group \\(PACKET_FANOUT\\)',
    };
    for (const [mode, why] of Object.entries(whys))
      await t.test(mode, async (t) => {
        const dir = t.testdir();
        const w = await startWorkload('cr_packet', dir, [mode]);
        t.teardown(() => w.kill());
        await expectDumpRefused(
          t,
          w,
          dir,
          new RegExp(
            `^Error \\(criu\\): Cannot dump fd \\d+ of task ${w.pid}: a packet socket with ${why}, not supported yet`,
          ),
        );
      });
  },
);

t.test('criu-migrate moves cr_packet', { skip: needsRoot }, async (t) => {
  await migrateCheck(t, 'cr_packet');
});

t.test('criu-ts dumps cr_packet; CRIU 3.17 restores it', { skip: needsRoot || realCriuMissing() }, async (t) => {
  const dir = t.testdir();
  const w = await startSessionLeader('cr_packet', dir);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const d = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(d.status, 0, `dump: ${d.stderr}`);
  await waitGone(w.pid);
  await criuRestore(t, w.pid, images);
  await endExpectPass(t, w);
});
