/**
 * CRIU's RPC as criu-ts serves it (src/rpc/): `criu swrk FD` started by its client, and
 * `criu service` listening on a path. Proved by what the client gets back and by the tasks
 * themselves: a pre-dump loop on one connection ends in a final dump that RESTORE brings back, and
 * the restored task checks every page of its memory (PASS/FAIL). Errors come back as CRIU's do
 * (success=false, cr_errno, cr_errmsg), whatever the client sends.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
} from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';

import { readEntries, readImage } from '../../../src/images/index.js';
import {
  decodeResp,
  encodeReq,
  ReqType,
  type CriuOpts,
  type CriuReq,
  type CriuResp,
} from '../../../src/rpc/messages.js';
import { PageServerClient } from '../../../src/pageserver/client.js';
import { PageServer } from '../../../src/pageserver/server.js';
import { loadTlsCredentials, type TlsCredentials } from '../../../src/pageserver/tls.js';
import { Connection } from '../../../src/pageserver/socket.js';
import { RpcSocket } from '../../../src/rpc/socket.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_DGRAM } from '../../../src/kernel/constants.js';
import * as sys from '../../../src/sys/native.js';
import { endExpectPass, poll, startWorkload, taskState, waitGone } from '../../helpers/cr.js';
import { makePki } from '../../helpers/pki.js';
import { CRIU_BIN, request, startSwrk } from '../../helpers/rpc.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, process_vm_readv)';
const ESRCH = 3;
const EEXIST = 17;
const EACCES = 13;
const EBADRQC = 56;

/** An images directory opened as the client's fd (what libcriu passes as images_dir_fd). */
function dirFd(t: Test, dir: string): number {
  mkdirSync(dir, { recursive: true });
  const fd = openSync(dir, 'r');
  t.teardown(() => closeSync(fd));
  return fd;
}

async function pagesWritten(dir: string): Promise<number> {
  const e = (await readImage(path.join(dir, 'stats-dump'), 'STATS')).records[0]?.entry['dump'] as Record<
    string,
    unknown
  >;
  return Number(e['pages_written']);
}

t.test('VERSION and FEATURE_CHECK on one connection (keep_open), then the worker ends', async (t) => {
  const c = startSwrk();
  t.teardown(() => c.close());
  const v = await c.call({ type: ReqType.VERSION, keep_open: true });
  t.equal(v.type, ReqType.VERSION);
  t.equal(v.success, true);
  t.match(v.version, { major_number: 4, minor_number: 2, name: /^criu-ts / });
  const f = await c.call({ type: ReqType.FEATURE_CHECK, features: { mem_track: true } });
  t.equal(f.success, true);
  t.same(f.features, { mem_track: true, lazy_pages: false, pidfd_store: false });
  t.equal(await c.exited, 0, 'a request without keep_open ends the worker');
});

t.test('CHECK', { skip: needsRoot }, async (t) => {
  const c = startSwrk();
  t.teardown(() => c.close());
  const r = await c.call({ type: ReqType.CHECK });
  t.equal(r.success, true, r.cr_errmsg ?? '');
  t.equal(await c.exited, 0);
});

