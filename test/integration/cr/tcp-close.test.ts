/**
 * --tcp-close (as CRIU's): a python client of a python asyncio server (neither written here) is
 * dumped with its connection's socket but not the connection (nothing is done to it: no repair,
 * no lock; the inventory says tcp_close) and restored with the socket closed. The client finds
 * its connection lost, connects again and goes on, the server's count with it. A restore without
 * --tcp-close refuses those images in one line.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import t from 'tap';
import { readEntries } from '../../../src/images/index.js';
import { criuAsync, poll, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';
import { ASYNCIO_COUNTER, RECONNECTING_CLIENT } from '../../helpers/programs.js';
import { freePort } from '../../helpers/real-criu.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';

const answers = (report: string): number[] => [...report.matchAll(/^GOT (\d+)$/gm)].map((m) => Number(m[1]));

t.test('--tcp-close: a client restored without its connection connects again', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({ server: { 'counter.py': ASYNCIO_COUNTER }, client: { 'client.py': RECONNECTING_CLIENT } });
  const port = freePort();
  /** A python program of `sub` (counter.py or client.py) talking to 127.0.0.1:port. */
  const python = async (sub: string, file: string) => {
    const w = await startWorkload('/usr/bin/env', path.join(dir, sub), [
      '-i',
      'python3',
      path.join(dir, sub, file),
      '127.0.0.1',
      String(port),
    ]);
    t.teardown(() => w.kill());
    return w;
  };
  await python('server', 'counter.py');
  const client = await python('client', 'client.py');
  await poll(() => answers(client.report()).length >= 5, 'five answers', 10_000);

  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(client.pid), '-D', images, '--tcp-close']);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(client.pid);
  const inventory = (await readEntries(path.join(images, 'inventory.img'), 'INVENTORY'))[0];
  t.equal(inventory?.['tcp_close'], true, 'the inventory says --tcp-close, as CRIU writes it');
  t.same(
    readdirSync(images).filter((f) => f.startsWith('tcp-stream-')),
    [],
    'no connection state is dumped',
  );
  // (Other test files' dumps may hold locks of their own meanwhile.)
  t.notMatch(
    spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout,
    new RegExp(`criu-ts-(restore-)?${client.pid}\\b`),
    'nor locked',
  );

  const refused = await criuAsync(['restore', '-D', images, '-d']);
  t.equal(refused.status, 1, 'a restore without --tcp-close fails');
  t.equal(refused.stderr.trim().split('\n').length, 1, `in one line: ${refused.stderr}`);
  t.match(refused.stderr, /dumped with --tcp-close .*restore them with --tcp-close/);
  t.notOk(existsSync(`/proc/${client.pid}`), 'and makes nothing');

  const before = answers(client.report()).length;
  const restored = await startRestore(['-D', images, '--tcp-close'], path.join(dir, 'restored.pid'));
  t.equal(restored.pid, client.pid, 'restored with its PID');
  await poll(
    () => /RECONNECTED/.test(client.report()) && answers(client.report()).length >= before + 5,
    'the client to connect again and get five more answers',
    20_000,
  );
  t.match(client.report(), /LOST (BrokenPipeError 32|OSError 107|ConnectionError 0)/, `it saw its connection lost`);
  const got = answers(client.report());
  t.ok(
    got.every((n, i) => i === 0 || n > (got[i - 1] as number)),
    `the server's count goes on (${got.join(' ')})`,
  );
  process.kill(client.pid, 'SIGKILL');
  await restored.done;
});
