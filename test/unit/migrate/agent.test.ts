/**
 * The agent (migrate/agent.ts, agent-ops.ts) and its client (agent-client.ts) over a real
 * WebSocket on 127.0.0.1, with a stand-in `criu` (a shell script that records its command line and
 * plays page-server and restore), and LocalAgent with the same operations. No privileges needed;
 * the real criu runs in test/integration/migrate/.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import t, { type Test } from 'tap';
import WebSocket from 'ws';

import { AgentServer } from '../../../migrate/agent.js';
import { AgentClient, AgentError } from '../../../migrate/agent-client.js';
import { LocalAgent } from '../../../migrate/local-agent.js';
import { CLOSE_AUTH, PROTOCOL_VERSION, decodeMessage, encodeMessage } from '../../../migrate/protocol.js';
import { ProtocolError } from '../../../src/errors.js';
import { createLogger, setLogger } from '../../../src/log.js';
import { loadTlsCredentials } from '../../../src/pageserver/tls.js';
import { makePki } from '../../helpers/pki.js';

const TOKEN = 'correct horse battery staple';

const FAKE_CRIU = `
log=$1; shift
printf '%s\\n' "$*" >> "$log"
cmd=$1; shift
pidfile=; port=; dir=
while [ $# -gt 0 ]; do
  case $1 in --pidfile) pidfile=$2; shift ;; --port) port=$2; shift ;; -D) dir=$2; shift ;; esac
  shift
done
case $cmd in
page-server)
  if [ -e "$dir/FAIL" ]; then echo "Error (criu): Cannot listen: boom" >&2; exit 1; fi
  if [ "$port" = 0 ]; then port=45678; echo "Page server listening on 127.0.0.1:$port"; fi
  echo $$ > "$pidfile"
  while [ ! -e "$dir/DONE" ]; do sleep 0.05; done
  exit 0 ;;
restore)
  if [ -e "$dir/FAIL" ]; then echo "Warn (criu): something" >&2; echo "Error (criu): Cannot restore: bad images" >&2; exit 1; fi
  echo 4242 > "$pidfile"; exit 0 ;;
esac
exit 2
`;

// Every log line of the agent, to prove the token never shows up in it.
const logged: string[] = [];
setLogger(createLogger({ level: 4, file: null, isPerPid: false, stderrWrite: (line) => logged.push(line) }));

async function setup(
  t: Test,
  extra: { authTimeoutMs?: number } = {},
): Promise<{ server: AgentServer; root: string; calls: () => string[]; target: string }> {
  const dir = t.testdir();
  const root = path.join(dir, 'agent');
  const script = path.join(dir, 'fake-criu.sh');
  const log = path.join(dir, 'criu-calls.log');
  writeFileSync(script, FAKE_CRIU);
  writeFileSync(path.join(dir, 'token'), `${TOKEN}\n`);
  const server = await AgentServer.listen({
    address: '127.0.0.1',
    port: 0,
    token: TOKEN,
    tokenFile: path.join(dir, 'token'),
    imagesRoot: root,
    criuCommand: ['/bin/sh', script, log],
    ...extra,
  });
  t.teardown(() => server.close());
  const calls = (): string[] => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []);
  return { server, root, calls, target: `127.0.0.1:${server.port}` };
}

async function connected(t: Test, target: string): Promise<AgentClient> {
  const c = await AgentClient.connect(target, TOKEN);
  t.teardown(() => c.close());
  return c;
}

/** A raw WebSocket to the agent: the frames it sends, and how it closed. */
function raw(target: string): {
  ws: WebSocket;
  messages: unknown[];
  closed: Promise<number>;
  opened: Promise<void>;
} {
  const ws = new WebSocket(`ws://${target}/`);
  const messages: unknown[] = [];
  ws.on('message', (d: Buffer) => messages.push(decodeMessage(d)));
  const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
  const opened = new Promise<void>((r) => ws.once('message', () => r()));
  return { ws, messages, closed, opened };
}

t.test('a wrong token is refused, and the token is never logged', async (t) => {
  const { target } = await setup(t);
  logged.length = 0;
  const err = await AgentClient.connect(target, 'not the token').catch((e: unknown) => e);
  t.type(err, ProtocolError);
  t.match(String((err as Error).message), /refused the token/);
  t.ok(
    logged.some((l) => /refused .*The token is wrong/.test(l)),
    'the agent says why it refused',
  );
  t.notOk(
    logged.some((l) => l.includes(TOKEN) || l.includes('not the token')),
    'neither token appears in the log',
  );
});

