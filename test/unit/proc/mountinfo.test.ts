import t from 'tap';
import { decodeMountField, parseMountinfo } from '../../../src/proc/mountinfo.js';

// /proc/PID/mountinfo of a `sleep` on this machine (kernel 6.18).
const SAMPLE = `21 26 0:20 / /proc rw,relatime - proc proc rw
22 26 0:21 / /sys rw,relatime - sysfs sysfs rw
23 26 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334416k,nr_inodes=3083604,mode=755
24 23 0:22 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683620k
25 23 0:23 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
27 26 0:24 / /mnt/sandboxing/model_tools_env/v1/python ro,nosuid,nodev,relatime - tmpfs model_tools_unavailable ro,size=4k,mode=755
28 25 0:25 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
29 24 0:26 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683620k
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:32 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
36 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
37 30 0:34 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
// From a private mount namespace: a tmpfs with spaces in its mount point and source, made shared,
// then bind-mounted and made a slave of it.
const PROPAGATION = `62 42 0:38 / /tmp/mi\\040a\\040b rw,relatime shared:1 - tmpfs my\\040src rw,size=1024k
63 42 0:38 / /tmp/mi2 rw,relatime master:1 - tmpfs my\\040src rw,size=1024k
`;

t.test('the root and a tmpfs', async (t) => {
  const mounts = parseMountinfo(SAMPLE);
  t.equal(mounts.length, 20);
  const root = mounts.find((m) => m.mountPoint === '/');
  t.same(root, {
    mntId: 26,
    parentMntId: 1,
    major: 254,
    minor: 0,
    root: '/',
    mountPoint: '/',
    options: 'rw,relatime',
    sharedId: 0,
    masterId: 0,
    propagateFrom: 0,
    isUnbindable: false,
    fsType: 'ext4',
    source: '/dev/vda',
    superOptions: 'rw,discard,resv_strict,resuid=65534,resgid=65534',
  });
  const shm = mounts.find((m) => m.mountPoint === '/dev/shm');
  t.equal(shm?.fsType, 'tmpfs');
  t.equal(shm?.source, 'tmpfs');
  t.equal(mounts.find((m) => m.mountPoint === '/sys/fs/cgroup/unified')?.fsType, 'cgroup2');
});

t.test('escapes and propagation tags', async (t) => {
  const [shared, slave] = parseMountinfo(PROPAGATION);
  t.equal(shared?.mountPoint, '/tmp/mi a b');
  t.equal(shared?.source, 'my src');
  t.equal(shared?.sharedId, 1);
  t.equal(shared?.masterId, 0);
  t.equal(slave?.mountPoint, '/tmp/mi2');
  t.equal(slave?.masterId, 1);
  t.equal(slave?.sharedId, 0);
  t.equal(slave?.major, 0);
  t.equal(slave?.minor, 38);
  const m = parseMountinfo('70 62 0:38 /d /x rw shared:2 master:1 propagate_from:3 unbindable - ext4 none rw\n')[0];
  t.same([m?.sharedId, m?.masterId, m?.propagateFrom, m?.isUnbindable], [2, 1, 3, true]);
});

t.test('decodeMountField', async (t) => {
  t.equal(decodeMountField('a\\040b\\011c\\012d\\134e'), 'a b\tc\nd\\e');
  t.equal(decodeMountField('plain'), 'plain');
  t.throws(() => parseMountinfo('1 2 3\n'), /Cannot parse mountinfo line/);
});
