/**
 * The control protocol's codec and checks (migrate/protocol.ts): byte-exact msgpack, round trips,
 * refusal of malformed messages, agent-relative paths, listen addresses, the MACs.
 */
import { pack } from 'msgpackr';
import t from 'tap';
import {
  checkDir,
  checkFileName,
  clientMac,
  decodeMessage,
  encodeMessage,
  macEqual,
  parseHostPort,
  serverMac,
} from '../../../migrate/protocol.js';

t.test('a request is plain msgpack, byte for byte', async (t) => {
  const bytes = encodeMessage({ kind: 'request', id: 1, op: 'hello', params: {} });
  // fixmap(4) "kind" "request" "id" 1 "op" "hello" "params" fixmap(0)
  t.equal(bytes.toString('hex'), '84a46b696e64a772657175657374a2696401a26f70a568656c6c6fa6706172616d7380');
});

t.test('messages round-trip', async (t) => {
  const data = new Uint8Array([0, 1, 2, 255]);
  const req = {
    kind: 'request',
    id: 7,
    op: 'put-file',
    params: { dir: 'm1/img', name: 'core-1.img', data, mode: 0o600 },
  } as const;
  const got = decodeMessage(encodeMessage(req));
  t.same(got, req);
  if (typeof got !== 'string' && got.kind === 'request') {
    const p = got.params as { data: Uint8Array };
    t.ok(p.data instanceof Uint8Array, 'bytes stay bytes');
  }
  const res = { kind: 'response', id: 7, ok: false, error: { code: 'EUSAGE', message: 'no' } } as const;
  t.same(decodeMessage(encodeMessage(res)), res);
  const ch = { kind: 'challenge', protocol: 1, nonce: new Uint8Array(32).fill(9) } as const;
  t.same(decodeMessage(encodeMessage(ch)), ch);
});

