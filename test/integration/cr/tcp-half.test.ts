/**
 * Half-closed TCP connections with --tcp-established (src/files/tcp-stream.ts): cr_tcp_half holds
 * six ends in FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK and ESTABLISHED (a client that shut down,
 * a server whose client did, queues full behind a FIN not sent yet). Dumped and restored, each is
 * back in its state and goes on as it would have: the bytes waiting, then the end of the stream,
 * answers after a peer's shutdown, EPIPE after one's own (the fixture checks). The images are as
 * CRIU writes them (the sequence numbers count the FINs; crit reads them). Migrated live too.
 * Without --tcp-established the dump refuses them, naming the state, the task left running. A
 * firewall that drops criu's own segments makes the restore fail in one line, leaving no process
 * and the dump's lock in place, so that a second restore (the firewall gone) brings it back.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import t from 'tap';
import { readEntries } from '../../../src/images/index.js';
import { criuAsync, restoreExpectPass, startWorkload, waitGone, expectDumpRefused } from '../../helpers/cr.js';
import { migrateCheck } from '../../helpers/migrate.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, TCP repair, clone3 set_tid)';
const crit = ['/usr/bin/crit', '/usr/sbin/crit'].find((p) => existsSync(p));

// include/net/tcp_states.h
const ESTABLISHED = 1;
const FIN_WAIT1 = 4;
const FIN_WAIT2 = 5;
const CLOSE_WAIT = 8;
const LAST_ACK = 9;

t.test('half-closed connections come back in their states and go on', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_tcp_half', dir);
  t.teardown(() => w.kill());
  const [bBytes, cBytes] = (/READY \d+ (\d+) (\d+)/.exec(w.report()) ?? []).slice(1).map(Number);
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--tcp-established']);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);

  // The images: each end's state, and its stream's numbers as CRIU counts them.
  const files = await readEntries(path.join(images, 'files.img'), 'FILES');
  const sockets = files.flatMap((f) => (f['isk'] === undefined ? [] : [f['isk'] as Record<string, unknown>]));
  t.same(
    sockets.map((s) => Number(s['state'])).sort((a, b) => a - b),
    [ESTABLISHED, FIN_WAIT1, FIN_WAIT2, FIN_WAIT2, CLOSE_WAIT, LAST_ACK],
    'the six ends, in their states',
  );
  const streams = new Map<number, Record<string, unknown>>();
  for (const s of sockets) {
    const ino = Number(s['ino']);
    const name = `tcp-stream-${ino.toString(16)}.img`;
    const entry = (await readEntries(path.join(images, name), 'TCP_STREAM'))[0];
    if (entry !== undefined)
      streams.set(ino, { ...entry, state: s['state'], port: s['src_port'], peer: s['dst_port'] });
  }
  t.equal(streams.size, 6, 'a stream image for each');
  const byState = (state: number): Record<string, unknown>[] =>
    [...streams.values()].filter((e) => e['state'] === state);
  const peerOf = (e: Record<string, unknown>): Record<string, unknown> | undefined =>
    [...streams.values()].find((p) => p['port'] === e['peer'] && p['peer'] === e['port']);
  // A side that shut down: every byte it wrote is in its send queue or its peer's receive queue,
  // and its sequence number counts its FIN after them.
  const seqGap = (a: unknown, b: unknown): number => (Number(a) - Number(b) + 2 ** 32) % 2 ** 32;
  for (const [state, bytes] of [
    [FIN_WAIT1, bBytes],
    [LAST_ACK, cBytes],
    [CLOSE_WAIT, undefined],
  ] as const) {
    // For CLOSE_WAIT: its peer (FIN_WAIT2) is the side that shut down, after "hello".
    const here = byState(state)[0] ?? {};
    const [end, peer] = state === CLOSE_WAIT ? [peerOf(here) ?? {}, here] : [here, peerOf(here) ?? {}];
    const name = state === CLOSE_WAIT ? "CLOSE_WAIT's peer" : state === FIN_WAIT1 ? 'FIN_WAIT1' : 'LAST_ACK';
    t.equal(
      Number(end['outq_len']) + Number(peer['inq_len']),
      bytes ?? 5,
      `${name}: its bytes are in one queue or the other`,
    );
    t.equal(
      seqGap(end['outq_seq'], peer['inq_seq']),
      Number(end['outq_len']) + (state === CLOSE_WAIT ? 0 : 1),
      `${name}: the FIN is counted`,
    );
    if (state !== CLOSE_WAIT) t.ok(Number(end['unsq_len']) > 0, `${name}: bytes not sent yet`);
  }
  if (crit === undefined) t.pass('crit reads the streams', { skip: 'crit is not installed' });
  else
    for (const name of readdirSync(images).filter((n) => n.startsWith('tcp-stream-'))) {
      const r = spawnSync(crit, ['decode', '-i', path.join(images, name)], { encoding: 'utf8' });
      t.equal(r.status, 0, `crit decodes ${name}: ${r.stderr}`);
    }

  await restoreExpectPass(t, w, images, dir);
});

t.test('without --tcp-established a half-closed connection is refused by its state', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_tcp_half', dir);
  t.teardown(() => w.kill());
  await expectDumpRefused(
    t,
    w,
    dir,
    /Cannot dump fd \d+ of task \d+: the TCP socket 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+: it is connected \((FIN_WAIT2|CLOSE_WAIT|FIN_WAIT1|ESTABLISHED|LAST_ACK)\); with --tcp-established/,
  );
});

t.test('half-closed connections migrate live', { skip: needsRoot }, async (t) => {
  await migrateCheck(t, 'cr_tcp_half', [], [], ['--tcp-established']);
});

t.test(
  "a restore whose segments a firewall drops fails in one line, and the dump's lock stays for the next try",
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_tcp_half', dir);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--tcp-established']);
    t.equal(dump.status, 0, dump.stderr);
    await waitGone(w.pid);
    // A firewall of this test's own that drops what criu sends as the peers (mark 0xc114).
    const table = `cts-test-block-${process.pid}`;
    const nft = (script: string): number | null => spawnSync('nft', ['-f', '-'], { input: script }).status;
    t.equal(
      nft(
        `add table inet ${table}\nadd chain inet ${table} input { type filter hook input priority -200 ; policy accept ; }\n` +
          `add rule inet ${table} input meta mark 0xc114 drop\n`,
      ),
      0,
    );
    t.teardown(() => nft(`delete table inet ${table}\n`));
    const failed = await criuAsync(['restore', '-D', images, '-d']);
    t.equal(failed.status, 1, 'the restore fails');
    t.equal(failed.stderr.trim().split('\n').length, 1, `in one line: ${failed.stderr}`);
    t.match(failed.stderr, /the peer's (FIN|ACK of our FIN), sent as the peer, did not arrive .*marked 0xc114/);
    t.notOk(existsSync(`/proc/${w.pid}`), 'and leaves no process');
    const tables = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout;
    t.match(tables, new RegExp(`criu-ts-${w.pid}\\b`), "the dump's lock stays");
    t.notMatch(tables, new RegExp(`criu-ts-restore-${w.pid}\\b`), "the restore's own is gone");
    nft(`delete table inet ${table}\n`);
    await restoreExpectPass(t, w, images, dir);
  },
);
