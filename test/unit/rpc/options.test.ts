/**
 * criu_opts to the command line's Options (src/rpc/options.ts): the page-server fields. The images
 * directory is this process's own (images_dir_fd is resolved through /proc/<client>/fd).
 */
import { closeSync, openSync } from 'node:fs';
import t from 'tap';
import { optionsFromRequest } from '../../../src/rpc/options.js';

t.test('ps: address and port, or a connected socket (swrk only)', async (t) => {
  const dir = t.testdir();
  const fd = openSync(dir, 'r');
  t.teardown(() => closeSync(fd));
  const swrk = { peerPid: process.pid, isSwrk: true };
  const tcp = optionsFromRequest(
    'pre-dump',
    { images_dir_fd: fd, pid: 1, ps: { address: '10.0.0.2', port: 27 } },
    swrk,
  );
  t.match(tcp, { pageServer: true, address: '10.0.0.2', port: 27 });
  t.equal(tcp.psSocket, undefined);
  const sock = optionsFromRequest('dump', { images_dir_fd: fd, pid: 1, ps: { fd: 7 } }, swrk);
  t.match(sock, { pageServer: true, psSocket: 7 });
  t.throws(() => optionsFromRequest('dump', { images_dir_fd: fd, pid: 1, ps: { fd: 7 } }, { ...swrk, isSwrk: false }), {
    message: /ps.fd is not allowed by a standalone service/,
  });
  t.throws(() => optionsFromRequest('dump', { images_dir_fd: fd, pid: 1, ps: { fd: -1 } }, swrk), { message: /ps.fd/ });
});
