import t from 'tap';
import { readFileSync } from 'node:fs';
import { parseLimits, readLimits, RLIM_INFINITY } from '../../../src/proc/limits.js';

const SAMPLE = `Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             96364                96364                processes 
Max open files            20000                20000                files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       96364                96364                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
`;

t.test('the 16 limits in RLIMIT order, unlimited as RLIM_INFINITY', async (t) => {
  const l = parseLimits(SAMPLE);
  t.equal(l?.length, 16);
  t.same(l?.[3], { cur: 8388608n, max: RLIM_INFINITY }, 'RLIMIT_STACK');
  t.same(l?.[7], { cur: 20000n, max: 20000n }, 'RLIMIT_NOFILE');
  t.same(l?.[13], { cur: 0n, max: 0n }, 'RLIMIT_NICE (no units column)');
});

t.test('a file that is not as expected is refused', async (t) => {
  t.equal(parseLimits(SAMPLE.split('\n').slice(0, 10).join('\n')), null, 'too few lines');
  t.equal(parseLimits(SAMPLE.replace('8388608              unlimited', 'lots                 unlimited')), null);
});

t.test('our own limits agree with the file', async (t) => {
  const l = readLimits(process.pid);
  t.ok(l !== null);
  t.equal(l?.length, 16);
  t.ok(readFileSync('/proc/self/limits', 'utf8').includes('Max open files'));
});