t.test('a pre-dump loop on one connection, the final dump, and RESTORE', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_incr', dir, ['4096', '8']);
  t.teardown(() => w.kill());
  const fds = [1, 2, 3, 4].map((n) => dirFd(t, path.join(dir, String(n))));
  const step = async (k: number): Promise<number> => {
    process.kill(w.pid, 'SIGUSR1');
    await w.waitFor(`STEP ${k} `);
    const m = new RegExp(`STEP ${k} DIRTIED (\\d+) NEW (\\d+)`).exec(w.report());
    return Number(m?.[1]) + Number(m?.[2]);
  };
  const c = startSwrk();
  t.teardown(() => c.close());
  const opts = (n: number): CriuOpts => ({
    images_dir_fd: fds[n - 1] as number,
    pid: w.pid,
    log_level: 4,
    ...(n > 1 ? { parent_img: `../${n - 1}` } : {}),
  });
  const first = await c.call({ type: ReqType.PRE_DUMP, opts: opts(1) });
  t.equal(first.type, ReqType.PRE_DUMP);
  t.equal(first.success, true, first.cr_errmsg ?? '');
  t.equal((await pagesWritten(path.join(dir, '1'))) > 4096, true, 'the first pre-dump took everything');
  for (const n of [2, 3]) {
    const dirtied = await step(n - 1);
    const r = await c.call({ type: ReqType.PRE_DUMP, opts: opts(n) });
    t.equal(r.success, true, r.cr_errmsg ?? '');
    const written = await pagesWritten(path.join(dir, String(n)));
    // The fixture's own stack and data pages change too: a few more than it dirtied on purpose.
    t.ok(written >= dirtied && written <= dirtied + 16, `pre-dump ${n}: ${written} pages for ${dirtied} dirtied`);
  }
  await step(3);
  const d = await c.call({ type: ReqType.DUMP, opts: { ...opts(4), track_mem: true } });
  t.equal(d.type, ReqType.DUMP);
  t.equal(d.success, true, d.cr_errmsg ?? '');
  t.same(d.dump, { restored: false });
  t.equal(await c.exited, 0, 'the loop ended with the dump');
  t.ok(existsSync(path.join(dir, '4', 'criu.log')), 'each request logs to criu.log in its images directory');
  await waitGone(w.pid);

  const r = startSwrk();
  t.teardown(() => r.close());
  const res = await r.call({ type: ReqType.RESTORE, opts: { images_dir_fd: fds[3] as number, log_level: 4 } });
  t.equal(res.success, true, res.cr_errmsg ?? '');
  t.same(res.restore, { pid: w.pid }, 'the task is back with its pid');
  t.equal(await r.exited, 0);
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS');
  t.notMatch(w.report(), 'FAIL');
});

t.test('failures come back as CRIU reports them', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const fd = dirFd(t, dir);
  const missing = startSwrk();
  t.teardown(() => missing.close());
  const r = await missing.call({ type: ReqType.DUMP, opts: { images_dir_fd: fd, pid: 4194303 } });
  t.match(r, { type: ReqType.DUMP, success: false, cr_errno: ESRCH, cr_errmsg: /no such process/ });
  t.equal(await missing.exited, 1);
  t.match(readFileSync(path.join(dir, 'criu.log'), 'utf8'), /Error \(criu\): .*no such process/);

  const refused = startSwrk();
  t.teardown(() => refused.close());
  const o = await refused.call({ type: ReqType.DUMP, opts: { images_dir_fd: fd, pid: process.pid, lazy_pages: true } });
  t.match(o, { success: false, cr_errno: EBADRQC, cr_errmsg: /lazy_pages is not supported/ });

  const noDir = startSwrk();
  t.teardown(() => noDir.close());
  t.match(await noDir.call({ type: ReqType.DUMP, opts: { images_dir_fd: -1, pid: process.pid } }), {
    success: false,
    cr_errno: EBADRQC,
    cr_errmsg: /no images directory/,
  });

  const keep = startSwrk();
  t.teardown(() => keep.close());
  t.match(await keep.call({ type: ReqType.DUMP, keep_open: true, opts: { images_dir_fd: fd, pid: 1 } }), {
    success: false,
    cr_errmsg: /keep_open is not allowed for DUMP/,
  });

  const garbage = startSwrk();
  t.teardown(() => garbage.close());
  t.match(await garbage.callRaw(Buffer.from([0xff, 0xff, 0xff])), {
    type: ReqType.EMPTY,
    success: false,
    cr_errmsg: /does not decode/,
  });
  t.equal(await garbage.exited, 1);

  const unknown = startSwrk();
  t.teardown(() => unknown.close());
  t.match(await unknown.call({ type: 99 }), {
    type: ReqType.EMPTY,
    success: false,
    cr_errmsg: /Invalid request type 99/,
  });
});

t.test('RESTORE of a task whose PID is in use: EEXIST', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_incr', dir, ['64', '8']);
  t.teardown(() => w.kill());
  const img = dirFd(t, path.join(dir, 'img'));
  const d = startSwrk();
  t.teardown(() => d.close());
  t.equal(
    (await d.call({ type: ReqType.DUMP, opts: { images_dir_fd: img, pid: w.pid, leave_running: true } })).success,
    true,
  );
  const r = startSwrk();
  t.teardown(() => r.close());
  t.match(await r.call({ type: ReqType.RESTORE, opts: { images_dir_fd: img } }), {
    type: ReqType.RESTORE,
    success: false,
    cr_errno: EEXIST,
    cr_errmsg: new RegExp(`PID ${w.pid} is in use`),
  });
  t.ok(existsSync(`/proc/${w.pid}`), 'the running task is untouched');
});

