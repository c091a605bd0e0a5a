import t from 'tap';
import { decodeSiginfo, decodeSiginfos, encodeSiginfo, SIGINFO_SIZE } from '../../../src/sys/siginfo.js';

// SIGCHLD for a child 1234 (uid 1000) that exited with 7: si_code CLD_EXITED (1).
const SIGCHLD_HEX =
  '11000000' +
  '00000000' +
  '01000000' +
  '00000000' +
  'd2040000' +
  'e8030000' +
  '07000000' +
  '00000000' +
  '00'.repeat(96);
// SIGSEGV at 0xdeadbeef000, si_code SEGV_MAPERR (1).
const SIGSEGV_HEX = '0b000000' + '00000000' + '01000000' + '00000000' + '00f0eedbea0d0000' + '00'.repeat(104);

t.test('decodes a SIGCHLD siginfo byte for byte', async (t) => {
  const raw = Buffer.from(SIGCHLD_HEX, 'hex');
  t.equal(raw.length, SIGINFO_SIZE);
  const si = decodeSiginfo(raw);
  t.match(si, { signo: 17, errno: 0, code: 1, pid: 1234, uid: 1000, status: 7 });
  t.equal(si.addr, 0x3e8000004d2n, 'addr overlaps pid and uid');
  t.equal(si.value, 7n, 'value overlaps status');
  t.same(si.raw, raw);
  raw[0] = 0;
  t.equal(si.raw[0], 17, 'raw is a copy');
  t.equal(encodeSiginfo({ signo: 17, code: 1, pid: 1234, uid: 1000, status: 7 }).toString('hex'), SIGCHLD_HEX);
});

t.test('decodes a fault address and negative codes', async (t) => {
  const si = decodeSiginfo(Buffer.from(SIGSEGV_HEX, 'hex'));
  t.equal(si.signo, 11);
  t.equal(si.addr, 0xdeadbeef000n);
  t.equal(encodeSiginfo({ signo: 11, code: 1, addr: 0xdeadbeef000n }).toString('hex'), SIGSEGV_HEX);
  const tkill = decodeSiginfo(encodeSiginfo({ signo: 10, code: -6, pid: 42, uid: 0 }));
  t.equal(tkill.code, -6, 'SI_TKILL is negative');
});

t.test('splits PTRACE_PEEKSIGINFO output and rejects bad lengths', async (t) => {
  const two = Buffer.concat([Buffer.from(SIGCHLD_HEX, 'hex'), Buffer.from(SIGSEGV_HEX, 'hex')]);
  t.same(
    decodeSiginfos(two).map((s) => s.signo),
    [17, 11],
  );
  t.same(decodeSiginfos(Buffer.alloc(0)), []);
  t.throws(() => decodeSiginfos(Buffer.alloc(129)), RangeError);
  t.throws(() => decodeSiginfo(Buffer.alloc(64)), RangeError);
});
