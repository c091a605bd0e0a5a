/**
 * The real CRIU and criu-ts on the same task (Debian's criu 3.17, test/helpers/real-criu.ts):
 *   - CRIU dumps the core workload (and cr_state, cr_link_remap, cr_vma_deleted, cr_seccomp),
 *     criu-ts restores it from CRIU's images;
 *   - cr_sysvshm in UTS and IPC namespaces of its own, both ways (cr_netlink both ways is in
 *     netlink.test.ts, whose tests must not overlap);
 *   - CRIU dumps with --page-server into `criu page-server` of criu-ts, which restores the result;
 *   - criu-ts dumps with --page-server into CRIU's page server, and restores what CRIU stored;
 *     both plain and with --tls on both ends;
 *   - python3, node and bash running scripts: CRIU dumps and criu-ts restores, and the other way;
 *   - criu-ts dumps cr_fpu, cr_seccomp, cr_link_remap and cr_vma_deleted, CRIU restores them;
 *   - criu-ts pre-dumps twice and dumps with --track-mem, CRIU restores the chain.
 * The restored workload checks its own memory, files, pipe, signals, timers, thread and PID.
 */
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { PE_PARENT, PE_PRESENT, readPagemap } from '../../../src/images/index.js';
import {
  criuAsync,
  endExpectPass,
  poll,
  restoreExpectPass,
  startRestore,
  startWorkload,
  waitGone,
  type Workload,
} from '../../helpers/cr.js';
import { connectedPair, startCriuPageServer } from '../../helpers/page-server.js';
import { makePki } from '../../helpers/pki.js';
import { PROGRAMS } from '../../helpers/programs.js';
import {
  criuDump,
  criuRestore,
  freePort,
  logErrors,
  realCriuMissing,
  startRealPageServer,
  startCriuDumpOnSocket,
  startSessionLeader,
  toPageServer,
} from '../../helpers/real-criu.js';

const skip = process.getuid?.() !== 0 ? 'needs root (ptrace, clone3 set_tid)' : realCriuMissing();

/**
 * "start-end VmFlags" of each code mapping (r-x) of `pid`. CRIU's infection writes into one of
 * them through ptrace, so its dump carries a page of code; the restore must not leave that mapping
 * marked accountable ("ac"), as it would by making it writable to fill it.
 */
function codeVmFlags(pid: number): string[] {
  const out: string[] = [];
  let range = '';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^([0-9a-f]+-[0-9a-f]+) (\S+)/.exec(line);
    if (head !== null) range = head[2] === 'r-xp' ? (head[1] as string) : '';
    else if (range !== '' && line.startsWith('VmFlags:')) out.push(`${range} ${line.slice(8).trim()}`);
  }
  return out;
}

/** Restore `images` with criu-ts (-v4, restore.log), expect PASS; `code`: the code mappings' flags. */
async function restoreAndCheck(
  t: Test,
  w: Workload,
  images: string,
  dir: string,
  opts: { code?: string[]; args?: string[] } = {},
): Promise<void> {
  const { code, args = [] } = opts;
  await restoreExpectPass(t, w, images, dir, {
    args: ['-v4', '-o', 'restore.log', ...args],
    whileRunning: () => {
      if (code !== undefined) t.same(codeVmFlags(w.pid), code, 'the code mappings have the flags they had');
    },
  });
}

t.test('CRIU 3.17 dumps cr_basic; criu-ts restores it', { skip }, async (t) => {
  const dir = t.testdir();
  const w = await startSessionLeader('cr_basic', dir);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  const code = codeVmFlags(w.pid);
  await criuDump(t, w.pid, images);
  await waitGone(w.pid);
  await restoreAndCheck(t, w, images, dir, { code });
});

t.test('CRIU 3.17 dumps cr_sysvshm in UTS and IPC namespaces of its own; criu-ts restores it', { skip }, async (t) => {
  // CRIU keeps the segments' contents in pagemap-shmem-<id>.img (in_pagemaps).
  const dir = t.testdir();
  const w = await startSessionLeader('cr_sysvshm', dir, ['ns']);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  await criuDump(t, w.pid, images);
  await waitGone(w.pid);
  t.ok(existsSync(path.join(images, 'pagemap-shmem-0.img')), "CRIU's segment contents are in pagemaps");
  await restoreAndCheck(t, w, images, dir);
});

t.test('criu-ts dumps cr_sysvshm in UTS and IPC namespaces of its own; CRIU 3.17 restores it', { skip }, async (t) => {
  // criu317: criu 3.17 does not restore a segment's removal (IPC_RMID while attached) nor a
  // message queue's size limit.
  const dir = t.testdir();
  const w = await startSessionLeader('cr_sysvshm', dir, ['ns', 'criu317']);
  t.teardown(() => w.kill());
  const images = path.join(dir, 'img');
  await ourDump(t, w.pid, images);
  await waitGone(w.pid);
  await criuRestore(t, w.pid, images);
  await endExpectPass(t, w);
});

