import t from 'tap';
import { decide, DEFAULT_POLICY } from '../../../migrate/policy.js';

const MB = 1 << 20;

t.test('the first iteration never stops the pre-copy', async (t) => {
  t.notOk(decide([{ bytes: 1024 * MB, ms: 1000 }], 1000, DEFAULT_POLICY).isStop);
});

t.test('a small dirty set stops it: it fits the downtime target at the bandwidth seen', async (t) => {
  // 1 GiB/s seen; 10 MB left = ~10 ms to send, within half of 100 ms.
  const d = decide(
    [
      { bytes: 1000 * MB, ms: 1000 },
      { bytes: 10 * MB, ms: 10 },
    ],
    1010,
    DEFAULT_POLICY,
  );
  t.ok(d.isStop);
  t.match(d.reason, /fits the downtime target/);
  t.ok(d.estimatedMs < 50, `estimated ${d.estimatedMs} ms`);
});

t.test("the estimate takes the last iteration's rate, not the first bulk copy's", async (t) => {
  // 1 GiB/s in bulk, but 16 MB of scattered pages took 435 ms: 435 ms expected, not 16.
  const d = decide(
    [
      { bytes: 1000 * MB, ms: 1000 },
      { bytes: 16 * MB, ms: 435 },
    ],
    1435,
    DEFAULT_POLICY,
  );
  t.notOk(d.isStop, d.reason);
  t.ok(d.estimatedMs > 400, `estimated ${d.estimatedMs} ms`);
});

t.test('a large dirty set that shrinks goes on; one that no longer shrinks stops', async (t) => {
  const h = [
    { bytes: 1000 * MB, ms: 1000 },
    { bytes: 400 * MB, ms: 400 },
  ];
  t.notOk(decide(h, 1400, DEFAULT_POLICY).isStop, 'shrinking, still too big: go on');
  const d = decide([...h, { bytes: 390 * MB, ms: 390 }], 1790, DEFAULT_POLICY);
  t.ok(d.isStop);
  t.match(d.reason, /no longer shrinks/);
});

t.test('the iteration and time limits stop it', async (t) => {
  const many = Array.from({ length: 8 }, () => ({ bytes: 500 * MB, ms: 500 }));
  t.match(decide(many, 4000, DEFAULT_POLICY).reason, /limit of 8 iterations/);
  const two = [
    { bytes: 1000 * MB, ms: 1000 },
    { bytes: 900 * MB, ms: 900 },
  ];
  t.match(decide(two, 61_000, DEFAULT_POLICY).reason, /time limit/);
});
