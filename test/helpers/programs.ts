/**
 * Programs no one here wrote, as test workloads: scripts for python3, node, java and bash that keep
 * state in memory and append "READY pid digest", then "TICK n digest" every 100 ms, to the file
 * named by their last argument, and "BYE n digest" on SIGTERM. The digest covers their in-memory
 * state: it must never change. PROGRAMS starts each as a workload (cr.ts). And a server: a
 * python asyncio counter (ASYNCIO_COUNTER) and its client (askCounter).
 */
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createConnection } from 'node:net';
import path from 'node:path';
import { startWorkload, type Workload } from './cr.js';

export const PYTHON = `
import hashlib, os, signal, sys, time
out = open(sys.argv[-1], 'a', buffering=1)
state = {'squares': [i * i for i in range(20000)], 'names': {str(i): i * 7 for i in range(2000)}}
def digest():
    h = hashlib.sha256(repr(state['squares']).encode())
    h.update(repr(sorted(state['names'].items())).encode())
    return h.hexdigest()[:16]
stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
n = 0
out.write(f"READY {os.getpid()} {digest()}\\n")
while not stop:
    n += 1
    out.write(f"TICK {n} {digest()}\\n")
    time.sleep(0.1)
out.write(f"BYE {n} {digest()}\\n")
`;

export const NODE = `
import { openSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
const fd = openSync(process.argv[process.argv.length - 1], 'a');
const squares = Array.from({ length: 20000 }, (_, i) => i * i);
const names = new Map(Array.from({ length: 2000 }, (_, i) => [String(i), i * 7]));
const digest = () =>
  createHash('sha256').update(JSON.stringify(squares)).update(JSON.stringify([...names])).digest('hex').slice(0, 16);
let n = 0;
writeSync(fd, \`READY \${process.pid} \${digest()}\\n\`);
const timer = setInterval(() => {
  n++;
  writeSync(fd, \`TICK \${n} \${digest()}\\n\`);
}, 100);
process.on('SIGTERM', () => {
  clearInterval(timer);
  writeSync(fd, \`BYE \${n} \${digest()}\\n\`);
  process.exit(0);
});
`;

// read -t on a FIFO nothing writes to: a 100 ms tick without forking (a child would be refused).
export const BASH = `
exec 3<>"$0.fifo"
i=0
trap 'echo "BYE $i x" >>"$0"; exit 0' TERM
echo "READY $$ x" >>"$0"
while :; do
  i=$((i+1))
  echo "TICK $i x" >>"$0"
  read -t 0.1 -u 3 line
done
`;

// Launched from source (java compiles it in memory at start-up): a JVM of some 20 threads (GC,
// JIT compilers, VM thread...), the shutdown hook printing BYE once the main loop has stopped.
export const JAVA = `
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.security.MessageDigest;
import java.util.HashMap;
import java.util.Map;
import java.util.TreeMap;

public class Progress {
  static final long[] squares = new long[20000];
  static final Map<String, Integer> names = new HashMap<>();
  static volatile boolean stop;

  static String digest() throws Exception {
    MessageDigest h = MessageDigest.getInstance("SHA-256");
    for (long s : squares) h.update(Long.toString(s).getBytes());
    h.update(new TreeMap<>(names).toString().getBytes());
    StringBuilder b = new StringBuilder();
    for (byte x : h.digest()) b.append(String.format("%02x", x));
    return b.substring(0, 16);
  }

  public static void main(String[] args) throws Exception {
    PrintStream out = new PrintStream(new FileOutputStream(args[args.length - 1], true), true);
    for (int i = 0; i < squares.length; i++) squares[i] = (long) i * i;
    for (int i = 0; i < 2000; i++) names.put(String.valueOf(i), i * 7);
    Thread main = Thread.currentThread();
    int[] n = {0};
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      stop = true;
      try {
        main.join();
        out.println("BYE " + n[0] + " " + digest());
      } catch (Exception e) {
        out.println("FAIL " + e);
      }
    }));
    out.println("READY " + ProcessHandle.current().pid() + " " + digest());
    while (!stop) {
      n[0]++;
      out.println("TICK " + n[0] + " " + digest());
      Thread.sleep(100);
    }
  }
}
`;

/** Debian's default JVM (OpenJDK 17 here). */
export const JAVA_BIN = '/usr/bin/java';

/** The command running JAVA from `source`; a crash report (hs_err) goes next to it, not into the cwd. */
export function javaCommand(source: string): string[] {
  return [JAVA_BIN, `-XX:ErrorFile=${path.dirname(source)}/hs_err_pid%p.log`, source];
}

export interface Program {
  name: string;
  /** Its exit status once SIGTERM ended it (the JVM exits 143 = 128 + SIGTERM, hooks run or not). */
  termStatus?: number;
  /** Start it in `dir`, its command line after `prefix` (`['/usr/bin/setsid']`, say) if given. */
  start(dir: string, prefix?: readonly string[]): Promise<Workload>;
}

