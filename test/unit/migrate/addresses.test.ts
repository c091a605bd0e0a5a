/**
 * The wire form of moved addresses (migrate/addresses.ts) and the checks of the `addresses`
 * operation that change nothing: a bad address, action or device is refused in one line.
 */
import t from 'tap';
import { addressFromWire, addressToWire, moveAddresses } from '../../../migrate/addresses.js';

t.test('an address goes over the wire as ADDR/PREFIX@DEV', async (t) => {
  const v4 = { address: '198.19.0.10', prefix: 32, dev: 'eth0' };
  const v6 = { address: 'fd00:cafe::10', prefix: 128, dev: 'br-lan@x' };
  t.equal(addressToWire(v4), '198.19.0.10/32@eth0');
  t.same(addressFromWire(addressToWire(v4)), v4);
  t.same(addressFromWire(addressToWire(v6)), v6, 'a device name may hold @');
  t.throws(() => addressFromWire('198.19.0.10@eth0'), /ADDR\/PREFIX@DEV/);
  t.throws(() => addressFromWire('198.19.0.10/32'), /ADDR\/PREFIX@DEV/);
  t.throws(() => addressFromWire('host.example/32@eth0'), /an IPv4 or IPv6 address/);
  t.throws(() => addressFromWire('198.19.0.10/33@eth0'), /prefix 33/);
  t.throws(() => addressFromWire('fe80::1/64@eth0'), /link-local address cannot move/);
  t.throws(() => addressFromWire('fe80::1%eth0/64@eth0'), /ADDR\/PREFIX@DEV|without prefix or zone/);
});

t.test('the addresses operation refuses what it cannot do, changing nothing', async (t) => {
  t.throws(() => moveAddresses('steal', []), /action must be held, check-free, release, take or drop/);
  t.throws(() => moveAddresses('held', ['10.1.2.3/8']), /an IPv4 or IPv6 address, without prefix or zone/);
  // TEST-NET-3: no host here holds it.
  t.throws(() => moveAddresses('held', ['203.0.113.77']), /does not hold 203\.0\.113\.77/);
  t.throws(() => moveAddresses('check-free', ['203.0.113.77/32@no-such-dev0']), /has no device no-such-dev0/);
  t.throws(() => moveAddresses('check-free', ['127.0.0.1/8@lo']), /127\.0\.0\.1 is already on its device lo/);
  t.same(moveAddresses('held', ['127.0.0.1']), ['127.0.0.1/8@lo'], 'where this host holds it');
});
