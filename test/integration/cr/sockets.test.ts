/**
 * Sockets across dump and restore (src/files/inet-socket.ts, unix-socket.ts, tcp-stream.ts).
 *
 * cr_sockets holds listeners (IPv4, IPv6-only, dual-stack, a dup), a bound and a new TCP socket,
 * and UDP sockets bound, connected and new, with options set; after restore it compares their
 * state line by line and uses them (PASS/FAIL). cr_unix does the same for unix sockets: pairs with
 * bytes waiting, a closed peer, shutdowns, listeners on a path and an abstract name; cr_fdtable
 * holds sockets with a closed peer in a table with no free number below its top. The images are
 * checked too: as CRIU writes them (and Debian's crit reads them). A restore whose port is taken
 * fails cleanly. Servers no one here wrote serve on after restore (python3 -m http.server, a node
 * http server, a python asyncio server). With --tcp-established, TCP connections come back: both
 * ends inside the task, and a client outside that keeps its connection (and a line it sent while
 * the server was gone) under the network lock. (Refusals: test/integration/cr/failures.test.ts.)
 */
import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createConnection, createServer, type Socket } from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { readEntries, writeImage, type ImageEntry } from '../../../src/images/index.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_DGRAM } from '../../../src/kernel/constants.js';
import * as sys from '../../../src/sys/native.js';
import { ASYNCIO_COUNTER, askCounter, httpGet, untilServing } from '../../helpers/programs.js';
import { freePort } from '../../helpers/real-criu.js';
import {
  criuAsync,
  dumpRestoreCheck,
  endExpectPass,
  restoreExpectPass,
  startRestore,
  startWorkload,
  taskState,
  waitGone,
  type Workload,
} from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, clone3 set_tid)';
const crit = ['/usr/bin/crit', '/usr/sbin/crit'].find((p) => existsSync(p));

/** The inet_sk_entry of each INETSK file entry. */
function inetSockets(files: ImageEntry[]): ImageEntry[] {
  return files.filter((f) => f['type'] === 4).map((f) => f['isk'] as ImageEntry);
}

/** Debian's crit shows each image as `criu show` does (the same JSON, payloads included). */
async function sameAsCrit(t: Test, images: string, names: readonly string[]): Promise<void> {
  if (crit === undefined) {
    t.pass(`criu show of ${names.join(', ')} compared with crit`, { skip: 'crit is not installed' });
    return;
  }
  for (const name of names) {
    const file = path.join(images, name);
    const theirs: SpawnSyncReturns<string> = spawnSync(crit, ['show', file], { encoding: 'utf8' });
    t.equal(theirs.status, 0, `crit shows ${name}: ${theirs.stderr}`);
    const ours = await criuAsync(['show', file]);
    t.equal(ours.stdout, theirs.stdout, `criu show ${name} prints what crit does`);
  }
}

/** A directory for socket files, short enough for sun_path (108 bytes), removed after `t`. */
function socketDir(t: Test): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'cts-sk-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Start `cmd` detached, stdio on /dev/null, not a child of this process: its pid. */
function startProgram(cmd: readonly string[]): { pid: number; kill: () => void } {
  const out = execFileSync('sh', ['-c', '"$@" </dev/null >/dev/null 2>&1 & echo $!', 'sh', ...cmd], {
    encoding: 'utf8',
  });
  const pid = Number(out.trim());
  return {
    pid,
    kill: () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    },
  };
}

/** Start cr_sockets and dump it (it is gone then): its images and their inet sockets. */
async function dumpCrSockets(t: Test): Promise<{ dir: string; w: Workload; images: string; isks: ImageEntry[] }> {
  const dir = t.testdir();
  const w = await startWorkload('cr_sockets', dir);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  const isks = inetSockets(await readEntries(path.join(images, 'files.img'), 'FILES'));
  return { dir, w, images, isks };
}