t.test('a request before auth gets an error and the connection is closed', async (t) => {
  const { target, calls } = await setup(t);
  const r = raw(target);
  await r.opened;
  t.match(r.messages[0], { kind: 'challenge', protocol: PROTOCOL_VERSION });
  r.ws.send(encodeMessage({ kind: 'request', id: 1, op: 'restore', params: { dir: 'x/y' } }));
  t.equal(await r.closed, CLOSE_AUTH);
  t.match(r.messages[1], {
    kind: 'response',
    id: 1,
    ok: false,
    error: { code: 'EPROTOCOL', message: /Authenticate first/ },
  });
  t.same(calls(), [], 'nothing ran');
});

t.test('garbage and silence are cut off', async (t) => {
  const { target } = await setup(t, { authTimeoutMs: 300 });
  const g = raw(target);
  await g.opened;
  g.ws.send(Buffer.from('not msgpack at all'));
  t.equal(await g.closed, CLOSE_AUTH, 'garbage before auth');
  const s = raw(target);
  await s.opened;
  const start = Date.now();
  t.equal(await s.closed, CLOSE_AUTH, 'no auth in time');
  t.ok(Date.now() - start < 5000);
});

t.test('the right token: hello, and the agent proves it knows the token too', async (t) => {
  const { target, root } = await setup(t);
  const c = await connected(t, target);
  const h = await c.hello();
  t.equal(h.protocol, PROTOCOL_VERSION);
  t.equal(h.imagesRoot, root);
  t.equal(h.pid, process.pid);
  t.ok(h.freeBytes > 0, 'free disk reported');
  t.ok(h.kernel.length > 0 && h.hostname.length > 0);
  t.ok(Array.isArray(h.trackers));
  t.equal(statSync(root).mode & 0o777, 0o700, 'the images root is 0700');
});

t.test('put-file / get-file round trip, list-dir, cleanup', async (t) => {
  const { target, root } = await setup(t);
  const c = await connected(t, target);
  const data = randomBytes(3 * 1024 * 1024 + 17);
  await c.putFile('m1/img', 'pages-1.img', data);
  await c.putFile('m1/img', 'inventory.img', Buffer.from('inv'), 0o640);
  t.same(await c.getFile('m1/img', 'pages-1.img'), data, 'the bytes come back');
  t.equal(statSync(path.join(root, 'm1')).mode & 0o777, 0o700, 'migration dir 0700');
  t.equal(statSync(path.join(root, 'm1/img')).mode & 0o777, 0o700, 'images dir 0700');
  t.equal(statSync(path.join(root, 'm1/img/pages-1.img')).mode & 0o777, 0o600, 'files 0600 by default');
  t.equal(statSync(path.join(root, 'm1/img/inventory.img')).mode & 0o777, 0o640);
  t.same(
    (await c.listDir('m1/img')).map((e) => [e.name, e.sizeBytes]),
    [
      ['inventory.img', 3],
      ['pages-1.img', data.length],
    ],
  );
  const missing = await c.getFile('m1/img', 'nope.img').catch((e: unknown) => e);
  t.type(missing, AgentError);
  t.equal((missing as AgentError).code, 'EIMAGE');
  for (const dir of ['../etc', '/etc', 'm1/../..', '.run'])
    await t.rejects(c.putFile(dir, 'x', Buffer.from('x')), { code: 'EUSAGE' }, `"${dir}" refused`);
  await t.rejects(c.getFile('m1/img', '../../../etc/passwd'), { code: 'EUSAGE' });

  // A symlink in an images dir is not followed out of the root.
  const { symlinkSync } = await import('node:fs');
  symlinkSync('/etc/hostname', path.join(root, 'm1/img/link'));
  await t.rejects(c.getFile('m1/img', 'link'), { code: 'EIMAGE' }, 'symlink not followed');

  // cleanup removes only what the agent created
  mkdirSync(path.join(root, 'foreign'), { mode: 0o700 });
  await t.rejects(c.cleanup('foreign'), { code: 'EUSAGE', message: /did not create/ });
  t.ok(existsSync(path.join(root, 'foreign')));
  t.equal(await c.cleanup('m1'), true);
  t.notOk(existsSync(path.join(root, 'm1')));
  t.equal(await c.cleanup('m1'), false, 'idempotent');
});

