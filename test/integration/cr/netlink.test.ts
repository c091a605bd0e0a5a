/**
 * Netlink sockets (src/files/netlink-socket.ts). cr_netlink holds five: a NETLINK_ROUTE monitor
 * bound to group 32 (RTNLGRP_NEXTHOP) and joined to group 34, past bind's 32, with two netlink
 * options and O_NONBLOCK; a NETLINK_ROUTE request socket the kernel bound; a
 * NETLINK_KOBJECT_UEVENT one bound to a port id it chose; a NETLINK_GENERIC one never bound; a
 * NETLINK_ROUTE one joined to a group without being bound. After the
 * restore it checks each one's protocol, port id, groups, options and flags, that the request
 * socket still answers a RTM_GETLINK dump, and that the monitor hears a nexthop it adds.
 *
 * Here: the nlsk entries as crit reads them, the restore, a socket with messages waiting refused
 * in one line with the task running on, the migration with criu-migrate, and criu 3.17 both ways.
 * And a program no one here wrote: `ip monitor nexthop` (iproute2), dumped and restored, reports
 * the nexthops added and removed after.
 * One cr_netlink of this machine's network namespace at a time (these tests, in this file, run
 * one after the other): another's nexthop would wait in the monitor and make its dump refused.
 */
import { execFileSync, spawn } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import {
  criuAsync,
  dumpFileEntries,
  dumpRestoreDetached,
  endExpectPass,
  expectDumpRefused,
  poll,
  restoreExpectPass,
  signalTask,
  startWorkload,
  taskSnapshot,
  taskState,
  waitGone,
} from '../../helpers/cr.js';
import { migrateCheck } from '../../helpers/migrate.js';
import { criuDump, criuRestore, realCriuMissing, startSessionLeader } from '../../helpers/real-criu.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid, addresses on lo)';

t.test('cr_netlink: dump, the nlsk entries, restore', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_netlink', dir);
  t.teardown(() => w.kill());
  const { images, entries: nl } = await dumpFileEntries(t, w, dir, 'nlsk');
  t.same(
    nl.map((e) => e['protocol']),
    [0, 0, 15, 16, 0],
    'five netlink sockets: route, route, uevent, generic, route',
  );
  const [mon, req, uev, gen, grp] = nl;
  t.same(mon?.['groups'], [0x80000000, 0x2], 'the monitor: group 32, and 34 in the second word');
  t.equal(mon?.['portid'], w.pid, 'the monitor: bound to the port id of its pid');
  t.equal(Number(mon?.['flags']) & 0x800, 0x800, 'the monitor: O_NONBLOCK');
  t.not(Number(mon?.['flags']) >>> 24, 0, 'the monitor: its netlink options past the open flags');
  t.not(req?.['portid'], 0, 'the request socket: the port id the kernel gave it');
  t.equal(uev?.['portid'], (0x40000000 | w.pid) >>> 0, 'the uevent socket: the port id it chose');
  t.equal(gen?.['portid'], 0, 'the generic socket: never bound');
  t.same([grp?.['portid'], grp?.['groups']], [0, [0x80000000]], 'the last one: joined to group 32, never bound');
  await restoreExpectPass(t, w, images, dir);
});

t.test('a netlink socket with messages waiting is refused; the task runs on', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_netlink', dir, ['pending']);
  t.teardown(() => w.kill());
  await expectDumpRefused(
    t,
    w,
    dir,
    new RegExp(
      `^Error \\(criu\\): Cannot dump fd \\d+ of task ${w.pid}: \\d+ bytes of NETLINK_ROUTE messages wait to be read in it and would be lost`,
    ),
  );
});

t.test(
  'a netlink socket in the middle of a multi-part answer is refused; the task runs on',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_netlink', dir, ['midump']);
    t.teardown(() => w.kill());
    await expectDumpRefused(
      t,
      w,
      dir,
      new RegExp(
        `^Error \\(criu\\): Cannot dump fd \\d+ of task ${w.pid}: (the NETLINK_ROUTE socket is in the middle of a multi-part answer|\\d+ bytes of NETLINK_ROUTE messages wait)`,
      ),
    );
  },
);

t.test('criu-migrate moves cr_netlink', { skip: needsRoot }, async (t) => {
  await migrateCheck(t, 'cr_netlink');
});

for (const way of ['CRIU 3.17 dumps, criu-ts restores', 'criu-ts dumps, CRIU 3.17 restores'] as const) {
  // criu317: no group past 32 (criu 3.17 refuses them), no netlink option and no O_NONBLOCK (it
  // records neither).
  t.test(`cr_netlink criu317: ${way}`, { skip: needsRoot || realCriuMissing() }, async (t) => {
    const dir = t.testdir();
    const w = await startSessionLeader('cr_netlink', dir, ['criu317']);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    if (way.startsWith('CRIU')) {
      await criuDump(t, w.pid, images);
      await waitGone(w.pid);
      await restoreExpectPass(t, w, images, dir);
    } else {
      const d = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
      t.equal(d.status, 0, `dump: ${d.stderr}`);
      await waitGone(w.pid);
      await criuRestore(t, w.pid, images);
      await endExpectPass(t, w);
    }
  });
}

t.test('ip monitor nexthop: dumped and restored, it reports what happens after', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const out = path.join(dir, 'monitor.out');
  const fd = openSync(out, 'w');
  // detached: a session of its own, as a shell's background job would not be.
  const child = spawn('ip', ['monitor', 'nexthop'], { stdio: ['ignore', fd, fd], detached: true });
  const pid = await new Promise<number>((resolve) => child.on('spawn', () => resolve(child.pid ?? -1)));
  child.unref();
  t.teardown(() => signalTask(pid, 'SIGKILL'));
  // Ready once it waits for messages: its netlink socket made and bound.
  await poll(
    () => taskState(pid) === 'S' && taskSnapshot(pid).fds.some((f) => f.includes('socket:[')),
    'ip to wait',
    5000,
  );
  const isDumped = await dumpRestoreDetached(t, dir, pid, 'ip monitor');
  if (!isDumped) return;
  const id = String(200000 + pid);
  execFileSync('ip', ['nexthop', 'add', 'id', id, 'blackhole']);
  execFileSync('ip', ['nexthop', 'del', 'id', id]);
  await poll(() => readFileSync(out, 'utf8').includes(`Deleted id ${id}`), 'the deletion reported', 5000).catch(
    () => undefined,
  );
  const text = readFileSync(out, 'utf8');
  t.match(text, new RegExp(`^id ${id} blackhole`, 'm'), 'it reports the nexthop added');
  t.match(text, new RegExp(`^Deleted id ${id} blackhole`, 'm'), 'and removed');
});