t.test('cr_sockets: TCP and UDP sockets come back as they were and work', { skip: needsRoot }, async (t) => {
  const { dir, w, images, isks } = await dumpCrSockets(t);
  t.equal(isks.length, 8, 'eight sockets (21 shares 20): one file entry each');
  const byState = (state: number): ImageEntry[] => isks.filter((s) => s['state'] === state);
  t.equal(byState(10).length, 3, 'three listeners (state LISTEN)');
  const v4listener = isks.find((s) => s['state'] === 10 && s['family'] === 2);
  t.equal(v4listener?.['backlog'], 7, 'the IPv4 listener: backlog 7');
  t.same(v4listener?.['src_addr'], [0x0100007f], 'its address as CRIU stores it: 127.0.0.1 as a little-endian word');
  t.equal((v4listener?.['opts'] as ImageEntry)['reuseaddr'], true, 'SO_REUSEADDR recorded');
  t.equal((v4listener?.['flags'] as number) & 0o4000, 0o4000, 'O_NONBLOCK recorded');
  const v6only = isks.find((s) => s['state'] === 10 && s['family'] === 10 && s['v6only'] === true);
  t.same(v6only?.['src_addr'], [0, 0, 0, 0x01000000], '[::1] as four words');
  const udpConnected = isks.find((s) => s['type'] === 2 && s['state'] === 1);
  t.ok(udpConnected !== undefined && Number(udpConnected['dst_port']) > 0, 'a connected UDP socket, with its peer');
  const fdinfo = await readEntries(path.join(images, 'fdinfo-2.img'), 'FDINFO');
  t.ok(
    fdinfo.some((e) => e['fd'] === 25 && e['flags'] === 1),
    'fd 25 close-on-exec',
  );
  await sameAsCrit(t, images, ['files.img']);

  await restoreExpectPass(t, w, images, dir);
});

t.test('a restore whose port is taken fails in one line, and works once it is free', { skip: needsRoot }, async (t) => {
  const { dir, w, images, isks } = await dumpCrSockets(t);
  const port = Number(isks.find((s) => s['state'] === 10 && s['family'] === 2)?.['src_port']);

  const squatter = createServer();
  await new Promise<void>((resolve, reject) => {
    squatter.once('error', reject);
    squatter.listen(port, '127.0.0.1', resolve);
  });
  const refused = await criuAsync(['restore', '-D', images]);
  await new Promise<void>((resolve) => squatter.close(() => resolve()));
  t.equal(refused.status, 1, 'restore exits 1');
  const lines = refused.stderr.trim().split('\n');
  t.equal(lines.length, 1, `one line: ${refused.stderr}`);
  t.match(lines[0], new RegExp(`bind\\(task \\d+, 127\\.0\\.0\\.1:${port}\\): EADDRINUSE`));
  t.notOk(existsSync(`/proc/${w.pid}`), 'no half-restored task is left');

  await restoreExpectPass(t, w, images, dir);
});

t.test('real servers keep serving: python3 -m http.server', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({ 'hello.txt': 'hello from before the dump\n' });
  const port = freePort();
  const w = startProgram(['python3', '-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', dir]);
  t.teardown(() => w.kill());
  await untilServing(port);
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  await t.rejects(httpGet(port, '/hello.txt'), 'nothing listens while it is dumped');
  const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
  t.equal(restored.pid, w.pid, 'restored with its PID');
  t.equal(await httpGet(port, '/hello.txt'), 'hello from before the dump\n', 'it serves the file again');
  t.equal(await httpGet(port, '/hello.txt'), 'hello from before the dump\n', 'and again (a second connection)');
  process.kill(w.pid, 'SIGTERM');
  const r = await restored.done;
  t.ok(r.status !== null, `criu restore ends with the server: ${r.stderr}`);
});

/** A node http server with state: each GET /count answers the next number (this file's NODE_COUNTER). */
const NODE_COUNTER = `
import { createServer } from 'node:http';
let n = 0;
const server = createServer((req, res) => res.end(req.url === '/count' ? String(++n) : 'ok'));
server.listen(Number(process.argv[2]), '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
`;