t.test('page-server-start / -wait run criu page-server with the right command line', async (t) => {
  const { target, root, calls } = await setup(t);
  const c = await connected(t, target);
  await c.putFile('m2/1', 'stub', Buffer.from(''));
  const ps = await c.pageServerStart({ dir: 'm2/2', port: 0, prevDir: 'm2/1' });
  t.equal(ps.port, 45678, 'the port the page server reported');
  t.equal(ps.address, '127.0.0.1', "default: the agent's address");
  const line = calls().at(-1) ?? '';
  const token = path.join(path.dirname(root), 'token');
  t.equal(
    line,
    `page-server -D ${root}/m2/2 --address 127.0.0.1 --port 0 --pidfile ${root}/.run/page-server-${ps.serverId}.pid ` +
      `--prev-images-dir ../1 --token-file ${token}`,
  );
  t.notMatch(line, TOKEN, 'the token is not on the command line');
  t.same(await c.pageServerWait(ps.serverId, 100), { state: 'running' });
  writeFileSync(path.join(root, 'm2/2/DONE'), '');
  t.same(await c.pageServerWait(ps.serverId), { state: 'exited', exitCode: 0, signal: null, error: null });

  const ps2 = await c.pageServerStart({ dir: 'm2/3', port: 7100, address: '127.0.0.2' });
  t.equal(ps2.port, 7100);
  t.match(calls().at(-1), /--address 127\.0\.0\.2 --port 7100 /);
  writeFileSync(path.join(root, 'm2/3/DONE'), '');
  t.match(await c.pageServerWait(ps2.serverId), { state: 'exited', exitCode: 0 });

  await c.putFile('m2/4', 'FAIL', Buffer.from(''));
  await t.rejects(c.pageServerStart({ dir: 'm2/4', port: 0 }), {
    message: /Cannot start the page server: criu page-server exited \(1\): Error \(criu\): Cannot listen: boom/,
  });
  await t.rejects(c.pageServerStart({ dir: 'm2/5', port: 0, prevDir: 'm2/none' }), { code: 'EUSAGE' });
  await t.rejects(c.pageServerWait(999), { code: 'EUSAGE' });
});

t.test('restore runs criu restore -d and returns the pid or the error line', async (t) => {
  const { target, root, calls } = await setup(t);
  const c = await connected(t, target);
  await c.putFile('m3/img', 'inventory.img', Buffer.from('x'));
  const r = await c.restore({ dir: 'm3/img', extraArgs: ['-v4'] });
  t.same(r, { state: 'restored', pid: 4242 });
  t.match(calls().at(-1), new RegExp(`^restore -D ${root}/m3/img -d --pidfile ${root}/\\.run/restore-\\d+\\.pid -v4$`));
  await c.putFile('m3/img', 'FAIL', Buffer.from(''));
  t.same(await c.restore({ dir: 'm3/img' }), {
    state: 'failed',
    exitCode: 1,
    error: 'Error (criu): Cannot restore: bad images',
  });
  await t.rejects(c.restore({ dir: 'm3/img', extraArgs: ['--exec-cmd'] }), { code: 'EUSAGE' });
  await t.rejects(c.restore({ dir: 'm3/none' }), { code: 'EUSAGE', message: /No images dir/ });
});

t.test('check-running and kill', async (t) => {
  const { target } = await setup(t);
  const c = await connected(t, target);
  const sleeper = spawn('sleep', ['100'], { stdio: 'ignore' });
  const gone = new Promise((r) => sleeper.on('exit', (_code, sig) => r(sig)));
  const pid = sleeper.pid ?? -1;
  t.match(await c.checkRunning(pid), { isRunning: true, state: /[RS]/ });
  t.equal(await c.kill(pid, 'SIGTERM'), true);
  t.equal(await gone, 'SIGTERM');
  t.same(await c.checkRunning(pid), { isRunning: false, state: null });
  t.equal(await c.kill(pid), false, 'no such task');
  await t.rejects(c.kill(pid, 'SIGNOPE' as NodeJS.Signals), { code: 'EUSAGE' });
});

