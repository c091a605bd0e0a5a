/**
 * Live migration end to end (issue #5): two simulated hosts (own PID, network and mount
 * namespaces), an agent in each, `criu-migrate --json` run from this namespace. The workload
 * (test/fixtures/migrate_counter.c) dirties memory at a steady rate and keeps a counter; after
 * the migration it runs on DST with the same PID, its counter goes on, it is gone from SRC, and
 * its own check of its memory passes.
 */
import path from 'node:path';
import t from 'tap';
import { fixturePath } from '../../helpers/fixture.js';
import { poll } from '../../helpers/cr.js';
import { hostPair, runMigrate, startOnHost, tokenFile } from '../../helpers/migrate.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (namespaces, ptrace, clone3 set_tid)';

const lastCount = (report: string): number => Number([...report.matchAll(/COUNT (\d+)/g)].at(-1)?.[1] ?? -1);

t.test(
  'migrate a process that dirties memory: same PID on DST, state intact, source gone',
  { skip: needsRoot },
  async (t) => {
    const { src, dst, dir, a, b } = await hostPair(t);
    const w = await startOnHost(t, src, [fixturePath('migrate_counter'), '64', '10'], path.join(dir, 'report.txt'));
    await w.waitFor(/COUNT[^\n]*\n[^\n]*COUNT/, 10_000); // two reports: it runs
    const r = await runMigrate(['--json', '--token-file', tokenFile(dir), a.target, b.target, String(w.pid)]);
    t.equal(r.status, 0, `criu-migrate: ${r.stderr}`);
    const lines = r.stdout.trim().split('\n');
    t.equal(lines.length, 1, 'stdout is one JSON object');
    const s = JSON.parse(lines[0] ?? '{}') as Record<string, number>;
    for (const k of ['downtime_ms', 'total_ms', 'iterations', 'bytes_sent']) t.type(s[k], 'number', k);
    t.equal(s['dst_pid'], w.pid, 'the same PID on DST');
    t.ok((s['iterations'] ?? 0) >= 2, `${s['iterations']} iterations`);
    t.ok((s['bytes_sent'] ?? 0) >= 64 << 20, `${s['bytes_sent']} bytes sent`);
    t.comment(`downtime ${s['downtime_ms']} ms, total ${s['total_ms']} ms, ${s['bytes_sent']} bytes`);

    const before = lastCount(w.report());
    await poll(() => lastCount(w.report()) > before, 'a new COUNT line from DST', 10_000);
    t.ok(lastCount(w.report()) > before, 'the counter goes on after the migration');
    const onDst = await dst.exec(`tr '\\0' ' ' < /proc/${w.pid}/cmdline`);
    t.match(onDst.stdout, /migrate_counter/, `pid ${w.pid} on DST is the workload`);
    t.not((await src.exec(`test -e /proc/${w.pid}`)).status, 0, 'gone from SRC');
    t.equal((await dst.exec(`kill -TERM ${w.pid}`)).status, 0);
    await w.waitFor(/PASS|FAIL/, 20_000);
    t.match(w.report(), /PASS/, w.report().split('\n').slice(-3).join('\n'));
    t.notMatch(w.report(), /FAIL/);
  },
);
