/**
 * Random fd tables (test/fixtures/cr_fdmix.c): for each seed the fixture makes files, /dev/null,
 * memfds, pipes, unix socket pairs, eventfds, FIFOs, epolls (watching epolls too), timerfds,
 * signalfds, inotifies and TCP/UDP sockets at random fd numbers, with dups, close-on-exec, owners,
 * bytes and messages waiting, ends closed; with an odd seed a child inherits part of it and holds
 * descriptions of its own. After a dump and restore, and after a live migration between simulated
 * hosts, each process compares its fd table line by line (kinds, flags, offsets, sizes, which fds
 * share a description, with the parent's too) and checks what waits in each pipe and socket and
 * that the pairs still reach each other. The seeds are fixed: a failure names its seed, which
 * reproduces it (`cr_fdmix SEED OUTFILE`).
 */
import t from 'tap';
import { dumpRestoreCheck } from '../../helpers/cr.js';
import { migrateCheck } from '../../helpers/migrate.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid, namespaces)';

const DUMPED = Array.from({ length: 24 }, (_, i) => i + 1);
const MIGRATED = [101, 102, 103, 104];

for (const seed of DUMPED)
  t.test(`seed ${seed}: dump, then restore; the fd table comes back as it was`, { skip: needsRoot }, (t) =>
    dumpRestoreCheck(t, 'cr_fdmix', [String(seed)]),
  );

for (const seed of MIGRATED)
  t.test(`seed ${seed}: criu-migrate; the fd table comes back as it was on DST`, { skip: needsRoot }, (t) =>
    migrateCheck(t, 'cr_fdmix', [String(seed)]),
  );
