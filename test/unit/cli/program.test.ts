import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';

import { normalizeArgv, runCli } from '../../../src/cli/program.js';
import { COMMAND_NAMES } from '../../../src/cli/options.js';

const PKG_VERSION = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/** Run the CLI in-process, capturing what it prints. */
async function run(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await runCli(argv, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
  return { code, stdout, stderr };
}

t.test('options are accepted before and after the command', async (t) => {
  const dir = t.testdir();
  for (const argv of [
    ['-D', dir, 'pre-dump', '-t', '4194303'],
    ['pre-dump', '-D', dir, '-t', '4194303'],
    ['-D', dir, '-t', '4194303', 'pre-dump'],
    ['-vvvv', '-o', 'x.log', 'pre-dump', '-D', dir, '-t', '4194303', '--tcp-established', '-j'],
  ]) {
    const r = await run(argv);
    t.equal(r.code, 1, argv.join(' '));
    t.equal(r.stderr, 'Error (criu): Cannot dump task 4194303: no such process\n', argv.join(' '));
  }
  t.ok(existsSync(join(dir, 'x.log')), '-o name is created in -D');
});

t.test('the log of pre-dump defaults to pre-dump.log in -W, else -D', async (t) => {
  const dir = t.testdir({ d: {}, w: {} });
  await run(['pre-dump', '-D', join(dir, 'd'), '-t', '4194303']);
  t.ok(existsSync(join(dir, 'd', 'pre-dump.log')));
  await run(['pre-dump', '-D', dir, '-W', join(dir, 'w'), '-t', '4194303']);
  t.ok(existsSync(join(dir, 'w', 'pre-dump.log')));
  t.notOk(existsSync(join(dir, 'pre-dump.log')));
});

t.test('usage errors: one line, exit 1', async (t) => {
  const dir = t.testdir();
  const cases: [string[], RegExp][] = [
    [['--no-such-option'], /^Error \(criu\): unknown option '--no-such-option'/],
    [['dump', '-D', dir, '--bogus'], /^Error \(criu\): unknown option '--bogus'/],
    [['frobnicate'], /^Error \(criu\): unknown command 'frobnicate'/],
    [[], /^Error \(criu\): a command is required/],
    [['cpuinfo'], /^Error \(criu\): cpuinfo needs a command: dump or check/],
    [['dump', '-D', dir, '-t'], /^Error \(criu\): option '-t, --tree <pid>' argument missing/],
    [['dump', '-D', dir], /^Error \(criu\): dump needs the tree's root pid/],
    [['dump', '-D', dir, '-t', 'abc'], /^Error \(criu\): Invalid value for -t\/--tree: "abc" is not a number/],
    [['dump', '-D', dir, '-t', '1', '-v9'], /^Error \(criu\): Invalid value for -v: "9"/],
    [['restore', '-D', dir, '--tracker', 'magic'], /^Error \(criu\): Invalid value for --tracker/],
    [['exec', '-D', dir, 'close', '1'], /^Error \(criu\): exec needs the target task/],
  ];
  for (const [argv, re] of cases) {
    const r = await run(argv);
    t.equal(r.code, 1, argv.join(' '));
    t.match(r.stderr, re, argv.join(' '));
    t.equal(r.stderr.split('\n').length, 2, `one line: ${argv.join(' ')}`);
    t.notMatch(r.stderr, /\n\s+at /, 'no stack');
  }
});

t.test('--version prints the package version the way CRIU does', async (t) => {
  for (const argv of [['-V'], ['--version'], ['check', '-V']]) {
    const r = await run(argv);
    t.equal(r.code, 0);
    t.equal(r.stdout, `Version: ${PKG_VERSION}\n`);
  }
});

t.test('--help lists every command and every option of criu(8)', async (t) => {
  const r = await run(['--help']);
  t.equal(r.code, 0);
  for (const name of COMMAND_NAMES) t.match(r.stdout, name.split(' ')[0] as string, name);
  const flags = [
    '-c',
    '-D, --images-dir',
    '--prev-images-dir',
    '-W, --work-dir',
    '-s, --leave-stopped',
    '-R, --leave-running',
    '--cpu-cap',
    '-f, --file',
    '-x, --ext-unix-sk',
    '-t, --tree',
    '-d, --restore-detached',
    '-S, --restore-sibling',
    '-n, --namespaces',
    '-r, --root',
    '--evasive-devices',
    '--pidfile',
    '--veth-pair',
    '-M, --ext-mount-map',
    '--enable-external-sharing',
    '--enable-external-masters',
    '--action-script',
    '--link-remap',
    '-o, --log-file',
    '-v, --verbosity',
    '--log-pid',
    '--close',
    '--tcp-established',
    '-j, --shell-job',
    '-l, --file-locks',
    '--ms',
    '--track-mem',
    '--auto-dedup',
    '--page-server',
    '--address',
    '--port',
    '-L, --libdir',
    '--force-irmap',
    '--manage-cgroups',
    '--cgroup-root',
    '--inherit-fd',
    '-V, --version',
    '-h, --help',
    '--all',
    '--token ',
    '--token-file',
    '--tracker',
  ];
  for (const f of flags) t.ok(r.stdout.includes(f), f);
  const ps = await run(['page-server', '--help']);
  t.ok(ps.stdout.includes('-d, --daemon'), 'page-server help shows -d, --daemon');
  const cpuinfo = await run(['cpuinfo', '--help']);
  t.match(cpuinfo.stdout, /dump \[options\]/);
  t.match(cpuinfo.stdout, /check \[options\]/);
});

t.test('normalizeArgv spells the getopt forms of -v and --cpu-cap for commander', async (t) => {
  t.same(normalizeArgv(['-v', 'dump']), ['--verbosity=1', 'dump']);
  t.same(normalizeArgv(['-vv']), ['--verbosity=2']);
  t.same(normalizeArgv(['-vvv']), ['--verbosity=3']);
  t.same(normalizeArgv(['-vvvv']), ['--verbosity=4']);
  t.same(normalizeArgv(['-vvvvvv']), ['--verbosity=4']);
  for (const n of ['0', '1', '2', '3', '4']) t.same(normalizeArgv([`-v${n}`]), [`--verbosity=${n}`]);
  t.same(normalizeArgv(['--cpu-cap', 'restore']), ['--cpu-cap=all', 'restore']);
  t.same(normalizeArgv(['--cpu-cap=fpu']), ['--cpu-cap=fpu']);
  t.same(normalizeArgv(['exec', '--', '-v']), ['exec', '--', '-v']);
});

t.test('the -v level filters the log file', async (t) => {
  const dir = t.testdir();
  t.equal((await run(['cpuinfo', 'dump', '-D', dir, '-o', 'quiet.log'])).code, 0);
  t.equal((await run(['cpuinfo', 'dump', '-D', dir, '-o', 'loud.log', '-v4'])).code, 0);
  t.equal(readFileSync(join(dir, 'quiet.log'), 'utf8'), '', 'level 2 writes no info line');
  t.match(readFileSync(join(dir, 'loud.log'), 'utf8'), /^\(\d\d\.\d{6}\) criu-ts \S+: cpuinfo dump/);
});

t.test('show and check keep no log file unless -o is given', async (t) => {
  const dir = t.testdir();
  const r = await run(['show', '-D', dir]);
  t.equal(r.code, 0, r.stderr);
  const { readdirSync } = await import('node:fs');
  t.same(readdirSync(dir), []);
});

t.test('exec: everything after the system call is its arguments, negative numbers included', async (t) => {
  const { buildProgram } = await import('../../../src/cli/program.js');
  const { toOptions } = await import('../../../src/cli/options.js');
  const parse = async (argv: string[]) => {
    let got: { command: string; raw: Record<string, unknown>; operands: string[] } | null = null;
    const program = buildProgram({ stdout: () => undefined, stderr: () => undefined }, (p) => {
      got = p;
    });
    await program.parseAsync(normalizeArgv(argv), { from: 'user' });
    const g = got as unknown as { command: 'exec'; raw: Record<string, unknown>; operands: string[] };
    return toOptions(g.command, g.raw, g.operands);
  };
  const a = await parse(['exec', '-t', '12', 'lseek', '3', '-1', '0']);
  t.equal(a.tree, 12);
  t.same(a.operands, ['lseek', '3', '-1', '0']);
  const b = await parse(['-D', '/img', 'exec', '-t', '5', '-v4', 'open', '&/foo/bar', '2']);
  t.equal(b.imagesDir, '/img');
  t.equal(b.logLevel, 4);
  t.same(b.operands, ['open', '&/foo/bar', '2']);
});
