/**
 * The `criu` executables run as a user would: `node bin/criu.js` over a fresh `npm run build:ts`
 * (built once, here), and `npx criu` in the repo root.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';

const ROOT = new URL('../../../', import.meta.url).pathname;
const isRoot = process.getuid?.() === 0;
const needsRoot = isRoot ? false : 'needs root (CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE)';

function run(cmd: string, args: string[], cwd = ROOT): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 60_000 });
}
const criu = (args: string[], cwd = ROOT): SpawnSyncReturns<string> =>
  run('node', [join(ROOT, 'bin/criu.js'), ...args], cwd);

t.before(() => {
  // `npm test` builds dist/ before tap starts (test files run in parallel and must not race tsc).
  if (!existsSync(join(ROOT, 'dist/src/cli/criu.js')))
    throw new Error('dist/ is not built: run "npm run build:ts" (npm test does it)');
});

t.test('criu --version', async (t) => {
  const r = criu(['--version']);
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  t.equal(r.status, 0);
  t.equal(r.stdout, `Version: ${pkg.version}\n`);
});

t.test('npx criu --help works in the repo root', async (t) => {
  const r = run('npx', ['--no-install', 'criu', '--help']);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^Usage: criu \[options\] <command> \[options\]/);
  t.match(r.stdout, /pre-dump/);
});

t.test('criu check: Looks good, and the uffd tracker', { skip: needsRoot }, async (t) => {
  const dir = t.testdir();
  const r = criu(['check'], dir);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^Memory tracker: uffd-wp \(userfaultfd WP_ASYNC \+ PAGEMAP_SCAN\)$/m);
  t.match(r.stdout, /\nLooks good\.\n$/);
  t.equal(r.stderr, '');
  t.notMatch(r.stdout, /soft-dirty tracking/, 'optional features only with --all');
  t.same(readdirSync(dir), [], 'check leaves no log file without -o');
});

t.test("criu check --feature, as CRIU's", { skip: needsRoot }, async (t) => {
  const list = criu(['check', '--feature', 'list']);
  t.equal(list.status, 0, list.stderr);
  t.equal(list.stdout, 'mem_dirty_track clone3_set_tid pidfd_store\n');
  const track = criu(['check', '--feature', 'mem_dirty_track']);
  t.equal(track.status, 0, track.stderr);
  t.equal(track.stdout, 'mem_dirty_track is supported\n');
  t.equal(criu(['check', '--feature', 'clone3_set_tid']).stdout, 'clone3_set_tid is supported\n');
  // This kernel has pidfd_open and pidfd_getfd (RPC's pidfd_store_sk).
  t.equal(criu(['check', '--feature', 'pidfd_store']).stdout, 'pidfd_store is supported\n');
  const unknown = criu(['check', '--feature', 'tun']);
  t.equal(unknown.status, 1);
  t.equal(unknown.stderr, 'Error (criu): Unknown feature tun\n');
});

t.test('criu check --all reports the optional features too', { skip: needsRoot }, async (t) => {
  const r = criu(['check', '--all']);
  t.equal(r.status, 0, r.stderr);
  for (const title of [
    'PAGEMAP_SCAN ioctl: yes',
    'userfaultfd WP_ASYNC + WP_UNPOPULATED: yes',
    'soft-dirty tracking: ',
    'CAP_SYS_RESOURCE: ',
    'TCP_REPAIR: ',
  ]) {
    t.ok(r.stdout.includes(title), title);
  }
  t.match(r.stdout, /Looks good\.\n$/);
});

const needsSetpriv =
  needsRoot || (existsSync('/usr/bin/setpriv') ? false : 'needs setpriv (util-linux) to drop capabilities');

t.test(
  'criu check fails, one line per missing feature, without a required capability',
  { skip: needsSetpriv },
  async (t) => {
    const r = run('setpriv', ['--bounding-set=-sys_ptrace', 'node', join(ROOT, 'bin/criu.js'), 'check']);
    t.equal(r.status, 1);
    t.equal(r.stderr, 'Error (criu): missing kernel feature: capabilities: missing CAP_SYS_PTRACE\n');
    t.notMatch(r.stdout, /Looks good/);
    const r2 = run('setpriv', [
      '--bounding-set=-sys_admin,-checkpoint_restore',
      'node',
      join(ROOT, 'bin/criu.js'),
      'check',
    ]);
    t.equal(r2.status, 1);
    t.match(r2.stderr, /^Error \(criu\): missing kernel feature: clone3 with set_tid: clone3.*EPERM/m);
    t.match(
      r2.stderr,
      /^Error \(criu\): missing kernel feature: capabilities: missing CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE$/m,
    );
  },
);

t.test('criu check --tracker forces a tracker, or fails naming why', { skip: needsRoot }, async (t) => {
  const none = criu(['check', '--tracker', 'none']);
  t.equal(none.status, 0);
  t.match(none.stdout, /^Memory tracker: none/m);
  const all = criu(['check', '--all']);
  const hasSoftDirty = /^soft-dirty tracking: yes/m.test(all.stdout);
  const sd = criu(['check', '--tracker', 'soft-dirty']);
  if (hasSoftDirty) t.equal(sd.status, 0);
  else {
    t.equal(sd.status, 1);
    t.match(sd.stderr, /^Error \(criu\): Cannot use the soft-dirty memory tracker: .*CONFIG_MEM_SOFT_DIRTY/m);
  }
});

t.test('the log goes to -W (else -D) under the -o name, filtered by -v', { skip: needsRoot }, async (t) => {
  const dir = t.testdir({ images: {}, work: {} });
  const images = join(dir, 'images');
  const work = join(dir, 'work');
  t.equal(criu(['check', '-D', images, '-o', 'check.log', '-v3']).status, 0);
  const info = readFileSync(join(images, 'check.log'), 'utf8');
  t.match(
    info,
    /^\(\d\d\.\d{6}\) check: ptrace \(PTRACE_SEIZE, PTRACE_INTERRUPT\): yes/m,
    'info lines with timestamps at -v3',
  );
  t.equal(criu(['-D', images, '-W', work, 'check', '-o', 'quiet.log', '-v2']).status, 0);
  t.equal(readFileSync(join(work, 'quiet.log'), 'utf8'), '', 'no info at -v2');
  t.notOk(existsSync(join(images, 'quiet.log')), '-W wins over -D');
});

t.test('pre-dump of a missing task: exit 1, one line, and pre-dump.log in the images dir', async (t) => {
  const dir = t.testdir();
  const r = criu(['pre-dump', '-D', dir, '-t', '4194303', '-vvvv']);
  t.equal(r.status, 1);
  t.equal(r.stderr.split('\n').length, 2, r.stderr);
  t.match(r.stderr, /4194303/);
  t.match(readFileSync(join(dir, 'pre-dump.log'), 'utf8'), /criu-ts .*: pre-dump/);
});

t.test('usage error: one line, exit 1', async (t) => {
  const r = criu(['dump', '--frobnicate']);
  t.equal(r.status, 1);
  t.equal(r.stderr.split('\n').length, 2);
  t.match(r.stderr, /^Error \(criu\): unknown option '--frobnicate'/);
});

t.test('page-server and criu-migrate launchers', async (t) => {
  const ps = run('node', [join(ROOT, 'bin/page-server.js'), '-D', t.testdir()]);
  t.equal(ps.status, 1, 'page-server without --port is a usage error');
  t.equal(ps.stderr.split('\n').length, 2, ps.stderr);
  const psHelp = run('node', [join(ROOT, 'bin/page-server.js'), '--help']);
  t.equal(psHelp.status, 0);
  t.match(psHelp.stdout, /--port/);
  const mig = run('node', [join(ROOT, 'bin/criu-migrate.js'), '127.0.0.1:1', '127.0.0.1:2', '1']);
  t.equal(mig.status, 1, 'agents without a token file: a usage error');
  t.equal(mig.stderr.split('\n').length, 2, mig.stderr);
  t.match(mig.stderr, /--token-file/);
  const help = run('node', [join(ROOT, 'bin/criu-migrate.js'), '--help']);
  t.equal(help.status, 0);
  t.match(help.stdout, /criu-migrate \[options\] SRC DST PID/);
  t.match(help.stdout, /agent --listen ADDR:PORT --token-file F/);
});

t.test('the launchers start node without NODE_EXTRA_CA_CERTS, and pass none on', async (t) => {
  // Node warns on stderr at start when the file cannot be read: the warning shows it was read.
  const env = { ...process.env, NODE_EXTRA_CA_CERTS: join(t.testdir(), 'no-such-certs.pem') };
  const direct = (file: string, args: string[]): SpawnSyncReturns<string> =>
    spawnSync(join(ROOT, 'bin', file), args, { env, encoding: 'utf8', timeout: 60_000 });
  for (const [file, args] of [
    ['criu.js', ['--version']],
    ['page-server.js', ['--help']],
    ['criu-migrate.js', ['--help']],
  ] as const) {
    const r = direct(file, [...args]);
    t.equal(r.status, 0, `${file} ${args.join(' ')}`);
    t.equal(r.stderr, '', `${file}: node did not read the certificates`);
  }
  const viaNode = spawnSync('node', [join(ROOT, 'bin/criu.js'), '--version'], { env, encoding: 'utf8' });
  t.match(viaNode.stderr, /extra certs/, 'run as `node bin/criu.js`, node itself has read them (the check can fail)');

  // A process criu-ts starts (here the page-server daemon, started by `node bin/criu.js`) has no
  // NODE_EXTRA_CA_CERTS in its environment.
  const dir = t.testdir();
  const pidfile = join(dir, 'ps.pid');
  const ps = spawnSync(
    'node',
    [join(ROOT, 'bin/criu.js'), 'page-server', '-d', '--port', '0', '-D', dir, '--pidfile', pidfile],
    { env, encoding: 'utf8', timeout: 60_000 },
  );
  t.equal(ps.status, 0, ps.stderr);
  const pid = Number(readFileSync(pidfile, 'utf8'));
  try {
    const environ = readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
    t.ok(
      environ.some((e) => e.startsWith('PATH=')),
      'the daemon environment is read',
    );
    t.notOk(
      environ.some((e) => e.startsWith('NODE_EXTRA_CA_CERTS=')),
      'the daemon has no NODE_EXTRA_CA_CERTS',
    );
  } finally {
    process.kill(pid, 'SIGKILL');
  }
});
