// The page-server wire protocol: byte-exact fixtures of every command and reply, written by hand
// from CRIU's layout (struct page_server_iov: u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id, LE;
// cmd = flags << 16 | command; dst_id = id << 8 | type), and the decoder's refusals.
import { createHash } from 'node:crypto';
import t from 'tap';
import { ProtocolError } from '../../../src/errors.js';
import {
  AUTH_SIZE,
  PS_IOV_SIZE,
  addIov,
  closeIov,
  controlIov,
  decodeAuth,
  decodeDstId,
  decodeI32Reply,
  decodeIov,
  decodeOpen2Reply,
  encodeAuth,
  encodeDstId,
  encodeI32Reply,
  encodeIov,
  encodeOpen2Reply,
  payloadBytes,
  recordFlags,
  type PsIov,
} from '../../../src/pageserver/protocol.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const PEER = '127.0.0.1:1';

// pid 1234 = 0x4d2 -> dst_id 0x4d201; pid 42 -> 0x2a01; shmid 5 -> 0x502.
const task1234 = { type: 'task', id: 1234 } as const;
const task42 = { type: 'task', id: 42 } as const;
const shm5 = { type: 'shmem', id: 5 } as const;

const FIXTURES: [string, PsIov, string][] = [
  ['OPEN2 task 1234', controlIov('OPEN2', task1234), '04000000 00000000 0000000000000000 01d2040000000000'],
  ['OPEN task 1234 (legacy)', controlIov('OPEN', task1234), '03000000 00000000 0000000000000000 01d2040000000000'],
  ['PARENT shmem 5', controlIov('PARENT', shm5), '05000000 00000000 0000000000000000 0205000000000000'],
  [
    'ADD_F|PE_PRESENT 16 pages at 0x7f0000001000, task 42',
    addIov(task42, 0x7f0000001000n, 16, 4),
    '06000400 10000000 0010000000 7f0000 012a000000000000',
  ],
  ['ADD_F|PE_PARENT 3 pages', addIov(task42, 0x400000n, 3, 1), '06000100 03000000 0000400000000000 012a000000000000'],
  ['ADD_F|PE_LAZY 1 page', addIov(task42, 0x1000n, 1, 2), '06000200 01000000 0010000000000000 012a000000000000'],
  [
    'ADD_F|PE_LAZY|PE_PRESENT 2 pages',
    addIov(task42, 0x2000n, 2, 6),
    '06000600 02000000 0020000000000000 012a000000000000',
  ],
  [
    'ADD (legacy) 1 page',
    { command: 'ADD', flags: 0, nrPages: 1, vaddr: 0x1000n, dstId: 0x2a01n },
    '01000000 01000000 0010000000000000 012a000000000000',
  ],
  [
    'HOLE (legacy) 5 pages',
    { command: 'HOLE', flags: 0, nrPages: 5, vaddr: 0x1000n, dstId: 0x2a01n },
    '02000000 05000000 0010000000000000 012a000000000000',
  ],
  [
    'GET 1 page of pid 42 (plain pid)',
    { command: 'GET', flags: 0, nrPages: 1, vaddr: 0x1000n, dstId: 42n },
    '07000000 01000000 0010000000000000 2a00000000000000',
  ],
  ['CLOSE', closeIov(), '23100000 00000000 0000000000000000 0000000000000000'],
  ['FORCE_CLOSE', closeIov(true), '24100000 00000000 0000000000000000 0000000000000000'],
];

t.test('every command encodes to its bytes and decodes back', async (t) => {
  for (const [name, iov, bytes] of FIXTURES) {
    const b = encodeIov(iov);
    t.equal(b.length, PS_IOV_SIZE, `${name}: 24 bytes`);
    t.equal(b.toString('hex'), hex(bytes).toString('hex'), name);
    t.same(decodeIov(hex(bytes), PEER), iov, `${name}: decodes`);
  }
});

t.test('dst_id: current and legacy type numbers', async (t) => {
  t.equal(encodeDstId(task1234), 0x4d201n);
  t.equal(encodeDstId(shm5), 0x502n);
  t.same(decodeDstId(0x4d201n), task1234);
  t.same(decodeDstId(0x502n), shm5);
  t.same(decodeDstId((7n << 8n) | 11n), { type: 'task', id: 7 }, 'CRIU 2.x task type 11');
  t.same(decodeDstId((7n << 8n) | 34n), { type: 'shmem', id: 7 }, 'CRIU 2.x shmem type 34');
  t.equal(decodeDstId((7n << 8n) | 3n), null, 'type 3 was never sent');
  t.equal(decodeDstId(1n << 60n), null, 'an id beyond 32 bits');
});