t.test(
  'tcp_close: a connection dumped without its state, and a RESTORE that needs it too',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_state', dir, ['tcp-conn']);
    t.teardown(() => w.kill());
    const imgDir = path.join(dir, 'img');
    const img = dirFd(t, imgDir);
    const d = startSwrk();
    t.teardown(() => d.close());
    const dumped = await d.call({
      type: ReqType.DUMP,
      opts: { images_dir_fd: img, pid: w.pid, leave_running: true, tcp_close: true },
    });
    t.equal(dumped.success, true, String(dumped.cr_errmsg));
    t.equal((await readEntries(path.join(imgDir, 'inventory.img'), 'INVENTORY'))[0]?.['tcp_close'], true);
    const r = startSwrk();
    t.teardown(() => r.close());
    t.match(await r.call({ type: ReqType.RESTORE, opts: { images_dir_fd: img } }), {
      success: false,
      cr_errmsg: /dumped with --tcp-close/,
    });
    await endExpectPass(t, w);
  },
);

t.test('tcp_skip_in_flight: a listener with a connection waiting is dumped', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_state', dir, ['tcp-waiting']);
  t.teardown(() => w.kill());
  const img = dirFd(t, path.join(dir, 'img'));
  const c = startSwrk();
  t.teardown(() => c.close());
  const opts = { images_dir_fd: img, pid: w.pid, leave_running: true };
  t.match(await c.call({ type: ReqType.DUMP, opts }), { success: false, cr_errmsg: /wait in its accept queue/ });
  const d = startSwrk();
  t.teardown(() => d.close());
  const dumped = await d.call({ type: ReqType.DUMP, opts: { ...opts, tcp_skip_in_flight: true } });
  t.equal(dumped.success, true, String(dumped.cr_errmsg));
  await endExpectPass(t, w);
});

t.test('a pre-dump loop only goes on with PRE_DUMP or DUMP', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_incr', dir, ['64', '8']);
  t.teardown(() => w.kill());
  const c = startSwrk();
  t.teardown(() => c.close());
  const fd = dirFd(t, path.join(dir, '1'));
  t.equal((await c.call({ type: ReqType.PRE_DUMP, opts: { images_dir_fd: fd, pid: w.pid } })).success, true);
  t.match(await c.call({ type: ReqType.VERSION }), { success: false, cr_errmsg: /Bad request sequence/ });
  t.equal(await c.exited, 1);
  t.ok(existsSync(`/proc/${w.pid}`), 'the task runs on');
});

t.test('a page server started by RPC, and WAIT_PID for it', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const c = startSwrk();
  t.teardown(() => c.close());
  const ps = await c.call({
    type: ReqType.PAGE_SERVER_CHLD,
    keep_open: true,
    opts: { images_dir_fd: dirFd(t, dir), ps: { port: 0 } },
  });
  t.equal(ps.success, true, ps.cr_errmsg ?? '');
  const pid = ps.ps?.pid as number;
  t.ok((ps.ps?.port ?? 0) > 0, `it listens on port ${ps.ps?.port}`);
  t.ok(existsSync(`/proc/${pid}`));
  process.kill(pid, 'SIGTERM');
  const w = await c.call({ type: ReqType.WAIT_PID, pid });
  t.equal(w.success, true);
  t.equal((w.status ?? 0) & 0x7f, 15, 'ended by SIGTERM');
  t.equal(await c.exited, 0);
});

t.test('ps.fd: the pages go through a socket the client connected, then RESTORE', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_incr', dir, ['64', '8']);
  t.teardown(() => w.kill());
  const psDir = path.join(dir, 'received');
  mkdirSync(psDir);
  const server = await PageServer.listen({ imagesDir: psDir, port: 0 });
  const served = server.serve();
  served.catch(() => undefined);
  // The client's own connection (p.haul carries the page stream through its channel this way).
  const conn = await Connection.connect('127.0.0.1', server.port);
  const c = startSwrk(process.env, [conn.fd]);
  conn.close(); // the worker has its own copy, as fd 4
  t.teardown(() => c.close());
  const imgs = path.join(dir, 'img');
  const r = await c.call({ type: ReqType.DUMP, opts: { images_dir_fd: dirFd(t, imgs), pid: w.pid, ps: { fd: 4 } } });
  t.equal(r.success, true, r.cr_errmsg ?? '');
  const summary = await served;
  t.ok(summary.nrPagesReceived >= 64, `the page server received ${summary.nrPagesReceived} pages`);
  t.notOk(existsSync(path.join(imgs, `pagemap-${w.pid}.img`)), 'no pagemap written locally');
  await waitGone(w.pid);
  for (const f of summary.files) copyFileSync(path.join(psDir, f), path.join(imgs, f));
  const rs = startSwrk();
  t.teardown(() => rs.close());
  const res = await rs.call({ type: ReqType.RESTORE, opts: { images_dir_fd: dirFd(t, imgs) } });
  t.equal(res.success, true, res.cr_errmsg ?? '');
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS').catch(() => undefined);
  t.match(w.report(), /PASS/, w.report());
  t.notMatch(w.report(), /FAIL/);
});