function run(dir: string, prefix: readonly string[], cmd: readonly string[], readyMs?: number): Promise<Workload> {
  const [program, ...args] = [...prefix, ...cmd] as [string, ...string[]];
  return startWorkload(program, dir, args, readyMs);
}

export const PROGRAMS: readonly Program[] = [
  {
    name: 'python3',
    start: (dir, prefix = []) => {
      const script = path.join(dir, 'progress.py');
      writeFileSync(script, PYTHON);
      return run(dir, prefix, ['/usr/bin/env', '-i', 'python3', script]);
    },
  },
  {
    name: 'node',
    start: (dir, prefix = []) => {
      const script = path.join(dir, 'progress.mjs');
      writeFileSync(script, NODE);
      // A clean environment: the test runner's NODE_OPTIONS would load its hooks into the workload.
      return run(dir, prefix, ['/usr/bin/env', '-i', process.execPath, script]);
    },
  },
  {
    name: 'java',
    termStatus: 143,
    start: (dir, prefix = []) => {
      const source = path.join(dir, 'Progress.java');
      writeFileSync(source, JAVA);
      // Compiling at start-up takes a few seconds on a busy machine.
      return run(dir, prefix, ['/usr/bin/env', '-i', ...javaCommand(source)], 30_000);
    },
  },
  {
    name: 'bash',
    start: (dir, prefix = []) => {
      execFileSync('mkfifo', [path.join(dir, 'report.txt.fifo')]);
      return run(dir, prefix, ['/bin/bash', '-c', BASH]);
    },
  },
];

/**
 * A python asyncio server with state (epoll, and a unix socket pair as its self-pipe, which
 * SIGTERM goes through): `python3 counter.py HOST PORT REPORT` answers each line it reads with the
 * next number; "READY pid" once it listens and "BYE n" when SIGTERM ends it, in REPORT. HOST
 * "dual": one IPv6 socket on [::] that takes IPv4 connections too.
 */
/**
 * A client of ASYNCIO_COUNTER that connects again when its connection is lost: `client.py ADDR
 * PORT OUTFILE`. One line a 50 ms, "GOT <n>" for each answer; a lost connection is
 * "LOST <exception> <errno>", then "RECONNECTED" once connected again.
 */
export const RECONNECTING_CLIENT = `
import os, socket, sys, time
out = open(sys.argv[3], "a", buffering=1)
addr = (sys.argv[1], int(sys.argv[2]))
def connect():
    s = socket.create_connection(addr, timeout=5)
    s.settimeout(5)
    return s, s.makefile("r")
s, r = connect()
out.write(f"READY {os.getpid()}\\n")
while True:
    try:
        s.sendall(b"x\\n")
        line = r.readline()
        if not line:
            raise ConnectionError(0, "end of stream")
        out.write(f"GOT {line.strip()}\\n")
    except OSError as e:
        out.write(f"LOST {type(e).__name__} {e.errno}\\n")
        s.close()
        time.sleep(0.1)
        s, r = connect()
        out.write("RECONNECTED\\n")
    time.sleep(0.05)
`;

export const ASYNCIO_COUNTER = `
import asyncio, os, signal, socket, sys
n = 0
def say(line):
    with open(sys.argv[3], "a") as f:
        f.write(line + "\\n")
async def serve(reader, writer):
    global n
    while await reader.readline():
        n += 1
        writer.write(f"{n}\\n".encode())
        await writer.drain()
    writer.close()
async def main():
    if sys.argv[1] == "dual":  # one IPv6 socket for both families: IPv4 peers as ::ffff:a.b.c.d
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", int(sys.argv[2])))
        server = await asyncio.start_server(serve, sock=sock)
    else:
        server = await asyncio.start_server(serve, sys.argv[1], int(sys.argv[2]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    say(f"READY {os.getpid()}")
    async with server:
        await stop.wait()
    say(f"BYE {n}")
asyncio.run(main())
`;

/** Send `lines` lines on one new connection to HOST:PORT (ASYNCIO_COUNTER): the answers. */
export function askCounter(host: string, port: number, lines: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ host, port });
    let got = '';
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write('x\n'.repeat(lines)));
    sock.on('data', (c: string) => {
      got += c;
      if (got.split('\n').length > lines) {
        sock.end();
        resolve(got.trim().split('\n'));
      }
    });
    sock.on('error', reject);
    sock.setTimeout(5000, () => sock.destroy(new Error(`no answer from ${host}:${port}`)));
  });
}

/**
 * A python multiprocessing pool: the parent maps a function over two worker processes (pipes
 * between them, and POSIX semaphores: deleted /dev/shm files all three map), and appends
 * "ROUND <n> <sum>" to the file of argv[1] after each round.
 */