t.test('payload and flags of records', async (t) => {
  t.equal(payloadBytes(addIov(task42, 0n, 3, 4)), 3 * 4096);
  t.equal(payloadBytes(addIov(task42, 0n, 3, 6)), 3 * 4096, 'lazy and present: data follows');
  t.equal(payloadBytes(addIov(task42, 0n, 3, 1)), 0);
  t.equal(payloadBytes(addIov(task42, 0n, 3, 2)), 0);
  t.equal(recordFlags(decodeIov(hex(FIXTURES[7]![2]), PEER)), 4, 'ADD is present');
  t.equal(recordFlags(decodeIov(hex(FIXTURES[8]![2]), PEER)), 1, 'HOLE is in the parent');
});

t.test('replies', async (t) => {
  t.equal(encodeOpen2Reply(true).toString('hex'), '01');
  t.equal(encodeOpen2Reply(false).toString('hex'), '00');
  t.equal(decodeOpen2Reply(hex('01')), true);
  t.equal(decodeOpen2Reply(hex('00')), false);
  t.equal(encodeI32Reply(1).toString('hex'), '01000000', 'PARENT: has parent');
  t.equal(encodeI32Reply(0).toString('hex'), '00000000', 'CLOSE: stored');
  t.equal(encodeI32Reply(-1).toString('hex'), 'ffffffff');
  t.equal(decodeI32Reply(hex('feffffff')), -2);
});

t.test('token message: magic and SHA-256 of the token', async (t) => {
  const msg = encodeAuth('secret');
  t.equal(msg.length, AUTH_SIZE);
  const digest = createHash('sha256').update('secret').digest('hex');
  t.equal(msg.toString('hex'), `4352545341555448${digest}`, '"CRTSAUTH" then the digest');
  t.equal(decodeAuth(msg)?.toString('hex'), digest);
  t.equal(decodeAuth(Buffer.concat([encodeIov(controlIov('OPEN2', task42)), Buffer.alloc(16)])), null, 'a CRIU OPEN2');
  t.equal(decodeAuth(msg.subarray(0, 39)), null, 'short');
  t.throws(() => encodeAuth(''), RangeError);
  // A token-less server reads it as a header with an unknown command and hangs up.
  t.throws(() => decodeIov(msg, PEER), ProtocolError);
});

t.test('the decoder refuses garbage', async (t) => {
  const bad: [string, string][] = [
    ['unknown command 9', '09000000 01000000 0010000000000000 012a000000000000'],
    ['unknown command 0', '00000000 00000000 0000000000000000 0000000000000000'],
    ['flags on OPEN2', '04000400 00000000 0000000000000000 012a000000000000'],
    ['unknown PE flag 8', '06000800 01000000 0010000000000000 012a000000000000'],
    ['PE_PRESENT with PE_PARENT', '06000500 01000000 0010000000000000 012a000000000000'],
    ['ADD_F without flags', '06000000 01000000 0010000000000000 012a000000000000'],
    ['0 pages', '06000400 00000000 0010000000000000 012a000000000000'],
    ['unaligned address', '06000400 01000000 0110000000000000 012a000000000000'],
    ['run past 2^64', '06000400 02000000 00f0ffffffffffff 012a000000000000'],
    ['pages on OPEN2', '04000000 01000000 0000000000000000 012a000000000000'],
    ['a destination on CLOSE', '23100000 00000000 0000000000000000 012a000000000000'],
    ['ASCII text', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n').toString('hex')],
  ];
  for (const [name, bytes] of bad) t.throws(() => decodeIov(hex(bytes), PEER), ProtocolError, name);
  t.throws(() => decodeIov(hex('06000400 01000000'), PEER), ProtocolError, 'short buffer');
  const err = t.throws(() => decodeIov(hex(bad[0]![1]), PEER)) as ProtocolError;
  t.match(err.message, /^Protocol error with 127\.0\.0\.1:1: unknown command word 0x00000009/);
  t.equal(err.code, 'EPROTOCOL');
});

t.test('the encoder refuses what CRIU cannot decode', async (t) => {
  t.throws(() => encodeIov({ ...controlIov('OPEN2', task42), flags: 4 }), RangeError);
  t.throws(() => encodeIov(addIov(task42, 0n, 1, 8)), RangeError);
  t.throws(() => encodeDstId({ type: 'task', id: -1 }), RangeError);
});
