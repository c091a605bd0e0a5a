/**
 * Live migration that fails must leave the source as it was (issue #5): the DST agent killed in
 * the middle, DST's disk full, a wrong token. Each time criu-migrate exits non-zero with one line
 * naming the reason, the workload keeps running on SRC with its counter going on, no dirty-memory
 * tracking is left in it (no uffd-wp VMA, no holder process), and its own check of its memory
 * passes when it is finally stopped.
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { simHosts, type SimHost } from '../../../migrate/sim-hosts.js';
import { poll } from '../../helpers/cr.js';
import { fixturePath } from '../../helpers/fixture.js';
import { runMigrate, startAgent, startOnHost, tokenFile, type HostWorkload } from '../../helpers/migrate.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (namespaces, ptrace, clone3 set_tid)';

const lastCount = (report: string): number => Number([...report.matchAll(/COUNT (\d+)/g)].at(-1)?.[1] ?? -1);

/** The source runs on as before: counting, not tracked, memory intact. */
async function sourceIntact(t: Test, src: SimHost, w: HostWorkload): Promise<void> {
  t.equal((await src.exec(`test -e /proc/${w.pid}`)).status, 0, 'the source still runs');
  const before = lastCount(w.report());
  await poll(() => lastCount(w.report()) > before, 'the counter to go on on SRC', 10_000);
  const smaps = await src.exec(`grep -c '^VmFlags:.* uw' /proc/${w.pid}/smaps || true`);
  t.equal(smaps.stdout.trim(), '0', 'no VMA is left uffd-wp registered');
  const holders = await src.exec(`pgrep -f '^[^ ]*track-holder ${w.pid} ' || true`);
  t.equal(holders.stdout.trim(), '', 'no tracker holder is left');
  await src.exec(`kill -TERM ${w.pid}`);
  await w.waitFor(/PASS|FAIL/, 20_000);
  t.match(w.report(), /PASS/, 'its memory check passes');
}

async function setup(t: Test, dstDir?: (dst: SimHost, dir: string) => Promise<string>) {
  const [src, dst] = await simHosts(['src', 'dst'], { t });
  if (src === undefined || dst === undefined) throw new Error('no hosts');
  const dir = t.testdir();
  const a = await startAgent(t, src, dir);
  const agentDir = dstDir === undefined ? undefined : await dstDir(dst, dir);
  const b = await startAgent(t, dst, dir, agentDir);
  const w = await startOnHost(t, src, [fixturePath('migrate_counter'), '128', '10'], path.join(dir, 'report.txt'));
  await w.waitFor(/COUNT[^\n]*\n[^\n]*COUNT/, 10_000);
  return { src, dst, dir, a, b, w, agentDir };
}

t.test('the DST agent dies during the pre-copy', { skip: needsRoot }, async (t) => {
  const { src, dir, a, b, w } = await setup(t);
  const agentRoot = path.join(dir, 'agent-dst');
  const migrating = runMigrate(['--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]);
  // Once the first iteration has arrived on DST, kill its agent.
  await poll(
    () =>
      existsSync(agentRoot) &&
      readdirSync(agentRoot).some((m) => m.startsWith('m-') && existsSync(path.join(agentRoot, m, 'pages-2'))),
    'the second iteration to start',
    60_000,
  );
  await b.agent.kill('SIGKILL');
  const r = await migrating;
  t.not(r.status, 0, 'criu-migrate fails');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /Migration failed .*the source runs on/);
  await sourceIntact(t, src, w);
});

t.test("DST's disk is full", { skip: needsRoot }, async (t) => {
  const small = async (dst: SimHost, dir: string): Promise<string> => {
    const d = path.join(dir, 'small');
    const r = await dst.exec(`mkdir -p '${d}' && mount -t tmpfs -o size=24m tmpfs '${d}'`);
    if (r.status !== 0) throw new Error(r.stderr);
    return d;
  };
  const { src, dir, a, b, w } = await setup(t, small);
  const r = await runMigrate(['--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]);
  t.not(r.status, 0, 'criu-migrate fails');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /No space left|ENOSPC/);
  await sourceIntact(t, src, w);
});

t.test('a wrong token is refused before anything is touched', { skip: needsRoot }, async (t) => {
  const { src, dir, a, b, w } = await setup(t);
  const wrong = path.join(dir, 'wrong-token');
  writeFileSync(wrong, 'not-the-token\n', { mode: 0o600 });
  const r = await runMigrate(['--token-file', wrong, a.target, b.target, String(w.pid)]);
  t.not(r.status, 0);
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /token|auth/i);
  await sourceIntact(t, src, w);
});