t.test('real servers keep serving: a node http server keeps its count', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({ 'counter.mjs': NODE_COUNTER });
  const port = freePort();
  // A clean environment: the test runner's NODE_OPTIONS would load its hooks into the server.
  const w = startProgram(['/usr/bin/env', '-i', process.execPath, path.join(dir, 'counter.mjs'), String(port)]);
  t.teardown(() => w.kill());
  await untilServing(port);
  for (let i = 1; i <= 3; i++) t.equal(await httpGet(port, '/count'), String(i), `count ${i} before the dump`);
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
  t.equal(restored.pid, w.pid, 'restored with its PID');
  t.equal(await httpGet(port, '/count'), '4', 'it counts on from where it was');
  t.equal(await httpGet(port, '/count'), '5', 'on a second connection too');
  process.kill(w.pid, 'SIGTERM');
  const r = await restored.done;
  t.equal(r.status, 0, `the server exits 0 on SIGTERM, and criu restore with it: ${r.stderr}`);
});

t.test(
  'cr_unix: unix socket pairs, listeners and bound sockets come back with their bytes',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const sockDir = socketDir(t);
    const w = await startWorkload('cr_unix', dir, [sockDir]);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
    t.equal(dump.status, 0, dump.stderr);
    await waitGone(w.pid);
    const files = await readEntries(path.join(images, 'files.img'), 'FILES');
    const usks = files.filter((f) => f['type'] === 5).map((f) => f['usk'] as ImageEntry);
    t.equal(usks.length, 19, 'nineteen unix sockets');
    const queues = await readEntries(path.join(images, 'sk-queues.img'), 'SK_QUEUES');
    t.same(
      queues.map((q) => q['length']).sort((a, b) => Number(a) - Number(b)),
      [2, 2, 3, 3, 4, 4, 5, 6, 9, 9, 10, 13, 300000],
      'the bytes waiting in six stream sockets and seven messages, in sk-queues.img',
    );
    await sameAsCrit(t, images, ['files.img', 'sk-queues.img']);
    await restoreExpectPass(t, w, images, dir);
  },
);

t.test(
  'cr_fdtable: sockets whose other end was closed, in a table with no free number below its top',
  { skip: needsRoot },
  async (t) => {
    // Each such socket is made as a pair whose other end waits above the table's numbers; here
    // the kernel gives that end the first number above the table, where the first one kept
    // aside would go (the JVM's table was like this; the restore failed on dup3 EINVAL).
    await dumpRestoreCheck(t, 'cr_fdtable');
  },
);

t.test('real servers keep serving: a python asyncio server keeps its count', { skip: needsRoot }, async (t) => {
  const { dir, port, w } = await startAsyncioCounter(t);
  t.same(await askCounter('127.0.0.1', port, 3), ['1', '2', '3'], 'three answers before the dump');
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  const files = await readEntries(path.join(images, 'files.img'), 'FILES');
  t.ok(
    files.some((f) => f['type'] === 5),
    'it holds a unix socket (asyncio self-pipe: a socket pair)',
  );
  const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
  t.equal(restored.pid, w.pid, 'restored with its PID');
  t.same(await askCounter('127.0.0.1', port, 2), ['4', '5'], 'it counts on from where it was');
  process.kill(w.pid, 'SIGTERM'); // through the self-pipe: the loop wakes and ends
  const r = await restored.done;
  t.equal(r.status, 0, `the server exits 0 on SIGTERM, and criu restore with it: ${r.stderr}`);
  t.match(w.report(), /BYE 5/, 'its last words: the count');
});

t.test(
  '--tcp-established: a TCP connection inside the task comes back with its waiting byte',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_state', dir, ['tcp-conn']);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--tcp-established']);
    t.equal(dump.status, 0, dump.stderr);
    await waitGone(w.pid);
    const streams = readdirSync(images).filter((f) => /^tcp-stream-[0-9a-f]+\.img$/.test(f));
    t.equal(streams.length, 2, `both ends of the connection: ${streams.join(', ')}`);
    const queued = await Promise.all(
      streams.map(async (f) => (await readEntries(path.join(images, f), 'TCP_STREAM'))[0]?.['inq_len']),
    );
    t.same(queued.sort(), [0, 1], 'one end has a byte waiting to be read');
    await sameAsCrit(t, images, streams);
    t.equal(nftTables().includes(`criu-ts-${w.pid}`), true, 'the network lock stays until the restore');
    await restoreExpectPass(t, w, images, dir);
    t.equal(nftTables().includes(`criu-ts-${w.pid}`), false, 'the restore lifted the lock');
  },
);

