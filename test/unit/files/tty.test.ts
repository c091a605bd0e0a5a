/**
 * The pure parts of the TTY fd kind (src/files/tty.ts): struct termios2 bytes ⇄ termios_entry,
 * what kind of terminal a device number is, and the refusal of a shell job's images without -j.
 */
import t from 'tap';
import { checkTtyRestore, termiosBytes, termiosEntry, ttyRole } from '../../../src/files/tty.js';
import { FD_TYPES } from '../../../src/files/types.js';

// A fresh pty's termios with ECHO cleared, as TCGETS2 returned it on this kernel: iflag
// ICRNL|IXON, oflag OPOST|ONLCR, cflag B38400|CS8|CREAD, lflag ISIG|ICANON|ECHOE|ECHOK|
// ECHOCTL|ECHOKE|IEXTEN (ECHO off), line 0, c_cc VINTR ^C, VQUIT ^\\, VERASE DEL..., VMIN 1,
// ispeed = ospeed = 38400.
const HEX =
  '00050000' +
  '05000000' +
  'bf000000' +
  '338a0000' +
  '00' +
  '031c7f150400010011131a00120f1716000000' +
  '00960000' +
  '00960000';
const ENTRY = {
  c_iflag: 0x500,
  c_oflag: 0x5,
  c_cflag: 0xbf,
  c_lflag: 0x8a33,
  c_line: 0,
  c_ispeed: 38400,
  c_ospeed: 38400,
  c_cc: [3, 28, 127, 21, 4, 0, 1, 0, 17, 19, 26, 0, 18, 15, 23, 22, 0, 0, 0],
};

t.test('termios2 bytes decode to the termios_entry and encode back byte for byte', async (t) => {
  const bytes = Buffer.from(HEX, 'hex');
  t.equal(bytes.length, 44, 'struct termios2 is 44 bytes');
  t.same(termiosEntry(bytes), ENTRY);
  t.equal(termiosBytes(ENTRY).toString('hex'), HEX);
  t.equal(termiosBytes(ENTRY, 36).toString('hex'), HEX.slice(0, 72), 'struct termios: the first 36 bytes');
  t.same(termiosEntry(termiosBytes(ENTRY, 36)), { ...ENTRY, c_ispeed: 0, c_ospeed: 0 }, 'no speeds in struct termios');
});

t.test('terminal kinds by device number', async (t) => {
  t.equal(ttyRole(0x8800n), 'pty-slave', '/dev/pts/0 (136:0)');
  t.equal(ttyRole(0x8f05n), 'pty-slave', '143:5');
  t.equal(ttyRole(0x8000n), 'pty-master', 'a ptmx-made master (128:0)');
  t.equal(ttyRole(0x502n), 'pty-master', '/dev/ptmx (5:2)');
  t.equal(ttyRole(0x500n), 'ctty', '/dev/tty (5:0)');
  t.equal(ttyRole(0x501n), 'console', '/dev/console (5:1)');
  t.equal(ttyRole(0x401n), 'vt', '/dev/tty1 (4:1)');
  t.equal(ttyRole(0x440n), 'serial', '/dev/ttyS0 (4:64)');
});

t.test('a shell job restored without -j is refused', async (t) => {
  const files = [
    { type: FD_TYPES.REG, id: 1 },
    { type: FD_TYPES.TTY, id: 2 },
  ];
  t.throws(() => checkTtyRestore(files, [], {}), { code: 'EUNSUPPORTED', message: /file 2: .*--shell-job \(-j\)/ });
  t.doesNotThrow(() => checkTtyRestore(files, [], { isShellJob: true }));
  t.doesNotThrow(() => checkTtyRestore([{ type: FD_TYPES.REG, id: 1 }], [], {}), 'no terminal, no -j needed');
});
