/**
 * Live migration with the TCP connections (criu-migrate --tcp-established --move-address): a
 * python asyncio server (a real program) answers a client on a third host through a service
 * address that only SRC holds. The client keeps one connection, sending a line every 50 ms and
 * reading the server's count back. The server moves to DST with its listening socket, its
 * connection and the address: the client's connection goes on (same local port, no error, no
 * reset), its answers counting on without a gap, now from DST. When DST cannot restore (its port
 * is taken), SRC gets its address back, the server runs on there, and the client notices nothing
 * but a pause. Redis (Debian's) moves the same way with its data and a client doing INCR. With
 * --tcp-close instead, a client (a python one, reconnecting) moves without its
 * connection to a server on a third host, and connects again from DST. A server with a hundred
 * more clients moves with every connection.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { simHosts, type HostProcess, type SimHost } from '../../../migrate/sim-hosts.js';
import { poll, sleep } from '../../helpers/cr.js';
import { runMigrate, startAgent, startOnHost, tokenFile, type HostWorkload } from '../../helpers/migrate.js';
import { ASYNCIO_COUNTER, RECONNECTING_CLIENT } from '../../helpers/programs.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (namespaces, ptrace, clone3 set_tid)';

const hostPrefix = (address: string): number => (address.includes(':') ? 128 : 32);

// One connection (tried for 5 s); a request every 50 ms, the number answered logged; any error or
// end of stream logged, then exit. `client.py ADDR PORT OUTFILE REQUEST` with REQUEST "line" (a
// line, for ASYNCIO_COUNTER) or "redis" (INCR counter, in RESP).
const CLIENT = `
import socket, sys, time
out = open(sys.argv[3], "a", buffering=1)
request = b"x\\n" if sys.argv[4] == "line" else b"*2\\r\\n$4\\r\\nINCR\\r\\n$7\\r\\ncounter\\r\\n"
try:
    for attempt in range(50):
        try:
            s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
            break
        except ConnectionRefusedError:
            time.sleep(0.1)
    s.settimeout(30)
    out.write(f"CONNECTED {s.getsockname()[1]}\\n")
    r = s.makefile("rb")
    while True:
        s.sendall(request)
        line = r.readline()
        if not line:
            out.write("EOF\\n")
            break
        out.write(f"GOT {line.decode().strip().lstrip(':')} {time.monotonic():.3f}\\n")
        time.sleep(0.05)
except Exception as e:
    out.write(f"ERROR {e!r}\\n")
`;

/** The servers the client talks to: a python asyncio one (counting lines), or Redis (INCR). */
type ServerKind = 'asyncio' | 'redis';

interface Scene {
  src: SimHost;
  dst: SimHost;
  cli: SimHost;
  dir: string;
  targets: [string, string];
  server: HostWorkload;
  client: HostProcess;
  answers: () => number[];
  clientLog: () => string;
}

async function scene(t: Test, address: string, port: number, kind: ServerKind = 'asyncio'): Promise<Scene> {
  const [src, dst, cli] = await simHosts(['src', 'dst', 'cli'], { t });
  if (src === undefined || dst === undefined || cli === undefined) throw new Error('no hosts');
  const dir = t.testdir();
  const a = await startAgent(t, src, dir);
  const b = await startAgent(t, dst, dir);
  const isV6 = address.includes(':');
  const added = await src.exec(`ip addr add ${address}/${hostPrefix(address)} dev eth0${isV6 ? ' nodad' : ''}`);
  t.equal(added.status, 0, `SRC holds the service address: ${added.stderr}`);
  if (isV6) {
    // The hosts' own IPv6 addresses, in one /64 that holds the service address too.
    for (const [i, h] of [src, dst, cli].entries())
      t.equal((await h.exec(`ip addr add fd00:cafe::${i + 1}/64 dev eth0 nodad`)).status, 0);
  } else {
    // Outside the hosts' 198.18.0.0/24: the client reaches it on-link through its eth0.
    t.equal((await cli.exec('ip route add 198.19.0.0/24 dev eth0')).status, 0);
  }
  const script = path.join(dir, 'counter.py');
  writeFileSync(script, ASYNCIO_COUNTER);
  // Redis as Debian ships it, on every address, keeping nothing on disk; READY once it runs ($0:
  // the report file, startOnHost's last argument; startOnHost quotes each argument in '').
  const redis =
    `echo "READY $$" > "$0"; exec redis-server --port ${port} --bind "* -::*" --protected-mode no ` +
    `--save "" --appendonly no --dir "${dir}" --logfile "${path.join(dir, 'redis.log')}"`;
  const server = await startOnHost(
    t,
    src,
    kind === 'redis'
      ? ['/bin/sh', '-c', redis]
      : ['/usr/bin/env', '-i', 'python3', script, isV6 ? 'dual' : '0.0.0.0', String(port)],
    path.join(dir, 'report.txt'),
  );
  const clientScript = path.join(dir, 'client.py');
  writeFileSync(clientScript, CLIENT);
  const clientFile = path.join(dir, 'client.txt');
  writeFileSync(clientFile, '');
  const client = cli.spawn([
    'python3',
    clientScript,
    address,
    String(port),
    clientFile,
    kind === 'redis' ? 'redis' : 'line',
  ]);
  t.teardown(() => client.kill('SIGKILL'));
  const clientLog = (): string => readFileSync(clientFile, 'utf8');
  const answers = (): number[] => [...clientLog().matchAll(/^GOT (\d+) /gm)].map((m) => Number(m[1]));
  await poll(() => answers().length >= 10 || /ERROR|EOF/.test(clientLog()), 'ten answers from SRC', 20_000);
  t.notMatch(clientLog(), /ERROR|EOF/, 'the client talks to SRC');
  return { src, dst, cli, dir, targets: [a.target, b.target], server, client, answers, clientLog };
}