// More workloads CRIU dumps and criu-ts restores (cr_mem is not among them: criu 3.17 on this
// kernel takes shared anonymous memory for a memfd, and has no bit for MADV_WIPEONFORK).
const more: { name: string; args: string[]; opts: string[] }[] = [
  { name: 'cr_state', args: ['mem=16'], opts: [] },
  { name: 'cr_link_remap', args: [], opts: ['--link-remap'] },
  { name: 'cr_vma_deleted', args: [], opts: [] },
  { name: 'cr_seccomp', args: [], opts: [] },
];
for (const { name, args, opts } of more) {
  t.test(`CRIU 3.17 dumps ${name}; criu-ts restores it`, { skip }, async (t) => {
    const dir = t.testdir();
    const w = await startSessionLeader(name, dir, args);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    await criuDump(t, w.pid, images, opts);
    await waitGone(w.pid);
    await restoreAndCheck(t, w, images, dir, { args: opts });
  });
}

/**
 * The page-server tests run plain and inside TLS (--tls, certificates made by openssl for
 * 127.0.0.1): the same options on both ends, as CRIU's.
 */
const WIRES = [
  { wire: '', tlsArgs: (): [string[], string[]] => [[], []] },
  {
    wire: ' over TLS',
    tlsArgs: (dir: string): [string[], string[]] => {
      const pkiDir = path.join(dir, 'pki');
      mkdirSync(pkiDir);
      const pki = makePki(pkiDir);
      const args = (name: string): string[] => {
        const { cert, key } = pki.issue(name, ['IP:127.0.0.1']);
        return ['--tls', '--tls-cacert', pki.ca, '--tls-cert', cert, '--tls-key', key];
      };
      return [args('server'), args('client')];
    },
  },
];

for (const { wire, tlsArgs } of WIRES) {
  t.test(`CRIU 3.17 dumps into the criu-ts page server${wire}; criu-ts restores the result`, { skip }, async (t) => {
    const dir = t.testdir();
    const w = await startSessionLeader('cr_basic', dir);
    t.teardown(() => w.kill());
    const srv = path.join(dir, 'srv');
    const local = path.join(dir, 'local');
    const port = freePort();
    const [serverTls, clientTls] = tlsArgs(dir);
    const ps = await startCriuPageServer(t, dir, srv, port, serverTls);
    t.equal(ps.status, 0, ps.stderr);
    await criuDump(t, w.pid, local, [...toPageServer(port), ...clientTls]);
    await waitGone(w.pid);
    if (wire !== '')
      t.match(readFileSync(path.join(local, 'dump.log'), 'utf8'), /tls: TLS handshake completed/, 'CRIU used TLS');
    t.notOk(existsSync(path.join(local, `pagemap-${w.pid}.img`)), 'no pagemap in the local directory');
    const { runs } = await readPagemap(path.join(srv, `pagemap-${w.pid}.img`));
    t.ok(
      runs.some((r) => (r.flags & PE_PRESENT) !== 0 && r.nrPages > 0),
      'the server stored CRIU pages',
    );
    cpSync(local, srv, { recursive: true });
    await restoreAndCheck(t, w, srv, dir);
  });

  t.test(
    `criu-ts dumps into the CRIU 3.17 page server${wire}; criu-ts restores what CRIU stored`,
    { skip },
    async (t) => {
      const dir = t.testdir();
      const w = await startWorkload('cr_basic', dir);
      t.teardown(() => w.kill());
      const srv = path.join(dir, 'srv');
      const local = path.join(dir, 'local');
      mkdirSync(srv);
      const port = freePort();
      const [serverTls, clientTls] = tlsArgs(dir);
      const server = await startRealPageServer(srv, port, serverTls);
      const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', local, ...toPageServer(port), ...clientTls]);
      t.equal(dump.status, 0, dump.stderr);
      const served = await server.exited;
      t.equal(
        served,
        0,
        served === 0
          ? 'criu 3.17 page-server ends 0 after the dump'
          : `criu 3.17 page-server: ${logErrors(server.log)}`,
      );
      if (wire !== '') t.match(readFileSync(server.log, 'utf8'), /tls: TLS handshake completed/, 'CRIU used TLS');
      await waitGone(w.pid);
      t.ok(
        readdirSync(srv).some((f) => f.startsWith('pages-')),
        'CRIU stored pages',
      );
      cpSync(local, srv, { recursive: true });
      await restoreAndCheck(t, w, srv, dir);
    },
  );
}

/** Dump `pid` into `images` with criu-ts (`opts`: more options for both dump and restore). */
async function ourDump(t: Test, pid: number, images: string, opts: string[] = []): Promise<void> {
  const dump = await criuAsync(['dump', '-t', String(pid), '-D', images, ...opts]);
  t.equal(dump.status, 0, dump.stderr);
}

