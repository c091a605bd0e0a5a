import t from 'tap';

import { toOptions } from '../../../src/cli/options.js';
import { UsageError } from '../../../src/errors.js';

t.test('defaults follow criu(8)', async (t) => {
  const o = toOptions('restore', {});
  t.equal(o.imagesDir, '.');
  t.equal(o.workDir, '.');
  t.equal(o.logLevel, 2);
  t.same(o.cpuCap, ['fpu']);
  t.equal(o.tracker, 'auto');
  t.equal(o.restoreDetached, false);
  t.notOk('logFile' in o, 'absent optional values stay absent');
  t.notOk('tree' in o);
});

t.test('-W defaults to -D', async (t) => {
  t.equal(toOptions('restore', { imagesDir: '/img' }).workDir, '/img');
  t.equal(toOptions('restore', { imagesDir: '/img', workDir: '/w' }).workDir, '/w');
});

t.test('every option maps to its camelCase field', async (t) => {
  const o = toOptions('dump', {
    tree: '42',
    leaveRunning: true,
    namespaces: ['uts,ipc', 'net'],
    extUnixSk: true,
    tcpEstablished: true,
    shellJob: true,
    fileLocks: true,
    linkRemap: true,
    evasiveDevices: true,
    forceIrmap: true,
    manageCgroups: true,
    cgroupRoot: ['/new', 'cpu:/other'],
    extMountMap: ['/mnt:vol', 'auto'],
    enableExternalSharing: true,
    enableExternalMasters: true,
    vethPair: ['eth0=veth123'],
    inheritFd: ['fd[3]:pipe:[1234]'],
    actionScript: ['/a.sh', '/b.sh'],
    close: ['7'],
    cpuCap: 'cpu,^fpu',
    trackMem: true,
    pageServer: true,
    address: '127.0.0.1',
    port: '27000',
    token: 'abc',
    prevImagesDir: '../parent',
    root: '/root',
    libdir: '/lib',
    pidfile: 'pid',
    logFile: 'd.log',
    verbosity: '4',
    logPid: true,
    autoDedup: true,
    tracker: 'soft-dirty',
    c: true,
  });
  t.equal(o.tree, 42);
  t.equal(o.leaveRunning, true);
  t.same(o.namespaces, ['uts', 'ipc', 'net']);
  t.same(o.cgroupRoots, [{ path: '/new' }, { controller: 'cpu', path: '/other' }]);
  t.same(o.extMountMaps, [{ key: '/mnt', value: 'vol' }]);
  t.equal(o.isExtMountMapAuto, true);
  t.same(o.vethPairs, [{ inside: 'eth0', outside: 'veth123' }]);
  t.same(o.inheritFds, [{ fd: 3, key: 'pipe:[1234]' }]);
  t.same(o.actionScripts, ['/a.sh', '/b.sh']);
  t.same(o.closeFds, [7]);
  t.same(o.cpuCap, ['cpu', '^fpu']);
  t.equal(o.port, 27000);
  t.equal(o.address, '127.0.0.1');
  t.equal(o.token, 'abc');
  t.equal(o.prevImagesDir, '../parent');
  t.equal(o.logFile, 'd.log');
  t.equal(o.logLevel, 4);
  t.equal(o.logPid, true);
  t.equal(o.tracker, 'soft-dirty');
  t.equal(o.showPagesHex, true);
  for (const k of [
    'extUnixSk',
    'tcpEstablished',
    'shellJob',
    'fileLocks',
    'linkRemap',
    'evasiveDevices',
    'forceIrmap',
    'manageCgroups',
    'enableExternalSharing',
    'enableExternalMasters',
    'trackMem',
    'pageServer',
    'autoDedup',
  ] as const) {
    t.equal(o[k], true, k);
  }
});

t.test('-d means restore-detached, and daemon for page-server', async (t) => {
  t.equal(toOptions('restore', { restoreDetached: true }).restoreDetached, true);
  t.equal(toOptions('page-server', { daemon: true }).daemon, true);
  t.equal(toOptions('page-server', { restoreDetached: true }).daemon, true);
});

t.test('bare --cpu-cap means all', async (t) => {
  t.same(toOptions('restore', { cpuCap: true }).cpuCap, ['all']);
});

t.test('malformed values are usage errors naming the option', async (t) => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ namespaces: ['uts,bogus'] }, /--namespaces: unknown namespace "bogus"/],
    [{ vethPair: ['noequals'] }, /--veth-pair/],
    [{ extMountMap: ['nocolon'] }, /--ext-mount-map/],
    [{ inheritFd: ['3:x'] }, /--inherit-fd/],
    [{ cgroupRoot: ['cpu:relative'] }, /--cgroup-root/],
    [{ cpuCap: 'fast' }, /--cpu-cap: unknown mode "fast"/],
    [{ port: '70000' }, /--port: 70000 is out of range/],
    [{ close: ['-1'] }, /--close/],
    [{ verbosity: 'x' }, /-v/],
    [{ token: 'a', tokenFile: 'f' }, /--token and --token-file/],
    [{ leaveRunning: true, leaveStopped: true }, /leave-stopped/],
  ];
  for (const [raw, re] of bad)
    t.throws(() => toOptions('restore', raw), { name: 'UsageError', message: re }, JSON.stringify(raw));
  t.throws(() => toOptions('dump', {}), UsageError);
  t.throws(() => toOptions('exec', { tree: '1' }), /exec needs a system call/);
  t.same(toOptions('exec', { tree: '1' }, ['open', '&/foo', '2']).operands, ['open', '&/foo', '2']);
});

t.test('--pre-dump-mode: splice or read accepted, anything else refused', async (t) => {
  for (const mode of ['splice', 'read']) t.doesNotThrow(() => toOptions('pre-dump', { tree: '1', preDumpMode: mode }));
  t.throws(() => toOptions('pre-dump', { tree: '1', preDumpMode: 'copy' }), {
    message: 'Invalid value for --pre-dump-mode: "copy" (known: splice, read)',
  });
});

t.test('--ps-socket and --status-fd: fd numbers', async (t) => {
  t.match(toOptions('page-server', { psSocket: '3', statusFd: '4' }), { psSocket: 3, statusFd: 4 });
  t.throws(() => toOptions('page-server', { psSocket: '-1' }), { message: /--ps-socket/ });
  t.throws(() => toOptions('page-server', { statusFd: 'x' }), { message: /--status-fd/ });
});