t.test(
  'ps.fd that is no connected stream socket: one clear error, the task untouched',
  { skip: needsRoot },
  async (t) => {
    const dir = t.testdir();
    const w = await startWorkload('cr_incr', dir, ['16', '8']);
    t.teardown(() => w.kill());
    const file = openSync(path.join(dir, 'not-a-socket'), 'w');
    t.teardown(() => closeSync(file));
    const c = startSwrk(process.env, [file]);
    t.teardown(() => c.close());
    const r = await c.call({
      type: ReqType.PRE_DUMP,
      opts: { images_dir_fd: dirFd(t, path.join(dir, 'img')), pid: w.pid, ps: { fd: 4 } },
    });
    t.match(r, { success: false, cr_errmsg: /fd 4 is not a socket/ });
    t.ok(existsSync(`/proc/${w.pid}`), 'the task runs on');
    t.equal(taskState(w.pid) === 't' || taskState(w.pid) === 'T', false, 'not left stopped');
  },
);

/** Start `criu service`, resolved once its socket answers. */
async function startService(t: Test, sock: string, workDir: string): Promise<ReturnType<typeof spawn>> {
  const child = spawn(CRIU_BIN, ['service', '--address', sock, '-W', workDir, '-v4'], { stdio: 'ignore' });
  t.teardown(() => child.kill('SIGKILL'));
  for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
  return child;
}

/** A directory for service sockets: t.testdir() paths are too long for a unix socket. */
function socketDir(t: Test): string {
  const dir = mkdtempSync('/tmp/criu-ts-rpc-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  return dir;
}

t.test('criu service: a worker per connection, SIGTERM ends it', { skip: needsRoot }, async (t) => {
  const dir = socketDir(t);
  const sock = path.join(dir, 'criu.sock');
  const service = await startService(t, sock, dir);
  t.equal(statSync(sock).mode & 0o777, 0o666, "anyone may connect, as to CRIU's");
  const [a, b] = await Promise.all([RpcSocket.connect(sock), RpcSocket.connect(sock)]);
  t.teardown(() => {
    a.close();
    b.close();
  });
  const [ra, rb] = await Promise.all([request(a, { type: ReqType.VERSION }), request(b, { type: ReqType.CHECK })]);
  t.equal(ra.success, true);
  t.equal(rb.success, true, rb.cr_errmsg ?? '');
  const stopped = new Promise<number | null>((resolve) => service.on('exit', (code) => resolve(code)));
  service.kill('SIGTERM');
  t.equal(await stopped, 143, 'exit 128 + SIGTERM, as other interrupted criu commands');
  t.match(readFileSync(path.join(dir, 'service.log'), 'utf8'), /Connected: worker pid \d+/);
});

t.test('criu service -d returns once it listens, and writes --pidfile', { skip: needsRoot }, async (t) => {
  const dir = socketDir(t);
  const sock = path.join(dir, 'criu.sock');
  const r = spawnSync(CRIU_BIN, ['service', '-d', '--address', sock, '-W', dir, '--pidfile', 'service.pid'], {
    encoding: 'utf8',
  });
  t.equal(r.status, 0, r.stderr);
  const pid = Number(readFileSync(path.join(dir, 'service.pid'), 'utf8'));
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  });
  t.ok(existsSync(`/proc/${pid}`), 'the service runs on');
  const s = await RpcSocket.connect(sock);
  t.teardown(() => s.close());
  t.equal((await request(s, { type: ReqType.VERSION })).success, true);
  process.kill(pid, 'SIGTERM');
  await waitGone(pid);
});

