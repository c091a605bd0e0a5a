// BufferPool: Buffers come back for reuse, no more than maxKept are kept, reserve() prepares them.
import t from 'tap';
import { BufferPool } from '../../../src/mem/buffer-pool.js';

t.test('take, give back, take the same Buffer again', async (t) => {
  const pool = new BufferPool(8192, 2);
  const a = pool.take();
  t.equal(a.length, 8192);
  const b = pool.take();
  t.not(a, b, 'two takes, two Buffers');
  pool.give(a);
  t.equal(pool.take(), a, 'a Buffer given back is reused');
  pool.give(a);
  pool.give(a);
  t.equal(pool.take(), a);
  t.not(pool.take(), a, 'given twice, kept once');
});

t.test('at most maxKept are kept; reserve() fills the pool up to that', async (t) => {
  const pool = new BufferPool(4096, 1);
  const [a, b] = [pool.take(), pool.take()];
  pool.give(a);
  pool.give(b);
  t.equal(pool.take(), a, 'the first one given back is kept');
  t.not(pool.take(), b, 'the second one was dropped');
  pool.reserve(5);
  const c = pool.take();
  t.equal(c.length, 4096);
  t.ok(
    c.every((x) => x === 0),
    'a reserved Buffer is faulted in (written once: zeros)',
  );
  t.throws(() => pool.give(Buffer.alloc(10)), /not a Buffer of this pool/);
});