/** The answers so far are 1, 2, 3... on one connection, without an error. */
function oneConnectionCounting(t: Test, s: Scene): void {
  const times = [...s.clientLog().matchAll(/^GOT \d+ ([\d.]+)$/gm)].map((m) => Number(m[1]));
  const pause = Math.max(...times.slice(1).map((x, i) => x - (times[i] as number)));
  t.comment(`the client's longest wait for an answer: ${(pause * 1000).toFixed(0)} ms`);
  const log = s.clientLog();
  t.equal([...log.matchAll(/^CONNECTED /gm)].length, 1, 'one connection');
  t.notMatch(log, /ERROR|EOF/, 'no error, no end of stream');
  t.ok(
    s.answers().every((n, i) => n === i + 1),
    'the answers count on without a gap or a repeat',
  );
}

/** criu-migrate --tcp-established --move-address `address` of the scene's server. */
const migrateWith = (s: Scene, address: string, json: string[] = []): ReturnType<typeof runMigrate> =>
  runMigrate([
    ...json,
    '--token-file',
    tokenFile(s.dir),
    '--tcp-established',
    '--move-address',
    address,
    ...s.targets,
    String(s.server.pid),
  ]);

/** Until the client has `n` more answers (or an error). */
async function moreAnswers(s: Scene, n: number, timeoutMs: number): Promise<void> {
  const before = s.answers().length;
  await poll(() => s.answers().length >= before + n || /ERROR|EOF/.test(s.clientLog()), `${n} more answers`, timeoutMs);
}

const holds = async (h: SimHost, address: string): Promise<boolean> =>
  (await h.exec(`ip -o addr show | grep -qw 'inet6\\? ${address}/${hostPrefix(address)}'`)).status === 0;

const nftTables = async (h: SimHost): Promise<string> =>
  (await h.exec('nft list tables 2>/dev/null | grep criu-ts || true')).stdout.trim();

for (const [family, address, port] of [
  ['IPv4', '198.19.0.10', 8771],
  ['IPv6', 'fd00:cafe::10', 8774],
] as const)
  t.test(`a server migrates live with its TCP connection and its ${family} address`, { skip: needsRoot }, async (t) => {
    const s = await scene(t, address, port);
    const r = await migrateWith(s, address, ['--json']);
    t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
    t.equal((JSON.parse(r.stdout) as Record<string, number>)['dst_pid'], s.server.pid);
    t.equal((await s.dst.exec(`test -e /proc/${s.server.pid}`)).status, 0, 'the server runs on DST');
    t.ok(await holds(s.dst, address), 'DST holds the address');
    t.notOk(await holds(s.src, address), 'SRC does not any more');
    await moreAnswers(s, 20, 30_000);
    oneConnectionCounting(t, s);
    // Killed on SRC, then reaped there by the host's init.
    const isGone = async (): Promise<boolean> => (await s.src.exec(`test -e /proc/${s.server.pid}`)).status !== 0;
    for (let i = 0; i < 50 && !(await isGone()); i++) await sleep(100);
    t.ok(await isGone(), 'the server is gone from SRC');
    t.equal(await nftTables(s.src), '', 'no network lock is left on SRC');
    t.equal(await nftTables(s.dst), '', 'nor on DST');
    await s.client.kill('SIGKILL');
    const total = s.answers().length;
    await s.dst.exec(`kill -TERM ${s.server.pid}`);
    await s.server.waitFor(`BYE ${total}`);
    t.pass('the server ends on DST with the count the client saw');
  });