for (const prog of PROGRAMS) {
  for (const way of ['CRIU 3.17 dumps, criu-ts restores', 'criu-ts dumps, CRIU 3.17 restores'] as const) {
    t.test(`${prog.name}: ${way}; it counts on`, { skip }, async (t) => {
      const dir = t.testdir();
      const w = await prog.start(dir, ['/usr/bin/setsid']);
      t.teardown(() => w.kill());
      const digest = /READY \d+ (\S+)/.exec(w.report())?.[1] ?? '?';
      const ticks = (text: string): string[] =>
        [...text.matchAll(/^TICK (\d+) (\S+)$/gm)].map((m) => `${m[1]} ${m[2]}`);
      await poll(() => ticks(w.report()).length >= 3, 'three ticks', 10_000);
      const images = path.join(dir, 'img');
      const criuDumps = way.startsWith('CRIU');
      if (criuDumps) await criuDump(t, w.pid, images);
      else await ourDump(t, w.pid, images);
      await waitGone(w.pid);
      const before = ticks(w.report());
      const last = Number(before.at(-1)?.split(' ')[0]);
      let restored: Awaited<ReturnType<typeof startRestore>> | undefined;
      if (criuDumps) {
        restored = await startRestore(['-D', images], path.join(dir, 'restored.pid'));
        t.equal(restored.pid, w.pid, 'restored with its PID');
      } else await criuRestore(t, w.pid, images);
      await poll(() => ticks(w.report()).length >= before.length + 3, 'three ticks after restore', 10_000);
      const after = ticks(w.report()).slice(before.length, before.length + 3);
      t.same(
        after,
        [1, 2, 3].map((i) => `${last + i} ${digest}`),
        'it counts on from where it was, its state unchanged',
      );
      process.kill(w.pid, 'SIGTERM');
      await w.waitFor('BYE');
      const status = prog.termStatus ?? 0;
      if (restored !== undefined)
        t.equal((await restored.done).status, status, `criu-ts restore exits with its status ${status}`);
    });
  }
}

// The other way: criu-ts dumps, the real CRIU restores (criu 3.17 itself restores only some
// workloads on this kernel: it puts [vvar] elsewhere and loses itimers, also from its own dumps).
const restoredByCriu: { name: string; opts: string[] }[] = [
  { name: 'cr_fpu', opts: [] },
  { name: 'cr_seccomp', opts: [] },
  { name: 'cr_link_remap', opts: ['--link-remap'] },
  { name: 'cr_vma_deleted', opts: [] },
];
for (const { name, opts } of restoredByCriu) {
  t.test(`criu-ts dumps ${name}; CRIU 3.17 restores it`, { skip }, async (t) => {
    const dir = t.testdir();
    const w = await startSessionLeader(name, dir);
    t.teardown(() => w.kill());
    const images = path.join(dir, 'img');
    await ourDump(t, w.pid, images, opts);
    await waitGone(w.pid);
    await criuRestore(t, w.pid, images, opts);
    await endExpectPass(t, w);
  });
}

t.test('criu-ts pre-dumps twice and dumps with --track-mem; CRIU 3.17 restores the chain', { skip }, async (t) => {
  const dir = t.testdir();
  const w = await startSessionLeader('cr_incr', dir, ['256']);
  t.teardown(() => w.kill());
  const step = (n: number): string => path.join(dir, `d${n}`);
  for (let n = 1; n <= 3; n++) {
    if (n > 1) {
      process.kill(w.pid, 'SIGUSR1');
      await w.waitFor(`STEP ${n - 1} `);
    }
    const cmd = n < 3 ? ['pre-dump'] : ['dump', '--track-mem'];
    const prev = n > 1 ? ['--prev-images-dir', `../d${n - 1}`] : [];
    const r = await criuAsync([...cmd, '-t', String(w.pid), '-D', step(n), ...prev]);
    t.equal(r.status, 0, `${cmd[0]} ${n}: ${r.stderr}`);
  }
  const { runs } = await readPagemap(path.join(step(3), `pagemap-${w.pid}.img`));
  t.ok(
    runs.some((r) => (r.flags & PE_PARENT) !== 0),
    'the final dump has pages in its parent',
  );
  await waitGone(w.pid);
  await criuRestore(t, w.pid, step(3));
  await endExpectPass(t, w, /PASS 2 steps/);
});

t.test(
  'CRIU 3.17 dumps through --ps-socket into the criu-ts page server on the other end; criu-ts restores',
  { skip },
  async (t) => {
    const dir = t.testdir();
    const w = await startSessionLeader('cr_basic', dir);
    t.teardown(() => w.kill());
    const srv = path.join(dir, 'srv');
    const local = path.join(dir, 'local');
    mkdirSync(srv);
    const { client, accepted } = await connectedPair();
    const server = criuAsync(['page-server', '-D', srv, '--ps-socket', '3'], { fd3: accepted.fd });
    const dump = startCriuDumpOnSocket(w.pid, local, client.fd);
    accepted.close();
    client.close();
    const [d, s] = await Promise.all([dump.exited, server]);
    t.equal(d, 0, d === 0 ? 'criu 3.17 dump' : `criu 3.17 dump: ${logErrors(path.join(local, 'dump.log'))}`);
    t.equal(s.status, 0, `criu-ts page-server: ${s.stderr}`);
    await waitGone(w.pid);
    t.ok(existsSync(path.join(srv, `pagemap-${w.pid}.img`)), 'the pages went through the socket');
    cpSync(local, srv, { recursive: true });
    await restoreAndCheck(t, w, srv, dir);
  },
);