t.test('an agent that goes away mid-request fails the request clearly', async (t) => {
  const { server, target, root } = await setup(t);
  const c = await connected(t, target);
  const ps = await c.pageServerStart({ dir: 'm4/1', port: 0 });
  // Its rejection may come before server.close() resolves: handled from the start.
  const pending = c.pageServerWait(ps.serverId).catch((e: unknown) => e);
  await server.close();
  const err = await pending;
  t.type(err, ProtocolError);
  t.match(
    (err as ProtocolError).message,
    /Protocol error with 127\.0\.0\.1:\d+ during page-server-wait: the agent closed/,
  );
  t.throws(() => process.kill(ps.pid, 0), { code: 'ESRCH' }, 'the agent stopped its page server');
  await t.rejects(c.hello(), ProtocolError, 'later requests fail at once');
  t.notOk(existsSync(path.join(root, 'm4/1/DONE')));
});

t.test('a connection to nothing fails with a clear error', async (t) => {
  await t.rejects(AgentClient.connect('127.0.0.1:1', TOKEN), { code: 'EPROTOCOL', message: /cannot connect/ });
  await t.rejects(AgentClient.connect('7000', TOKEN), { code: 'EUSAGE' });
});

t.test('LocalAgent: the same operations in-process', async (t) => {
  const dir = t.testdir();
  const script = path.join(dir, 'fake-criu.sh');
  writeFileSync(script, FAKE_CRIU);
  const local = new LocalAgent({
    imagesRoot: path.join(dir, 'agent'),
    criuCommand: ['/bin/sh', script, path.join(dir, 'calls.log')],
  });
  t.teardown(() => local.close());
  t.equal(local.name, 'local');
  t.equal((await local.hello()).pid, process.pid);
  await local.putFile('m5/img', 'core-1.img', Buffer.from('core'));
  t.same(await local.getFile('m5/img', 'core-1.img'), Buffer.from('core'));
  t.same(await local.restore({ dir: 'm5/img' }), { state: 'restored', pid: 4242 });
  const ps = await local.pageServerStart({ dir: 'm5/2', port: 0 });
  t.equal(ps.address, '127.0.0.1');
  writeFileSync(path.join(dir, 'agent/m5/2/DONE'), '');
  t.match(await local.pageServerWait(ps.serverId), { state: 'exited', exitCode: 0 });
  t.equal(await local.cleanup('m5'), true);
});

t.test('a TLS agent: wss for a controller of its CA, its TLS files handed to criu page-server', async (t) => {
  const dir = t.testdir();
  const pkiDir = path.join(dir, 'pki');
  mkdirSync(pkiDir);
  const pki = makePki(pkiDir);
  const files = { cacert: pki.ca, ...pki.issue('agent', ['IP:127.0.0.1']) };
  const script = path.join(dir, 'fake-criu.sh');
  const log = path.join(dir, 'criu-calls.log');
  writeFileSync(script, FAKE_CRIU);
  const server = await AgentServer.listen({
    address: '127.0.0.1',
    port: 0,
    token: TOKEN,
    imagesRoot: path.join(dir, 'agent'),
    criuCommand: ['/bin/sh', script, log],
    tls: { files, creds: await loadTlsCredentials(files) },
  });
  t.teardown(() => server.close());
  const target = `127.0.0.1:${server.port}`;
  await t.rejects(AgentClient.connect(target, TOKEN), /does the agent use --tls\?/, 'a plain controller');
  const controller = await loadTlsCredentials({ cacert: pki.ca, ...pki.issue('controller', []) });
  const c = await AgentClient.connect(target, TOKEN, { tls: controller });
  t.teardown(() => c.close());
  const ps = await c.pageServerStart({ dir: 'm6/1', port: 0 });
  const line = readFileSync(log, 'utf8').trim().split('\n').at(-1) ?? '';
  t.match(
    line,
    ` --tls --tls-no-cn-verify --tls-cacert ${files.cacert} --tls-cert ${files.cert} --tls-key ${files.key}`,
    "the agent's TLS files; the client's name is not checked",
  );
  writeFileSync(path.join(dir, 'agent/m6/1/DONE'), '');
  t.match(await c.pageServerWait(ps.serverId), { state: 'exited', exitCode: 0 });
});