t.test(
  '--tcp-established: a connection a child shares comes back, and no lock is left',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_state', dir, ['tcp-conn', 'child']);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--tcp-established']);
    t.equal(dump.status, 0, dump.stderr);
    await waitGone(w.pid);
    // The restore locks the connection for both processes that have it open: both locks go.
    await restoreExpectPass(t, w, images, dir, {
      whileRunning: () => {
        // The tables of the tree's two processes (other test files may hold locks meanwhile).
        const child = readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').trim();
        t.match(child, /^\d+$/, 'the child is back');
        t.notMatch(
          nftTables(),
          new RegExp(`criu-ts-(restore-)?(${w.pid}|${child})\\b`),
          'no lock left once the tree runs',
        );
      },
    });
  },
);

t.test(
  '--skip-in-flight: a listener with a connection waiting is dumped without it, and listens again',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_state', dir, ['tcp-waiting']);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--skip-in-flight', '-o', 'dump.log']);
    t.equal(dump.status, 0, dump.stderr);
    t.match(
      readFileSync(path.join(images, 'dump.log'), 'utf8'),
      /1 connection\(s\) waiting in the accept queue of 127\.0\.0\.1:\d+ are left out \(--skip-in-flight\)/,
      'the log says what was left out',
    );
    await waitGone(w.pid);
    const files = await readEntries(path.join(images, 'files.img'), 'FILES');
    const port = Number(
      files.map((f) => f['isk'] as ImageEntry | undefined).find((i) => i !== undefined && Number(i['state']) === 10)?.[
        'src_port'
      ],
    );
    t.ok(port > 0, `the listener was on port ${port}`);
    const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
    t.equal(restored.pid, w.pid, 'restored with its PID');
    // The restored listener takes a new connection (the kernel completes it into its queue).
    await new Promise<void>((resolve, reject) => {
      const c = createConnection({ host: '127.0.0.1', port }, () => {
        c.destroy();
        resolve();
      });
      c.on('error', reject);
    });
    t.pass('it listens again');
    await endExpectPass(t, w);
    t.equal((await restored.done).status, 0);
  },
);

// 127.0.0.1: an IPv4 socket. dual: an IPv6 socket whose IPv4 peer it sees as ::ffff:127.0.0.1 (the
// lock must drop IPv4 packets for it).
for (const host of ['127.0.0.1', 'dual']) {
  t.test(
    `--tcp-established: a client keeps its connection to a server across dump and restore (${host})`,
    { skip: needsRoot },
    async (t) => {
      const { dir, port, w } = await startAsyncioCounter(t, host);
      const conn = await LineClient.connect(port);
      t.teardown(() => conn.close());
      t.equal(await conn.ask(), '1', 'an answer before the dump');
      const images = path.join(dir, 'img');
      const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--tcp-established']);
      t.equal(dump.status, 0, dump.stderr);
      await waitGone(w.pid);
      // Sent while the server is gone: the lock drops it (no reset), the client sends it again later.
      const during = conn.ask();
      await new Promise((r) => setTimeout(r, 300));
      t.notOk(conn.isClosed, 'the connection lives on while the server is dumped');
      const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
      t.equal(await during, '2', 'the line sent meanwhile is answered after the restore');
      t.equal(await conn.ask(), '3', 'and the next one');
      process.kill(w.pid, 'SIGTERM');
      const r = await restored.done;
      t.equal(r.status, 0, r.stderr);
    },
  );
}