// N connections, a line on each every 100 ms (a round); the numbers answered logged, a connection
// whose numbers go backwards too, any error or end of stream, then exit. `many.py ADDR PORT N OUTFILE`.
const MANY_CLIENT = `
import socket, sys, time
out = open(sys.argv[4], "a", buffering=1)
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) for _ in range(int(sys.argv[3]))]
last = [0] * len(socks)
try:
    for rounds in range(1, 1000000):
        for s in socks:
            s.sendall(b"x\\n")
        for i, s in enumerate(socks):
            line = b""
            while not line.endswith(b"\\n"):
                chunk = s.recv(64)
                if not chunk:
                    raise EOFError(f"connection {i} ended")
                line += chunk
            if int(line) <= last[i]:
                out.write(f"BACKWARDS {i} {last[i]} {int(line)}\\n")
            last[i] = int(line)
            out.write(f"GOT {int(line)}\\n")
        out.write(f"ROUND {rounds} {time.monotonic():.3f}\\n")
        time.sleep(0.1)
except Exception as e:
    out.write(f"ERROR {e!r}\\n")
`;

t.test('a server migrates live with 100 more clients: every connection goes on', { skip: needsRoot }, async (t) => {
  const address = '198.19.0.14';
  const port = 8777;
  const s = await scene(t, address, port);
  writeFileSync(path.join(s.dir, 'many.py'), MANY_CLIENT);
  const manyFile = path.join(s.dir, 'many.txt');
  writeFileSync(manyFile, '');
  const many = s.cli.spawn(['python3', path.join(s.dir, 'many.py'), address, String(port), '100', manyFile]);
  t.teardown(() => many.kill('SIGKILL'));
  const manyLog = (): string => readFileSync(manyFile, 'utf8');
  const rounds = (): number[] => [...manyLog().matchAll(/^ROUND \d+ ([\d.]+)$/gm)].map((m) => Number(m[1]));
  await poll(() => rounds().length >= 5 || /ERROR/.test(manyLog()), 'five rounds on SRC', 20_000);
  const r = await migrateWith(s, address, ['--json']);
  t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
  t.comment(`downtime ${(JSON.parse(r.stdout) as Record<string, number>)['downtime_ms']} ms`);
  t.equal((await s.dst.exec(`test -e /proc/${s.server.pid}`)).status, 0, 'the server runs on DST');
  const before = rounds().length;
  await poll(() => rounds().length >= before + 10 || /ERROR/.test(manyLog()), 'ten rounds on DST', 30_000);
  await many.kill('SIGKILL');
  await s.client.kill('SIGKILL');
  const times = rounds();
  const pause = Math.max(...times.slice(1).map((x, i) => x - (times[i] as number)));
  t.comment(`the longest round of the 100 clients: ${(pause * 1000).toFixed(0)} ms`);
  t.notMatch(manyLog(), /ERROR|BACKWARDS/, 'no connection lost, none answered out of order');
  t.ok(times.length >= before + 10, 'the rounds go on from DST');
  // Every line of every connection answered once: the server's count has no number twice.
  const all = [...`${manyLog()}${s.clientLog()}`.matchAll(/^GOT (\d+)/gm)].map((m) => Number(m[1]));
  t.equal(new Set(all).size, all.length, `${all.length} answers, each number once`);
  t.equal(await nftTables(s.src), '', 'no network lock is left on SRC');
  t.equal(await nftTables(s.dst), '', 'nor on DST');
});

t.test('Redis migrates live with a client connected through its address', { skip: needsRoot }, async (t) => {
  const address = '198.19.0.13';
  const port = 8776;
  const s = await scene(t, address, port, 'redis');
  const cli = (cmd: string): Promise<string> =>
    s.cli.exec(`redis-cli -h ${address} -p ${port} ${cmd}`).then((r) => r.stdout.trim());
  // Some data besides the client's counter, written through a connection of its own.
  const keys = Array.from({ length: 500 }, (_, i) => `SET key${i} value${i}`).join('\n');
  t.equal((await s.cli.exec(`redis-cli -h ${address} -p ${port}`, { input: `${keys}\n` })).status, 0);
  t.equal(await cli('DBSIZE'), '501', "the client's counter and 500 keys");
  const r = await migrateWith(s, address, ['--json']);
  t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
  t.equal((JSON.parse(r.stdout) as Record<string, number>)['dst_pid'], s.server.pid);
  t.comment(`downtime ${(JSON.parse(r.stdout) as Record<string, number>)['downtime_ms']} ms`);
  t.equal((await s.dst.exec(`test -e /proc/${s.server.pid}`)).status, 0, 'Redis runs on DST');
  await moreAnswers(s, 20, 30_000);
  oneConnectionCounting(t, s);
  t.equal(await cli('GET key377'), 'value377', 'its data is there');
  t.equal(await cli('DBSIZE'), '501');
  t.equal(await nftTables(s.src), '', 'no network lock is left on SRC');
  t.equal(await nftTables(s.dst), '', 'nor on DST');
  await s.client.kill('SIGKILL');
  const total = s.answers().length;
  t.equal(await cli('GET counter'), String(total), 'the counter is what the client saw');
  t.equal(await cli('SHUTDOWN NOSAVE'), '', 'and it shuts down when asked');
});