t.test('malformed messages are refused with a reason', async (t) => {
  const bad = (v: unknown): string => {
    const r = decodeMessage(pack(v));
    return typeof r === 'string' ? r : 'ACCEPTED';
  };
  t.match(decodeMessage(Buffer.from([0x84, 0xa4, 0x6b])), /undecodable/, 'a truncated frame');
  t.match(bad([1, 2]), /not a map/);
  t.match(bad({ kind: 'nope' }), /unknown message kind/);
  t.match(bad({ kind: 'request', id: -1, op: 'hello', params: {} }), /valid id/);
  t.match(bad({ kind: 'request', id: 1, op: 'rm-rf', params: {} }), /unknown op "rm-rf"/);
  t.match(bad({ kind: 'request', id: 1, op: 'hello', params: 3 }), /params is not a map/);
  t.match(bad({ kind: 'request', id: 1, op: 'restore', params: {} }), /field "dir" is missing/);
  t.match(bad({ kind: 'request', id: 1, op: 'restore', params: { dir: 5 } }), /field "dir" is not a string/);
  t.match(bad({ kind: 'request', id: 1, op: 'restore', params: { dir: 'a', extraArgs: [1] } }), /list of strings/);
  t.match(bad({ kind: 'request', id: 1, op: 'kill', params: { pid: 1, sig: 'x' } }), /unknown field "sig"/);
  t.match(
    bad({ kind: 'request', id: 1, op: 'put-file', params: { dir: 'a', name: 'b', data: 'text' } }),
    /"data" is not bytes/,
  );
  // --tcp-established and --move-address.
  const dumpReq = (params: unknown): string => bad({ kind: 'request', id: 1, op: 'final-dump', params });
  t.equal(dumpReq({ pid: 1, dir: 'a', tcpEstablished: true }), 'ACCEPTED');
  t.match(dumpReq({ pid: 1, dir: 'a', tcpEstablished: 1 }), /"tcpEstablished" is not true or false/);
  t.equal(
    bad({ kind: 'request', id: 1, op: 'addresses', params: { action: 'held', addresses: ['10.0.0.1'] } }),
    'ACCEPTED',
  );
  t.match(bad({ kind: 'request', id: 1, op: 'addresses', params: { action: 'held' } }), /"addresses" is missing/);
  t.match(
    bad({ kind: 'request', id: 1, op: 'restore-final', params: { pid: 1, dir: 'a', addresses: '10.0.0.1/32@eth0' } }),
    /list of strings/,
  );
  // Images carried to restore-final: plain names and bytes only.
  const files = (images: unknown): string =>
    bad({ kind: 'request', id: 1, op: 'restore-final', params: { pid: 1, dir: 'a', images } });
  t.match(files([{ name: '../x', data: new Uint8Array(1) }]), /plain file names/);
  t.match(files([{ name: 'core-1.img', data: 'text' }]), /plain file names/);
  t.match(files([{ name: 'core-1.img', data: new Uint8Array(1), extra: 1 }]), /plain file names/);
  t.equal(files([{ name: 'core-1.img', data: new Uint8Array(1) }]), 'ACCEPTED');
  // The tree a skeleton is made of: whole processes, ids and VMA bounds in pairs.
  const tree = (processes: unknown): string =>
    bad({ kind: 'request', id: 1, op: 'skeleton-apply', params: { pid: 1, dir: 'a', processes } });
  const lib = { start: 0x7000, end: 0x9000, prot: 5, flags: 2, pgoff: 0, fdflags: 0, path: '/lib/x.so' };
  const proc = { pid: 7, ppid: 0, pgid: 7, sid: 3, anonVmas: [4096, 8192], fileVmas: [lib] };
  t.equal(tree([proc, { ...proc, pid: 8, ppid: 7, anonVmas: [] }]), 'ACCEPTED');
  t.match(
    tree([{ ...proc, anonVmas: [4096] }]),
    /list of \{pid, ppid, pgid, sid, anonVmas, fileVmas\}/,
    'an odd VMA list',
  );
  t.match(tree([{ ...proc, fileVmas: [{ ...lib, path: 'x.so' }] }]), /list of/, 'a file VMA with a relative path');
  t.match(tree([{ ...proc, fileVmas: [{ ...lib, prot: -1 }] }]), /list of/, 'a file VMA with a negative number');
  t.match(tree([{ pid: 7, ppid: 0, pgid: 7, sid: 3, anonVmas: [] }]), /list of/, 'no fileVmas (protocol 2)');
  t.match(tree([{ ...proc, pid: -1 }]), /list of \{pid/, 'a negative pid');
  t.match(tree([{ ...proc, sid: undefined }]), /list of \{pid/, 'a missing sid');
  t.match(tree([{ ...proc, extra: 1 }]), /list of \{pid/, 'an unknown field');
  t.match(tree(proc), /list of \{pid/, 'not a list');
  t.match(bad({ kind: 'response', id: 1, ok: false, error: 'x' }), /malformed error/);
  t.equal(
    bad({ kind: 'request', id: 1, op: 'kill', params: { pid: 1, signal: null } }),
    'ACCEPTED',
    'nil optional = absent',
  );
});

t.test('agent-relative dirs stay under the root', async (t) => {
  t.equal(checkDir('m-1/img'), null);
  t.equal(checkDir('abc'), null);
  for (const d of ['', '/etc', '../x', 'a/../b', 'a//b', 'a/./b', 'a/', 'a b', '.'])
    t.not(checkDir(d), null, `"${d}" refused`);
  t.equal(checkFileName('pages-1.img'), null);
  for (const n of ['', '.', '..', 'a/b', '/x']) t.not(checkFileName(n), null, `"${n}" refused`);
});

t.test('listen addresses need an explicit address', async (t) => {
  t.same(parseHostPort('198.18.0.2:7000'), { address: '198.18.0.2', port: 7000 });
  t.same(parseHostPort('0.0.0.0:1'), { address: '0.0.0.0', port: 1 });
  t.same(parseHostPort('[::1]:80'), { address: '::1', port: 80 });
  t.same(parseHostPort('localhost:0'), { address: 'localhost', port: 0 });
  for (const s of ['7000', ':7000', '1.2.3.4', '1.2.3.4:', '1.2.3.4:99999', '::1:80'])
    t.type(parseHostPort(s), 'string', `"${s}" refused`);
});

t.test('the two MACs differ by direction and depend on token and nonce', async (t) => {
  const nonce = Buffer.alloc(32, 1);
  const c = clientMac('tok', nonce);
  t.equal(c.length, 32);
  t.ok(macEqual(c, clientMac('tok', nonce)));
  t.notOk(macEqual(c, serverMac('tok', nonce)), 'a client proof is no server proof');
  t.notOk(macEqual(c, clientMac('tok2', nonce)));
  t.notOk(macEqual(c, clientMac('tok', Buffer.alloc(32, 2))));
  t.notOk(macEqual(c, c.subarray(0, 16)), 'a different length is refused, not thrown');
});
