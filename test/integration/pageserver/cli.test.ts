// The page-server command lines: the standalone `page-server` (in process and as a daemon, as a
// script would run it) and `criu page-server`'s handler, each serving one session and exiting 0
// after CLOSE, 1 with one line on stderr otherwise.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { runPageServerCmd } from '../../../src/cli/page-server-cmd.js';
import { runPageServerCli } from '../../../src/cli/page-server.js';
import { toOptions } from '../../../src/cli/options.js';
import type { CliIo } from '../../../src/cli/commands.js';
import { readPagemap } from '../../../src/images/index.js';
import { PageServerClient } from '../../../src/pageserver/client.js';
import { poll } from '../../helpers/cr.js';
import { connectedPair } from '../../helpers/page-server.js';
import { ROOT } from '../../helpers/fixture.js';

function captureIo(): CliIo & { out: () => string; err: () => string } {
  let out = '';
  let err = '';
  return {
    stdout: (s) => (out += s),
    stderr: (s) => (err += s),
    out: () => out,
    err: () => err,
  };
}

/** Wait until `get()` shows "listening on ...:PORT" and return the port. */
async function portFrom(get: () => string, timeoutMs = 20_000): Promise<number> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const m = /listening on (?:\S+:|port )(\d+)/.exec(get());
    if (m !== null) return Number(m[1]);
    if (Date.now() > until) throw new Error(`no "listening on" line in: ${get()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function sendOnePage(port: number, token?: string): Promise<void> {
  const c = await PageServerClient.connect({ port, ...(token === undefined ? {} : { token }) });
  await c.open({ type: 'task', id: 11 });
  await c.addPresentBytes(0x5000n, Buffer.alloc(4096, 0x5a));
  await c.close();
}

t.test('page-server: one session, exit 0, images and log in -D', async (t) => {
  const dir = t.testdir();
  const io = captureIo();
  const code = runPageServerCli(['--port', '0', '-D', dir, '-v4'], io);
  await sendOnePage(await portFrom(io.out));
  t.equal(await code, 0, io.err());
  t.equal(io.err(), '');
  t.same((await readPagemap(join(dir, 'pagemap-11.img'))).runs, [{ vaddr: 0x5000n, nrPages: 1, flags: 4 }]);
  t.match(readFileSync(join(dir, 'page-server.log'), 'utf8'), /stored pages-1\.img, pagemap-11\.img/);
});

t.test('page-server --token-file: a client without the token makes it exit 1', async (t) => {
  const dir = t.testdir({ tok: 'letmein\nignored second line\n' });
  const io = captureIo();
  const code = runPageServerCli(['--port', '0', '-D', dir, '--token-file', join(dir, 'tok')], io);
  const port = await portFrom(io.out);
  await t.rejects(sendOnePage(port), /./);
  t.equal(await code, 1);
  t.match(
    io.err(),
    /^Error \(page-server\): Protocol error with 127\.0\.0\.1:\d+: the client did not present a token \(refused\)\n$/,
  );
  t.notOk(existsSync(join(dir, 'pagemap-11.img')));

  const io2 = captureIo();
  const code2 = runPageServerCli(['--port', '0', '-D', dir, '--token-file', join(dir, 'tok')], io2);
  await sendOnePage(await portFrom(io2.out), 'letmein');
  t.equal(await code2, 0, io2.err());
});

t.test('page-server usage errors', async (t) => {
  const io = captureIo();
  t.equal(await runPageServerCli(['-D', t.testdir()], io), 1);
  t.match(io.err(), /--port/);
  const io2 = captureIo();
  t.equal(await runPageServerCli(['--port', '0', '-D', t.testdir(), '--token', 'a', '--token-file', 'b'], io2), 1);
  t.match(io2.err(), /exclude each other/);
  const io3 = captureIo();
  t.equal(await runPageServerCli(['--port', '0', '-D', '/nonexistent/criu-ts'], io3), 1);
  t.match(io3.err(), /images directory does not exist/);
});

t.test('criu page-server handler: Options mapped, --prev-images-dir kept', async (t) => {
  const root = t.testdir({ parent: {}, child: {} });
  const io = captureIo();
  const opts = toOptions('page-server', {
    imagesDir: join(root, 'child'),
    port: '0',
    prevImagesDir: '../parent',
    token: 'tok',
  });
  const code = runPageServerCmd(opts, io);
  await sendOnePage(await portFrom(io.out), 'tok');
  t.equal(await code, 0, io.err());
  t.ok(existsSync(join(root, 'child', 'parent')), 'the parent link');
  await t.rejects(runPageServerCmd(toOptions('page-server', { imagesDir: root }), io), /needs a port/);
});

t.test('page-server -d: returns once listening, pidfile, serves on, exits after CLOSE', async (t) => {
  const dir = t.testdir();
  const pidfile = join(dir, 'ps.pid');
  writeFileSync(join(dir, 'tok'), 'x9\n');
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      join(ROOT, 'src/cli/page-server.ts'),
      '-d',
      '--port',
      '0',
      '-D',
      dir,
      '--pidfile',
      pidfile,
      '--token-file',
      join(dir, 'tok'),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((r) => child.on('close', r));
  t.equal(code, 0, err);
  const port = await portFrom(() => out, 0);
  const pid = Number(readFileSync(pidfile, 'utf8'));
  t.not(pid, child.pid, 'the pidfile names the server, not the command');
  t.doesNotThrow(() => process.kill(pid, 0), 'the server runs on');
  await sendOnePage(port, 'x9');
  for (let i = 0; i < 200; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  t.throws(() => process.kill(pid, 0), 'the server exited after the session');
  t.ok(existsSync(join(dir, 'pagemap-11.img')));
});

t.test('criu page-server --status-fd: one NUL byte once listening, then the fd is closed', async (t) => {
  for (const daemon of [[], ['-d']]) {
    const dir = t.testdir();
    const child = spawn(
      process.execPath,
      [join(ROOT, 'bin/criu.js'), 'page-server', '--port', '0', '-D', dir, '--status-fd', '3', ...daemon],
      { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] },
    );
    const closed = new Promise<number | null>((r) => child.on('close', r));
    let out = '';
    let err = '';
    child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
    const status = child.stdio[3] as NodeJS.ReadableStream;
    const bytes: Buffer[] = [];
    status.on('data', (b: Buffer) => bytes.push(b));
    // The pipe ends when the fd is closed: by then the server must listen.
    await new Promise((r) => status.on('end', r));
    t.same(Buffer.concat(bytes), Buffer.from([0]), `${daemon.join(' ') || 'foreground'}: one NUL byte`);
    const port = await portFrom(() => out, 5000);
    await sendOnePage(port);
    t.equal(await closed, 0, err);
    if (daemon.length > 0)
      await poll(() => existsSync(join(dir, 'pagemap-11.img')), 'the daemon stored the page', 10_000);
    t.ok(existsSync(join(dir, 'pagemap-11.img')), 'the session went through');
  }
  const io = captureIo();
  const bad = toOptions('page-server', { imagesDir: t.testdir(), port: '0', statusFd: '987' });
  await t.rejects(runPageServerCmd(bad, io), /Cannot write to --status-fd 987: EBADF/);
});

t.test('page-server --ps-socket: serves the client at the other end of a connection it is given', async (t) => {
  const dir = t.testdir();
  const { client, accepted } = await connectedPair();
  const io = captureIo();
  // In-process: the fd is this process's own, as a parent's would be after exec.
  const code = runPageServerCli(['--ps-socket', String(accepted.fd), '-D', dir], io);
  const c = await PageServerClient.connect({ port: 0, fd: client.fd });
  await c.open({ type: 'task', id: 11 });
  await c.addPresentBytes(0x5000n, Buffer.alloc(4096, 0x5a));
  await c.close();
  t.equal(await code, 0, io.err());
  t.equal(io.out(), '', 'no "listening" line: it does not listen');
  t.same((await readPagemap(join(dir, 'pagemap-11.img'))).runs, [{ vaddr: 0x5000n, nrPages: 1, flags: 4 }]);
  const io2 = captureIo();
  t.equal(await runPageServerCli(['--ps-socket', '7', '-d', '-D', dir], io2), 1);
  t.match(io2.err(), /--ps-socket and -d exclude each other/);
});
