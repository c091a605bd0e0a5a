/**
 * Live migration inside TLS (criu-migrate --tls): agents whose certificates name their hosts'
 * addresses, a controller with its own certificate of the same CA. The workload
 * (test/fixtures/migrate_counter.c) moves to DST with its PID and state; both control channels
 * were wss and the page data went inside TLS (the agents log the page server's handshake). A
 * controller without TLS, or with a certificate of another CA, is refused in one line and the
 * process runs on at SRC.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { simHosts, startAgentIn } from '../../../migrate/sim-hosts.js';
import { poll } from '../../helpers/cr.js';
import { fixturePath } from '../../helpers/fixture.js';
import { runMigrate, startOnHost, tokenFile } from '../../helpers/migrate.js';
import { makePki } from '../../helpers/pki.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (namespaces, ptrace, clone3 set_tid)';

const lastCount = (report: string): number => Number([...report.matchAll(/COUNT (\d+)/g)].at(-1)?.[1] ?? -1);

/** --tls options naming a CA's certificate for `name` with these SANs. */
function tlsArgs(pki: ReturnType<typeof makePki>, name: string, sans: string[]): string[] {
  const { cert, key } = pki.issue(name, sans);
  return ['--tls', '--tls-cacert', pki.ca, '--tls-cert', cert, '--tls-key', key];
}

t.test('migrate inside TLS; a controller without TLS or of another CA is refused', { skip: needsRoot }, async (t) => {
  const [src, dst] = await simHosts(['src', 'dst'], { t });
  if (src === undefined || dst === undefined) throw new Error('no hosts');
  const dir = t.testdir();
  mkdirSync(path.join(dir, 'pki'));
  mkdirSync(path.join(dir, 'other'));
  const pki = makePki(path.join(dir, 'pki'));
  const other = makePki(path.join(dir, 'other'), 'other-ca');
  const agents = [];
  for (const host of [src, dst]) {
    const started = await startAgentIn(host, tokenFile(dir), path.join(dir, `agent-${host.name}`), [
      ...tlsArgs(pki, host.name, [`IP:${host.addr}`]),
      '-v',
      '3',
    ]);
    t.teardown(() => started.agent.kill('SIGKILL'));
    agents.push(started);
  }
  const [a, b] = agents as [(typeof agents)[0], (typeof agents)[0]];
  const w = await startOnHost(t, src, [fixturePath('migrate_counter'), '16', '10'], path.join(dir, 'report.txt'));
  await w.waitFor(/COUNT[^\n]*\n[^\n]*COUNT/, 10_000);
  const base = ['--token-file', tokenFile(dir), a.target, b.target, String(w.pid)];

  const plain = await runMigrate(base);
  t.not(plain.status, 0, 'a controller without --tls: refused');
  t.match(plain.stderr, /^Error \(criu-migrate\): .*does the agent use --tls\?\)\n$/, `in one line: ${plain.stderr}`);
  const { cert, key } = other.issue('stranger', []);
  const stranger = await runMigrate(['--tls', '--tls-cacert', pki.ca, '--tls-cert', cert, '--tls-key', key, ...base]);
  t.not(stranger.status, 0, 'a controller of another CA: refused');
  t.match(stranger.stderr, /does the agent accept this controller's certificate/, stranger.stderr);
  await poll(() => /refused .*its certificate/.test(a.stderr()), "the agent's log says why", 5000);
  const before = lastCount(w.report());
  await poll(() => lastCount(w.report()) > before, 'the workload counts on at SRC', 10_000);

  const r = await runMigrate(['--json', ...tlsArgs(pki, 'controller', []), ...base]);
  t.equal(r.status, 0, `criu-migrate --tls: ${r.stderr}`);
  const s = JSON.parse(r.stdout.trim()) as Record<string, number>;
  t.equal(s['dst_pid'], w.pid, 'the same PID on DST');
  t.match(b.stderr(), /page-server: TLS handshake completed/, "DST's page server ran inside TLS");
  const after = lastCount(w.report());
  await poll(() => lastCount(w.report()) > after, 'a new COUNT line from DST', 10_000);
  t.not((await src.exec(`test -e /proc/${w.pid}`)).status, 0, 'gone from SRC');
  t.equal((await dst.exec(`kill -TERM ${w.pid}`)).status, 0);
  await w.waitFor(/PASS|FAIL/, 20_000);
  t.match(w.report(), /PASS/, w.report().split('\n').slice(-3).join('\n'));
  t.notMatch(w.report(), /FAIL/);
});