t.test('a client of another user gets nothing but VERSION and FEATURE_CHECK', { skip: needsRoot }, async (t) => {
  const dir = socketDir(t);
  const sock = path.join(dir, 'criu.sock');
  await startService(t, sock, dir);
  // A client as uid 65534 (nobody), in Python: the socket module speaks SOCK_SEQPACKET.
  const script = [
    'import os, socket, sys',
    'os.setgid(65534); os.setuid(65534)',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1])',
    's.send(bytes([8, 3])); sys.stdout.write(s.recv(4096).hex())', // criu_req { type: CHECK }
  ].join('\n');
  const out = spawnSync('python3', ['-c', script, sock], { encoding: 'utf8' });
  t.equal(out.status, 0, out.stderr);
  t.match(decodeResp(Buffer.from(out.stdout, 'hex')), {
    type: ReqType.CHECK,
    success: false,
    cr_errno: EACCES,
    cr_errmsg: /uid 65534/,
  });
});

/** Send `req`, answer every NOTIFY with `answer(script)`, return the notifications and the final response. */
async function callNotified(
  c: ReturnType<typeof startSwrk>,
  req: CriuReq,
  answer: (script: string) => boolean,
): Promise<{ notes: string[]; resp: CriuResp }> {
  await c.socket.send(encodeReq(req));
  const notes: string[] = [];
  for (;;) {
    const bytes = await c.socket.receive();
    if (bytes === null) throw new Error('criu closed the connection');
    const resp = decodeResp(bytes);
    if (resp.type !== ReqType.NOTIFY) return { notes, resp };
    const script = resp.notify?.script ?? '?';
    notes.push(resp.notify?.pid === undefined ? script : `${script} ${resp.notify.pid}`);
    await c.socket.send(encodeReq({ type: ReqType.NOTIFY, notify_success: answer(script) }));
  }
}

t.test('notify_scripts: the client hears of each action and decides', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_incr', dir, ['256', '8']);
  t.teardown(() => w.kill());
  const refuse = startSwrk();
  t.teardown(() => refuse.close());
  const failed = await callNotified(
    refuse,
    {
      type: ReqType.DUMP,
      opts: { images_dir_fd: dirFd(t, path.join(dir, 'refused')), pid: w.pid, notify_scripts: true },
    },
    (script) => script !== 'post-dump',
  );
  t.same(failed.notes, ['pre-dump', 'post-dump']);
  t.match(failed.resp, { type: ReqType.DUMP, success: false, cr_errmsg: /post-dump/ });
  t.ok(existsSync(`/proc/${w.pid}`), 'a refused post-dump leaves the task running');

  const img = path.join(dir, 'img');
  const d = startSwrk();
  t.teardown(() => d.close());
  const dumped = await callNotified(
    d,
    { type: ReqType.DUMP, opts: { images_dir_fd: dirFd(t, img), pid: w.pid, notify_scripts: true } },
    () => true,
  );
  t.same(dumped.notes, ['pre-dump', 'post-dump']);
  t.equal(dumped.resp.success, true, dumped.resp.cr_errmsg ?? '');
  await waitGone(w.pid);

  const r = startSwrk();
  t.teardown(() => r.close());
  const restored = await callNotified(
    r,
    { type: ReqType.RESTORE, opts: { images_dir_fd: dirFd(t, img), notify_scripts: true } },
    () => true,
  );
  t.same(restored.notes, ['pre-restore', `post-restore ${w.pid}`, 'pre-resume', 'post-resume']);
  t.match(restored.resp, { type: ReqType.RESTORE, success: true, restore: { pid: w.pid } });
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS');
  t.notMatch(w.report(), 'FAIL');
});