t.test('a migration that fails after the address moved gives it back to SRC', { skip: needsRoot }, async (t) => {
  const address = '198.19.0.11';
  const port = 8772;
  const s = await scene(t, address, port);
  // DST's port is taken: the restore of the listening socket fails there.
  const squatter = s.dst.spawn([
    'python3',
    '-c',
    `import socket,time\ns=socket.socket()\ns.bind(("0.0.0.0",${port}))\ns.listen()\ntime.sleep(600)`,
  ]);
  t.teardown(() => squatter.kill('SIGKILL'));
  await sleep(500); // the squatter binds
  const r = await migrateWith(s, address);
  t.not(r.status, 0, 'criu-migrate fails');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /Migration failed .*restore on DST.*the source runs on/);
  t.ok(await holds(s.src, address), 'SRC holds the address again');
  t.notOk(await holds(s.dst, address), 'DST does not');
  await moreAnswers(s, 20, 30_000);
  oneConnectionCounting(t, s);
  t.equal(await nftTables(s.src), '', 'no network lock is left on SRC');
  t.equal(await nftTables(s.dst), '', 'nor on DST');
  await s.client.kill('SIGKILL');
  const total = s.answers().length;
  await s.src.exec(`kill -TERM ${s.server.pid}`);
  await s.server.waitFor(`BYE ${total}`);
  t.pass('the server ends on SRC with the count the client saw');
});

t.test(
  'criu-migrate refuses an address SRC does not hold, before anything is frozen',
  { skip: needsRoot },
  async (t) => {
    const address = '198.19.0.12';
    const s = await scene(t, address, 8773);
    const r = await migrateWith(s, '198.19.0.99');
    t.not(r.status, 0);
    t.match(r.stderr, /does not hold 198\.19\.0\.99/);
    await moreAnswers(s, 5, 10_000);
    oneConnectionCounting(t, s);
  },
);

t.test(
  'with --tcp-close a client migrates without its connection and connects again from DST',
  { skip: needsRoot },
  async (t) => {
    const [src, dst, srv] = await simHosts(['src', 'dst', 'srv'], { t });
    if (src === undefined || dst === undefined || srv === undefined) throw new Error('no hosts');
    const dir = t.testdir();
    const a = await startAgent(t, src, dir);
    const b = await startAgent(t, dst, dir);
    const port = 8775;
    writeFileSync(path.join(dir, 'counter.py'), ASYNCIO_COUNTER);
    writeFileSync(path.join(dir, 'client.py'), RECONNECTING_CLIENT);
    const server = srv.spawn([
      'python3',
      path.join(dir, 'counter.py'),
      '0.0.0.0',
      String(port),
      path.join(dir, 'server.txt'),
    ]);
    t.teardown(() => server.kill('SIGKILL'));
    await poll(() => existsSync(path.join(dir, 'server.txt')), 'the server to listen', 10_000);
    const client = await startOnHost(
      t,
      src,
      ['/usr/bin/env', '-i', 'python3', path.join(dir, 'client.py'), srv.addr, String(port)],
      path.join(dir, 'client.txt'),
    );
    const answers = (): number[] => [...client.report().matchAll(/^GOT (\d+)$/gm)].map((m) => Number(m[1]));
    await poll(() => answers().length >= 5, 'five answers', 10_000);
    const r = await runMigrate([
      '--json',
      '--token-file',
      tokenFile(dir),
      '--tcp-close',
      a.target,
      b.target,
      String(client.pid),
    ]);
    t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
    t.equal((await dst.exec(`test -e /proc/${client.pid}`)).status, 0, 'the client runs on DST');
    const before = answers().length;
    await poll(
      () => /RECONNECTED/.test(client.report()) && answers().length >= before + 5,
      'five answers from DST',
      20_000,
    );
    t.match(client.report(), /LOST /, 'it found its connection lost');
    const got = answers();
    t.ok(
      got.every((n, i) => i === 0 || n > (got[i - 1] as number)),
      `the server's count goes on (${got.join(' ')})`,
    );
    t.equal(await nftTables(src), '', 'no network lock on SRC');
    await dst.exec(`kill -KILL ${client.pid}`);
  },
);