t.test(
  '--tcp-established: a server keeps its 50 clients, locked by the dump with one nft run',
  { skip: needsRoot },
  async (t) => {
    const { dir, port, w } = await startAsyncioCounter(t);
    const conns = await Promise.all(Array.from({ length: 50 }, () => LineClient.connect(port)));
    t.teardown(() => conns.forEach((c) => c.close()));
    // Each client's answer: the server counts the lines of all, so a round gives 50 numbers in a row.
    const round = async (): Promise<number[]> =>
      (await Promise.all(conns.map((c) => c.ask()))).map(Number).sort((a, b) => a - b);
    const from = (first: number): number[] => Array.from({ length: 50 }, (_, i) => first + i);
    t.same(await round(), from(1), 'fifty answers before the dump');
    const images = path.join(dir, 'img');
    const logged = ['-v4', '-o', 'dump.log'];
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--tcp-established', ...logged]);
    t.equal(dump.status, 0, dump.stderr);
    const locks = readFileSync(path.join(images, 'dump.log'), 'utf8').match(/Network lock: .*/g) ?? [];
    t.same(locks, [`Network lock: 50 TCP connection(s) of task ${w.pid} locked`], 'one lock for all');
    await waitGone(w.pid);
    // Each client sends while the server is gone: the lock drops it, the client sends it again later.
    const during = round();
    await new Promise((r) => setTimeout(r, 300));
    t.equal(conns.filter((c) => c.isClosed).length, 0, 'no connection lost while the server is dumped');
    const restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
    t.same(await during, from(51), 'the lines sent meanwhile are answered after the restore');
    t.same(await round(), from(101), 'and the next ones');
    t.notMatch(nftTables(), new RegExp(`criu-ts-(restore-)?${w.pid}\\b`), 'no lock left');
    process.kill(w.pid, 'SIGTERM');
    const r = await restored.done;
    t.equal(r.status, 0, r.stderr);
  },
);

/** ASYNCIO_COUNTER on `host` (a free port), started as a workload of `t`. */
async function startAsyncioCounter(t: Test, host = '127.0.0.1'): Promise<{ dir: string; port: number; w: Workload }> {
  const dir = t.testdir({ 'counter.py': ASYNCIO_COUNTER });
  const port = freePort();
  const script = path.join(dir, 'counter.py');
  const w = await startWorkload('/usr/bin/env', dir, ['-i', 'python3', script, host, String(port)]);
  t.teardown(() => w.kill());
  return { dir, port, w };
}

/** Start cr_state with a TCP connection to itself and dump it with --tcp-established and `args`. */
async function dumpTcpConn(t: Test, args: readonly string[]): Promise<{ dir: string; w: Workload; images: string }> {
  const dir = t.testdir();
  const w = await startWorkload('cr_state', dir, ['tcp-conn']);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--tcp-established', ...args]);
  t.equal(dump.status, 0, dump.stderr);
  return { dir, w, images };
}

/** The nft tables there are now. */
function nftTables(): string {
  return spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout;
}

