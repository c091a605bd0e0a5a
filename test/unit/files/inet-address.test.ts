/**
 * Addresses of inet sockets as CRIU stores them (inet_sk_entry src_addr/dst_addr: the address
 * bytes in network order read as little-endian u32 words), and the sockaddr a restore binds to.
 */
import t from 'tap';
import { sockaddrOf } from '../../../src/files/inet-socket.js';
import { ipBytes, ipWords } from '../../../src/images/index.js';
import { AF_INET, AF_INET6 } from '../../../src/kernel/constants.js';

t.test('IPv4: one word', async (t) => {
  t.same(ipWords('127.0.0.1'), [0x0100007f]);
  t.same(ipWords('0.0.0.0'), [0]);
  t.same(ipWords('10.1.2.254'), [0xfe02010a]);
  t.throws(() => ipWords('1.2.3'), /Not an IPv4 address/);
  t.throws(() => ipWords('1.2.3.256'), /Not an IPv4 address/);
});

t.test('IPv6: four words, every spelling', async (t) => {
  t.same(ipWords('::'), [0, 0, 0, 0]);
  t.same(ipWords('::1'), [0, 0, 0, 0x01000000]);
  t.same(ipWords('fe80::1%eth0'), [0x80fe, 0, 0, 0x01000000], 'a zone is dropped');
  t.same(ipWords('2001:db8:0:0:1:0:0:1'), ipWords('2001:db8::1:0:0:1'));
  t.same(ipWords('::ffff:127.0.0.1'), [0, 0, 0xffff0000, 0x0100007f], 'IPv4-mapped');
  t.same(ipWords('::127.0.0.1'), [0, 0, 0, 0x0100007f]);
  t.same(
    ipBytes(ipWords('1:2:3:4:5:6:7:8')).toString('hex'),
    '00010002000300040005000600070008',
    'the bytes come back in network order',
  );
  for (const bad of ['1::2::3', '1:2:3:4:5:6:7', '1:2:3:4:5:6:7:8:9', 'g::1', '1:2:3:4:5:6:7::8'])
    t.throws(() => ipWords(bad), /Not an IPv6 address/, bad);
});

t.test('sockaddr_in and sockaddr_in6', async (t) => {
  t.equal(sockaddrOf(AF_INET, [0x0100007f], 8080).toString('hex'), '02001f907f0000010000000000000000');
  const sa6 = sockaddrOf(AF_INET6, ipWords('::1'), 443);
  t.equal(sa6.length, 28);
  t.equal(sa6.toString('hex'), '0a0001bb' + '00000000' + '00000000000000000000000000000001' + '00000000');
  t.equal(sockaddrOf(AF_INET, [], 0).toString('hex'), '02000000' + '00'.repeat(12), 'no address: the wildcard');
});