export const PYTHON_POOL = `
import multiprocessing as mp, sys, time
def square(x):
    return x * x
if __name__ == '__main__':
    out = open(sys.argv[1], 'a', buffering=1)
    with mp.Pool(2) as pool:
        n = 0
        while True:
            n += 1
            out.write(f"ROUND {n} {sum(pool.map(square, range(10)))}\\n")
            time.sleep(0.02)
`;

/** GET `urlPath` from an HTTP server at `host`:`port` (a new connection): the body of a 200. */
export function httpGet(port: number, urlPath: string, host = '127.0.0.1'): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = get({ host, port, path: urlPath, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** Wait until GET / at `host`:`port` answers (10 s at most). */
export async function untilServing(port: number, host = '127.0.0.1'): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if ((await httpGet(port, '/', host).catch(() => null)) !== null) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing serves on ${host}:${port}`);
}

/** Debian's nginx (package nginx-light, installed by .ci/run). */
export const NGINX = '/usr/sbin/nginx';

/**
 * An nginx.conf with everything under `dir` (pid file, logs, temp paths): a master and two
 * workers listening on `listen`, answering every request with "pid=<worker's pid> conn=<the
 * connection's serial number>" (a counter in nginx's shared memory zone).
 */
export function nginxConf(dir: string, listen: string): string {
  return `worker_processes 2;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log;
daemon on;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  server {
    listen ${listen};
    location / { return 200 "pid=$pid conn=$connection\\n"; }
  }
}
`;
}

/** Debian's PostgreSQL 15 (package postgresql-15, installed by .ci/run). */
export const PG_BIN = '/usr/lib/postgresql/15/bin';

/** Runs a shell command somewhere (here, or in a simulated host: SimHost.exec). */
export type ShellRunner = (cmd: string) => Promise<{ status: number | null; stdout: string; stderr: string }>;

/** Run `cmd` here with sh -c. */
export const runHere: ShellRunner = (cmd) =>
  new Promise((resolve) => {
    execFile('sh', ['-c', cmd], { encoding: 'utf8' }, (err, stdout, stderr) =>
      resolve({ status: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr }),
    );
  });

export interface Postgres {
  /** The postmaster's pid (in the PID namespace it was started in). */
  pid: number;
  dataDir: string;
  logFile: string;
  /** Run `sql` through psql as the postgres user (`run`: where): its output, unaligned, tuples only. */
  psql(sql: string, run?: ShellRunner): Promise<string>;
}

const quote = (s: string): string => `'${s.replaceAll("'", "'\\''")}'`;
const asPostgres = (argv: readonly string[]): string =>
  ['setpriv', '--reuid=postgres', '--regid=postgres', '--clear-groups', '--', ...argv].map(quote).join(' ');

/**
 * A cluster of its own in `dir` (made by initdb, owned by the postgres user), started by `run`
 * (here unless given) on a unix socket only, in `dir`: resolves once it accepts connections.
 * postgres refuses to run as root, so it runs as the postgres user; `dir` must be one that user
 * can reach (not under /work). `before`: shell commands run first, in the same shell; `under`: a
 * command the server is started by (`unshare --ipc --uts`, say).
 */
export async function startPostgres(
  dir: string,
  port: number,
  opts: { run?: ShellRunner; before?: string; under?: string } = {},
): Promise<Postgres> {
  const run = opts.run ?? runHere;
  const dataDir = path.join(dir, 'data');
  const logFile = path.join(dir, 'postgres.log');
  execFileSync('chown', ['postgres:postgres', dir]);
  const options = ['-k', dir, '-p', String(port), '-c', 'listen_addresses=', '-c', 'fsync=off'].join(' ');
  const init = asPostgres([path.join(PG_BIN, 'initdb'), '-D', dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync']);
  const start = asPostgres([path.join(PG_BIN, 'pg_ctl'), '-D', dataDir, '-l', logFile, '-o', options, 'start', '-w']);
  const r = await run(
    `cd ${quote(dir)} && ${init} >/dev/null && ${opts.before ?? ':'}; ${opts.under ?? ''} ${start} >/dev/null`,
  );
  if (r.status !== 0) throw new Error(`postgres does not start: ${r.stderr}`);
  const pid = Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const psql = async (sql: string, where = run): Promise<string> => {
    const argv = [path.join(PG_BIN, 'psql'), '-h', dir, '-p', String(port), '-U', 'postgres', '-X', '-A', '-t'];
    const q = await where(`${asPostgres([...argv, '-v', 'ON_ERROR_STOP=1', '-c', sql])}`);
    if (q.status !== 0) throw new Error(`psql: ${q.stderr}`);
    return q.stdout.trim();
  };
  return { pid, dataDir, logFile, psql };
}