/** One connection to ASYNCIO_COUNTER, kept open: each ask() sends a line and waits for its answer. */
class LineClient {
  private buffered = '';
  private waiting: ((line: string) => void)[] = [];
  isClosed = false;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (c: string) => {
      this.buffered += c;
      for (let i = this.buffered.indexOf('\n'); i >= 0; i = this.buffered.indexOf('\n')) {
        const line = this.buffered.slice(0, i);
        this.buffered = this.buffered.slice(i + 1);
        this.waiting.shift()?.(line);
      }
    });
    sock.on('close', () => (this.isClosed = true));
    sock.on('error', () => undefined);
  }

  static async connect(port: number): Promise<LineClient> {
    for (let i = 0; ; i++) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection({ host: '127.0.0.1', port }, () => resolve(s));
          s.once('error', reject);
        });
        return new LineClient(sock);
      } catch (err) {
        if (i >= 50) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  ask(timeoutMs = 15_000): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no answer')), timeoutMs);
      this.waiting.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
      this.sock.write('x\n');
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

t.test(
  '--tcp-established with --leave-running: the connection works on, and no lock is left',
  { skip: needsRoot },
  async (t) => {
    const { w } = await dumpTcpConn(t, ['-R']);
    t.equal(nftTables().includes(`criu-ts-${w.pid}`), false, 'the lock is lifted');
    await endExpectPass(t, w); // out of repair mode: its connection carries its byte and more
  },
);

t.test(
  '--tcp-established with --leave-stopped: repair mode and the lock stay, for a kill and a restore',
  { skip: needsRoot },
  async (t) => {
    const { dir, w, images } = await dumpTcpConn(t, ['-s']);
    t.equal(taskState(w.pid), 'T', 'left stopped');
    t.equal(nftTables().includes(`criu-ts-${w.pid}`), true, 'the lock stays, as CRIU');
    process.kill(w.pid, 'SIGKILL'); // its sockets, in repair mode, close silently
    await waitGone(w.pid);
    await restoreExpectPass(t, w, images, dir);
    t.equal(nftTables().includes(`criu-ts-${w.pid}`), false, 'the restore lifted the lock');
  },
);

t.test('pre-dump takes the options of the dump to come: --tcp-established', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_state', dir, ['tcp-conn']);
  t.teardown(() => w.kill());
  const refused = await criuAsync(['pre-dump', '-t', String(w.pid), '-D', path.join(dir, 'p0')]);
  t.equal(refused.status, 1, 'without it: refused, as the dump would be');
  t.match(refused.stderr, /it is connected \(ESTABLISHED\); with --tcp-established/);
  const pre = await criuAsync(['pre-dump', '-t', String(w.pid), '-D', path.join(dir, 'p1'), '--tcp-established']);
  t.equal(pre.status, 0, pre.stderr);
  const images = path.join(dir, 'img');
  const incremental = ['--prev-images-dir', '../p1', '--track-mem', '--tcp-established'];
  const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, ...incremental]);
  t.equal(dump.status, 0, dump.stderr);
  await waitGone(w.pid);
  await restoreExpectPass(t, w, images, dir);
});

t.test(
  '--ext-unix-sk: a datagram socket connected outside the task is connected again',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    // The socket outside: this test's.
    const sockDir = socketDir(t);
    const outside = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    t.teardown(() => sys.close(outside));
    const where = path.join(sockDir, 'log.sock');
    sys.bindUnix(outside, where);
    const w = await startWorkload('cr_state', dir, [`unix-ext-dgram=${where}`]);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    const refused = await criuAsync(['dump', '-t', String(w.pid), '-D', path.join(dir, 'no'), '-v0']);
    t.equal(refused.status, 1, 'without it: refused');
    t.match(
      refused.stderr,
      new RegExp(`connected to the unix datagram socket ${where} outside the task \\(with --ext-unix-sk`),
    );
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, '--ext-unix-sk']);
    t.equal(dump.status, 0, dump.stderr);
    await waitGone(w.pid);
    const usks = (await readEntries(path.join(images, 'files.img'), 'FILES'))
      .map((f) => f['usk'] as ImageEntry | undefined)
      .filter((u) => u !== undefined);
    t.ok(
      usks.some(
        (u) =>
          u['uflags'] === 1 &&
          Buffer.from(u['name'] as Uint8Array)
            .toString()
            .startsWith(where),
      ),
      'the peer outside: an entry of its own, marked external, with its name',
    );
    await restoreExpectPass(t, w, images, dir);
    t.equal(sys.recvFds(outside, 16, 0x40).data.toString(), 'x', 'the restored task sent its datagram here');
  },
);

t.test('a socket entry without its sub-message fails the restore in one line', { skip: needsRoot }, async (t) => {
  const { w, images } = await dumpCrSockets(t);
  const file = path.join(images, 'files.img');
  const files = await readEntries(file, 'FILES');
  const broken = files.map((f) => (f['type'] === 4 ? { type: 4, id: f['id'] } : f));
  await writeImage(file, 'FILES', broken);
  const r = await criuAsync(['restore', '-D', images]);
  t.equal(r.status, 1, 'restore exits 1');
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 1, r.stderr);
  t.match(lines[0], /Cannot read image "files\.img": file \d+ of type INETSK has no isk/);
  t.notOk(existsSync(`/proc/${w.pid}`), 'no half-restored task is left');
});
