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

t.test('tls fields: the --tls options', async (t) => {
  const dir = t.testdir();
  const fd = openSync(dir, 'r');
  t.teardown(() => closeSync(fd));
  const ctx = { peerPid: process.pid, isSwrk: true };
  const opts = optionsFromRequest(
    'dump',
    {
      images_dir_fd: fd,
      pid: 1,
      ps: { address: '10.0.0.2', port: 27 },
      tls: true,
      tls_cacert: '/pki/ca.pem',
      tls_cacrl: '/pki/crl.pem',
      tls_cert: '/pki/c.pem',
      tls_key: '/pki/c.key',
      tls_no_cn_verify: true,
    },
    ctx,
  );
  t.match(opts, {
    tls: true,
    tlsCacert: '/pki/ca.pem',
    tlsCacrl: '/pki/crl.pem',
    tlsCert: '/pki/c.pem',
    tlsKey: '/pki/c.key',
    tlsNoCnVerify: true,
  });
  const plain = optionsFromRequest('dump', { images_dir_fd: fd, pid: 1, ps: { port: 27 } }, ctx);
  t.match(plain, { tls: false, tlsNoCnVerify: false });
  t.equal(plain.tlsCert, undefined);
});