t.test('PAGE_SERVER with the tls fields serves inside TLS', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const pkiDir = path.join(dir, 'pki');
  const images = path.join(dir, 'images');
  mkdirSync(pkiDir);
  mkdirSync(images);
  const pki = makePki(pkiDir);
  const server = pki.issue('server', ['IP:127.0.0.1']);
  /** A PAGE_SERVER request with the tls fields; resolves with the server's port. */
  const startServer = async (): Promise<number> => {
    const c = startSwrk();
    t.teardown(() => c.close());
    const ps = await c.call({
      type: ReqType.PAGE_SERVER,
      opts: {
        images_dir_fd: dirFd(t, images),
        ps: { address: '127.0.0.1', port: 0 },
        tls: true,
        tls_cacert: pki.ca,
        tls_cert: server.cert,
        tls_key: server.key,
      },
    });
    t.equal(ps.success, true, ps.cr_errmsg ?? '');
    t.equal(await c.exited, 0);
    return ps.ps?.port as number;
  };
  const sendPage = async (port: number, tls?: TlsCredentials): Promise<void> => {
    const client = await PageServerClient.connect({ port, timeoutMs: 5000, ...(tls === undefined ? {} : { tls }) });
    await client.open({ type: 'task', id: 1 });
    await client.addPresentBytes(0x1000n, Buffer.alloc(4096, 1));
    await client.close();
  };
  await t.rejects(sendPage(await startServer()), /./, 'a plain client gets nothing stored');
  const tls = await loadTlsCredentials({ cacert: pki.ca, ...pki.issue('client', ['IP:127.0.0.1']) });
  await sendPage(await startServer(), tls);
  await poll(() => existsSync(path.join(images, 'pagemap-1.img')), 'the pagemap stored', 10_000);
  t.ok(existsSync(path.join(images, 'pages-1.img')), 'inside TLS the page was stored');
});

t.test('pidfd_store_sk: PID reuse detection between pre-dumps by pidfds, as CRIU', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const w = await startWorkload('cr_incr', dir, ['1024', '8']);
  t.teardown(() => w.kill());
  const fds = [1, 2, 3].map((n) => dirFd(t, path.join(dir, String(n))));
  const dgram = (): number => {
    const fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    t.teardown(() => sys.close(fd));
    return fd;
  };
  const store = dgram();
  const opts = (n: number, sk: number): CriuOpts => ({
    images_dir_fd: fds[n - 1] as number,
    pid: w.pid,
    log_level: 4,
    pidfd_store_sk: sk,
    ...(n > 1 ? { parent_img: `../${n - 1}` } : {}),
  });
  const c = startSwrk();
  t.teardown(() => c.close());
  const f = await c.call({ type: ReqType.FEATURE_CHECK, keep_open: true, features: { pidfd_store: true } });
  t.equal(f.features?.pidfd_store, true, 'FEATURE_CHECK offers the pidfd store');
  const r1 = await c.call({ type: ReqType.PRE_DUMP, opts: opts(1, store) });
  t.equal(r1.success, true, r1.cr_errmsg ?? '');
  process.kill(w.pid, 'SIGUSR1');
  await w.waitFor('STEP 1 ');
  const r2 = await c.call({ type: ReqType.PRE_DUMP, opts: opts(2, store) });
  t.equal(r2.success, true, r2.cr_errmsg ?? '');
  const written2 = await pagesWritten(path.join(dir, '2'));
  t.ok(written2 < 200, `the same task, found in the store: only what changed (${written2} pages)`);
  c.close();

  // Another, empty socket with a parent: refused, as CRIU refuses it.
  const c2 = startSwrk();
  t.teardown(() => c2.close());
  const r3 = await c2.call({ type: ReqType.PRE_DUMP, opts: opts(3, dgram()) });
  t.equal(r3.success, false, 'an empty store with a parent is refused');
  t.match(r3.cr_errmsg ?? '', /No pidfds in the pidfd store/);

  // A store whose pidfd for this pid is of a process that has exited: the pid was reused.
  const stale = dgram();
  const name = `\0criu-ts-test-store-${process.pid}`;
  sys.bindUnix(stale, name);
  await sys.connectUnixAsync(stale, name);
  const gone = spawn('sleep', ['0.1']);
  const gonePidfd = sys.pidfdOpen(gone.pid as number, 0);
  await new Promise((r) => gone.on('exit', r));
  const msg = Buffer.alloc(4);
  msg.writeInt32LE(w.pid, 0);
  sys.sendFd(stale, msg, gonePidfd, 0);
  sys.close(gonePidfd);
  const c3 = startSwrk();
  t.teardown(() => c3.close());
  const r4 = await c3.call({ type: ReqType.PRE_DUMP, opts: opts(3, stale) });
  t.equal(r4.success, true, r4.cr_errmsg ?? '');
  const written4 = await pagesWritten(path.join(dir, '3'));
  t.ok(written4 >= 1024, `reuse detected: every page copied again (${written4} pages)`);
  t.match(readFileSync(path.join(dir, '3', 'criu.log'), 'utf8'), /Pid reuse detected for pid/);
  process.kill(w.pid, 'SIGTERM');
  await w.waitFor('PASS');
});
