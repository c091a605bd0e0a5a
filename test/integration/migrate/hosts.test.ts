/**
 * Simulated hosts (migrate/hosts.sh through migrate/sim-hosts.ts): each is its own network, PID,
 * IPC and mount namespace, hosts reach each other and this namespace reaches them, a PID held on one
 * is free on the other, criu's needs (repo, node, /dev/shm, /run) are visible inside, and `down`
 * leaves nothing behind, also after a crash.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import t, { type Test } from 'tap';

import { hostsScript, simHosts, type SimHost } from '../../../migrate/sim-hosts.js';
import { ROOT } from '../../helpers/fixture.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ip netns, unshare --pid, nsenter)';

function netnsList(): string {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
}
function linkExists(name: string): boolean {
  return spawnSync('ip', ['link', 'show', name], { stdio: 'ignore' }).status === 0;
}
/** A process exists and is not a zombie (a zombie waits for this machine's init to reap it). */
function isLive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}
async function execOk(t: Test, h: SimHost, cmd: string): Promise<string> {
  const r = await h.exec(cmd);
  t.equal(r.status, 0, `${h.name}: ${cmd}: ${r.stderr}`);
  return r.stdout.trim();
}

t.test('two hosts: namespaces, network, visibility, free PIDs, clean down', { skip: needsRoot }, async (t) => {
  const [src, dst] = await simHosts(['src', 'dst'], { t });
  if (src === undefined || dst === undefined) throw new Error('no hosts');
  t.match(src.addr, /^198\.18\.0\.\d+$/);
  t.match(dst.addr, /^198\.18\.0\.\d+$/);
  t.not(src.addr, dst.addr);
  t.match(netnsList(), new RegExp(`^cts-${src.hostName}\\b`, 'm'));
  t.ok(linkExists(`cts-${dst.hostName}`), 'the outside end of the veth pair');

  // Own namespaces: PID, network, IPC and mount differ from ours and from each other.
  for (const ns of ['pid', 'net', 'ipc', 'mnt']) {
    const ours = readlinkSync(`/proc/self/ns/${ns}`);
    const a = await execOk(t, src, `readlink /proc/self/ns/${ns}`);
    const b = await execOk(t, dst, `readlink /proc/self/ns/${ns}`);
    t.not(a, ours, `src has its own ${ns} namespace`);
    t.not(a, b, `src and dst ${ns} namespaces differ`);
  }
  t.match(
    await execOk(t, src, 'cat /proc/1/comm'),
    /^criu-ts-host-in/,
    "PID 1 of the host is its init, in the host's own /proc",
  );
  t.match(await execOk(t, src, 'ip -o -4 addr show dev eth0'), new RegExp(`inet ${src.addr.replace(/\./g, '\\.')}/24`));
  t.match(await execOk(t, src, 'ip -o link show lo'), /state UNKNOWN|,UP/, 'loopback up');

  // What criu needs is visible inside.
  await execOk(t, dst, `test -f ${ROOT}/bin/criu.js && test -d /dev/shm && test -d /run && node -e 0`);

  // Network: dst listens, src and this namespace connect.
  const server = dst.spawn([
    'node',
    '-e',
    `require('net').createServer((s) => s.end('hello from ' + process.pid)).listen(7001, '${dst.addr}', () => console.log('up'))`,
  ]);
  await new Promise<void>((r) => server.child.stdout?.once('data', () => r()));
  const connect = `require('net').connect(7001, '${dst.addr}').on('data', (d) => process.stdout.write(d))`;
  t.match(await execOk(t, src, `node -e "${connect}"`), /^hello from \d+$/, 'src reaches dst');
  t.match(execFileSync('node', ['-e', connect], { encoding: 'utf8' }), /^hello from/, 'this namespace reaches dst');
  await server.kill('SIGKILL');

  // A PID held on src is free on dst: ns_last_pid is per PID namespace.
  const held = Number(await execOk(t, src, 'sleep 1000 >/dev/null 2>&1 & echo $!'));
  t.ok(held > 1);
  const got = Number(
    await execOk(t, dst, `echo ${held - 1} > /proc/sys/kernel/ns_last_pid; sleep 1000 >/dev/null 2>&1 & echo $!`),
  );
  t.equal(got, held, `pid ${held} is taken on dst while src holds it`);
  t.equal(await execOk(t, src, `cat /proc/${held}/comm`), 'sleep', 'src still holds it');
  const outer = Number(
    execFileSync('sh', ['-c', `cat /proc/${src.initPid}/task/*/children`], { encoding: 'utf8' })
      .trim()
      .split(/\s+/)[0],
  );
  t.ok(isLive(outer), 'the sleeper is seen from here');

  await src.down();
  await dst.down();
  await src.down(); // idempotent
  t.notMatch(netnsList(), new RegExp(`cts-(${src.hostName}|${dst.hostName})\\b`), 'no netns left');
  t.notOk(linkExists(`cts-${src.hostName}`) || linkExists(`cts-${dst.hostName}`), 'no veth left');
  t.notOk(isLive(src.initPid) || isLive(dst.initPid), 'the inits are gone');
  t.notOk(isLive(outer), 'what ran inside is gone');
  t.notOk(existsSync(`/run/criu-ts-hosts/${src.hostName}`), 'no state left');
  t.not((await src.exec('true')).status, 0, 'exec into a host that is down fails');
});

t.test('down cleans the leftovers of a crashed run, and is idempotent', { skip: needsRoot }, async (t) => {
  const name = `crash-${process.pid % 10000}`;
  t.teardown(() => spawnSync('sh', [hostsScript(), 'down', name], { stdio: 'ignore' }));
  // A half-made host: netns and veth, no init, no state.
  execFileSync('ip', ['netns', 'add', `cts-${name}`]);
  execFileSync('ip', ['link', 'add', `cts-${name}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', `cts-${name}`]);
  const up = spawnSync('sh', [hostsScript(), 'up', name], { encoding: 'utf8' });
  t.not(up.status, 0, 'up refuses a name whose leftovers are there');
  t.match(up.stderr, /exists/);
  const down = spawnSync('sh', [hostsScript(), 'down', name], { encoding: 'utf8' });
  t.equal(down.status, 0, down.stderr);
  t.notMatch(netnsList(), new RegExp(`cts-${name}\\b`));
  t.notOk(linkExists(`cts-${name}`));
  t.equal(spawnSync('sh', [hostsScript(), 'down', name]).status, 0, 'again: still 0');
  // Now the name is free again.
  t.equal(spawnSync('sh', [hostsScript(), 'up', name]).status, 0);
  t.equal(spawnSync('sh', [hostsScript(), 'down', name]).status, 0);
  t.notMatch(netnsList(), new RegExp(`cts-${name}\\b`));
});

t.test('hosts.sh refuses bad names', { skip: needsRoot }, async (t) => {
  for (const bad of ['Upper', 'a b', '-x', 'much-too-long-name']) {
    const r = spawnSync('sh', [hostsScript(), 'up', bad], { encoding: 'utf8' });
    t.equal(r.status, 1, bad);
    t.match(r.stderr, /Invalid host name/);
  }
});
